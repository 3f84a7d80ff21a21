//go:build linux

package agent

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/ambient/istiocni"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/podcache"
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
	now := time.Now()
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
		a.istioRules.inspect = func(string, uint64) (istiocni.Finding, error) { return tt.found, errBound }
		a.istioRules.mu.Unlock()
		now = now.Add(istioRulesRefreshEvery) // the pod's look is due
		if n := a.istioRules.refresh(a.log, a.pods, now, false); n != 1 {
			t.Fatalf("%s: refresh looked at %d pods, want 1", tt.name, n)
		}
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

// TestScrapesLookAtNoPod: scrapes, `ztdns pods` and `ztdns status` in a row
// enter no pod's network namespace to list its rules (each look costs
// 0.5-0.9 ms, and anyone who reaches the metrics port may scrape); the
// background refresh does, and what it finds shows: a pod whose istio-cni
// rules appear after its capture is counted once the refresh looks again.
// (Before: every scrape looked again at every pod last looked at more than
// 10 s before, 1,000 looks a scrape on a node of 1,000 pods.)
func TestScrapesLookAtNoPod(t *testing.T) {
	a, _ := cniAgent(t)
	a.server = &resolver.Server{}
	feedSource(a)
	n := podNetns(t, "203.0.113.98/32")
	var looks atomic.Int32
	a.istioRules.inspect = func(path string, cookie uint64) (istiocni.Finding, error) {
		looks.Add(1)
		return istiocni.Inspect(path, cookie)
	}
	if _, err := a.captureNetns(control.CaptureRequest{Netns: n.Path(), Namespace: "default", Name: "vm"}); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(istioRulesCollector{a})
	scrape := func() (doubly float64, row string) {
		t.Helper()
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		doubly = -1
		for _, f := range families {
			if f.GetName() == "ztdns_capture_istio_dns_rules_pods" {
				doubly = f.GetMetric()[0].GetGauge().GetValue()
			}
		}
		rows, err := a.podRows()
		if err != nil {
			t.Fatal(err)
		}
		if i := slices.IndexFunc(rows, func(r control.PodRow) bool { return r.Name == "vm" }); i >= 0 {
			row = rows[i].IstioDNSRules
		}
		_ = a.istioRulesWarnings()
		return doubly, row
	}
	// threeScrapes scrapes three times in a row, each seeing wantDoubly
	// and wantRow.
	threeScrapes := func(when string, wantDoubly float64, wantRow string) {
		t.Helper()
		for i := range 3 {
			if doubly, row := scrape(); doubly != wantDoubly || row != wantRow {
				t.Errorf("scrape %d%s: ztdns_capture_istio_dns_rules_pods %v, row %q; want %v and %q", i, when, doubly, row, wantDoubly, wantRow)
			}
		}
	}

	// capture add looked at the new pod; the next tick has nothing to do.
	if got := looks.Load(); got != 1 {
		t.Fatalf("capture add looked %d times, want once", got)
	}
	now := time.Now()
	if got := a.istioRules.refresh(a.log, a.pods, now, false); got != 0 {
		t.Errorf("the tick after capture add looked at %d pods, want none due", got)
	}
	threeScrapes("", 0, "")
	if got := looks.Load(); got != 1 {
		t.Errorf("%d looks after three scrapes, pods and status, want capture add's 1 alone", got)
	}

	// istio-cni installs its rules after the capture: the next look (the
	// recheck of a newly captured pod) finds them; scrapes still look at
	// nothing.
	testenv.InstallIstioDNSRules(t, n, testenv.IstioNftables)
	if got := a.istioRules.refresh(a.log, a.pods, now.Add(time.Second), false); got != 0 {
		t.Errorf("a refresh a second later looked at %d pods, want none due", got)
	}
	if got := a.istioRules.refresh(a.log, a.pods, now.Add(istioRulesRecheck), false); got != 1 {
		t.Errorf("the recheck looked at %d pods, want 1", got)
	}
	threeScrapes(" after the refresh", 1, "nftables")
	if got := looks.Load(); got != 2 {
		t.Errorf("%d looks in all, want capture add's and the recheck's alone", got)
	}
}

// TestIstioRulesRefreshIsBounded: on a node of many captured pods each tick
// looks at a bounded few, those never looked at first; every pod is looked
// at again within istioRulesRefreshEvery (and a tick or two); pods no
// longer captured are forgotten.
func TestIstioRulesRefreshIsBounded(t *testing.T) {
	const pods = 1000
	c := podcache.New()
	for i := range pods {
		c.Attach(podcache.Attachment{ContainerID: fmt.Sprintf("ctr-%d", i), Namespace: "shop", Name: fmt.Sprintf("pod-%d", i),
			NetnsPath: fmt.Sprintf("/var/run/netns/pod-%d", i), NetnsCookie: uint64(i + 1), Captured: true})
	}
	lastLook := map[uint64]time.Time{}
	var now time.Time
	r := &istioRules{inspect: func(_ string, cookie uint64) (istiocni.Finding, error) {
		lastLook[cookie] = now
		return nil, nil
	}}
	log := slog.New(slog.DiscardHandler)
	most := max(istioRulesMinPerTick, 2*pods*int(istioRulesTick)/int(istioRulesRefreshEvery)+1)
	now = time.Unix(1_700_000_000, 0)
	start := now
	ticks := 2 * int(istioRulesRefreshEvery/istioRulesTick)
	for tick := range ticks {
		if got := r.refresh(log, c, now, false); got > most {
			t.Fatalf("tick %d looked at %d pods, want at most %d", tick, got, most)
		}
		if tick == pods/most+1 && len(lastLook) != pods {
			t.Errorf("after %d ticks %d pods were looked at, want all %d (never looked at first)", tick+1, len(lastLook), pods)
		}
		now = now.Add(istioRulesTick)
	}
	for cookie, at := range lastLook {
		if age := now.Sub(at); age > istioRulesRefreshEvery+2*istioRulesTick*time.Duration(pods/most+2) {
			t.Errorf("pod %d last looked at %v ago, want within %v", cookie, age, istioRulesRefreshEvery)
			break
		}
	}
	if now.Sub(start) < istioRulesRefreshEvery {
		t.Fatal("the test ran for less than a refresh interval")
	}
	// A pod just captured (a CNI ADD wakes the refresh): a refresh of the
	// new looks at it alone, however many others are due.
	c.Attach(podcache.Attachment{ContainerID: "ctr-new", Namespace: "shop", Name: "new", NetnsPath: "/var/run/netns/new",
		NetnsCookie: pods + 1, Captured: true})
	now = now.Add(istioRulesRefreshEvery)
	if got := r.refresh(log, c, now, true); got != 1 || lastLook[pods+1] != now {
		t.Errorf("a refresh of the new looked at %d pods, want the new one alone", got)
	}
	// Uncaptured pods are forgotten.
	for i := range pods / 2 {
		c.Detach(fmt.Sprintf("ctr-%d", i))
	}
	r.refresh(log, c, now, false)
	if got := len(r.seen); got != pods/2+1 {
		t.Errorf("%d pods remembered after half were forgotten, want %d", got, pods/2+1)
	}
}
