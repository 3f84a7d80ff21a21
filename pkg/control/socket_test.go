//go:build linux

package control_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/control"
)

// The tests here run pkg/control's real server on a real unix socket, with
// callers that are real processes (some of them not root), against an API
// that records what reaches it.

func TestMain(m *testing.M) {
	testenv.RunHelper() // the control client ControlCallAsUser runs
	os.Exit(m.Run())
}

// testAdd is a valid CNI ADD.
var testAdd = control.CNIAddRequest{ContainerID: "c", Netns: "/run/netns/p", PodNamespace: "ns", PodName: "p", NetnsCookie: 7, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}

// recorder is an API that counts what reaches it.
type recorder struct {
	mu    sync.Mutex
	calls []string
	table []control.TableRow // what Table answers
	// rows, when set, answers Table in place of table.
	rows func(ctx context.Context, ns string) iter.Seq[control.TableRow]
	// statusGate, when set, holds each Status call until it can receive
	// from it (or it is closed).
	statusGate chan struct{}
}

func (r *recorder) record(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, s)
}

func (r *recorder) seen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.calls...)
}

func (r *recorder) Status() control.Status {
	r.record("status")
	r.mu.Lock()
	gate := r.statusGate
	r.mu.Unlock()
	if gate != nil {
		<-gate
	}
	return control.Status{Ready: true}
}
func (r *recorder) Pods() ([]control.PodRow, error)         { r.record("pods"); return nil, nil }
func (r *recorder) CaptureDel(control.CaptureRequest) error { r.record("capture del"); return nil }
func (r *recorder) CNIDel(control.CNIDelRequest) error      { r.record("cni del"); return nil }
func (r *recorder) Table(ctx context.Context, ns string) (iter.Seq[control.TableRow], error) {
	r.record("table")
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.rows != nil {
		return r.rows(ctx, ns), nil
	}
	return slices.Values(r.table), nil
}
func (r *recorder) CaptureAdd(req control.CaptureRequest) (control.PodRow, error) {
	r.record("capture add")
	return control.PodRow{Namespace: "default", Name: req.Netns}, nil
}
func (r *recorder) CNIAdd(control.CNIAddRequest) (control.CNIAddResponse, error) {
	r.record("cni add")
	return control.CNIAddResponse{}, nil
}
func (r *recorder) SetAccessLog(req control.AccessLogRequest) (control.AccessLog, error) {
	r.record("access log")
	return control.AccessLog{On: req.On, Sample: req.Sample}, nil
}

// server is a control socket served for one test. The tests do not run in
// parallel: they read the package's metrics.
type server struct {
	socket string
	ln     net.Listener // the listener's own counts: control.StatsOf
	api    *recorder
	log    *testenv.Log
	// stop stops serving and returns Serve's error once it has returned;
	// the test's end calls it too.
	stop func() error
}

// serve listens on a socket in a new directory under /tmp (a unix socket
// path must be short) and serves a recorder until the test ends.
func serve(t testing.TB, access control.Access) *server {
	t.Helper()
	testenv.RequireRoot(t)
	dir := testenv.MkdirTemp(t, "ztctl-") // short: a socket path has 108 bytes
	chmod(t, dir, 0o755)                  // MkdirTemp's 0700 would keep every other user out
	s := &server{socket: filepath.Join(dir, "run", "ztdns.sock"), api: &recorder{}, log: &testenv.Log{}}
	access.Logger = slog.New(slog.NewTextHandler(s.log, nil))
	ln, err := control.Listen(s.socket, access)
	if err != nil {
		t.Fatal(err)
	}
	s.ln = ln
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- control.Serve(ctx, ln, control.NewHandler(s.api, access.Logger)) }()
	s.stop = sync.OnceValue(func() error { cancel(); return <-done })
	t.Cleanup(func() {
		if err := s.stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return s
}

func mode(t *testing.T, path string) (os.FileMode, uint32, uint32) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fi.Mode().Perm(), st.Uid, st.Gid
}

// TestSocketModes: the directory the agent creates is root's alone (0700),
// the socket 0600; with a socket group, 0750 and 0660 with that group.
func TestSocketModes(t *testing.T) {
	for _, tc := range []struct {
		name           string
		group          int
		dirMode, sMode os.FileMode
	}{
		{"root only", 0, 0o700, 0o600},
		{"with a socket group", 65533, 0o750, 0o660},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := serve(t, control.Access{Group: tc.group})
			if m, uid, gid := mode(t, filepath.Dir(s.socket)); m != tc.dirMode || uid != 0 || gid != uint32(tc.group) {
				t.Errorf("directory %s %d:%d, want %s 0:%d", m, uid, gid, tc.dirMode, tc.group)
			}
			if m, uid, gid := mode(t, s.socket); m != tc.sMode || uid != 0 || gid != uint32(tc.group) {
				t.Errorf("socket %s %d:%d, want %s 0:%d", m, uid, gid, tc.sMode, tc.group)
			}
		})
	}
}

// TestSocketGroupSetBesideARecordSetAside: the agent's own directory, made
// by an agent without a socket group, gets the group's mode when a later
// agent has one, also once it holds an unreadable record of captured pods
// set aside (attachments.json.corrupt-TIME): that file is the agent's own,
// not a sign the directory is shared (before: the mode stayed 0700, and the
// group's members could not reach the socket).
func TestSocketGroupSetBesideARecordSetAside(t *testing.T) {
	testenv.RequireRoot(t)
	dir := testenv.MkdirTemp(t, "ztctl-")
	chmod(t, dir, 0o755)
	socket := filepath.Join(dir, "run", "ztdns.sock")
	ln, err := control.Listen(socket, control.Access{})
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	aside := filepath.Join(dir, "run", "attachments.json.corrupt-20261205T230000Z")
	if err := os.WriteFile(aside, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	const group = 65533
	if err := control.PrepareDir(socket, control.Access{Group: group}); err != nil {
		t.Fatal(err)
	}
	if m, uid, gid := mode(t, filepath.Dir(socket)); m != 0o750 || uid != 0 || gid != group {
		t.Errorf("directory %s %d:%d, want -rwxr-x--- 0:%d", m, uid, gid, group)
	}
}

// TestRefusesSharedDirectories: a directory someone else owns or can write
// in (where a socket could be planted next to the agent's) is refused, and
// so is one below a directory others can write in without the sticky bit.
func TestRefusesSharedDirectories(t *testing.T) {
	testenv.RequireRoot(t)
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, dir string) string // returns the socket path
		want  string
	}{
		{"writable by others", func(t *testing.T, dir string) string {
			chmod(t, dir, 0o777)
			return filepath.Join(dir, "ztdns.sock")
		}, "is writable by others"},
		{"sticky and writable by others, like /tmp", func(t *testing.T, dir string) string {
			chmod(t, dir, os.ModeSticky|0o777)
			return filepath.Join(dir, "ztdns.sock")
		}, "is writable by others"},
		{"writable by its group", func(t *testing.T, dir string) string {
			chmod(t, dir, 0o770)
			return filepath.Join(dir, "ztdns.sock")
		}, "is writable by others"},
		{"owned by another user", func(t *testing.T, dir string) string {
			if err := os.Chown(dir, 65534, 0); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(dir, "ztdns.sock")
		}, "belongs to uid 65534, not root"},
		{"below a directory others can write in", func(t *testing.T, dir string) string {
			chmod(t, dir, 0o777)
			sub := filepath.Join(dir, "run")
			if err := os.Mkdir(sub, 0o700); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(sub, "ztdns.sock")
		}, "is writable by others"},
		// Before the agent first starts, a user links /tmp/ztdns to a
		// directory of root's: the directory passes, and the user can
		// re-point the link later, at one of their own.
		{"through a symbolic link another user owns", func(t *testing.T, dir string) string {
			chmod(t, dir, os.ModeSticky|0o777)
			link := filepath.Join(dir, "ztdns")
			symlink(t, rootDir(t, 0o700), link, 65534)
			return filepath.Join(link, "ztdns.sock")
		}, "is a symbolic link belonging to uid 65534, not root"},
		{"through a symbolic link another user owns, further up", func(t *testing.T, dir string) string {
			chmod(t, dir, os.ModeSticky|0o777)
			link := filepath.Join(dir, "run")
			symlink(t, rootDir(t, 0o755), link, 65534)
			return filepath.Join(link, "ztdns", "ztdns.sock")
		}, "is a symbolic link belonging to uid 65534, not root"},
		// Root's own link is no better where others can replace it.
		{"through root's symbolic link in a directory others can write in", func(t *testing.T, dir string) string {
			chmod(t, dir, 0o777)
			link := filepath.Join(dir, "ztdns")
			symlink(t, rootDir(t, 0o700), link, 0)
			return filepath.Join(link, "ztdns.sock")
		}, "is writable by others"},
		// l/.. is the parent of where the user's link l points, not dir:
		// taken textually, the path would pass as dir/z.
		{"through \"..\" after a symbolic link another user owns", func(t *testing.T, dir string) string {
			chmod(t, dir, os.ModeSticky|0o777)
			own := testenv.MkdirTemp(t, "ztctl-")
			chmod(t, own, 0o755)
			for _, d := range []string{own, filepath.Join(own, "home"), filepath.Join(own, "z")} {
				if d != own {
					if err := os.Mkdir(d, 0o755); err != nil {
						t.Fatal(err)
					}
				}
				if err := os.Chown(d, 65534, 65534); err != nil {
					t.Fatal(err)
				}
			}
			symlink(t, filepath.Join(own, "home"), filepath.Join(dir, "l"), 65534)
			if err := os.Mkdir(filepath.Join(dir, "z"), 0o700); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(dir, "l") + "/../z/ztdns.sock"
		}, `has a ".." component`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := testenv.MkdirTemp(t, "ztctl-")
			socket := tc.setup(t, dir)
			ln, err := control.Listen(socket, control.Access{})
			if err == nil {
				ln.Close()
				t.Fatalf("Listen in %s succeeded, want it refused", filepath.Dir(socket))
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Listen: %v, want %q", err, tc.want)
			}
			if _, err := os.Lstat(socket); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a socket was created at %s: %v", socket, err)
			}
			// The capture state kept there is refused the same way (the
			// directory as written: filepath.Dir would clean a "..").
			if err := control.PrepareStateDir(socket[:strings.LastIndex(socket, "/")]); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("PrepareStateDir: %v, want %q", err, tc.want)
			}
		})
	}
}

// TestRootsSymbolicLinkFollowed: a link root owns, in directories only root
// can write in, is followed, as /var/run -> ../run is on most hosts: the
// agent listens in the directory it leads to, made there 0700, and answers
// through the path as written.
func TestRootsSymbolicLinkFollowed(t *testing.T) {
	testenv.RequireRoot(t)
	dir := testenv.MkdirTemp(t, "ztctl-")
	chmod(t, dir, 0o755)
	for _, d := range []string{"run", "var"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	symlink(t, "../run", filepath.Join(dir, "var", "run"), 0)
	socket := filepath.Join(dir, "var", "run", "ztdns", "ztdns.sock")
	ln, err := control.Listen(socket, control.Access{})
	if err != nil {
		t.Fatalf("Listen through root's link: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- control.Serve(ctx, ln, control.NewHandler(&recorder{}, slog.Default())) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	if m, uid, _ := mode(t, filepath.Join(dir, "run", "ztdns")); m != 0o700 || uid != 0 {
		t.Errorf("directory %s uid %d, want 0700 uid 0", m, uid)
	}
	st, err := control.NewClient(socket, 5*time.Second).Status(context.Background())
	if err != nil || !st.Ready {
		t.Errorf("Status through the link: %+v, %v", st, err)
	}
}

// TestClientRefusesPlantedSocket: a socket another user listens on where
// the agent's should be (before the agent made its directory, say, or in a
// directory that user may write in) is not talked to: the client checks the
// listener with SO_PEERCRED, as the agent checks its callers.
func TestClientRefusesPlantedSocket(t *testing.T) {
	testenv.RequireRoot(t)
	dir := testenv.MkdirTemp(t, "ztctl-")
	chmod(t, dir, 0o777)
	socket := filepath.Join(dir, "ztdns.sock")
	testenv.ListenAsUser(t, testenv.Nobody, socket)
	st, err := control.NewClient(socket, 5*time.Second).Status(context.Background())
	if err == nil || !errors.Is(err, control.ErrUnreachable) || !strings.Contains(err.Error(), "uid 65534, not root") {
		t.Errorf("Status from uid 65534's socket: %+v, %v; want it refused as not root", st, err)
	}
}

// rootDir returns a new, empty directory of root's, of mode m, for a test's
// links to point at, and checks at the end that it was left alone: nothing
// created in it, its mode unchanged.
func rootDir(t *testing.T, m os.FileMode) string {
	t.Helper()
	dir := t.TempDir()
	chmod(t, dir, m)
	t.Cleanup(func() {
		if got, uid, _ := mode(t, dir); got != m || uid != 0 {
			t.Errorf("%s became %s uid %d, want %s uid 0 as it was", dir, got, uid, m)
		}
		if entries, err := os.ReadDir(dir); err != nil || len(entries) > 0 {
			t.Errorf("%s holds %v (%v), want it left empty", dir, entries, err)
		}
	})
	return dir
}

// symlink links link to target and gives the link to uid.
func symlink(t *testing.T, target, link string, uid int) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(link, uid, 0); err != nil {
		t.Fatal(err)
	}
}

func chmod(t testing.TB, path string, m os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, m); err != nil {
		t.Fatal(err)
	}
}

// TestUnprivilegedCallerRefused runs a client as uid 65534 with group 0:
// the socket's mode keeps it out, and when an operator loosens the mode by
// mistake, SO_PEERCRED still does, with a 403 saying why (before: the
// connection closed unserved, which the caller read as a reset, as from an
// agent that died). Nothing reaches the agent.
func TestUnprivilegedCallerRefused(t *testing.T) {
	s := serve(t, control.Access{})
	before := value(t, "ztdns_control_refused_connections_total")
	for _, op := range []string{testenv.CallStatus, testenv.CallCaptureAdd} {
		if out, ok := testenv.ControlCallAsUser(t, testenv.Nobody, s.socket, op, "/run/netns/x"); ok || !strings.Contains(out, "permission denied") {
			t.Errorf("%s as uid 65534 gid 0 with the socket 0600: ok=%v %q, want permission denied", op, ok, out)
		}
	}
	// A mistake: the directory and the socket opened to everyone.
	chmod(t, filepath.Dir(s.socket), 0o755)
	chmod(t, s.socket, 0o666)
	for _, op := range []string{testenv.CallStatus, testenv.CallCaptureAdd} {
		want := "the control socket is root's: uid 65534 may not call; run as root\n"
		if out, ok := testenv.ControlCallAsUser(t, testenv.Nobody, s.socket, op, "/run/netns/x"); ok || out != want {
			t.Errorf("%s as uid 65534 gid 0 with the socket 0666: ok=%v %q, want refused: %q", op, ok, out, want)
		}
	}
	if calls := s.api.seen(); len(calls) != 0 {
		t.Errorf("the agent was called %q by a caller that is not root", calls)
	}
	if got := value(t, "ztdns_control_refused_connections_total") - before; got < 2 {
		t.Errorf("ztdns_control_refused_connections_total went up by %v, want at least 2", got)
	}
	if !strings.Contains(s.log.String(), "refused a caller that is not root") || !strings.Contains(s.log.String(), "uid=65534") {
		t.Errorf("the refusal is not logged with the caller:\n%s", s.log)
	}
	// Root still gets in.
	if _, err := control.NewClient(s.socket, 5*time.Second).Status(context.Background()); err != nil {
		t.Errorf("root's status: %v", err)
	}
}

// TestSocketGroupMayOnlyRead: with --socket-group, a member (by its primary
// group, as SO_PEERCRED reports it) reads, and may not steer.
func TestSocketGroupMayOnlyRead(t *testing.T) {
	const group = 65533
	s := serve(t, control.Access{Group: group})
	member := syscall.Credential{Uid: 65534, Gid: group}
	if out, ok := testenv.ControlCallAsUser(t, member, s.socket, testenv.CallStatus, ""); !ok || !strings.Contains(out, "ready=true") {
		t.Errorf("status as a member of the socket group: ok=%v %q", ok, out)
	}
	if out, ok := testenv.ControlCallAsUser(t, member, s.socket, testenv.CallCaptureAdd, "/run/netns/x"); ok || !strings.Contains(out, "needs root") {
		t.Errorf("capture add as a member of the socket group: ok=%v %q, want refused: only root may", ok, out)
	}
	// Group 0 is not the socket group: the caller of the issue stays out.
	if out, ok := testenv.ControlCallAsUser(t, testenv.Nobody, s.socket, testenv.CallStatus, ""); ok {
		t.Errorf("status as uid 65534 gid 0: %q, want refused", out)
	}
	// A supplementary member: the socket's mode lets it connect, and
	// SO_PEERCRED tells only its primary group. Told so, with a 403, not
	// reset as from an agent that died.
	supplementary := syscall.Credential{Uid: 65534, Gid: 0, Groups: []uint32{group}}
	want := "the control socket is root's and group 65533's: uid 65534, of primary group 0, may not call. " +
		"The agent sees a caller's primary group only (SO_PEERCRED), not its supplementary ones: " +
		"run as root, or with 65533 as primary group (sg 65533 -c 'ztdns status')\n"
	if out, ok := testenv.ControlCallAsUser(t, supplementary, s.socket, testenv.CallStatus, ""); ok || out != want {
		t.Errorf("status as uid 65534 of supplementary group %d: ok=%v %q, want refused: %q", group, ok, out, want)
	}
	if calls := s.api.seen(); len(calls) != 1 || calls[0] != "status" {
		t.Errorf("the agent was called %q, want the member's status alone", calls)
	}
}

// TestRefusalsLoggedSparingly: a caller refused again and again gets a
// log line now and then, not one per refusal, so a socket-group member, or
// anyone a loosened mode lets in, cannot fill the node's logs. Every
// refusal is still counted.
func TestRefusalsLoggedSparingly(t *testing.T) {
	const group, tries = 65533, 12
	s := serve(t, control.Access{Group: group})
	member := syscall.Credential{Uid: 65534, Gid: group}
	for range tries {
		if out, ok := testenv.ControlCallAsUser(t, member, s.socket, testenv.CallCaptureAdd, "/run/netns/x"); ok || !strings.Contains(out, "needs root") {
			t.Fatalf("capture add as a member of the socket group: ok=%v %q, want refused: only root may", ok, out)
		}
	}
	// A mistake: the socket opened to everyone.
	chmod(t, filepath.Dir(s.socket), 0o755)
	chmod(t, s.socket, 0o666)
	before := value(t, "ztdns_control_refused_connections_total")
	for range tries {
		if out, ok := testenv.ControlCallAsUser(t, testenv.Nobody, s.socket, testenv.CallStatus, ""); ok {
			t.Fatalf("status as uid 65534 gid 0: %q, want refused", out)
		}
	}
	if got := value(t, "ztdns_control_refused_connections_total") - before; got < tries {
		t.Errorf("ztdns_control_refused_connections_total went up by %v, want at least %d", got, tries)
	}
	// A line every 10 s at most: the calls above take a few seconds, so
	// at most a few lines, however slow the machine.
	for _, msg := range []string{"refused a request that only root may make", "refused a caller that is not root"} {
		if n := strings.Count(s.log.String(), msg); n == 0 || n > tries/3 {
			t.Errorf("%d refusals gave %d log lines %q, want at least 1 and at most %d:\n%s", tries, n, msg, tries/3, s.log)
		}
	}
}

// TestOversizedRequest sends a body of 110 MB: the server answers 413 after
// reading little more than MaxRequestBytes, and the agent never sees it. A
// request with more IPs than MaxPodIPs is a 400.
func TestOversizedRequest(t *testing.T) {
	s := serve(t, control.Access{})
	status, sent := testenv.OversizedRequest(t, s.socket, control.RouteCNIAdd, 110<<20)
	if status != http.StatusRequestEntityTooLarge || sent >= 110<<20 {
		t.Errorf("a request of 110 MB: status %d after %d bytes, want 413 before the end", status, sent)
	}

	ips := make([]string, control.MaxPodIPs+1)
	for i := range ips {
		ips[i] = fmt.Sprintf("%q", fmt.Sprintf("10.0.0.%d", i+1))
	}
	body := `{"ContainerID":"c","Netns":"/run/netns/p","PodNamespace":"ns","PodName":"p","NetnsCookie":7,"IPs":[` + strings.Join(ips, ",") + `]}`
	if code := post(t, s.socket, control.RouteCNIAdd, body); code != http.StatusBadRequest {
		t.Errorf("an ADD with %d IPs: %d, want 400", len(ips), code)
	}
	if calls := s.api.seen(); len(calls) != 0 {
		t.Errorf("the agent was handed %q", calls)
	}
}

// TestSlowRequests opens many more connections than MaxConns, each sending
// half a request and then nothing: the server holds at most MaxConns of
// them, drops each (to make room, or after ReadTimeout), and answers a
// whole request sent after them at once, in the place of the oldest.
// (As many as root's queue holds: more, and those past it would be
// closed, their writes failing.)
func TestSlowRequests(t *testing.T) {
	s := serve(t, control.Access{})
	const slow = control.MaxQueued
	conns := testenv.HalfSentRequests(t, s.socket, control.RouteCNIAdd, slow)
	start := time.Now()
	st, err := control.NewClient(s.socket, 5*time.Second).Status(context.Background())
	if err != nil || !st.Ready {
		t.Fatalf("status behind %d half-sent requests: %+v, %v", slow, st, err)
	}
	t.Logf("status answered %v after %d half-sent requests", time.Since(start), slow)
	if open := control.StatsOf(s.ln).Open; open > control.MaxConns {
		t.Errorf("%v connections open, more than %d", open, control.MaxConns)
	}
	testenv.RequireClosedByPeer(t, conns, control.ReadTimeout+10*time.Second)
	if calls := s.api.seen(); len(calls) != 1 {
		t.Errorf("the agent was called %q, want the status alone", calls)
	}
}

// TestRootPastStalledMembers: a socket-group member opens MaxConns
// connections, asks each for a table far larger than the socket's buffer,
// and reads none of the answers. It holds MaxGroupConns connections, the
// rest are closed unserved, and root's CNI ADD is answered while the
// member's answers are still stuck. The member's connections are let go of
// well before writeTimeout (30 s), and members are served again.
func TestRootPastStalledMembers(t *testing.T) {
	const group = 65533
	s := serve(t, control.Access{Group: group})
	rows := make([]control.TableRow, 20000) // about 2 MB of JSON
	for i := range rows {
		rows[i] = control.TableRow{Name: fmt.Sprintf("svc-%d.ns.svc.cluster.local.", i), Type: "A", Values: []string{"10.96.0.1"}, Origin: "Service ns/svc"}
	}
	s.api.mu.Lock()
	s.api.table = rows
	s.api.mu.Unlock()
	member := syscall.Credential{Uid: 65534, Gid: group}

	testenv.StalledReadersAsUser(t, member, s.socket, control.RouteTable, control.MaxConns)
	testenv.Eventually(t, 20*time.Second, "the member's tables to be asked for", func() bool {
		return count(s.api.seen(), "table") >= control.MaxGroupConns
	})
	if _, err := control.NewClient(s.socket, 20*time.Second).CNIAdd(context.Background(), testAdd); err != nil {
		t.Fatalf("root's CNI ADD behind a member's %d stalled readers: %v", control.MaxConns, err)
	}
	// Root was answered while the member still held its connections, and it
	// held no more than its share (the server accepts in order: the
	// member's all came before root's).
	st := control.StatsOf(s.ln)
	if st.Open < control.MaxGroupConns {
		t.Errorf("%v connections open once root was answered, want the member's %d still stuck", st.Open, control.MaxGroupConns)
	}
	if closed := st.Evicted + st.TurnedAway; closed < control.MaxConns-control.MaxGroupConns {
		t.Errorf("%v of the member's %d connections closed for want of room, want at least %d", closed, control.MaxConns, control.MaxConns-control.MaxGroupConns)
	}

	// The member's stuck answers time out well before writeTimeout, and
	// members get in again.
	testenv.Eventually(t, 20*time.Second, "the member's connections to be let go of", func() bool {
		return control.StatsOf(s.ln).Open == 0
	})
	if out, ok := testenv.ControlCallAsUser(t, member, s.socket, testenv.CallStatus, ""); !ok || !strings.Contains(out, "ready=true") {
		t.Errorf("status as a member once the stalled readers are let go of: ok=%v %q", ok, out)
	}
}

// TestRootWokenByAnAnswerSent: MaxConns root connections each ask for the
// status, and every answer is held; a root connection past them waits for
// a slot. When one of the answers is sent, its connection (kept alive,
// open, idle) is the one that may be closed to make room, and the waiting
// root connection is served at once: nothing has to close first. (Were it
// woken only by a connection ending, it would wait until the answered one
// went idle for ReadTimeout, 5 s.)
func TestRootWokenByAnAnswerSent(t *testing.T) {
	s := serve(t, control.Access{})
	held, gate, _ := holdEverySlot(t, s, 1)

	// One connection more, root's: it waits, every slot being answered.
	last := ask(t, s.socket, control.RouteTable, 1)
	served := make(chan error, 1)
	go func() { served <- last.answer() }()
	// The listener holds it in its queue, so the server has not read it.
	testenv.Eventually(t, 10*time.Second, "the connection past every slot queued", func() bool { return control.StatsOf(s.ln).Queued == 1 })
	if calls := count(s.api.seen(), "table"); calls != 0 {
		t.Fatalf("the connection past %d being answered was served before any answer was sent", control.MaxConns)
	}

	// One answer is sent (to whichever of them); its connection stays
	// open.
	answered := make(chan error, len(held))
	for _, a := range held {
		go func() { answered <- a.answer() }()
	}
	gate <- struct{}{}
	select {
	case err := <-answered:
		if err != nil {
			t.Fatalf("the answer let through: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no answer 5 s after one was let through")
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("the waiting root connection: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the waiting root connection not served 30 s after an answer was sent")
	}
	// It took the answered connection's place: that one was closed to
	// make room, not by its client nor for being idle too long (ReadTimeout:
	// what waking only on a connection's end would have waited for).
	if got := control.StatsOf(s.ln).Evicted; got != 1 {
		t.Errorf("%v connections closed to make room, want the answered one", got)
	}
	if open := control.StatsOf(s.ln).Open; open != control.MaxConns {
		t.Errorf("%v connections open, want the %d others being answered and the new one", open, control.MaxConns-1)
	}
}

// asked is a request written on a connection of its own, its answers yet
// to be read.
type asked struct {
	conn net.Conn
	r    *bufio.Reader
	req  *http.Request
}

// ask opens a connection and writes route's request on it n times over,
// in one write (pipelined).
func ask(t *testing.T, socket string, route control.Route, n int) asked {
	t.Helper()
	c := dial(t, socket)
	req, _ := http.NewRequest(route.Method, "http://ztdns"+route.Path, nil)
	var b strings.Builder
	for range n {
		if err := req.Write(&b); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := io.WriteString(c, b.String()); err != nil {
		t.Fatal(err)
	}
	return asked{c, bufio.NewReader(c), req}
}

// answer reads the next answer: an error unless it is a 200.
func (a asked) answer() error {
	resp, err := http.ReadResponse(a.r, a.req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// holdEverySlot has root take every slot: MaxConns connections each ask
// for the status n times (in one write), and the agent holds every Status
// call until a send on gate lets one through, or release lets all (and
// those to come) through, as the test's end does. It returns once the
// first request of each connection is held.
func holdEverySlot(t *testing.T, s *server, n int) (held []asked, gate chan<- struct{}, release func()) {
	t.Helper()
	g := make(chan struct{})
	s.api.mu.Lock()
	s.api.statusGate = g
	s.api.mu.Unlock()
	var once sync.Once
	release = func() { once.Do(func() { close(g) }) }
	t.Cleanup(release) // before the server stops (cleanups run last first)
	for range control.MaxConns {
		held = append(held, ask(t, s.socket, control.RouteStatus, n))
	}
	testenv.Eventually(t, 10*time.Second, "every connection's status asked for", func() bool {
		return count(s.api.seen(), "status") == control.MaxConns
	})
	return held, g, release
}

func count(calls []string, call string) int {
	n := 0
	for _, c := range calls {
		if c == call {
			n++
		}
	}
	return n
}

func dial(t *testing.T, socket string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// post sends body to route over a fresh connection and returns the status.
func post(t *testing.T, socket string, route control.Route, body string) int {
	t.Helper()
	c := dial(t, socket)
	req, _ := http.NewRequest(route.Method, "http://ztdns"+route.Path, strings.NewReader(body))
	if err := req.Write(c); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// value returns the value of the control package's counter or gauge name.
func value(t *testing.T, name string) float64 {
	t.Helper()
	for _, c := range control.Collectors() {
		ch := make(chan prometheus.Metric, 16)
		c.Collect(ch)
		close(ch)
		for m := range ch {
			if !strings.Contains(m.Desc().String(), `"`+name+`"`) {
				continue
			}
			var out dto.Metric
			if err := m.Write(&out); err != nil {
				t.Fatal(err)
			}
			if out.Counter != nil {
				return out.Counter.GetValue()
			}
			return out.Gauge.GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestStateDirMade: a state directory of root's is made, 0750, and taken.
func TestStateDirMade(t *testing.T) {
	testenv.RequireRoot(t)
	dir := filepath.Join(t.TempDir(), "state")
	if err := control.PrepareStateDir(dir); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o750 {
		t.Errorf("state directory %v (%v), want mode 0750", fi.Mode(), err)
	}
}

// TestStormOfRootCalls: many more root callers than MaxConns call at once,
// as the CNI plugins of a Job's fan-out do. Every call is answered: none
// is cut to make room for another (a cut call is, to the plugin, an agent
// it cannot reach), they wait their turn.
func TestStormOfRootCalls(t *testing.T) {
	s := serve(t, control.Access{})
	const callers = 150
	errs := make(chan error, callers)
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			_, err := control.NewClient(s.socket, 20*time.Second).CNIAdd(context.Background(), testAdd)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("a CNI ADD of the storm: %v", err)
		}
	}
	if got := count(s.api.seen(), "cni add"); got != callers {
		t.Errorf("the agent was handed %d ADDs, want %d", got, callers)
	}
	if st := control.StatsOf(s.ln); st.Evicted != 0 || st.TurnedAway != 0 {
		t.Errorf("%d connections closed to make room and %d turned away, want none", st.Evicted, st.TurnedAway)
	}
}

// TestSilentConnectionsNotCut: root holds every connection open and sends
// nothing on any (a broken caller, or callers that have connected and not
// yet had the CPU to write). Root's next call waits for room instead of
// cutting one of them: it is answered once the server's header timeout
// (ReadTimeout) has closed them, and none was closed to make room.
func TestSilentConnectionsNotCut(t *testing.T) {
	s := serve(t, control.Access{})
	var silent []net.Conn
	for range control.MaxConns {
		silent = append(silent, dial(t, s.socket))
	}
	testenv.Eventually(t, 10*time.Second, "every silent connection admitted", func() bool {
		return control.StatsOf(s.ln).Open == control.MaxConns
	})
	start := time.Now()
	st, err := control.NewClient(s.socket, 20*time.Second).Status(context.Background())
	if err != nil || !st.Ready {
		t.Fatalf("status behind %d silent connections: %+v, %v", control.MaxConns, st, err)
	}
	stats := control.StatsOf(s.ln)
	// Whether it waited depends on how soon after the silent ones it came
	// (they time out ReadTimeout after they were taken): logged only.
	t.Logf("status answered %v after %d silent connections, having waited: %v", time.Since(start), control.MaxConns, stats.Waited == 1)
	if stats.Evicted != 0 || stats.TurnedAway != 0 {
		t.Errorf("%d connections closed to make room and %d turned away, want none", stats.Evicted, stats.TurnedAway)
	}
	testenv.RequireClosedByPeer(t, silent, 5*time.Second) // by the header timeout
	if calls := s.api.seen(); len(calls) != 1 || calls[0] != "status" {
		t.Errorf("the agent was called %q, want the status alone", calls)
	}
}

// TestRootPastMembersConnectFlood: every slot is root's, being answered,
// and root's next call waits for room; meanwhile a socket-group member
// connects thousands of times, more than the kernel's backlog holds. The
// member's connections are closed at once (it holds no slot and root's
// wait), none fails to connect for a full backlog, and root's calls, the
// one waiting and one made after the flood, are answered once room is
// made. (Were the listener to stop accepting while root's waited, the
// member's connects would fill the backlog, and root's next connect would
// fail at once with EAGAIN: an agent the CNI plugin cannot reach.)
func TestRootPastMembersConnectFlood(t *testing.T) {
	const group = 65533
	s := serve(t, control.Access{Group: group})
	_, _, open := holdEverySlot(t, s, 1)
	waited := control.StatsOf(s.ln).Waited
	calls := make(chan error, 2)
	go func() {
		_, err := control.NewClient(s.socket, 20*time.Second).Table(context.Background(), "")
		calls <- err
	}()
	testenv.Eventually(t, 10*time.Second, "root's table call to wait for room", func() bool {
		return control.StatsOf(s.ln).Waited > waited
	})

	backlog := 4096
	if b, err := os.ReadFile("/proc/sys/net/core/somaxconn"); err == nil {
		fmt.Sscan(string(b), &backlog)
	}
	member := syscall.Credential{Uid: 65534, Gid: group}
	if failed, first := testenv.ConnectFloodAsUser(t, member, s.socket, backlog+1000); failed != 0 {
		t.Errorf("%d of the member's %d connects failed (%s), want none: the backlog filled", failed, backlog+1000, first)
	}
	go func() {
		_, err := control.NewClient(s.socket, 20*time.Second).CNIAdd(context.Background(), testAdd)
		calls <- err
	}()
	testenv.Eventually(t, 10*time.Second, "root's ADD to wait for room (or fail)", func() bool {
		return control.StatsOf(s.ln).Waited > waited+1 || len(calls) > 0
	})
	open() // the held answers go out, and make room
	for range 2 {
		if err := <-calls; err != nil {
			t.Errorf("root's call past the member's flood: %v", err)
		}
	}
	if got := count(s.api.seen(), "cni add"); got != 1 {
		t.Errorf("the agent was handed %d ADDs, want root's", got)
	}
	if got := count(s.api.seen(), "table"); got != 1 {
		t.Errorf("the agent was asked for %d tables, want root's", got)
	}
}

// TestPipelinedRequestNotCut: every slot is root's, each connection having
// sent two status requests in one write, and root's callers wait for room.
// When a connection's first answer is sent, its second request is already
// in the server's hands (read along with the first): the connection is
// not closed for room then, and both its answers come. The callers waiting
// are served once connections are idle, waited on with nothing in.
func TestPipelinedRequestNotCut(t *testing.T) {
	s := serve(t, control.Access{})
	held, _, release := holdEverySlot(t, s, 2)
	const queued = 40
	calls := make(chan error, queued)
	for range queued {
		go func() {
			_, err := control.NewClient(s.socket, 20*time.Second).Table(context.Background(), "")
			calls <- err
		}()
	}
	testenv.Eventually(t, 10*time.Second, "root's callers to wait for room", func() bool {
		return control.StatsOf(s.ln).Queued == queued
	})
	release()
	for i, a := range held {
		for j := range 2 {
			if err := a.answer(); err != nil {
				t.Errorf("connection %d, answer %d of 2: %v", i, j+1, err)
			}
		}
	}
	for range queued {
		if err := <-calls; err != nil {
			t.Errorf("a root caller that waited for room: %v", err)
		}
	}
	if got := count(s.api.seen(), "status"); got != 2*control.MaxConns {
		t.Errorf("the agent answered %d statuses, want %d", got, 2*control.MaxConns)
	}
}
