//go:build linux

package capture

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/netns"
)

// TestProcNamespacesScan: a scan of the real /proc finds the network
// namespace of a process that runs in it as another user, with its
// addresses, once however many processes share it.
func TestProcNamespacesScan(t *testing.T) {
	testenv.RequireRoot(t)
	setpriv := testenv.LookPath(t, "setpriv")
	n := testenv.NewNetns(t, testenv.UniqueName("ztcap-"))
	addr := netip.MustParseAddr("203.0.113.77")
	if out, err := exec.Command("ip", "-n", n.Name, "addr", "add", addr.String()+"/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("ip addr add: %v\n%s", err, out)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	for range 2 {
		// Like a pod's pause process: another user than the agent's.
		cmd := n.Command(ctx, nil, setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "600")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	}
	want, err := netns.Cookie(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		res, err := ProcNamespaces{}.Scan(nil)
		if err != nil {
			t.Fatal(err)
		}
		var found []Netns
		for _, f := range res.Found {
			if f.Cookie == want {
				found = append(found, f)
			}
		}
		if len(found) == 1 && slices.Equal(found[0].Addrs, []netip.Addr{addr}) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("scan found %+v for the namespace (cookie %d), want it once with %s", found, want, addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestProcNamespacesCookieSaysWhatIsGone: Cookie reads a namespace's
// cookie, and says "no namespace there" (what makes the controller drop a
// record) for a path with nothing at it or a file that is no namespace, as
// a runtime's netns path is once the sandbox is gone.
func TestProcNamespacesCookieSaysWhatIsGone(t *testing.T) {
	testenv.RequireRoot(t)
	n := testenv.NewNetns(t, testenv.UniqueName("ztcap-"))
	want, err := netns.Cookie(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	if got, err := (ProcNamespaces{}).Cookie(n.Path()); err != nil || got != want {
		t.Errorf("Cookie(%s) = %d, %v; want %d", n.Path(), got, err, want)
	}
	file := filepath.Join(t.TempDir(), "cni-gone")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{file, filepath.Join(t.TempDir(), "missing")} {
		if _, err := (ProcNamespaces{}).Cookie(path); !errors.Is(err, netns.ErrNotFound) {
			t.Errorf("Cookie(%s) = %v, want an error wrapping ErrNotFound", path, err)
		}
	}
}

// TestProcNamespacesScanKeepsTheLowestPID: of the processes sharing a
// namespace, a scan names the lowest PID's (a pod's pause process, which
// lives as long as the pod), not the first by name: "123456" (an exec
// probe) sorts before "35000".
func TestProcNamespacesScanKeepsTheLowestPID(t *testing.T) {
	testenv.RequireRoot(t)
	root := t.TempDir()
	for _, pid := range []string{"123456", "35000"} {
		if err := os.MkdirAll(filepath.Join(root, pid, "ns"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/proc/self/ns/net", filepath.Join(root, pid, "ns", "net")); err != nil {
			t.Fatal(err)
		}
	}
	res, err := ProcNamespaces{Root: root}.Scan(nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(root, "35000", "ns", "net"); len(res.Found) != 1 || res.Found[0].Path != want {
		t.Errorf("scan found %+v, want the namespace once, at %s", res.Found, want)
	}
}

// TestAdoptedPodOutlivesItsProcess: an adopted record names one process's
// ns/net; when that process exits and another still holds the namespace,
// the pod stays captured and its record names the other process.
func TestAdoptedPodOutlivesItsProcess(t *testing.T) {
	testenv.RequireRoot(t)
	addr := "203.0.113.78"
	procs, cookie := twoProcessNetns(t, addr)

	f := newProcFixture(t)
	f.source([]model.Namespace{ambientNS}, pod("web", addr, nil))
	p := f.pods.Get("shop", "web")
	if p.Attachment == nil || p.Attachment.NetnsPath != pathOf(procs[0]) {
		t.Fatalf("web's attachment %+v, want adopted through the lower PID, %s", p.Attachment, pathOf(procs[0]))
	}

	// The adopted process exits; the other holds the namespace.
	_ = procs[0].Process.Kill()
	_ = procs[0].Wait()
	f.now = f.now.Add(adoptInterval)
	f.ctl.Redecide()
	if got := f.marker.marked(); !slices.Equal(got, []uint64{cookie}) {
		t.Errorf("marks %v, want the running pod's (%d)", got, cookie)
	}
	// Not even for a moment: an unmark lets queries out, and forgets the
	// nameservers the pod addressed.
	if got := f.marker.unmarks(); len(got) != 0 {
		t.Errorf("unmarked %v while the pod ran", got)
	}
	p = f.pods.Get("shop", "web")
	if p.Attachment == nil || p.Attachment.NetnsPath != pathOf(procs[1]) {
		t.Errorf("web's attachment %+v, want it to name the live process, %s", p.Attachment, pathOf(procs[1]))
	}
	if rec := f.savedRecord(t); len(rec) != 1 || rec[0].NetnsPath != pathOf(procs[1]) {
		t.Errorf("record %+v, want web's through %s", rec, pathOf(procs[1]))
	}
}

// TestRestoreKeepsAnAdoptedPodWhoseProcessExited: an adopted record names
// one process's ns/net; when that process exits while no agent runs and
// another still holds the namespace, a restarted agent keeps the pod
// captured, never unmarked, its record naming the live process.
func TestRestoreKeepsAnAdoptedPodWhoseProcessExited(t *testing.T) {
	testenv.RequireRoot(t)
	addr := "203.0.113.81"
	procs, cookie := twoProcessNetns(t, addr)

	f := newProcFixture(t)
	f.source([]model.Namespace{ambientNS}, pod("web", addr, nil))
	if p := f.pods.Get("shop", "web"); p.Attachment == nil || p.Attachment.NetnsPath != pathOf(procs[0]) {
		t.Fatalf("web's attachment %+v, want adopted through the lower PID, %s", p.Attachment, pathOf(procs[0]))
	}
	f.ctl.Close()

	// While no agent runs, the adopted process exits; the other holds the
	// namespace.
	_ = procs[0].Process.Kill()
	_ = procs[0].Wait()

	g := f.restarted(t)
	if got := g.marker.marked(); !slices.Equal(got, []uint64{cookie}) {
		t.Errorf("marks after restore %v, want the running pod's (%d)", got, cookie)
	}
	// Not even for a moment: an unmark lets queries out, and forgets the
	// nameservers the pod addressed.
	if got := g.marker.unmarks(); len(got) != 0 {
		t.Errorf("unmarked %v while the pod ran", got)
	}
	if rec := g.savedRecord(t); len(rec) != 1 || rec[0].NetnsPath != pathOf(procs[1]) || rec[0].NetnsCookie != cookie {
		t.Errorf("record after restore %+v, want web's through %s", rec, pathOf(procs[1]))
	}
}

// twoProcessNetns makes a network namespace holding addr, in which two
// processes sleep (as a pod's pause and another container), and returns
// them sorted by PID, with the namespace's cookie.
func twoProcessNetns(t *testing.T, addr string) ([]*exec.Cmd, uint64) {
	t.Helper()
	n := testenv.NewNetns(t, testenv.UniqueName("ztcap-"))
	if out, err := exec.Command("ip", "-n", n.Name, "addr", "add", addr+"/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("ip addr add: %v\n%s", err, out)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var procs []*exec.Cmd
	for range 2 {
		cmd := n.Command(ctx, nil, "sleep", "600")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cancel(); _ = cmd.Wait() })
		n.WaitIn(t, cmd.Process.Pid)
		procs = append(procs, cmd)
	}
	slices.SortFunc(procs, func(a, b *exec.Cmd) int { return a.Process.Pid - b.Process.Pid })
	cookie, err := netns.Cookie(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	return procs, cookie
}

// pathOf is the network namespace of a process, as a scan of /proc names
// it.
func pathOf(c *exec.Cmd) string { return "/proc/" + strconv.Itoa(c.Process.Pid) + "/ns/net" }

// newProcFixture is newFixture over the machine's namespaces, found
// through /proc; the test's own is the node's.
func newProcFixture(t *testing.T) *fixture {
	t.Helper()
	return newFixtureOver(t, true, ownCookie(t), ProcNamespaces{})
}

// ownCookie is the test's own network namespace, the node's: never
// adopted.
func ownCookie(t *testing.T) []uint64 {
	t.Helper()
	c, err := netns.Cookie("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	return []uint64{c}
}

// TestAdoptionPrefersTheNodesUserNamespace: an unprivileged user can make a
// network namespace (unshare -Urn) holding a running pod's IP; the pod is
// adopted through its own namespace, whichever a scan finds last. A pod
// whose namespace alone holds its IP is adopted even when another user
// namespace owns it (hostUsers: false).
func TestAdoptionPrefersTheNodesUserNamespace(t *testing.T) {
	testenv.RequireRoot(t)
	unshare := testenv.LookPath(t, "unshare")
	n := testenv.NewNetns(t, testenv.UniqueName("ztcap-"))
	web, api := "203.0.113.79", "203.0.113.80"
	if out, err := exec.Command("ip", "-n", n.Name, "addr", "add", web+"/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("ip addr add: %v\n%s", err, out)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	start := func(cmd *exec.Cmd) *exec.Cmd {
		t.Helper()
		cmd.WaitDelay = 2 * time.Second
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cancel(); _ = cmd.Wait() })
		return cmd
	}
	// In a user namespace of its own, holding ip; started after the pod's
	// process, so a scan by PID finds it last.
	userns := func(ip string) *exec.Cmd {
		t.Helper()
		cmd := start(exec.CommandContext(ctx, unshare, "-Urn", "sh", "-c",
			"ip link set lo up && ip addr add "+ip+"/32 dev lo && exec sleep 600"))
		path := pathOf(cmd)
		want := netip.MustParseAddr(ip)
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if addrs, _ := netns.Addrs(path, netns.MaxAddrs); slices.Contains(addrs, want) {
				return cmd
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never held %s", path, ip)
			}
		}
	}
	pause := start(n.Command(ctx, nil, "sleep", "600"))
	n.WaitIn(t, pause.Process.Pid)
	userns(web)
	hostUsersFalse := userns(api)

	f := newProcFixture(t)
	f.source([]model.Namespace{ambientNS}, pod("web", web, nil), pod("api", api, nil))
	if p := f.pods.Get("shop", "web"); p.Attachment == nil || p.Attachment.NetnsPath != pathOf(pause) {
		t.Errorf("web's attachment %+v, want adopted through its own namespace, %s", p.Attachment, pathOf(pause))
	}
	if p := f.pods.Get("shop", "api"); p.Attachment == nil || p.Attachment.NetnsPath != pathOf(hostUsersFalse) {
		t.Errorf("api's attachment %+v, want adopted through the one namespace holding its IP, %s", p.Attachment, pathOf(hostUsersFalse))
	}
}

// addrBatch is `ip -batch` input adding ips, then count more addresses
// (in 198.51.100.0/24 and 203.0.113.0/24, from 198.51.100.1), to lo.
func addrBatch(count int, ips ...string) string {
	var b strings.Builder
	for _, ip := range ips {
		fmt.Fprintf(&b, "addr add %s/32 dev lo\n", ip)
	}
	for i := 1; i <= count; i++ {
		ip := netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})
		if i > 255 {
			ip = netip.AddrFrom4([4]byte{203, 0, 113, byte(i - 255)})
		}
		fmt.Fprintf(&b, "addr add %s/32 dev lo\n", ip)
	}
	return b.String()
}

// startIn runs a process (like a pod's pause) in n, holding ips on lo,
// and returns its ns/net path.
func startIn(t *testing.T, n *testenv.Netns, batch string) string {
	t.Helper()
	cmd := exec.Command("ip", "-n", n.Name, "-batch", "-")
	cmd.Stdin = strings.NewReader(batch)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ip -batch: %v\n%s", err, out)
	}
	ctx, cancel := context.WithCancel(context.Background())
	proc := n.Command(ctx, nil, "sleep", "600")
	if err := proc.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = proc.Wait() })
	n.WaitIn(t, proc.Process.Pid)
	return "/proc/" + strconv.Itoa(proc.Process.Pid) + "/ns/net"
}

// TestAdoptionSkipsNamespacesWithTooManyAddresses: whoever owns a network
// namespace decides how many addresses it has. A scan reads no more than
// netns.MaxAddrs of them, and takes a namespace with more for no
// pod's, naming it in a warning: neither the pod whose IP is among them is
// adopted, nor does another pod whose IP it added lose its adoption. A
// scan leaves the addresses of a namespace another user namespace owns
// (unshare -Urn) unread, and they too are read only up to the bound.
func TestAdoptionSkipsNamespacesWithTooManyAddresses(t *testing.T) {
	testenv.RequireRoot(t)
	unshare := testenv.LookPath(t, "unshare")
	web, api, db := "203.0.113.82", "203.0.113.83", "203.0.113.84"
	flooded := startIn(t, testenv.NewNetns(t, testenv.UniqueName("ztcap-")), addrBatch(300, web, api))
	apiPath := startIn(t, testenv.NewNetns(t, testenv.UniqueName("ztcap-")), addrBatch(0, api))
	dbPath := startIn(t, testenv.NewNetns(t, testenv.UniqueName("ztcap-")), addrBatch(0, db))

	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	script := filepath.Join(t.TempDir(), "addrs")
	if err := os.WriteFile(script, []byte(addrBatch(300, db)), 0o644); err != nil {
		t.Fatal(err)
	}
	userns := exec.CommandContext(ctx, unshare, "-Urn", "sh", "-c",
		"ip link set lo up && ip -batch "+script+" && echo ready && exec sleep 600")
	userns.WaitDelay = 2 * time.Second
	ready, err := userns.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := userns.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = userns.Wait() })
	if line, err := bufio.NewReader(ready).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("unshare: %q, %v", line, err)
	}
	usernsPath := "/proc/" + strconv.Itoa(userns.Process.Pid) + "/ns/net"

	res, err := ProcNamespaces{}.Scan(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range res.Found {
		switch n.Path {
		case flooded:
			if !n.TooManyAddrs || len(n.Addrs) != 0 {
				t.Errorf("scan found %s with TooManyAddrs %v and %d addresses, want TooManyAddrs and none read", n.Path, n.TooManyAddrs, len(n.Addrs))
			}
		case usernsPath:
			if !n.ForeignUserns || n.TooManyAddrs || len(n.Addrs) != 0 {
				t.Errorf("scan found %s with ForeignUserns %v, TooManyAddrs %v and %d addresses, want another user namespace's, unread",
					n.Path, n.ForeignUserns, n.TooManyAddrs, len(n.Addrs))
			}
			if _, err := (ProcNamespaces{}).Addrs(n); !errors.Is(err, netns.ErrTooManyAddrs) {
				t.Errorf("Addrs(%s) = %v, want ErrTooManyAddrs", n.Path, err)
			}
		}
	}

	f := newProcFixture(t)
	var warned [][]string
	f.ctl.log = slog.New(hookHandler{func(msg string, r slog.Record) {
		r.Attrs(func(at slog.Attr) bool {
			if r.Level == slog.LevelWarn && at.Key == "netns" {
				if paths, ok := at.Value.Any().([]string); ok {
					warned = append(warned, paths)
				}
			}
			return true
		})
	}})
	f.source([]model.Namespace{ambientNS}, pod("web", web, nil), pod("api", api, nil), pod("db", db, nil))
	if p := f.pods.Get("shop", "web"); p.Attachment != nil {
		t.Errorf("web adopted as %+v, through a namespace of 302 addresses", p.Attachment)
	}
	if p := f.pods.Get("shop", "api"); p.Attachment == nil || p.Attachment.NetnsPath != apiPath {
		t.Errorf("api's attachment %+v, want adopted through its own namespace, %s", p.Attachment, apiPath)
	}
	if p := f.pods.Get("shop", "db"); p.Attachment == nil || p.Attachment.NetnsPath != dbPath {
		t.Errorf("db's attachment %+v, want adopted through its own namespace, %s", p.Attachment, dbPath)
	}
	// web's IP is held by none of the node's namespaces left, so the other
	// user namespace's addresses are read too.
	for _, path := range []string{flooded, usernsPath} {
		if !slices.ContainsFunc(warned, func(paths []string) bool { return slices.Contains(paths, path) }) {
			t.Errorf("warnings named namespaces %v, want %s among them", warned, path)
		}
	}
}

// TestRecordedPodCannotBlockAnothersAdoption: any pod may add another pod's
// IP to its own network namespace. Once it is recorded (captured) its
// namespace is its own, and names no other pod: the pod whose IP it took
// is still adopted, through its own namespace.
func TestRecordedPodCannotBlockAnothersAdoption(t *testing.T) {
	testenv.RequireRoot(t)
	web, api := "203.0.113.85", "203.0.113.86"
	hostile := testenv.NewNetns(t, testenv.UniqueName("ztcap-"))
	webPath := startIn(t, hostile, addrBatch(0, web))
	f := newProcFixture(t)
	f.source([]model.Namespace{ambientNS}, pod("web", web, nil))
	if p := f.pods.Get("shop", "web"); p.Attachment == nil || p.Attachment.NetnsPath != webPath {
		t.Fatalf("web's attachment %+v, want adopted through %s", p.Attachment, webPath)
	}

	// web, captured, takes api's IP too; then api shows up.
	if out, err := exec.Command("ip", "-n", hostile.Name, "addr", "add", api+"/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("ip addr add: %v\n%s", err, out)
	}
	apiPath := startIn(t, testenv.NewNetns(t, testenv.UniqueName("ztcap-")), addrBatch(0, api))
	f.source([]model.Namespace{ambientNS}, pod("web", web, nil), pod("api", api, nil))
	if p := f.pods.Get("shop", "api"); p.Attachment == nil || p.Attachment.NetnsPath != apiPath {
		t.Errorf("api's attachment %+v, want adopted through its own namespace, %s", p.Attachment, apiPath)
	}
}

// TestProcNamespacesScanLooksIntoEachNamespaceOnce: looking into a
// namespace costs about half a millisecond (setns, a socket, a netlink
// dump), and a dense node runs thousands of processes in a few hundred
// namespaces. A scan looks into each namespace once however many
// processes share it, through its lowest PID, and into a known one not at
// all: that one it lists in Known, by path and ID.
func TestProcNamespacesScanLooksIntoEachNamespaceOnce(t *testing.T) {
	testenv.RequireRoot(t)
	n := testenv.NewNetns(t, testenv.UniqueName("ztcap-"))
	if out, err := exec.Command("ip", "-n", n.Name, "addr", "add", "203.0.113.87/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("ip addr add: %v\n%s", err, out)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var procs []string
	for range 4 {
		cmd := n.Command(ctx, nil, "sleep", "600")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cancel(); _ = cmd.Wait() })
		n.WaitIn(t, cmd.Process.Pid)
		procs = append(procs, pathOf(cmd))
	}
	slices.SortFunc(procs, func(a, b string) int { return pidOf(a) - pidOf(b) })
	podNs, _ := nsIDOf(n.Path())
	own, _ := nsIDOf("/proc/self/ns/net")

	var looked []string
	scanner := ProcNamespaces{inspected: func(path string) { looked = append(looked, path) }}
	res, err := scanner.Scan(nil)
	if err != nil {
		t.Fatal(err)
	}
	// Looked into, by namespace: the processes' paths are read again now
	// (one that exited since counts for none).
	times := map[NsID]int{}
	for _, path := range looked {
		if ns, ok := nsIDOf(path); ok {
			times[ns]++
		}
	}
	if times[podNs] != 1 || times[own] != 1 {
		t.Errorf("the pod's namespace (4 processes) was looked into %d times, the test's own %d times; want once each", times[podNs], times[own])
	}
	found := slices.IndexFunc(res.Found, func(f Netns) bool { return f.ID == podNs })
	if found < 0 || res.Found[found].Path != procs[0] {
		t.Errorf("scan found %+v, want the pod's namespace through the lowest PID, %s", res.Found, procs[0])
	}

	looked = nil
	res, err = scanner.Scan(map[NsID]bool{podNs: true})
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(looked, procs[0]) || slices.ContainsFunc(res.Found, func(f Netns) bool { return f.ID == podNs }) {
		t.Errorf("a scan that knows the pod's namespace looked into it (%v) or found it (%+v)", looked, res.Found)
	}
	if want := []Netns{{Path: procs[0], ID: podNs}}; !reflect.DeepEqual(res.Known, want) {
		t.Errorf("scan's known namespaces %+v, want %+v", res.Known, want)
	}
}

// pidOf is the PID of a /proc/PID/ns/net path.
func pidOf(path string) int {
	pid, _ := strconv.Atoi(strings.Split(path, "/")[2])
	return pid
}
