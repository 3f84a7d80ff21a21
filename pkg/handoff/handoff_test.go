//go:build linux

package handoff

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/testenv"
)

// TestTakeOverClosesWhatItRefuses: a hand-over that fails part-way (a
// socket described as something it cannot adopt, ahead of good ones)
// leaves no received descriptor open in the successor.
func TestTakeOverClosesWhatItRefuses(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "ztdns.sock")
	ln, err := Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var (
		descs []SocketDesc
		conns []*net.UDPConn
	)
	for i := range 3 {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
		descs = append(descs, SocketDesc{Network: "udp", Addr: c.LocalAddr().String()})
		if i == 0 {
			descs[i].Network = "sctp"
		}
	}
	sockets := func() ([]SocketDesc, []*os.File, error) { // offerOnce closes the files
		var files []*os.File
		for _, c := range conns {
			f, err := c.File()
			if err != nil {
				CloseAll(files)
				return nil, nil, err
			}
			files = append(files, f)
		}
		return descs, files, nil
	}
	before := testenv.OpenFDs(t, os.Getpid())
	offered := offerInBackground(t, ln, sockets, "a failed takeover")
	in, err := TakeOver(socket, Identity(""), 0, Timeouts{}, slog.New(slog.DiscardHandler))
	if err == nil || in != nil {
		t.Fatalf("TakeOver = %v, %v; want an error", in, err)
	}
	<-offered
	if after := testenv.OpenFDs(t, os.Getpid()); after != before {
		t.Errorf("%d descriptors open after a failed takeover, %d before", after, before)
	}
}

// TestParseRightsClosesOnError: descriptors the kernel installed in a
// control message that does not parse are closed.
func TestParseRightsClosesOnError(t *testing.T) {
	fds := make([]int, 2)
	for i := range fds {
		var err error
		if fds[i], err = unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			t.Fatal(err)
		}
	}
	defer unix.Close(fds[1])
	bad := unix.UnixRights(fds[1])
	(*unix.Cmsghdr)(unsafe.Pointer(&bad[0])).SetLen(len(bad) + 64) // longer than what follows
	if files, err := parseRights(append(unix.UnixRights(fds[0]), bad...)); err == nil {
		CloseAll(files)
		t.Fatal("parseRights accepted a malformed message")
	}
	if _, err := unix.FcntlInt(uintptr(fds[0]), unix.F_GETFD, 0); err != unix.EBADF {
		unix.Close(fds[0])
		t.Errorf("the descriptor of the well-formed message is still open (F_GETFD: %v)", err)
	}
}

// TestTakeOverSetsTheSyncDeadline: the successor's wait for its first
// table ends Timeouts.SyncWait after it asked for the sockets, whatever it
// does before it starts waiting (loading the capture programs), so before
// the old agent, whose wait for "serving" starts once it has sent them and
// lasts Timeouts.Step longer, gives up. (Before: the successor waited
// SyncWait from when it began to wait; capture that took longer than Step
// to start had the old agent give up first, and the successor fail at
// "released".)
func TestTakeOverSetsTheSyncDeadline(t *testing.T) {
	socket, ln, sockets := handoffWithOneSocket(t)
	offered := offerInBackground(t, ln, sockets, "an abandoned takeover")
	before := time.Now()
	in, err := TakeOver(socket, Identity(""), 0, Timeouts{}, slog.New(slog.DiscardHandler))
	after := time.Now()
	if err != nil || in == nil {
		t.Fatalf("TakeOver = %v, %v", in, err)
	}
	in.Abandon()
	<-offered
	if in.SyncBy.Before(before.Add(DefaultSyncWait)) || in.SyncBy.After(after.Add(DefaultSyncWait)) {
		t.Errorf("the wait for a table ends at %v, want DefaultSyncWait after asking, between %v and %v",
			in.SyncBy, before.Add(DefaultSyncWait), after.Add(DefaultSyncWait))
	}
}

// handoffWithOneSocket listens at the hand-off path of a control socket
// in a temporary directory, as a running agent does, and returns that
// socket's path, the listener and a sockets function offering one UDP
// socket on 127.0.0.1 (offerOnce closes the files it returns). Both are
// closed when the test ends.
func handoffWithOneSocket(t *testing.T) (socket string, ln *net.UnixListener, sockets func() ([]SocketDesc, []*os.File, error)) {
	t.Helper()
	socket = filepath.Join(t.TempDir(), "ztdns.sock")
	ln, err := Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return socket, ln, func() ([]SocketDesc, []*os.File, error) {
		f, err := c.File()
		if err != nil {
			return nil, nil, err
		}
		return []SocketDesc{{Network: "udp", Addr: c.LocalAddr().String()}}, []*os.File{f}, nil
	}
}

// offerInBackground runs one exchange of a predecessor on ln, with these
// sockets, in a goroutine, and closes the channel it returns when the
// exchange is over. The predecessor must never stop: the exchange is one
// that does not complete (why says which).
func offerInBackground(t *testing.T, ln *net.UnixListener, sockets func() ([]SocketDesc, []*os.File, error), why string) <-chan struct{} {
	t.Helper()
	offered := make(chan struct{})
	go func() {
		defer close(offered)
		c, err := ln.AcceptUnix()
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		offerOnce(c, Identities{}, Timeouts{}, sockets, func(bool) {}, func(bool) { t.Error("stopped for " + why) })
	}()
	return offered
}

// TestHandoffWithOlderAgents: a running agent from before generations
// ignores "takeover2 ID generation=N" and closes the connection, one from
// before the control socket's hand-over ignores "takeover ID" too, and
// one from before identities "sockets ID" as well: a new agent asks again
// as each understands, and takes the sockets over (from the latter two
// without the control socket and without holding the connection). And a successor from
// before either, asking as it does, is sent what it can read: without the
// control socket's listener, which it could not adopt (and would fail the
// hand-over on), and for a bare "sockets", the bare list.
func TestHandoffWithOlderAgents(t *testing.T) {
	for _, tc := range []struct {
		name       string
		generation uint64   // the new agent's
		ignored    []string // the greetings it closes the connection on
		held       bool     // answered "takeover": the connection is held
	}{
		{"running agent from before generations", 2, []string{"takeover2 pod/new generation=2\n"}, true},
		{"running agent from before the control socket's hand-over", 2, []string{"takeover2 pod/new generation=2\n", "takeover pod/new\n"}, false},
		{"running agent from before identities", 0, []string{"takeover pod/new\n", "sockets pod/new\n"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			socket, ln, sockets := handoffWithOneSocket(t)
			greetings := make(chan string, len(tc.ignored))
			exchanges := make(chan (<-chan struct{}), 1)
			go func() { // the old agent ignores what it does not know, as it did
				defer close(exchanges)
				for i := range tc.ignored {
					c, err := ln.AcceptUnix()
					if err != nil {
						t.Error(err)
						return
					}
					line, _ := bufio.NewReader(c).ReadString('\n')
					greetings <- line
					if i == len(tc.ignored)-1 {
						// The next connection, not this one (whichever
						// accepts first takes it), is answered as it was.
						exchanges <- offerInBackground(t, ln, sockets, "an abandoned takeover")
					}
					c.Close()
				}
			}()
			in, err := TakeOver(socket, "pod/new", tc.generation, Timeouts{}, slog.New(slog.DiscardHandler))
			if err != nil || in == nil {
				t.Fatalf("TakeOver = %v, %v", in, err)
			}
			for _, want := range tc.ignored {
				if got := <-greetings; got != want {
					t.Errorf("asked with %q, want %q", got, want)
				}
			}
			offered, ok := <-exchanges
			if !ok {
				t.FailNow() // the old agent failed to accept (reported)
			}
			if len(in.UDP) != 1 || in.From != "" || in.Control != nil || in.held != tc.held {
				t.Errorf("adopted %d UDP addresses from %q, a control socket: %v, holding the connection: %v; want one, from an agent without identity, no control socket, holding it: %v",
					len(in.UDP), in.From, in.Control != nil, in.held, tc.held)
			}
			in.Abandon()
			<-offered
		})
	}
	for _, tc := range []struct {
		name, greeting string
	}{
		{"successor from before the control socket's hand-over", "sockets pod/old\n"},
		{"successor from before identities", "sockets\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			socket, ln, sockets := handoffWithOneSocket(t)
			ctl, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "control.sock"), Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			defer ctl.Close()
			withControl := func() ([]SocketDesc, []*os.File, error) {
				descs, files, err := sockets()
				if err != nil {
					return nil, nil, err
				}
				f, err := ctl.File()
				if err != nil {
					CloseAll(files)
					return nil, nil, err
				}
				return append(descs, SocketDesc{Network: "control", Addr: ctl.Addr().String()}), append(files, f), nil
			}
			offered := offerInBackground(t, ln, withControl, "an abandoned takeover")
			conn, err := net.Dial("unix", Path(socket))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			payload, files, err := greet(conn.(*net.UnixConn), tc.greeting)
			if err != nil {
				t.Fatal(err)
			}
			CloseAll(files)
			var descs []SocketDesc
			if tc.greeting == "sockets\n" {
				err = json.Unmarshal(payload, &descs)
			} else {
				var reply offerReply
				err = json.Unmarshal(payload, &reply)
				descs = reply.Sockets
			}
			if err != nil || len(descs) != 1 || descs[0].Network != "udp" || len(files) != 1 {
				t.Errorf("asking with %q got %q with %d sockets (%v); want the UDP socket alone", tc.greeting, payload, len(files), err)
			}
			conn.Close()
			<-offered
		})
	}
}

// TestHandoffByGeneration: a running agent of pod template generation 2
// refuses a successor that tells a lower one, saying so and sending no
// socket, and hands over to one of the same or a higher generation, and
// to one that tells none (a release from before generations, as a
// rollback to it brings; or outside Kubernetes); one without a generation
// refuses no generation. A greeting whose generation does not parse is no
// greeting, and fields it does not know are ignored.
func TestHandoffByGeneration(t *testing.T) {
	for _, tc := range []struct {
		name     string
		running  uint64 // the running agent's generation
		greeting string
		want     string // "refused", "offered" or "ignored"
	}{
		{"lower generation", 2, "takeover2 pod/old generation=1\n", "refused"},
		{"same generation", 2, "takeover2 pod/same generation=2\n", "offered"},
		{"higher generation", 2, "takeover2 pod/rollback generation=3\n", "offered"},
		{"a later agent's field", 2, "takeover2 pod/later generation=3 colour=blue\n", "offered"},
		{"no generation told", 2, "takeover pod/before\n", "offered"},
		{"running agent without a generation", 0, "takeover2 pod/old generation=1\n", "offered"},
		{"generation 0", 2, "takeover2 pod/old generation=0\n", "ignored"},
		{"generation not a number", 2, "takeover2 pod/old generation=one\n", "ignored"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			socket, ln, sockets := handoffWithOneSocket(t)
			result := make(chan error, 1)
			go func() {
				c, err := ln.AcceptUnix()
				if err != nil {
					result <- err
					return
				}
				defer c.Close()
				ids := Identities{Self: "pod/running", Generation: tc.running}
				_, err = offerOnce(c, ids, Timeouts{}, sockets, func(bool) {}, func(bool) { t.Error("stopped: the exchange never completes") })
				result <- err
			}()
			conn, err := net.Dial("unix", Path(socket))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			payload, files, err := greet(conn.(*net.UnixConn), tc.greeting)
			CloseAll(files)
			var reply offerReply
			got := "ignored" // closed without a word
			if err == nil {
				if err := json.Unmarshal(payload, &reply); err != nil {
					t.Fatalf("answer %q: %v", payload, err)
				}
				got = "offered"
				if reply.Refused != "" {
					got = "refused"
				}
			}
			conn.Close()
			offerErr := <-result
			if got != tc.want {
				t.Fatalf("%q to an agent of generation %d: %s (answer %q, offerOnce: %v), want %s", tc.greeting, tc.running, got, payload, offerErr, tc.want)
			}
			switch got {
			case "refused":
				if len(files) != 0 || reply.Generation != tc.running || !strings.Contains(reply.Refused, "generation 1, below pod/running's 2") {
					t.Errorf("refused with %d sockets, generation %d, %q; want none, %d, and why", len(files), reply.Generation, reply.Refused, tc.running)
				}
				var older *olderSuccessor
				if !errors.As(offerErr, &older) || !errors.Is(offerErr, ErrRefusedOlder) || older.generation != 1 {
					t.Errorf("offerOnce: %v; want the successor's generation refused", offerErr)
				}
			case "offered":
				if len(files) != 1 || reply.Generation != tc.running {
					t.Errorf("offered %d sockets, telling generation %d; want 1 and %d", len(files), reply.Generation, tc.running)
				}
			}
		})
	}
}

// askSockets asks the agent at the other end of c for its sockets as a
// successor from before identities does ("sockets\n"), and returns the
// list it answers and the descriptors that came with it.
func askSockets(c *net.UnixConn) ([]byte, []*os.File, error) { return greet(c, "sockets\n") }

// greet asks the agent at the other end of c for its sockets with greeting,
// and returns its answer and the descriptors that came with it.
func greet(c *net.UnixConn, greeting string) ([]byte, []*os.File, error) {
	if _, err := c.Write([]byte(greeting)); err != nil {
		return nil, nil, err
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf, oob := make([]byte, 64<<10), make([]byte, unix.CmsgSpace(MaxFDsPerMessage*4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil { // nothing came (n is -1)
		return nil, nil, err
	}
	files, err := parseRights(oob[:oobn])
	return buf[:n], files, err
}

// TestValidPodUID: a pod UID goes on the hand-over's line as "pod/UID",
// at most maxIdentityLen bytes; none (outside Kubernetes) is fine.
func TestValidPodUID(t *testing.T) {
	for _, tc := range []struct {
		name, uid string
		ok        bool
	}{
		{"none", "", true},
		{"a pod's UID", "0d1f0000-0000-4000-8000-000000000001", true},
		{"longest", strings.Repeat("a", maxIdentityLen-len("pod/")), true},
		{"a byte too long", strings.Repeat("a", maxIdentityLen-len("pod/")+1), false},
		{"a space", "0d1f0000 0000", false},
		{"a control character", "0d1f\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := ValidPodUID(tc.uid); (err == nil) != tc.ok {
				t.Errorf("ValidPodUID(%q) = %v, want ok %v", tc.uid, err, tc.ok)
			}
		})
	}
}

// TestTakeoverRecord: the record of whom an agent took over from names
// the predecessor to the agent that wrote it (its pod's restarted agent),
// and nobody to another agent; a later take-over replaces it. A record
// that is not a small regular file of the agent's JSON counts as none,
// and is logged.
func TestTakeoverRecord(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "ztdns.sock")
	path := predecessorPath(socket)
	nolog := slog.New(slog.DiscardHandler)
	if got := RecordedPredecessor(socket, "pod/b", nolog); got != "" {
		t.Errorf("with no record: predecessor %q, want none", got)
	}
	if err := RecordPredecessor(socket, "pod/b", "pod/a"); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode() != 0o600 {
		t.Errorf("the record: %v %v, want a regular file, mode 0600", fi, err)
	}
	if _, err := os.Lstat(path + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the temporary file is left: %v", err)
	}
	for _, tc := range []struct{ self, want string }{{"pod/b", "pod/a"}, {"pod/a", ""}, {"pod/c", ""}} {
		if got := RecordedPredecessor(socket, tc.self, nolog); got != tc.want {
			t.Errorf("B took over from A; read by %s: predecessor %q, want %q", tc.self, got, tc.want)
		}
	}
	if err := RecordPredecessor(socket, "pod/c", "pod/b"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ self, want string }{{"pod/b", ""}, {"pod/c", "pod/b"}} {
		if got := RecordedPredecessor(socket, tc.self, nolog); got != tc.want {
			t.Errorf("C took over from B; read by %s: predecessor %q, want %q", tc.self, got, tc.want)
		}
	}

	valid := `{"agent":"pod/b","predecessor":"pod/a"}`
	for _, tc := range []struct {
		name  string
		plant func(path string) error
	}{
		{"not JSON", func(p string) error { return os.WriteFile(p, []byte("pod/b took over from pod/a\n"), 0o600) }},
		{"too long", func(p string) error {
			return os.WriteFile(p, []byte(valid+strings.Repeat(" ", maxTakeoverRecord)), 0o600)
		}},
		{"no agent", func(p string) error { return os.WriteFile(p, []byte(`{"predecessor":"pod/a"}`), 0o600) }},
		{"a space in the predecessor", func(p string) error {
			return os.WriteFile(p, []byte(`{"agent":"pod/b","predecessor":"pod/a pod/x"}`), 0o600)
		}},
		{"a directory", func(p string) error { return os.Mkdir(p, 0o700) }},
		{"a FIFO", func(p string) error { return unix.Mkfifo(p, 0o600) }},
		{"a symbolic link", func(p string) error {
			target := filepath.Join(t.TempDir(), "record")
			if err := os.WriteFile(target, []byte(valid), 0o600); err != nil {
				return err
			}
			return os.Symlink(target, p)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			socket := filepath.Join(t.TempDir(), "ztdns.sock")
			if err := tc.plant(predecessorPath(socket)); err != nil {
				t.Fatal(err)
			}
			var log testenv.Log
			if got := RecordedPredecessor(socket, "pod/b", slog.New(slog.NewTextHandler(&log, nil))); got != "" {
				t.Errorf("predecessor %q, want none", got)
			}
			if !log.Contains("ignoring the unreadable record") {
				t.Errorf("nothing logged: %q", log.String())
			}
		})
	}
}

// TestHandoffEndedByStop: an agent stopped while a successor holds its
// sockets but has not said "serving" ends the exchange at once, and keeps
// what it has (it never ran stop). (Before: the exchange waited out its
// deadline, Timeouts.SyncWait and more, and the agent's stop gave up on it.)
func TestHandoffEndedByStop(t *testing.T) {
	testenv.RequireRoot(t)
	socket := filepath.Join(t.TempDir(), "ztdns.sock")
	ln, err := Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	context.AfterFunc(ctx, func() { ln.Close() }) // as the agent does
	var stopped atomic.Bool
	done := make(chan error, 1)
	go func() {
		_, err := Offer(ctx, ln, slog.New(slog.DiscardHandler), Identities{}, Timeouts{}, func() ([]SocketDesc, []*os.File, error) {
			f, err := udp.File()
			return []SocketDesc{{Network: "udp", Addr: udp.LocalAddr().String()}}, []*os.File{f}, err
		}, func(bool) {}, func(bool) { stopped.Store(true) })
		done <- err
	}()

	// A successor that takes the sockets and then never says "serving".
	c, err := net.Dial("unix", Path(socket))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, files, err := askSockets(c.(*net.UnixConn))
	CloseAll(files)
	if err != nil || len(files) != 1 {
		t.Fatalf("received %d sockets: %v", len(files), err)
	}

	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second): // the exchange's own deadline is DefaultSyncWait+DefaultStep
		t.Fatal("the stopped agent is still waiting for its successor's \"serving\"")
	}
	if stopped.Load() {
		t.Error("the agent stopped serving without a successor that serves")
	}
}
