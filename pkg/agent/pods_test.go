//go:build linux

package agent

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/ambient"
	"github.com/ztdns/ztdns/pkg/capture"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/redirect"
	"github.com/ztdns/ztdns/pkg/resolver"
)

// TestCaptureAddLeavesTheRuntimesPod: capture add that names a pod the
// container runtime recorded, for another network namespace, is refused
// and leaves the pod's record, mark and IP as they were.
func TestCaptureAddLeavesTheRuntimesPod(t *testing.T) {
	a, m := cniAgent(t)
	feedSource(a)
	web := podNetns(t, "203.0.113.90/32")
	cookie := runPause(t, web)
	ip := netip.MustParseAddr("203.0.113.90")
	if _, err := a.cniAdd(control.CNIAddRequest{ContainerID: "6b1e0c9d2f", Netns: web.Path(), IfName: "eth0", PodNamespace: "shop", PodName: "web",
		IPs: []netip.Addr{ip}, NetnsCookie: cookie}); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	other := podNetns(t, "203.0.113.91/32")
	_, err := a.captureNetns(control.CaptureRequest{Netns: other.Path(), Namespace: "shop", Name: "web"})
	if err == nil || control.StatusOf(err) != http.StatusForbidden {
		t.Fatalf("capture add naming shop/web = %v (status %d), want refused (403)", err, control.StatusOf(err))
	}
	t.Logf("refused: %v", err)
	if p := a.pods.Get("shop", "web"); p.Attachment == nil || p.Attachment.ContainerID != "6b1e0c9d2f" || !slices.Equal(p.IPs, []netip.Addr{ip}) {
		t.Errorf("shop/web is %+v, want the runtime's record", p)
	}
	if p := a.pods.Lookup(ip); p == nil || p.Key() != "shop/web" {
		t.Errorf("%s is %v's, want shop/web's", ip, p)
	}
	if got := m.cookies(); !slices.Equal(got, []uint64{cookie}) {
		t.Errorf("marks %v, want the runtime's pod's alone (%d)", got, cookie)
	}
}

// TestCaptureAddAgainKeepsTheMark: capture add of a namespace captured
// already (under another name) renames its record and never unmarks it,
// which would let its queries out and forget the nameservers it
// addressed.
func TestCaptureAddAgainKeepsTheMark(t *testing.T) {
	a, m := cniAgent(t)
	a.server = &resolver.Server{} // the pods' rows ask it for their usage
	feedSource(a)
	n := podNetns(t, "203.0.113.92/32")
	cookie := cookieOf(t, n)
	for _, name := range []string{"first", "second"} {
		if _, err := a.captureNetns(control.CaptureRequest{Netns: n.Path(), Namespace: "default", Name: name}); err != nil {
			t.Fatalf("capture add as %s: %v", name, err)
		}
	}
	if m.unmarks != 0 {
		t.Errorf("%d unmarks, want none", m.unmarks)
	}
	if got := m.cookies(); !slices.Equal(got, []uint64{cookie}) {
		t.Errorf("marks %v, want the namespace's (%d)", got, cookie)
	}
	if p := a.pods.ByCookie(cookie); p == nil || p.Key() != "default/second" || len(a.pods.Attachments()) != 1 {
		t.Errorf("the namespace is %v's, records %v; want one, default/second's", p, a.pods.Attachments())
	}
}

// TestCaptureAddRefusesANameTaken: records are merged by namespace/name,
// so a second network namespace captured by hand under a name another one
// holds would hide it. It is refused; the first keeps its mark and its IP.
func TestCaptureAddRefusesANameTaken(t *testing.T) {
	a, m := cniAgent(t)
	a.server = &resolver.Server{}
	feedSource(a)
	first, second := podNetns(t, "203.0.113.95/32"), podNetns(t, "203.0.113.96/32")
	cookie := cookieOf(t, first)
	if _, err := a.captureNetns(control.CaptureRequest{Netns: first.Path(), Namespace: "default", Name: "vm"}); err != nil {
		t.Fatal(err)
	}
	_, err := a.captureNetns(control.CaptureRequest{Netns: second.Path(), Namespace: "default", Name: "vm"})
	if control.StatusOf(err) != http.StatusForbidden || !strings.Contains(err.Error(), first.Path()) {
		t.Errorf("second capture add as default/vm = %v, want refused naming %s", err, first.Path())
	}
	if got := m.cookies(); !slices.Equal(got, []uint64{cookie}) {
		t.Errorf("marks %v, want the first namespace's alone (%d)", got, cookie)
	}
	if p := a.pods.Lookup(netip.MustParseAddr("203.0.113.95")); p == nil || p.Key() != "default/vm" {
		t.Errorf("203.0.113.95 is %v's, want default/vm's", p)
	}
}

// TestCaptureDelKeepsAReleasedRecord: capture del unmarks a namespace and
// keeps its record, not captured, so that its address stays known as an
// uncaptured pod's (the resolver forwards what its sockets connected while
// captured still send). A second capture del says it is not captured;
// another namespace may take the released one's name, whose record then
// goes.
func TestCaptureDelKeepsAReleasedRecord(t *testing.T) {
	a, m := cniAgent(t)
	a.server = &resolver.Server{}
	feedSource(a)
	first, second := podNetns(t, "203.0.113.97/32"), podNetns(t, "203.0.113.98/32")
	ip := netip.MustParseAddr("203.0.113.97")
	if _, err := a.captureNetns(control.CaptureRequest{Netns: first.Path(), Namespace: "default", Name: "vm"}); err != nil {
		t.Fatal(err)
	}
	if err := a.releaseNetns(control.CaptureRequest{Netns: first.Path()}); err != nil {
		t.Fatalf("capture del: %v", err)
	}
	if got := m.cookies(); len(got) != 0 {
		t.Errorf("marks %v after capture del, want none", got)
	}
	if p := a.pods.Lookup(ip); !p.Uncaptured() || p.Attachment.Reason != capture.ReasonReleased {
		t.Errorf("%s after capture del is %+v, want its record, released", ip, p)
	}
	if err := a.releaseNetns(control.CaptureRequest{Netns: first.Path()}); control.StatusOf(err) != http.StatusBadRequest {
		t.Errorf("second capture del = %v (status %d), want not captured (400)", err, control.StatusOf(err))
	}

	if _, err := a.captureNetns(control.CaptureRequest{Netns: second.Path(), Namespace: "default", Name: "vm"}); err != nil {
		t.Fatalf("capture add of another namespace as the released one's name: %v", err)
	}
	if got, want := m.cookies(), []uint64{cookieOf(t, second)}; !slices.Equal(got, want) {
		t.Errorf("marks %v, want the second namespace's %v", got, want)
	}
	if p := a.pods.Lookup(ip); p != nil || len(a.pods.Attachments()) != 1 {
		t.Errorf("%s is %v's, records %v; want the released record gone", ip, p, a.pods.Attachments())
	}
}

// TestCaptureAddAgainAfterTheNamespaceWasMadeAgain: a namespace deleted
// and made again under its name (`ip netns del vm; ip netns add vm`, a
// start script run a second time) is captured again at once under the
// name its gone predecessor held, which is forgotten with its mark. Before,
// capture add was refused ("is already the name of network namespace")
// until housekeeping forgot the gone one.
func TestCaptureAddAgainAfterTheNamespaceWasMadeAgain(t *testing.T) {
	a, m := cniAgent(t)
	a.server = &resolver.Server{}
	feedSource(a)
	n := podNetns(t, "203.0.113.99/32")
	before := cookieOf(t, n)
	if _, err := a.captureNetns(control.CaptureRequest{Netns: n.Path(), Namespace: "default", Name: "vm"}); err != nil {
		t.Fatal(err)
	}
	// The same name, another namespace: the cleanup podNetns registered
	// deletes this one.
	for _, args := range [][]string{{"netns", "del", n.Name}, {"netns", "add", n.Name}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	n.AddAddr(t, "203.0.113.100/32", "lo")
	after := cookieOf(t, n)

	row, err := a.captureNetns(control.CaptureRequest{Netns: n.Path(), Namespace: "default", Name: "vm"})
	if err != nil {
		t.Fatalf("capture add of the namespace made again: %v", err)
	}
	if row.NetnsCookie != after || row.Namespace != "default" || row.Name != "vm" || !row.Captured {
		t.Errorf("capture add's row %+v, want default/vm captured, cookie %d", row, after)
	}
	if got := m.cookies(); !slices.Equal(got, []uint64{after}) {
		t.Errorf("marks %v, want the new namespace's alone (%d, not the gone %d)", got, after, before)
	}
	if p := a.pods.Lookup(netip.MustParseAddr("203.0.113.100")); p == nil || p.Key() != "default/vm" || len(a.pods.Attachments()) != 1 {
		t.Errorf("203.0.113.100 is %v's, records %v; want default/vm's, one record", p, a.pods.Attachments())
	}
	if p := a.pods.Lookup(netip.MustParseAddr("203.0.113.99")); p != nil {
		t.Errorf("the gone namespace's 203.0.113.99 is still %v's", p)
	}
}

// TestCaptureByHandLearnsNewAddresses: a namespace captured before it was
// given its address (its veth set up after `capture add`) is known by that
// address after housekeeping, captured and marked with it, so its queries
// get its own namespace's view; an address removed is forgotten. Before,
// the record kept the addresses of capture add's time until the namespace
// was captured again, and its queries got the view of a client outside
// every namespace.
func TestCaptureByHandLearnsNewAddresses(t *testing.T) {
	a, m := cniAgent(t)
	a.server = &resolver.Server{}
	feedSource(a)
	n := podNetns(t)
	cookie := cookieOf(t, n)
	if _, err := a.captureNetns(control.CaptureRequest{Netns: n.Path(), Namespace: "shop", Name: "vm"}); err != nil {
		t.Fatal(err)
	}
	ip4, ip6 := netip.MustParseAddr("203.0.113.101"), netip.MustParseAddr("2001:db8::101")
	n.AddAddr(t, ip4.String()+"/32", "lo")
	n.AddAddr(t, ip6.String()+"/128", "lo")

	a.housekeep()
	for _, ip := range []netip.Addr{ip4, ip6} {
		if p := a.pods.Lookup(ip); p == nil || p.Key() != "shop/vm" || p.Uncaptured() || p.Attachment == nil || !p.Attachment.Captured {
			t.Errorf("after housekeeping %s is %+v, want shop/vm's, captured", ip, p)
		}
	}
	m.mu.Lock()
	got := m.m[cookie]
	m.mu.Unlock()
	if got.IPv4 != ip4 || got.IPv6 != ip6 {
		t.Errorf("the namespace is marked with %+v, want %s and %s", got, ip4, ip6)
	}
	rows, err := a.podRows()
	if err != nil {
		t.Fatal(err)
	}
	if i := slices.IndexFunc(rows, func(r control.PodRow) bool { return r.NetnsCookie == cookie }); i < 0 ||
		!slices.Equal(rows[i].IPs, []string{ip4.String(), ip6.String()}) {
		t.Errorf("ztdns pods rows %+v, want the namespace's with %s and %s", rows, ip4, ip6)
	}

	if out, err := exec.Command("ip", "-n", n.Name, "addr", "del", ip4.String()+"/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("ip addr del: %v\n%s", err, out)
	}
	a.housekeep()
	if p := a.pods.Lookup(ip4); p != nil {
		t.Errorf("after %s was removed it is still %v's", ip4, p)
	}
	if p := a.pods.Lookup(ip6); p == nil || p.Key() != "shop/vm" {
		t.Errorf("%s is %v's, want shop/vm's", ip6, p)
	}
}

// TestCaptureByHandResolvesFromANewAddress: a namespace captured by hand
// asks, from an address it was given after `capture add`, for a host its
// namespace alone sees (exportTo: ["."]): after housekeeping it is
// answered as that namespace. Before, the query got the view of a client
// outside every namespace, and the host was not resolved.
func TestCaptureByHandResolvesFromANewAddress(t *testing.T) {
	n := newCaptureNode(t)
	c := n.startCapturing(t) // c.pod captured as default/pod
	private := `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: private, namespace: default}
spec:
  hosts: [private.internal]
  addresses: [198.51.100.2]
  exportTo: ["."]
`
	if err := os.WriteFile(filepath.Join(c.dir, "private.yaml"), []byte(private), 0o644); err != nil {
		t.Fatal(err)
	}
	ask := func(from netip.Addr) (string, error) {
		out, err := c.pod.Output(t, n.cg, 20*time.Second, "dig", "+short", "+time=2", "+tries=1", "-b", from.String(), "@10.96.0.10", "private.internal")
		return strings.TrimSpace(out), err
	}
	testenv.EventuallyNil(t, 10*time.Second, func() error {
		if out, err := ask(c.pod.IPv4); err != nil || out != "198.51.100.2" {
			return fmt.Errorf("from the address of capture add's time: %q %v", out, err)
		}
		return nil
	})

	later := c.pod.IPv4.Next() // in the pod's /24: the node routes it back
	c.pod.AddAddr(t, later.String()+"/24", "eth0")
	c.a.housekeep()
	if out, err := ask(later); err != nil || out != "198.51.100.2" {
		t.Errorf("private.internal from %s, given after capture add, after housekeeping: %q (%v), want 198.51.100.2: "+
			"the namespace's own view", later, out, err)
	}
}

// TestCaptureWaitsForCNIEvents: capture add and del check the records and
// then change them; a CNI event in between could record the same
// namespace or name. They wait while a CNI event is handled.
func TestCaptureWaitsForCNIEvents(t *testing.T) {
	a, _ := cniAgent(t)
	a.server = &resolver.Server{}
	feedSource(a)
	n := podNetns(t, "203.0.113.93/32")
	for _, step := range []struct {
		name string
		run  func() error
	}{
		{"capture add", func() error {
			_, err := a.captureNetns(control.CaptureRequest{Netns: n.Path(), Namespace: "default", Name: "hand"})
			return err
		}},
		{"capture del", func() error { return a.releaseNetns(control.CaptureRequest{Netns: n.Path()}) }},
	} {
		a.cniMu.Lock() // a CNI event under way
		done := make(chan error, 1)
		go func() { done <- step.run() }()
		select {
		case err := <-done:
			t.Errorf("%s finished (%v) while a CNI event was handled", step.name, err)
			a.cniMu.Unlock()
			continue
		case <-time.After(200 * time.Millisecond):
		}
		a.cniMu.Unlock()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: %v", step.name, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s never finished after the CNI event", step.name)
		}
	}
}

// TestCaptureRefusalsNameAnAdoptedPod: a pod running before the agent was
// adopted, with a container ID the agent made up; capture add and del
// refuse its namespace and its name saying so, not that the runtime
// recorded it.
func TestCaptureRefusalsNameAnAdoptedPod(t *testing.T) {
	a, m := cniAgent(t)
	n, cookie := adoptedPod(t, a, m, "203.0.113.98")
	other := podNetns(t, "203.0.113.99/32")
	for _, step := range []struct {
		name string
		run  func() error
	}{
		{"capture add of its namespace", func() error {
			_, err := a.captureNetns(control.CaptureRequest{Netns: n.Path(), Namespace: "default", Name: "hand"})
			return err
		}},
		{"capture add under its name", func() error {
			_, err := a.captureNetns(control.CaptureRequest{Netns: other.Path(), Namespace: "shop", Name: "web-0"})
			return err
		}},
		{"capture del of its namespace", func() error { return a.releaseNetns(control.CaptureRequest{Netns: n.Path()}) }},
	} {
		err := step.run()
		if control.StatusOf(err) != http.StatusForbidden || !strings.Contains(err.Error(), "adopted") || strings.Contains(err.Error(), "recorded by the container runtime") {
			t.Errorf("%s = %v, want refused as an adopted pod's", step.name, err)
		}
	}
	if got := m.cookies(); !slices.Equal(got, []uint64{cookie}) {
		t.Errorf("marks %v, want the adopted pod's alone (%d)", got, cookie)
	}
}

// TestPodsSayWhyAPodIsNotRecorded: `ztdns pods` gives a pod of the source
// that no record holds a reason: one the rules capture whose network
// namespace the scan for running pods did not find (not-found-running),
// one in a namespace the source does not know, which is not read as one
// without the ambient label (namespace-unknown), and one the rules leave
// alone (theirs).
func TestPodsSayWhyAPodIsNotRecorded(t *testing.T) {
	a, _ := cniAgent(t)
	a.server = &resolver.Server{}
	pod := func(ns, name, ip string, annotations map[string]string) model.Pod {
		return model.Pod{Namespace: ns, Name: name, UID: "uid-" + name, NodeName: testNode, IPs: []netip.Addr{netip.MustParseAddr(ip)}, Annotations: annotations}
	}
	feedSource(a,
		pod("shop", "ghost", "192.0.2.201", nil), // no network namespace holds it
		pod("shop", "opted-out", "192.0.2.202", map[string]string{model.AnnotationDNSCapture: "false"}),
		pod("unseen", "web", "192.0.2.203", nil),
	)
	rows, err := a.podRows()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, r := range rows {
		if r.Captured {
			t.Errorf("%s/%s captured, want not", r.Namespace, r.Name)
		}
		got[r.Namespace+"/"+r.Name] = r.Reason
	}
	want := map[string]string{
		"shop/ghost":     capture.ReasonNotFoundRunning,
		"shop/opted-out": ambient.ReasonAnnotationOff,
		"unseen/web":     ambient.ReasonNamespaceUnknown,
	}
	if !maps.Equal(got, want) {
		t.Errorf("reasons %v, want %v", got, want)
	}
}

// TestPodsJSONKeepsNameserverSlots: `ztdns pods -o json` gives each learned
// nameserver its slot and idle time, and "unconfirmed": true to a slot
// only UDP connects went through; a pod that learned slots 1 and 2 shows
// them as such, not as a list whose first entry reads as slot 0.
func TestPodsJSONKeepsNameserverSlots(t *testing.T) {
	var m redirect.MarkedPod
	m.Nameservers[1] = redirect.LearnedNameserver{Addr: netip.MustParseAddrPort("10.96.0.10:53"), Idle: 4200 * time.Millisecond}
	m.Nameservers[2] = redirect.LearnedNameserver{Addr: netip.MustParseAddrPort("10.0.3.7:53"), Idle: 1500 * time.Millisecond, Unconfirmed: true}
	var row control.PodRow
	fillMarked(&row, m)
	b, err := json.Marshal(row)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Nameservers any `json:"nameservers"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	want := []any{
		map[string]any{"slot": 1.0, "address": "10.96.0.10:53", "idle": "4.2s"},
		map[string]any{"slot": 2.0, "address": "10.0.3.7:53", "idle": "1.5s", "unconfirmed": true},
	}
	if !reflect.DeepEqual(got.Nameservers, want) {
		t.Errorf("nameservers %s, want %v", b, want)
	}
}

// TestPodsWithCaptureOffSayCaptureOff: with --capture=false, `ztdns pods`
// lists every pod of the source as not captured, REASON capture-off, and
// ztdns_capture_pods counts them so, as deploy/README.md says. (Before: an
// empty REASON, and no series for them.)
func TestPodsWithCaptureOffSayCaptureOff(t *testing.T) {
	dir, socket, listen, up := handoffSetup(t)
	pods, err := os.ReadFile("../../examples/pods.yaml") // default/curl and external-1/tcp-echo
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pods.yaml"), pods, 0o644); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	startTestAgent(t, dir, socket, listen, up, "", func(c *Config) { c.Registry = reg })

	rows, err := control.NewClient(socket, 5*time.Second).Pods(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rows {
		got = append(got, fmt.Sprintf("%s/%s captured=%v reason=%q", r.Namespace, r.Name, r.Captured, r.Reason))
	}
	slices.Sort(got)
	want := []string{`default/curl captured=false reason="capture-off"`, `external-1/tcp-echo captured=false reason="capture-off"`}
	if !slices.Equal(got, want) {
		t.Errorf("ztdns pods lists %q, want %q", got, want)
	}
	captureOff := map[string]string{"captured": "false", "reason": capture.ReasonCaptureOff}
	if n := metricValue(t, reg, "ztdns_capture_pods", captureOff); n != 2 {
		t.Errorf("ztdns_capture_pods%v = %v, want 2", captureOff, n)
	}
}
