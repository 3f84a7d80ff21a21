package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"
	"unicode"

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
//	new → old: "sockets ID"        (ID: the new agent's identity, see below)
//	old → new: JSON {agent, sockets: [{network, addr}…]}, with the file
//	           descriptors attached (at most maxHandoffFDs; the rest follow in
//	           one-byte messages); or {refused} or {error}, with none
//	new → old: "serving"           (new reads from the sockets now)
//	old → new: "released"          (old stopped reading, closed its control socket)
//
// An agent is known by its pod's UID (Config.PodUID, the chart's POD_UID),
// which a container restarted in the same pod keeps and a new pod does
// not; outside Kubernetes, by a random identity of its process. An agent
// refuses to hand over to the one it took over from. In a DaemonSet rolling
// update the old pod stays, its agent idle, until the new pod has been
// ready for minReadySeconds; should the old pod's container be restarted
// meanwhile (OOM-killed, its liveness probe), the restarted agent, with
// the old pod's UID, would otherwise take the node back, leave the new
// agent idle, and stop with no successor when its pod is deleted next:
// the node would have no resolver. Refused ({refused}), it binds, marks
// and installs nothing and exits with an error saying why
// (errRefusedRestart): its pod is not ready while the kubelet restarts it,
// refused again each time, until the pod is deleted. Outside Kubernetes a
// restarted process has a new identity, and is not refused.
//
// An agent from before identities ignores "sockets ID" and closes the
// connection: the new agent then asks again with a bare "sockets", which
// is answered, as one from before identities asks, with the bare JSON list
// of sockets. Such an agent neither tells its identity nor refuses anyone,
// so the refusal needs both pods to carry identities: not in the rolling
// update that first brings them.
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
// the kubelet, and refused, restart after restart (or, from before
// identities, take the sockets back). Before "released" it closes its
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

// errRefusedRestart is takeOver's error when the running agent took over
// from this agent's pod: this agent's container was restarted after its
// hand-over, and the new agent keeps the node.
var errRefusedRestart = errors.New("the running agent took over from this agent's pod")

// errNoAnswer is a running agent that closed the connection without a
// word: one from before identities, which ignores "sockets ID".
var errNoAnswer = errors.New("the running agent closed the connection without answering")

// maxIdentityLen bounds an identity on the wire (a pod's UID is 36 bytes).
const maxIdentityLen = 128

// agentIdentity is what a hand-over knows an agent by: its pod's UID, or,
// with none (outside Kubernetes), a random identity of this process.
func agentIdentity(podUID string) string {
	if podUID != "" {
		return "pod/" + podUID
	}
	var b [8]byte
	rand.Read(b[:])
	return "process/" + hex.EncodeToString(b[:])
}

// validPodUID checks that a pod UID can go on the hand-over's line.
func validPodUID(uid string) error {
	// Its identity is "pod/" + uid (agentIdentity).
	const maxLen = maxIdentityLen - len("pod/")
	if len(uid) > maxLen || strings.ContainsFunc(uid, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }) {
		return fmt.Errorf("pod UID %q: want the pod's metadata.uid, printable, without spaces, at most %d bytes", uid, maxLen)
	}
	return nil
}

// offerReply is a running agent's answer to a successor that said who it
// is: its own identity and the sockets, or why it hands nothing over.
type offerReply struct {
	Agent   string       `json:"agent,omitempty"`
	Sockets []socketDesc `json:"sockets,omitempty"`
	// Refused says why the successor is refused (errRefusedRestart).
	Refused string `json:"refused,omitempty"`
	// Error is why the running agent could not list its sockets.
	Error string `json:"error,omitempty"`
}

// identities are who the agents of a hand-over are: self, the agent that
// offers its sockets, and predecessor, the agent self took over from
// (empty: none, or one from before identities), which is refused.
type identities struct {
	self, predecessor string
}

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
	// from is the old agent's identity; empty for one from before
	// identities.
	from string
}

// takeOver asks a running agent for its sockets, saying that self asks. It
// returns nil and no error when no agent answers, and an error (and nothing
// adopted) when the one that answers is not root (errPeerNotRoot), took over
// from self's pod (errRefusedRestart), or the exchange fails.
func takeOver(controlSocket, self string, log *slog.Logger) (*inherited, error) {
	in, err := askForSockets(controlSocket, "sockets "+self+"\n", log)
	if errors.Is(err, errNoAnswer) {
		log.Info("the running agent predates identities in the hand-over; asking it again without one")
		in, err = askForSockets(controlSocket, "sockets\n", log)
	}
	return in, err
}

// askForSockets is one exchange of takeOver, up to the sockets adopted,
// opened with greeting.
func askForSockets(controlSocket, greeting string, log *slog.Logger) (*inherited, error) {
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
	if _, err := conn.Write([]byte(greeting)); err != nil {
		conn.Close()
		return nil, fmt.Errorf("handoff: %w", err)
	}
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(maxHandoffFDs*4))
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if n == 0 && oobn == 0 && (err == nil || errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
		conn.Close()
		return nil, fmt.Errorf("handoff: %w", errNoAnswer)
	}
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
	var reply offerReply
	if bytes.HasPrefix(buf[:n], []byte("[")) { // the bare list, to a bare "sockets"
		err = json.Unmarshal(buf[:n], &reply.Sockets)
	} else {
		err = json.Unmarshal(buf[:n], &reply)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("handoff: reading the sockets' descriptions: %w", err)
	}
	switch {
	case reply.Refused != "":
		conn.Close()
		return nil, fmt.Errorf("handoff: %w (%s)", errRefusedRestart, reply.Refused)
	case reply.Error != "":
		conn.Close()
		return nil, fmt.Errorf("handoff: the running agent could not hand its sockets over: %s", reply.Error)
	}
	descs := reply.Sockets
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
		syncBy: asked.Add(handoffSyncWait), from: reply.Agent}
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
// sockets, asking(false) when its exchange ends without a handoff. ids says
// who this agent is, and whom it refuses: its predecessor.
func offerSockets(ctx context.Context, ln *net.UnixListener, log *slog.Logger, ids identities, sockets func() ([]socketDesc, []*os.File, error),
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
		done, err := offerOnce(c, ids, sockets, asking, stop)
		unwatch()
		c.Close()
		if done {
			return err
		}
		if errors.Is(err, errRefusedRestart) {
			log.Warn("refused the resolver's sockets to the agent this one took over from: its container was restarted, "+
				"and it would take the node back until its pod is deleted; serving on", "refused", ids.predecessor)
			continue
		}
		if err != nil {
			log.Error("could not hand the resolver's sockets over; serving on", "err", err)
		}
	}
}

// offerOnce runs one exchange; done is true once this agent has stopped.
// From the successor's "sockets" until the exchange ends, asking says so
// (see offerSockets); a successor refused (errRefusedRestart) never asks.
func offerOnce(c *net.UnixConn, ids identities, sockets func() ([]socketDesc, []*os.File, error), asking func(bool), stop func()) (done bool, err error) {
	c.SetDeadline(time.Now().Add(handoffTimeout))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	successor, identified := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "sockets ")
	switch {
	case err != nil:
		return false, nil // not a successor: ignore
	case identified && (successor == "" || len(successor) > maxIdentityLen):
		return false, nil
	case !identified && line != "sockets\n":
		return false, nil
	}
	// replyOnly answers an identified successor without sockets.
	replyOnly := func(reply offerReply) error {
		payload, err := json.Marshal(reply)
		if err == nil {
			_, err = c.Write(payload)
		}
		return err
	}
	if identified && ids.predecessor != "" && successor == ids.predecessor {
		if err := replyOnly(offerReply{Agent: ids.self, Refused: fmt.Sprintf("%s took over from %s", ids.self, successor)}); err != nil {
			return false, fmt.Errorf("handoff: refusing %s: %w", successor, err)
		}
		return false, fmt.Errorf("%w: %s", errRefusedRestart, successor)
	}
	asking(true)
	defer func() {
		if !done {
			asking(false)
		}
	}()
	descs, files, err := sockets()
	if err != nil {
		if identified {
			replyOnly(offerReply{Agent: ids.self, Error: err.Error()})
		}
		return false, err
	}
	defer closeAll(files)
	var payload []byte
	if identified {
		payload, err = json.Marshal(offerReply{Agent: ids.self, Sockets: descs})
	} else { // a successor from before identities reads the list alone
		payload, err = json.Marshal(descs)
	}
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
