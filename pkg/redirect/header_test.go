//go:build linux

package redirect

import (
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/testenv"
)

// The Go values that repeat a constant of bpf/ztdns.h are the header's:
// bpf2go generates the structs, not the #defines. Reads the header; needs
// no kernel.
func TestConstantsMatchTheHeader(t *testing.T) {
	defines := testenv.HeaderDefines(t, "../../bpf/ztdns.h")
	for _, c := range []struct {
		define string
		goName string
		value  int64
	}{
		{"ZTDNS_SLOTS", "Slots", Slots},
		{"ZTDNS_MAX_CAPTURE_PREFIXES", "MaxCaptureNameservers", MaxCaptureNameservers},
		{"ZTDNS_AF_INET", "afInet", afInet},
		{"ZTDNS_AF_INET6", "afInet6", afInet6},
		{"ZTDNS_POD_PAUSED", "PodPaused", int64(PodPaused)},
		{"ZTDNS_NS_UNCONFIRMED", "nsUnconfirmed", nsUnconfirmed},
		{"ZTDNS_SLOT_IDLE_NS", "SlotIdle", int64(SlotIdle / time.Nanosecond)},
		{"ZTDNS_SLOT_UNCONFIRMED_IDLE_NS", "SlotUnconfirmedIdle", int64(SlotUnconfirmedIdle / time.Nanosecond)},
	} {
		v, ok := defines[c.define]
		switch {
		case !ok:
			t.Errorf("bpf/ztdns.h defines no %s (%s repeats it)", c.define, c.goName)
		case v != c.value:
			t.Errorf("%s is %d, bpf/ztdns.h's %s %d", c.goName, c.value, c.define, v)
		}
	}
}
