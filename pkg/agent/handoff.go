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
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/acceptretry"
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
//	new → old: "takeover2 ID generation=N" (ID: the new agent's identity,
//	           N its pod template generation, see below), or, from an
//	           agent without a generation, "takeover ID"
//	old → new: JSON {agent, generation, sockets: [{network, addr}…]}, with the file
//	           descriptors attached (at most maxHandoffFDs; the rest follow in
//	           one-byte messages); or {refused} or {error}, with none
//	new → old: "serving"           (new reads from the sockets now)
//	old → new: "released"          (old stopped reading and stopped serving
//	                               its control socket)
//
// The sockets are the resolver's, the metrics listener ("metrics") and the
// control socket's listener ("control", its addr the socket's path). The
// control socket is handed over rather than bound again: its path never
// goes missing, so the CNI plugin never finds no agent there mid-upgrade
// (under onAgentUnreachable "allow" its pod would start uncaptured, under
// "fail" its ADD would fail). The old agent stops accepting on it, without
// removing the path, and answers a request on every connection it took
// (for 2 s at most, see control.Serve), before it fences capture;
// connections it has not taken wait in the socket's backlog until the new
// agent, having taken over and reconciled, accepts them (within the
// plugin's timeout, 5 s by default). A request the old agent could not
// answer within its 2 s it leaves unread, or answers 503 having done
// nothing of it, and the plugin sends it again, to the new agent.
//
// The new agent then holds the connection open for as long as it runs, and
// the old one, idle until its pod is deleted, watches it: when it ends, the
// new agent's process has ended. Should the new pod be deleted before the
// old one (a `helm rollback` mid-rollout) or its agent stop for good, the
// old agent would otherwise stay idle while the node had no resolver, no
// control socket and no heartbeat, until its liveness probe restarted it.
// It exits instead (errSuccessorGone), unless an agent serves at the
// hand-off path: the new one handed over in turn, to an agent that serves
// on (a fresh old agent would take the node from it). The kubelet restarts
// it, and it starts afresh.
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
// Whom an agent took over from outlives its process: as it takes over, an
// agent with a pod UID records it beside the hand-off socket
// (predecessorPath), and one restarted in the same pod reads it as it
// starts. Else, should the new pod's container be restarted too (OOM), the
// old agent, finding nobody at the hand-off path, would exit; the new
// pod's agent, restarted with no predecessor, would hand the node to the
// old pod's restarted one if it asked second, and sit idle, and the old
// pod's deletion would leave the node without a resolver. A later
// take-over, by this agent's successor, replaces the record; asked by any
// agent but its predecessor, an agent hands over as ever.
//
// Agents are ordered too, in Kubernetes: by the pod-template-generation
// label of their pod (Config.Generation, the chart's
// POD_TEMPLATE_GENERATION), which the DaemonSet controller raises with
// every change of the pod template, a `helm rollback` included (it writes
// the old template anew). An agent refuses to hand over to an agent of a
// lower generation ({refused}, errRefusedOlder), whether or not it took
// over from it: in a rolling update the old pod's container may be dead
// (crash-looping, OOM-killed: just when a fix is rolled out) as the new
// pod's agent starts, which then starts afresh, takes over from nobody and
// records no predecessor. Handed the node when the old pod's container
// restarted, it would sit idle, its pod ready on the shared probe port,
// and the rollout would delete the old pod: the node would fail open,
// with no resolver until the new agent noticed and the kubelet restarted
// it, again at every crash of the old one. An agent of the same
// generation (a container restarted, a pod deleted and made anew) or a
// higher one is handed the node as ever, and so is one that tells none
// (outside Kubernetes, or from before generations: an agent of an older
// release restarted in the update that first brings generations is not
// refused, and a rollback to a release from before them takes over as it
// did); an agent without a generation refuses no generation.
//
// An agent from before generations ignores "takeover2 ID generation=N"
// and closes the connection: the new agent then asks again with
// "takeover ID", and tells no generation; the running agent's refusals by
// identity (its predecessor) still apply. Further fields of "takeover2"
// are KEY=VALUE after the identity; an agent ignores keys it does not know.
//
// An agent from before the control socket's hand-over ignores "takeover
// ID" and closes the connection: the new agent then asks again with
// "sockets ID", which is answered as above but without the control
// socket, and the connection closed after "released" (the old agent then
// removes the control socket's path, and the new one binds it again). An
// agent from before identities ignores that too: the new agent asks again
// with a bare "sockets", which is answered, as one from before identities
// asks, with the bare JSON list of sockets. Such an agent neither tells its
// identity nor refuses anyone, so the refusal needs both pods to carry
// identities: not in the rolling update that first brings them.
//
// Both ends must be root (SO_PEERCRED): a process that planted a socket at
// the hand-off path would otherwise be handed the queries meant for the
// agent, or be sent its sockets. Anything else is refused and logged. (The
// socket directory is root's alone, see control.PrepareDir, so nobody else
// can plant one there in the first place.)
//
// From the successor's "takeover" (or "sockets") on, the old agent reports
// not ready (it still serves): both share the probe port, which only the
// old agent serves until the successor has its table, and the successor's
// pod must not turn ready, and get the old pod deleted, before the
// handoff. An exchange that
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
// hand its sockets over. Its text says what this agent did (the log reads
// "handoff: took nothing from …: peer pid 12 runs as uid 65534, not
// root"), not that a running agent refused.
var errPeerNotRoot = errors.New("took nothing from the process at the hand-off path")

// errRefusedRestart is takeOver's error when the running agent took over
// from this agent's pod: this agent's container was restarted after its
// hand-over, and the new agent keeps the node.
var errRefusedRestart = errors.New("the running agent took over from this agent's pod")

// errRefusedOlder is takeOver's error when the running agent is of a later
// pod template generation than this agent: this agent is the older
// release's, and the newer one keeps the node.
var errRefusedOlder = errors.New("the running agent is of a later pod template generation")

// errNoAnswer is a running agent that closed the connection without a
// word: one from before the control socket's hand-over, which ignores
// "takeover ID", or from before identities, which ignores "sockets ID".
var errNoAnswer = errors.New("the running agent closed the connection without answering")

// errSuccessorGone is the error of an agent that handed over when the agent
// it handed over to stopped, and no other serves in its place.
var errSuccessorGone = errors.New("the agent this one handed the node over to has stopped, and no agent serves at the hand-off path")

// The greetings of a successor, newest first (see the exchange above).
const (
	greetTakeover2 = "takeover2 " // + identity and " KEY=VALUE" fields (generation): as "takeover"
	greetTakeover  = "takeover "  // + identity: takes the control socket, holds the connection
	greetSockets   = "sockets "   // + identity
	greetBare      = "sockets"
)

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
	if len(uid) > maxLen || strings.ContainsFunc(uid, notInIdentity) {
		return fmt.Errorf("pod UID %q: want the pod's metadata.uid, printable, without spaces, at most %d bytes", uid, maxLen)
	}
	return nil
}

// notInIdentity reports the runes an identity may not hold: a line of the
// exchange carries it, after a space.
func notInIdentity(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }

// validIdentity checks an identity read from outside this process.
func validIdentity(id string) error {
	if id == "" || len(id) > maxIdentityLen || strings.ContainsFunc(id, notInIdentity) {
		return fmt.Errorf("identity %q: want printable, without spaces, 1 to %d bytes", id, maxIdentityLen)
	}
	return nil
}

// predecessorPath is where an agent records whom it took over from.
func predecessorPath(controlSocket string) string { return controlSocket + ".predecessor" }

// takeoverRecord is the record at predecessorPath: Agent took over from
// Predecessor (empty: one from before identities).
type takeoverRecord struct {
	Agent       string `json:"agent"`
	Predecessor string `json:"predecessor,omitempty"`
}

// maxTakeoverRecord bounds the record read: two identities and their
// names fit many times over.
const maxTakeoverRecord = 1024

// recordPredecessor writes, atomically, that self took over from
// predecessor, replacing the record of an earlier take-over.
func recordPredecessor(controlSocket, self, predecessor string) error {
	b, err := json.Marshal(takeoverRecord{Agent: self, Predecessor: predecessor})
	if err != nil {
		return err
	}
	path := predecessorPath(controlSocket)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("recording the predecessor: %w", err)
	}
	err = f.Chmod(0o600) // a leftover keeps its mode through O_TRUNC
	if err == nil {
		_, err = f.Write(append(b, '\n'))
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("recording the predecessor: %w", err)
	}
	return nil
}

// recordedPredecessor returns the agent self took over from, as recorded
// at predecessorPath by self before a restart: empty with no record, or
// one of another agent (a later take-over replaced it). A record that is
// not a regular file, is too long or does not parse counts as none, and
// is logged.
func recordedPredecessor(controlSocket, self string, log *slog.Logger) string {
	path := predecessorPath(controlSocket)
	b, err := readRecord(path)
	if errors.Is(err, os.ErrNotExist) {
		return ""
	}
	var rec takeoverRecord
	if err == nil {
		if err = json.Unmarshal(b, &rec); err == nil {
			err = validIdentity(rec.Agent)
		}
		if err == nil && rec.Predecessor != "" {
			err = validIdentity(rec.Predecessor)
		}
	}
	if err != nil {
		log.Warn("ignoring the unreadable record of whom this pod's agent took over from; a restart of the agent it took over from is not refused",
			"path", path, "err", err)
		return ""
	}
	if rec.Agent != self {
		return ""
	}
	if rec.Predecessor != "" {
		log.Info("this pod's agent took over from another before this restart: it is refused the node", "predecessor", rec.Predecessor, "path", path)
	}
	return rec.Predecessor
}

// readRecord reads the regular file at path, up to maxTakeoverRecord bytes.
func readRecord(path string) ([]byte, error) {
	// O_NONBLOCK: a FIFO planted there must not hang the start.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("not a regular file (mode %s)", fi.Mode())
	}
	b, err := io.ReadAll(io.LimitReader(f, maxTakeoverRecord+1))
	if err == nil && len(b) > maxTakeoverRecord {
		err = fmt.Errorf("longer than %d bytes", maxTakeoverRecord)
	}
	return b, err
}

// offerReply is a running agent's answer to a successor that said who it
// is: its own identity and the sockets, or why it hands nothing over.
type offerReply struct {
	Agent string `json:"agent,omitempty"`
	// Generation is the running agent's pod template generation (0: none):
	// a refused successor tells by it why.
	Generation uint64       `json:"generation,omitempty"`
	Sockets    []socketDesc `json:"sockets,omitempty"`
	// Refused says why the successor is refused (errRefusedRestart,
	// errRefusedOlder).
	Refused string `json:"refused,omitempty"`
	// Error is why the running agent could not list its sockets.
	Error string `json:"error,omitempty"`
}

// identities are who the agents of a hand-over are: self, the agent that
// offers its sockets, and predecessor, the agent self took over from
// (empty: none, or one from before identities), which is refused, as is
// an agent of a generation below self's generation (0: none, which
// refuses no generation).
type identities struct {
	self, predecessor string
	generation        uint64
}

// handoffPath is where an agent offers its sockets to its successor.
func handoffPath(controlSocket string) string { return controlSocket + ".handoff" }

// socketDesc describes one handed-over descriptor.
type socketDesc struct {
	// Network is "udp", "tcp", "metrics" (the HTTP listener) or "control"
	// (the control socket's listener, sent only to a successor that says
	// "takeover").
	Network string `json:"network"`
	Addr    string `json:"addr"` // address and port; the path of "control"
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
	// control is the control socket's listener, from a predecessor that
	// hands it over; nil from one that does not (the path is bound again).
	control *net.UnixListener
	conn    *net.UnixConn
	r       *bufio.Reader
	// held says the connection is to stay open while this agent runs: the
	// predecessor watches it (a "takeover", see the exchange above).
	held bool
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

// takeOver asks a running agent for its sockets, saying that self, of
// pod template generation gen (0: none), asks. It returns nil and no error
// when no agent answers, and an error (and nothing adopted) when the one
// that answers is not root (errPeerNotRoot), took over from self's pod
// (errRefusedRestart), is of a later generation (errRefusedOlder), or the
// exchange fails.
func takeOver(controlSocket, self string, gen uint64, log *slog.Logger) (*inherited, error) {
	var in *inherited
	err := errNoAnswer
	if gen != 0 {
		in, err = askForSockets(controlSocket, fmt.Sprintf("%s%s generation=%d\n", greetTakeover2, self, gen), gen, log)
		if errors.Is(err, errNoAnswer) {
			log.Info("the running agent predates generations in the hand-over; asking it again without one")
		}
	}
	if errors.Is(err, errNoAnswer) {
		in, err = askForSockets(controlSocket, greetTakeover+self+"\n", 0, log)
	}
	if err == nil && in != nil {
		in.held = true
	}
	if errors.Is(err, errNoAnswer) {
		log.Info("the running agent predates the control socket's hand-over; asking it again as it asks")
		in, err = askForSockets(controlSocket, greetSockets+self+"\n", 0, log)
	}
	if errors.Is(err, errNoAnswer) {
		log.Info("the running agent predates identities in the hand-over; asking it again without one")
		in, err = askForSockets(controlSocket, greetBare+"\n", 0, log)
	}
	return in, err
}

// askForSockets is one exchange of takeOver, up to the sockets adopted,
// opened with greeting, which tells generation gen (0: none).
func askForSockets(controlSocket, greeting string, gen uint64, log *slog.Logger) (*inherited, error) {
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
	case reply.Refused != "" && gen != 0 && reply.Generation > gen:
		conn.Close()
		return nil, fmt.Errorf("handoff: %w (%d, this agent's %d): %s", errRefusedOlder, reply.Generation, gen, reply.Refused)
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
		if err := in.adopt(d, files[i]); err != nil {
			in.abandon()
			return nil, fmt.Errorf("handoff: socket %s %s: %w", d.Network, d.Addr, err)
		}
	}
	return in, nil
}

// adopt takes the socket d describes, whose descriptor f is (a duplicate
// is kept).
func (in *inherited) adopt(d socketDesc, f *os.File) error {
	switch d.Network {
	case "udp":
		addr, err := netip.ParseAddrPort(d.Addr)
		if err != nil {
			return err
		}
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
		addr, err := netip.ParseAddrPort(d.Addr)
		if err != nil {
			return err
		}
		ln, err := net.FileListener(f)
		if err != nil {
			return err
		}
		tl, ok := ln.(*net.TCPListener)
		if !ok {
			ln.Close()
			return errors.New("not a TCP listener")
		}
		if d.Network == "metrics" {
			in.metrics = tl
		} else {
			in.tcp[addr] = tl
		}
	case "control": // d.Addr is its path
		ln, err := net.FileListener(f)
		if err != nil {
			return err
		}
		ul, ok := ln.(*net.UnixListener)
		if !ok {
			ln.Close()
			return errors.New("not a unix listener")
		}
		if in.control != nil { // one at most
			ul.Close()
			return errors.New("a second control socket")
		}
		in.control = ul
	default:
		return fmt.Errorf("unknown network %q", d.Network)
	}
	return nil
}

// covers reports whether a socket handed over is bound where addr would
// bind, or could share its port with it (one of the two the wildcard
// address): the predecessor serves there, and this agent takes over from
// it. A nil inherited covers nothing.
func (in *inherited) covers(addr netip.AddrPort) bool {
	if in == nil {
		return false
	}
	overlaps := func(b netip.AddrPort) bool {
		a, b2 := addr.Addr().Unmap(), b.Addr().Unmap()
		return addr.Port() == b.Port() && (a == b2 || a.IsUnspecified() || b2.IsUnspecified())
	}
	for b := range in.udp {
		if overlaps(b) {
			return true
		}
	}
	for b := range in.tcp {
		if overlaps(b) {
			return true
		}
	}
	return false
}

// release tells the old agent we serve now and waits until it has stopped
// reading and let go of the control socket. The connection stays open if
// held (the agent closes it as it ends); else it is closed.
func (in *inherited) release() error {
	if !in.held {
		defer in.conn.Close()
	}
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
	in.closeControl()
	in.conn.Close()
}

// closeControl closes the control socket's listener, unless it was
// served (Agent.listenControl takes it out of in).
func (in *inherited) closeControl() {
	if in.control != nil {
		in.control.Close() // this agent's copy: no path is removed
		in.control = nil
	}
}

// closeSockets closes the DNS and metrics sockets adopted but not used (not
// the control socket's listener: see closeControl).
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

// handedTo is the successor a hand-over went to.
type handedTo struct {
	id string // its identity; empty from before identities
	// conn is the exchange's connection, which a successor that took the
	// control socket holds open while it runs; nil for another.
	conn *net.UnixConn
}

// offerSockets serves one successor on ln: it sends the sockets and, once the
// successor serves, calls stop (which drains this agent; takesControl says
// the successor took the control socket's listener) and confirms. It
// returns the successor after a completed handoff, or nil and an error when
// ln is closed; ctx ending ends an exchange in progress. asking(true) is
// called as a successor asks for the sockets, asking(false) when its
// exchange ends without a handoff. ids says who this agent is, and whom it
// refuses: its predecessor.
func offerSockets(ctx context.Context, ln *net.UnixListener, log *slog.Logger, ids identities, sockets func() ([]socketDesc, []*os.File, error),
	asking func(bool), stop func(takesControl bool)) (*handedTo, error) {
	backoff := acceptretry.New(acceptretry.Handoff)
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() == nil && backoff.Wait(log, err) {
				continue
			}
			return nil, err
		}
		backoff.Accepted()
		if err := requireRoot(c); err != nil {
			log.Warn("refusing a hand-off to a process that is not root", "err", err)
			c.Close()
			continue
		}
		// An exchange waits up to handoffSyncWait for "serving": an agent
		// stopped meanwhile ends it rather than its own stop.
		unwatch := context.AfterFunc(ctx, func() { c.Close() })
		to, err := offerOnce(c, ids, sockets, asking, stop)
		unwatch()
		if to != nil {
			if err != nil {
				log.Warn("could not confirm the hand-over to the new agent", "err", err)
			}
			if to.conn == nil {
				c.Close()
			}
			return to, nil
		}
		c.Close()
		if errors.Is(err, errRefusedRestart) {
			log.Warn("refused the resolver's sockets to the agent this one took over from: its container was restarted, "+
				"and it would take the node back until its pod is deleted; serving on", "refused", ids.predecessor)
			continue
		}
		var older *olderSuccessor
		if errors.As(err, &older) {
			log.Warn("refused the resolver's sockets to an agent of an older pod template generation: an older release's pod, its container restarted, "+
				"would take the node from this newer one, which would sit idle until the rollout deleted that pod; serving on",
				"refused", older.id, "generation", older.generation, "this generation", ids.generation)
			continue
		}
		if err != nil {
			log.Error("could not hand the resolver's sockets over; serving on", "err", err)
		}
	}
}

// olderSuccessor is offerOnce's error for a successor of a lower pod
// template generation than this agent's (errRefusedOlder).
type olderSuccessor struct {
	id         string
	generation uint64
}

func (e *olderSuccessor) Error() string {
	return fmt.Sprintf("%s: %s is of generation %d", errRefusedOlder, e.id, e.generation)
}

func (e *olderSuccessor) Unwrap() error { return errRefusedOlder }

// parseGreeting reads a successor's greeting line (without its newline):
// its identity (empty from before identities), its pod template
// generation (0: none told), whether it takes the control socket, and
// whether the line is a greeting at all.
func parseGreeting(line string) (successor string, gen uint64, takesControl, ok bool) {
	if rest, found := strings.CutPrefix(line, greetTakeover2); found {
		fields := strings.Split(rest, " ")
		for _, f := range fields[1:] {
			k, v, _ := strings.Cut(f, "=")
			if k != "generation" {
				continue // a later agent's field
			}
			var err error
			if gen, err = strconv.ParseUint(v, 10, 64); err != nil || gen == 0 {
				return "", 0, false, false
			}
		}
		successor, takesControl = fields[0], true
	} else if successor, takesControl = strings.CutPrefix(line, greetTakeover); !takesControl {
		if successor, ok = strings.CutPrefix(line, greetSockets); !ok {
			return "", 0, false, line == greetBare
		}
	}
	if successor == "" || len(successor) > maxIdentityLen {
		return "", 0, false, false
	}
	return successor, gen, takesControl, true
}

// offerOnce runs one exchange; it returns the successor once this agent has
// stopped, nil before. From the successor's "takeover" (or "sockets") until
// the exchange ends, asking says so (see offerSockets); a successor refused
// (errRefusedRestart, errRefusedOlder) never asks.
func offerOnce(c *net.UnixConn, ids identities, sockets func() ([]socketDesc, []*os.File, error), asking func(bool),
	stop func(takesControl bool)) (to *handedTo, err error) {
	c.SetDeadline(time.Now().Add(handoffTimeout))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, nil // not a successor: ignore
	}
	successor, gen, takesControl, ok := parseGreeting(strings.TrimSuffix(line, "\n"))
	if !ok {
		return nil, nil
	}
	identified := successor != ""
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
			return nil, fmt.Errorf("handoff: refusing %s: %w", successor, err)
		}
		return nil, fmt.Errorf("%w: %s", errRefusedRestart, successor)
	}
	if gen != 0 && ids.generation != 0 && gen < ids.generation {
		refused := fmt.Sprintf("%s is of pod template generation %d, below %s's %d", successor, gen, ids.self, ids.generation)
		if err := replyOnly(offerReply{Agent: ids.self, Generation: ids.generation, Refused: refused}); err != nil {
			return nil, fmt.Errorf("handoff: refusing %s: %w", successor, err)
		}
		return nil, &olderSuccessor{id: successor, generation: gen}
	}
	asking(true)
	defer func() {
		if to == nil {
			asking(false)
		}
	}()
	descs, files, err := sockets()
	if err != nil {
		if identified {
			replyOnly(offerReply{Agent: ids.self, Error: err.Error()})
		}
		return nil, err
	}
	defer closeAll(files)
	if !takesControl { // a successor from before could not adopt it
		descs, files = withoutControl(descs, files)
	}
	var payload []byte
	if identified {
		payload, err = json.Marshal(offerReply{Agent: ids.self, Generation: ids.generation, Sockets: descs})
	} else { // a successor from before identities reads the list alone
		payload, err = json.Marshal(descs)
	}
	if err != nil {
		return nil, err
	}
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	first := fds[:min(len(fds), maxHandoffFDs)]
	if _, _, err := c.WriteMsgUnix(payload, unix.UnixRights(first...), nil); err != nil {
		return nil, fmt.Errorf("handoff: sending %d sockets: %w", len(fds), err)
	}
	for rest := fds[len(first):]; len(rest) > 0; {
		chunk := rest[:min(len(rest), maxHandoffFDs)]
		rest = rest[len(chunk):]
		if _, _, err := c.WriteMsgUnix([]byte{'+'}, unix.UnixRights(chunk...), nil); err != nil {
			return nil, fmt.Errorf("handoff: sending %d sockets: %w", len(fds), err)
		}
	}
	// Until the successor says it serves, this agent keeps serving: a
	// successor that dies half-way costs nothing. It may first wait up to
	// handoffSyncWait for its table.
	c.SetDeadline(time.Now().Add(handoffSyncWait + handoffTimeout))
	if line, err := r.ReadString('\n'); err != nil || line != "serving\n" {
		return nil, nil
	}
	stop(takesControl)
	_, err = c.Write([]byte("released\n"))
	to = &handedTo{id: successor}
	if takesControl {
		to.conn = c
	}
	return to, err
}

// withoutControl leaves the control socket out of what is sent (files
// stays whole, for the caller to close).
func withoutControl(descs []socketDesc, files []*os.File) ([]socketDesc, []*os.File) {
	var d []socketDesc
	var f []*os.File
	for i := range descs {
		if descs[i].Network != "control" {
			d, f = append(d, descs[i]), append(f, files[i])
		}
	}
	return d, f
}

// watchSuccessor waits, once this agent has handed over to to (a successor
// that holds the exchange's connection open while it runs), for the
// successor's end. It returns nil when ctx ends first, or when an agent
// serves at the hand-off path as the successor ends: the successor handed
// over in turn, and that agent serves on. Otherwise nobody serves the
// node: it returns errSuccessorGone, for this agent to exit and be
// restarted afresh.
func watchSuccessor(ctx context.Context, to *handedTo, controlSocket string, log *slog.Logger) error {
	defer to.conn.Close()
	stop := context.AfterFunc(ctx, func() { to.conn.Close() })
	defer stop()
	to.conn.SetDeadline(time.Time{})
	buf := make([]byte, 64)
	for { // the successor sends nothing more: this ends with its process
		if _, err := to.conn.Read(buf); err != nil {
			break
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	path := handoffPath(controlSocket)
	if handoffServed(path) {
		log.Info("the agent this one handed the node over to has stopped; another agent serves at the hand-off path, which it handed over to: staying idle",
			"successor", to.id, "path", path)
		return nil
	}
	err := fmt.Errorf("%w (successor %q, %s): this agent, handed over and idle, exits for a fresh start to serve the node", errSuccessorGone, to.id, path)
	log.Error("the agent this one handed the node over to has stopped, and no agent serves in its place: exiting, to be restarted afresh",
		"successor", to.id, "path", path)
	return err
}

// handoffServed reports whether an agent listens at the hand-off path
// path. A listener whose process is exiting may still take the connection,
// and reset it as it closes: only one that holds it open, waiting for a
// greeting, serves.
func handoffServed(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(handoffServedWait))
	_, err = c.Read(make([]byte, 1))
	return errors.Is(err, os.ErrDeadlineExceeded)
}

// handoffServedWait is how long handoffServed waits for a connection it
// made to be reset.
const handoffServedWait = 200 * time.Millisecond

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
