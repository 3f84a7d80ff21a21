//go:build linux

package agent

import (
	"bytes"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/ambient/istiocni"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/resolver"
)

// TestIstioRulesUnreadable: a pod whose netfilter rules cannot be read (a
// pod's root can fill them past the bound) shows "unknown", never
// nothing, in pods and status; the legacy tables' finding is kept when
// only nftables failed; the error is logged once for the namespace.
func TestIstioRulesUnreadable(t *testing.T) {
	a, _ := cniAgent(t)
	a.server = &resolver.Server{}
	var logs bytes.Buffer
	a.log = slog.New(slog.NewTextHandler(&logs, nil))
	feedSource(a)
	n := podNetns(t, "203.0.113.97/32")
	if _, err := a.captureNetns(control.CaptureRequest{Netns: n.Path(), Namespace: "default", Name: "vm"}); err != nil {
		t.Fatal(err)
	}
	errBound := errors.New("nftables in " + n.Path() + ": netfilter listing of more than 16777216 bytes")
	for _, tt := range []struct {
		name       string
		found      istiocni.Finding
		row        string
		doubly     []string
		unknown    []string
		statusPart string
	}{
		{"nothing readable", nil, "unknown", nil, []string{"default/vm"}, "whether they also carry istio-cni's DNS capture rules is unknown"},
		{"legacy read", istiocni.Finding{istiocni.BackendIptablesLegacy}, "iptables-legacy,unknown", []string{"default/vm (iptables-legacy,unknown)"}, nil, "default/vm (iptables-legacy,unknown)"},
	} {
		a.istioRules.mu.Lock()
		for cookie, l := range a.istioRules.seen { // look again now
			l.at = time.Time{}
			a.istioRules.seen[cookie] = l
		}
		a.istioRules.inspect = func(string, uint64) (istiocni.Finding, error) { return tt.found, errBound }
		a.istioRules.mu.Unlock()
		rows, err := a.podRows()
		if err != nil {
			t.Fatal(err)
		}
		if i := slices.IndexFunc(rows, func(r control.PodRow) bool { return r.Name == "vm" }); i < 0 || rows[i].IstioDNSRules != tt.row {
			t.Errorf("%s: pods rows %+v, want default/vm's istioDNSRules %q", tt.name, rows, tt.row)
		}
		if doubly, unknown := a.doublyCaptured(); !slices.Equal(doubly, tt.doubly) || !slices.Equal(unknown, tt.unknown) {
			t.Errorf("%s: doublyCaptured = %q, %q; want %q, %q", tt.name, doubly, unknown, tt.doubly, tt.unknown)
		}
		if w := a.istioRulesWarnings(); !slices.ContainsFunc(w, func(w string) bool { return strings.Contains(w, tt.statusPart) }) {
			t.Errorf("%s: status warnings %q, want one with %q", tt.name, w, tt.statusPart)
		}
	}
	if got := strings.Count(logs.String(), "cannot read a captured pod's netfilter rules"); got != 1 {
		t.Errorf("logged %d times, want once for the namespace:\n%s", got, logs.String())
	}
}
