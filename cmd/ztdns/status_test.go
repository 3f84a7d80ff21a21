package main

import (
	"strings"
	"testing"

	"github.com/ztdns/ztdns/pkg/control"
)

// TestStatusShowsCaptureNameservers: `ztdns status` names the nameservers
// capture is limited to, and says nothing of a list when there is none
// (every destination is captured).
func TestStatusShowsCaptureNameservers(t *testing.T) {
	var limited, all strings.Builder
	statusTable(&limited, control.Status{Capture: true, CaptureNameservers: []string{"10.96.0.10/32", "fd00:10:96::a/128"}}, false)
	statusTable(&all, control.Status{Capture: true}, false)
	if want := "Capture only:\t10.96.0.10/32, fd00:10:96::a/128\n"; !strings.Contains(limited.String(), want) {
		t.Errorf("status lacks %q:\n%s", want, limited.String())
	}
	if strings.Contains(all.String(), "Capture only") {
		t.Errorf("status with no list shows one:\n%s", all.String())
	}
}
