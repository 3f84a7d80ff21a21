package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/pkg/control"
)

// A restart must not lose a query. Binding fresh sockets cannot promise
// that: datagrams queued in the old agent's socket die with it, and there is
// a moment when nobody is bound. So the new agent asks the old one for its
// listening sockets over a unix socket next to the control socket
// (SCM_RIGHTS), serves on duplicates of the very same sockets, and only then
// tells the old agent to stop reading. The kernel queue never goes away.
//
// The exchange, one line each way:
//
//	new → old: "sockets"
//	old → new: JSON list of {network, addr}, with the file descriptors attached
//	           (at most maxHandoffFDs; the rest follow in one-byte messages)
//	new → old: "serving"           (new reads from the sockets now)
//	old → new: "released"          (old stopped reading, closed its control socket)
//
// Both ends must be root (SO_PEERCRED): a process that planted a socket at
// the hand-off path would otherwise be handed the queries meant for the
// agent, or be sent its sockets. Anything else is refused and logged. (The
// socket directory is root's alone, see control.PrepareDir, so nobody else
// can plant one there in the first place.)
//
// From the successor's "sockets" on, the old agent reports not ready (it
// still serves): both share the probe port, which only the old agent serves
// until the successor has its table, and the successor's pod must not turn
// ready, and get the old pod deleted, before the handoff. An exchange that
// ends without "serving" makes it ready again: so does a successor with no
// table handoffSyncWait after asking, which gives up and exits (the kubelet
// restarts it, and it asks again).
//
// The old agent then stays up, idle and not ready, until it is told to stop:
// in a DaemonSet rolling update (maxSurge) the old pod is deleted once the new
// one is ready, and an old agent that exited by itself would be restarted by
// the kubelet and take the sockets back. Before "released" it closes its
// copies of the sockets and its hand-off listener: a successor that dies
// before listening at the path itself leaves a socket nobody accepts on, and
// the agent restarted in its place starts afresh.

// handoffTimeout bounds each step of the exchange (a variable: tests
// shorten it).
var handoffTimeout = 10 * time.Second

// handoffSyncWait bounds how long a successor waits for its first table
// before it gives the hand-over up and exits (a variable: tests shorten
// it). The running agent's table, however stale, beats none: a successor
// whose source cannot list a resource (RBAC) or reach the API server would
// otherwise answer every name from an empty table, and never beat, so
// every pod on the node would fail open.
var handoffSyncWait = 30 * time.Second

// maxHandoffFDs bounds the descriptors one message carries: Linux's
// SCM_MAX_FD. More (many --udp-sockets on many addresses) go in further
// messages of one byte each.
const maxHandoffFDs = 253

// errPeerNotRoot marks a process at the hand-off path that is not (or
// cannot be shown to be) root: nothing is taken from it, and a fresh start
// is right. Any other failure of takeOver is a running agent that did not
// hand its sockets over.
var errPeerNotRoot = errors.New("refused")

// handoffPath is where an agent offers its sockets to its successor.
func handoffPath(controlSocket string) string { return controlSocket + ".handoff" }

// socketDesc describes one handed-over descriptor.
type socketDesc struct {
	Network string `json:"network"` // "udp", "tcp", or "metrics" (the HTTP listener)
	Addr    string `json:"addr"`
}

// inherited holds what an old agent handed over.
type inherited struct {
	udp map[netip.AddrPort][]*net.UDPConn
	tcp map[netip.AddrPort]*net.TCPListener
	// metrics is the /metrics, /healthz, /readyz listener: in a DaemonSet
	// rolling update both pods live in the node's network namespace, and a
	// successor binding the port afresh would fail while its predecessor
	// holds it.
	metrics *net.TCPListener
	conn    *net.UnixConn
	r       *bufio.Reader
	// syncBy is when the successor gives up if it has no table yet:
	// handoffSyncWait from its asking, so before the old agent, whose
	// wait for "serving" starts later (once it has sent the sockets) and
	// lasts handoffTimeout longer, gives up. What the successor does
	// meanwhile (loading the capture programs) counts.
	syncBy time.Time
}

// takeOver asks a running agent for its sockets. It returns nil and no error
// when no agent answers, and an error (and nothing adopted) when the one
// that answers is not root (errPeerNotRoot) or the exchange fails.
func takeOver(controlSocket string, log *slog.Logger) (*inherited, error) {
	c, err := net.DialTimeout("unix", handoffPath(controlSocket), time.Second)
	if err != nil {
		return nil, nil // nobody to take over from
	}
	conn := c.(*net.UnixConn)
	if err := requireRoot(conn); err != nil {
		conn.Close()
		log.Warn("refusing the sockets offered at the hand-off path", "path", handoffPath(controlSocket), "err", err)
		return nil, fmt.Errorf("handoff: %w: %w", errPeerNotRoot, err)
	}
	asked := time.Now()
	conn.SetDeadline(asked.Add(handoffTimeout))
	if _, err := conn.Write([]byte("sockets\n")); err != nil {
		conn.Close()
		return nil, fmt.Errorf("handoff: %w", err)
	}
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(maxHandoffFDs*4))
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("handoff: reading sockets: %w", err)
	}
	files, err := parseRights(oob[:oobn])
	defer func() { closeAll(files) }() // adopt duplicates what it keeps
	if err != nil {
		conn.Close()
		return nil, err
	}
	var descs []socketDesc
	if err := json.Unmarshal(buf[:n], &descs); err != nil {
		conn.Close()
		return nil, fmt.Errorf("handoff: reading the sockets' descriptions: %w", err)
	}
	// Descriptors beyond one message's maxHandoffFDs follow, one byte each.
	for len(files) < len(descs) {
		_, oobn, _, _, err := conn.ReadMsgUnix(buf[:1], oob)
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("handoff: %d of %d sockets received: %w", len(files), len(descs), err)
		}
		more, err := parseRights(oob[:oobn])
		files = append(files, more...)
		if err == nil && len(more) == 0 {
			err = errors.New("a message without sockets")
		}
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("handoff: %d of %d sockets received: %w", len(files), len(descs), err)
		}
	}
	if len(descs) != len(files) {
		conn.Close()
		return nil, fmt.Errorf("handoff: %d descriptions for %d sockets", len(descs), len(files))
	}
	in := &inherited{udp: map[netip.AddrPort][]*net.UDPConn{}, tcp: map[netip.AddrPort]*net.TCPListener{}, conn: conn, r: bufio.NewReader(conn),
		syncBy: asked.Add(handoffSyncWait)}
	for i, d := range descs {
		addr, err := netip.ParseAddrPort(d.Addr)
		if err == nil {
			err = in.adopt(d.Network, addr, files[i])
		}
		if err != nil {
			in.closeSockets()
			conn.Close()
			return nil, fmt.Errorf("handoff: socket %s %s: %w", d.Network, d.Addr, err)
		}
	}
	return in, nil
}

func (in *inherited) adopt(network string, addr netip.AddrPort, f *os.File) error {
	switch network {
	case "udp":
		pc, err := net.FilePacketConn(f)
		if err != nil {
			return err
		}
		uc, ok := pc.(*net.UDPConn)
		if !ok {
			pc.Close()
			return errors.New("not a UDP socket")
		}
		in.udp[addr] = append(in.udp[addr], uc)
	case "tcp", "metrics":
		ln, err := net.FileListener(f)
		if err != nil {
			return err
		}
		tl, ok := ln.(*net.TCPListener)
		if !ok {
			ln.Close()
			return errors.New("not a TCP listener")
		}
		if network == "metrics" {
			in.metrics = tl
		} else {
			in.tcp[addr] = tl
		}
	default:
		return fmt.Errorf("unknown network %q", network)
	}
	return nil
}

// release tells the old agent we serve now and waits until it has stopped
// reading and let go of the control socket.
func (in *inherited) release() error {
	defer in.conn.Close()
	// Up to handoffSyncWait may have passed since takeOver's deadline was set.
	in.conn.SetDeadline(time.Now().Add(handoffTimeout))
	if _, err := in.conn.Write([]byte("serving\n")); err != nil {
		return fmt.Errorf("handoff: %w", err)
	}
	line, err := in.r.ReadString('\n')
	if err != nil || line != "released\n" {
		return fmt.Errorf("handoff: old agent did not release: %q %v", line, err)
	}
	return nil
}

// abandon gives up a takeover half-way: the predecessor keeps serving.
// A nil inherited is fine.
func (in *inherited) abandon() {
	if in == nil {
		return
	}
	in.closeSockets()
	in.conn.Close()
}

// closeSockets closes whatever was adopted but not used.
func (in *inherited) closeSockets() {
	for _, cs := range in.udp {
		for _, c := range cs {
			c.Close()
		}
	}
	for _, l := range in.tcp {
		l.Close()
	}
	if in.metrics != nil {
		in.metrics.Close()
	}
}

// offerSockets serves one successor on ln: it sends the sockets and, once the
// successor serves, calls stop (which drains this agent) and confirms. It
// returns after a completed handoff, or when ln is closed; ctx ending ends an
// exchange in progress. asking(true) is called as a successor asks for the
// sockets, asking(false) when its exchange ends without a handoff.
func offerSockets(ctx context.Context, ln *net.UnixListener, log *slog.Logger, sockets func() ([]socketDesc, []*os.File, error),
	asking func(bool), stop func()) error {
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			return err
		}
		if err := requireRoot(c); err != nil {
			log.Warn("refusing a hand-off to a process that is not root", "err", err)
			c.Close()
			continue
		}
		// An exchange waits up to handoffSyncWait for "serving": an agent
		// stopped meanwhile ends it rather than its own stop.
		unwatch := context.AfterFunc(ctx, func() { c.Close() })
		done, err := offerOnce(c, sockets, asking, stop)
		unwatch()
		c.Close()
		if done {
			return err
		}
		if err != nil {
			log.Error("could not hand the resolver's sockets over; serving on", "err", err)
		}
	}
}

// offerOnce runs one exchange; done is true once this agent has stopped.
// From the successor's "sockets" until the exchange ends, asking says so
// (see offerSockets).
func offerOnce(c *net.UnixConn, sockets func() ([]socketDesc, []*os.File, error), asking func(bool), stop func()) (done bool, err error) {
	c.SetDeadline(time.Now().Add(handoffTimeout))
	r := bufio.NewReader(c)
	if line, err := r.ReadString('\n'); err != nil || line != "sockets\n" {
		return false, nil // not a successor: ignore
	}
	asking(true)
	defer func() {
		if !done {
			asking(false)
		}
	}()
	descs, files, err := sockets()
	if err != nil {
		return false, err
	}
	defer closeAll(files)
	payload, err := json.Marshal(descs)
	if err != nil {
		return false, err
	}
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	first := fds[:min(len(fds), maxHandoffFDs)]
	if _, _, err := c.WriteMsgUnix(payload, unix.UnixRights(first...), nil); err != nil {
		return false, fmt.Errorf("handoff: sending %d sockets: %w", len(fds), err)
	}
	for rest := fds[len(first):]; len(rest) > 0; {
		chunk := rest[:min(len(rest), maxHandoffFDs)]
		rest = rest[len(chunk):]
		if _, _, err := c.WriteMsgUnix([]byte{'+'}, unix.UnixRights(chunk...), nil); err != nil {
			return false, fmt.Errorf("handoff: sending %d sockets: %w", len(fds), err)
		}
	}
	// Until the successor says it serves, this agent keeps serving: a
	// successor that dies half-way costs nothing. It may first wait up to
	// handoffSyncWait for its table.
	c.SetDeadline(time.Now().Add(handoffSyncWait + handoffTimeout))
	if line, err := r.ReadString('\n'); err != nil || line != "serving\n" {
		return false, nil
	}
	stop()
	_, err = c.Write([]byte("released\n"))
	return true, err
}

// requireRoot checks that the process at the other end of c is root.
func requireRoot(c *net.UnixConn) error {
	peer, err := control.PeerOf(c)
	if err != nil {
		return err
	}
	if peer.UID != 0 {
		return fmt.Errorf("peer pid %d runs as uid %d, not root", peer.PID, peer.UID)
	}
	return nil
}

// parseRights extracts the descriptors of SCM_RIGHTS messages. The kernel
// installed them in this process: on an error, those found are closed
// (those of a message that does not parse cannot be found).
func parseRights(oob []byte) ([]*os.File, error) {
	var files []*os.File
	for len(oob) >= unix.CmsgLen(0) {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			closeAll(files)
			return nil, fmt.Errorf("handoff: %w", err)
		}
		fds, err := unix.ParseUnixRights(&unix.SocketControlMessage{Header: h, Data: data})
		if err == nil { // else not SCM_RIGHTS: nothing installed
			for _, fd := range fds {
				files = append(files, os.NewFile(uintptr(fd), "inherited"))
			}
		}
		oob = rest
	}
	return files, nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// listenHandoff opens the handoff socket, replacing a stale one.
func listenHandoff(controlSocket string) (*net.UnixListener, error) {
	path := handoffPath(controlSocket)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("handoff socket: %w", err)
	}
	ln.SetUnlinkOnClose(false) // a successor may already have replaced it
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// fileOf duplicates a socket's descriptor for handing over.
func fileOf(c syscall.Conn) (*os.File, error) {
	switch c := c.(type) {
	case *net.UDPConn:
		return c.File()
	case *net.TCPListener:
		return c.File()
	}
	return nil, errors.New("unsupported socket type")
}
