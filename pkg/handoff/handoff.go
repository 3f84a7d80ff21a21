package handoff

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
	"github.com/ztdns/ztdns/internal/regularfile"
	"github.com/ztdns/ztdns/pkg/control"
)

// Timeouts bound the waits of a hand-over. Both ends must use the same: a
// successor's SyncWait ends before its predecessor's wait for "serving",
// SyncWait and Step after it sent the sockets.
type Timeouts struct {
	// Step bounds each step of the exchange; 0: DefaultStep.
	Step time.Duration
	// SyncWait bounds how long a successor waits for its first table
	// before it gives the hand-over up and exits; 0: DefaultSyncWait. The
	// running agent's table, however stale, beats none: a successor whose
	// source cannot list a resource (RBAC) or reach the API server would
	// otherwise answer every name from an empty table, and never beat, so
	// every pod on the node would fail open.
	SyncWait time.Duration
}

// The Timeouts of an agent's hand-over.
const (
	DefaultStep     = 10 * time.Second
	DefaultSyncWait = 30 * time.Second
)

// OrDefaults returns t with each zero field at its default.
func (t Timeouts) OrDefaults() Timeouts {
	if t.Step <= 0 {
		t.Step = DefaultStep
	}
	if t.SyncWait <= 0 {
		t.SyncWait = DefaultSyncWait
	}
	return t
}

// MaxFDsPerMessage bounds the descriptors one message carries: Linux's
// SCM_MAX_FD. More (many --udp-sockets on many addresses) go in further
// messages of one byte each.
const MaxFDsPerMessage = 253

// ErrPeerNotRoot marks a process at the hand-off path that is not (or
// cannot be shown to be) root: nothing is taken from it, and a fresh start
// is right. Any other failure of TakeOver is a running agent that did not
// hand its sockets over. Its text says what this agent did (the log reads
// "handoff: took nothing from …: peer pid 12 runs as uid 65534, not
// root"), not that a running agent refused.
var ErrPeerNotRoot = errors.New("took nothing from the process at the hand-off path")

// ErrRefusedRestart is TakeOver's error when the running agent took over
// from this agent's pod: this agent's container was restarted after its
// hand-over, and the new agent keeps the node.
var ErrRefusedRestart = errors.New("the running agent took over from this agent's pod")

// ErrRefusedOlder is TakeOver's error when the running agent is of a later
// pod template generation than this agent: this agent is the older
// release's, and the newer one keeps the node.
var ErrRefusedOlder = errors.New("the running agent is of a later pod template generation")

// errNoAnswer is a running agent that closed the connection without a
// word: one from before the control socket's hand-over, which ignores
// "takeover ID", or from before identities, which ignores "sockets ID".
var errNoAnswer = errors.New("the running agent closed the connection without answering")

// ErrSuccessorGone is the error of an agent that handed over when the agent
// it handed over to stopped, and no other serves in its place.
var ErrSuccessorGone = errors.New("the agent this one handed the node over to has stopped, and no agent serves at the hand-off path")

// The greetings of a successor, newest first (see the package doc).
const (
	greetTakeover2 = "takeover2 " // + identity and " KEY=VALUE" fields (generation): as "takeover"
	greetTakeover  = "takeover "  // + identity: takes the control socket, holds the connection
	greetSockets   = "sockets "   // + identity
	greetBare      = "sockets"
)

// maxIdentityLen bounds an identity on the wire (a pod's UID is 36 bytes).
const maxIdentityLen = 128

// Identity is what a hand-over knows an agent by: its pod's UID, or,
// with none (outside Kubernetes), a random identity of this process.
func Identity(podUID string) string {
	if podUID != "" {
		return "pod/" + podUID
	}
	var b [8]byte
	rand.Read(b[:])
	return "process/" + hex.EncodeToString(b[:])
}

// ValidPodUID checks that a pod UID can go on the hand-over's line.
func ValidPodUID(uid string) error {
	// Its identity is "pod/" + uid (Identity).
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

// RecordPredecessor writes, atomically, that self took over from
// predecessor, replacing the record of an earlier take-over.
func RecordPredecessor(controlSocket, self, predecessor string) error {
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

// RecordedPredecessor returns the agent self took over from, as recorded
// at predecessorPath by self before a restart: empty with no record, or
// one of another agent (a later take-over replaced it). A record that is
// not a regular file, is too long or does not parse counts as none, and
// is logged.
func RecordedPredecessor(controlSocket, self string, log *slog.Logger) string {
	path := predecessorPath(controlSocket)
	// ReadNoFollow: a FIFO planted there must not hang the start.
	b, err := regularfile.ReadNoFollow(path, maxTakeoverRecord)
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

// offerReply is a running agent's answer to a successor that said who it
// is: its own identity and the sockets, or why it hands nothing over.
type offerReply struct {
	Agent string `json:"agent,omitempty"`
	// Generation is the running agent's pod template generation (0: none):
	// a refused successor tells by it why.
	Generation uint64       `json:"generation,omitempty"`
	Sockets    []SocketDesc `json:"sockets,omitempty"`
	// Refused says why the successor is refused (ErrRefusedRestart,
	// ErrRefusedOlder).
	Refused string `json:"refused,omitempty"`
	// Error is why the running agent could not list its sockets.
	Error string `json:"error,omitempty"`
}

// Identities are who the agents of a hand-over are: self, the agent that
// offers its sockets, and predecessor, the agent self took over from
// (empty: none, or one from before identities), which is refused, as is
// an agent of a generation below self's generation (0: none, which
// refuses no generation).
type Identities struct {
	Self, Predecessor string
	Generation        uint64
}

// Path is where an agent offers its sockets to its successor.
func Path(controlSocket string) string { return controlSocket + ".handoff" }

// SocketDesc describes one handed-over descriptor.
type SocketDesc struct {
	// Network is "udp", "tcp", "metrics" (the HTTP listener) or "control"
	// (the control socket's listener, sent only to a successor that says
	// "takeover").
	Network string `json:"network"`
	Addr    string `json:"addr"` // address and port; the path of "control"
}

// Inherited holds what an old agent handed over.
type Inherited struct {
	UDP map[netip.AddrPort][]*net.UDPConn
	TCP map[netip.AddrPort]*net.TCPListener
	// Metrics is the /metrics, /healthz, /readyz listener: in a DaemonSet
	// rolling update both pods live in the node's network namespace, and a
	// successor binding the port afresh would fail while its predecessor
	// holds it.
	Metrics *net.TCPListener
	// Control is the control socket's listener, from a predecessor that
	// hands it over; nil from one that does not (the path is bound again).
	Control *net.UnixListener
	// Conn is the exchange's connection. Release closes it unless held:
	// then the agent keeps it open while it runs (closing it at its end).
	Conn *net.UnixConn
	r    *bufio.Reader
	// held says the connection is to stay open while this agent runs: the
	// predecessor watches it (a "takeover", see the exchange above).
	held bool
	// SyncBy is when the successor gives up if it has no table yet:
	// Timeouts.SyncWait from its asking, so before the old agent, whose
	// wait for "serving" starts later (once it has sent the sockets) and
	// lasts Timeouts.Step longer, gives up. What the successor does
	// meanwhile (loading the capture programs) counts.
	SyncBy time.Time
	// From is the old agent's identity; empty for one from before
	// identities.
	From string
	// step is the exchange's Timeouts.Step.
	step time.Duration
}

// TakeOver asks a running agent for its sockets, saying that self, of
// pod template generation gen (0: none), asks. It returns nil and no error
// when no agent answers, and an error (and nothing adopted) when the one
// that answers is not root (ErrPeerNotRoot), took over from self's pod
// (ErrRefusedRestart), is of a later generation (ErrRefusedOlder), or the
// exchange fails. t bounds its waits.
func TakeOver(controlSocket, self string, gen uint64, t Timeouts, log *slog.Logger) (*Inherited, error) {
	t = t.OrDefaults()
	var in *Inherited
	err := errNoAnswer
	if gen != 0 {
		in, err = askForSockets(controlSocket, fmt.Sprintf("%s%s generation=%d\n", greetTakeover2, self, gen), gen, t, log)
		if errors.Is(err, errNoAnswer) {
			log.Info("the running agent predates generations in the hand-over; asking it again without one")
		}
	}
	if errors.Is(err, errNoAnswer) {
		in, err = askForSockets(controlSocket, greetTakeover+self+"\n", 0, t, log)
	}
	if err == nil && in != nil {
		in.held = true
	}
	if errors.Is(err, errNoAnswer) {
		log.Info("the running agent predates the control socket's hand-over; asking it again as it asks")
		in, err = askForSockets(controlSocket, greetSockets+self+"\n", 0, t, log)
	}
	if errors.Is(err, errNoAnswer) {
		log.Info("the running agent predates identities in the hand-over; asking it again without one")
		in, err = askForSockets(controlSocket, greetBare+"\n", 0, t, log)
	}
	return in, err
}

// askForSockets is one exchange of TakeOver, up to the sockets adopted,
// opened with greeting, which tells generation gen (0: none).
func askForSockets(controlSocket, greeting string, gen uint64, t Timeouts, log *slog.Logger) (*Inherited, error) {
	c, err := net.DialTimeout("unix", Path(controlSocket), time.Second)
	if err != nil {
		return nil, nil // nobody to take over from
	}
	conn := c.(*net.UnixConn)
	if err := requireRoot(conn); err != nil {
		conn.Close()
		log.Warn("refusing the sockets offered at the hand-off path", "path", Path(controlSocket), "err", err)
		return nil, fmt.Errorf("handoff: %w: %w", ErrPeerNotRoot, err)
	}
	asked := time.Now()
	conn.SetDeadline(asked.Add(t.Step))
	if _, err := conn.Write([]byte(greeting)); err != nil {
		conn.Close()
		return nil, fmt.Errorf("handoff: %w", err)
	}
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(MaxFDsPerMessage*4))
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
	defer func() { CloseAll(files) }() // adopt duplicates what it keeps
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
		return nil, fmt.Errorf("handoff: %w (%d, this agent's %d): %s", ErrRefusedOlder, reply.Generation, gen, reply.Refused)
	case reply.Refused != "":
		conn.Close()
		return nil, fmt.Errorf("handoff: %w (%s)", ErrRefusedRestart, reply.Refused)
	case reply.Error != "":
		conn.Close()
		return nil, fmt.Errorf("handoff: the running agent could not hand its sockets over: %s", reply.Error)
	}
	descs := reply.Sockets
	// Descriptors beyond one message's MaxFDsPerMessage follow, one byte each.
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
	in := &Inherited{UDP: map[netip.AddrPort][]*net.UDPConn{}, TCP: map[netip.AddrPort]*net.TCPListener{}, Conn: conn, r: bufio.NewReader(conn),
		SyncBy: asked.Add(t.SyncWait), From: reply.Agent, step: t.Step}
	for i, d := range descs {
		if err := in.adopt(d, files[i]); err != nil {
			in.Abandon()
			return nil, fmt.Errorf("handoff: socket %s %s: %w", d.Network, d.Addr, err)
		}
	}
	return in, nil
}

// adopt takes the socket d describes, whose descriptor f is (a duplicate
// is kept).
func (in *Inherited) adopt(d SocketDesc, f *os.File) error {
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
		in.UDP[addr] = append(in.UDP[addr], uc)
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
			in.Metrics = tl
		} else {
			in.TCP[addr] = tl
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
		if in.Control != nil { // one at most
			ul.Close()
			return errors.New("a second control socket")
		}
		in.Control = ul
	default:
		return fmt.Errorf("unknown network %q", d.Network)
	}
	return nil
}

// covers reports whether a socket handed over is bound where addr would
// bind, or could share its port with it (one of the two the wildcard
// address): the predecessor serves there, and this agent takes over from
// it. A nil Inherited covers nothing.
func (in *Inherited) Covers(addr netip.AddrPort) bool {
	if in == nil {
		return false
	}
	overlaps := func(b netip.AddrPort) bool {
		a, b2 := addr.Addr().Unmap(), b.Addr().Unmap()
		return addr.Port() == b.Port() && (a == b2 || a.IsUnspecified() || b2.IsUnspecified())
	}
	for b := range in.UDP {
		if overlaps(b) {
			return true
		}
	}
	for b := range in.TCP {
		if overlaps(b) {
			return true
		}
	}
	return false
}

// release tells the old agent we serve now and waits until it has stopped
// reading and let go of the control socket. The connection stays open if
// held (the agent closes it as it ends); else it is closed.
func (in *Inherited) Release() error {
	if !in.held {
		defer in.Conn.Close()
	}
	// Up to Timeouts.SyncWait may have passed since TakeOver's deadline was set.
	in.Conn.SetDeadline(time.Now().Add(in.step))
	if _, err := in.Conn.Write([]byte("serving\n")); err != nil {
		return fmt.Errorf("handoff: %w", err)
	}
	line, err := in.r.ReadString('\n')
	if err != nil || line != "released\n" {
		return fmt.Errorf("handoff: old agent did not release: %q %v", line, err)
	}
	return nil
}

// abandon gives up a takeover half-way: the predecessor keeps serving.
// A nil Inherited is fine.
func (in *Inherited) Abandon() {
	if in == nil {
		return
	}
	in.CloseSockets()
	in.closeControl()
	in.Conn.Close()
}

// closeControl closes the control socket's listener, unless it was
// served (the agent takes it out of in).
func (in *Inherited) closeControl() {
	if in.Control != nil {
		in.Control.Close() // this agent's copy: no path is removed
		in.Control = nil
	}
}

// closeSockets closes the DNS and metrics sockets adopted but not used (not
// the control socket's listener: see closeControl).
func (in *Inherited) CloseSockets() {
	for _, cs := range in.UDP {
		for _, c := range cs {
			c.Close()
		}
	}
	for _, l := range in.TCP {
		l.Close()
	}
	if in.Metrics != nil {
		in.Metrics.Close()
	}
}

// Successor is the agent a hand-over went to.
type Successor struct {
	id string // its identity; empty from before identities
	// conn is the exchange's connection, which a successor that took the
	// control socket holds open while it runs; nil for another.
	conn *net.UnixConn
}

// Held reports whether the successor holds the exchange's connection open
// while it runs: WatchSuccessor then tells when it ends.
func (to *Successor) Held() bool { return to.conn != nil }

// Offer serves one successor on ln: it sends the sockets and, once the
// successor serves, calls stop (which drains this agent; takesControl says
// the successor took the control socket's listener) and confirms. It
// returns the successor after a completed handoff, or nil and an error when
// ln is closed; ctx ending ends an exchange in progress. asking(true) is
// called as a successor asks for the sockets, asking(false) when its
// exchange ends without a handoff. ids says who this agent is, and whom it
// refuses: its predecessor. t bounds the waits of an exchange.
func Offer(ctx context.Context, ln *net.UnixListener, log *slog.Logger, ids Identities, t Timeouts, sockets func() ([]SocketDesc, []*os.File, error),
	asking func(bool), stop func(takesControl bool)) (*Successor, error) {
	t = t.OrDefaults()
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
		// An exchange waits up to t.SyncWait for "serving": an agent
		// stopped meanwhile ends it rather than its own stop.
		unwatch := context.AfterFunc(ctx, func() { c.Close() })
		to, err := offerOnce(c, ids, t, sockets, asking, stop)
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
		if errors.Is(err, ErrRefusedRestart) {
			log.Warn("refused the resolver's sockets to the agent this one took over from: its container was restarted, "+
				"and it would take the node back until its pod is deleted; serving on", "refused", ids.Predecessor)
			continue
		}
		var older *olderSuccessor
		if errors.As(err, &older) {
			log.Warn("refused the resolver's sockets to an agent of an older pod template generation: an older release's pod, its container restarted, "+
				"would take the node from this newer one, which would sit idle until the rollout deleted that pod; serving on",
				"refused", older.id, "generation", older.generation, "this generation", ids.Generation)
			continue
		}
		if err != nil {
			log.Error("could not hand the resolver's sockets over; serving on", "err", err)
		}
	}
}

// olderSuccessor is offerOnce's error for a successor of a lower pod
// template generation than this agent's (ErrRefusedOlder).
type olderSuccessor struct {
	id         string
	generation uint64
}

func (e *olderSuccessor) Error() string {
	return fmt.Sprintf("%s: %s is of generation %d", ErrRefusedOlder, e.id, e.generation)
}

func (e *olderSuccessor) Unwrap() error { return ErrRefusedOlder }

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
// the exchange ends, asking says so (see Offer); a successor refused
// (ErrRefusedRestart, ErrRefusedOlder) never asks.
func offerOnce(c *net.UnixConn, ids Identities, t Timeouts, sockets func() ([]SocketDesc, []*os.File, error), asking func(bool),
	stop func(takesControl bool)) (to *Successor, err error) {
	t = t.OrDefaults()
	c.SetDeadline(time.Now().Add(t.Step))
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
	if identified && ids.Predecessor != "" && successor == ids.Predecessor {
		if err := replyOnly(offerReply{Agent: ids.Self, Refused: fmt.Sprintf("%s took over from %s", ids.Self, successor)}); err != nil {
			return nil, fmt.Errorf("handoff: refusing %s: %w", successor, err)
		}
		return nil, fmt.Errorf("%w: %s", ErrRefusedRestart, successor)
	}
	if gen != 0 && ids.Generation != 0 && gen < ids.Generation {
		refused := fmt.Sprintf("%s is of pod template generation %d, below %s's %d", successor, gen, ids.Self, ids.Generation)
		if err := replyOnly(offerReply{Agent: ids.Self, Generation: ids.Generation, Refused: refused}); err != nil {
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
			replyOnly(offerReply{Agent: ids.Self, Error: err.Error()})
		}
		return nil, err
	}
	defer CloseAll(files)
	if !takesControl { // a successor from before could not adopt it
		descs, files = withoutControl(descs, files)
	}
	var payload []byte
	if identified {
		payload, err = json.Marshal(offerReply{Agent: ids.Self, Generation: ids.Generation, Sockets: descs})
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
	first := fds[:min(len(fds), MaxFDsPerMessage)]
	if _, _, err := c.WriteMsgUnix(payload, unix.UnixRights(first...), nil); err != nil {
		return nil, fmt.Errorf("handoff: sending %d sockets: %w", len(fds), err)
	}
	for rest := fds[len(first):]; len(rest) > 0; {
		chunk := rest[:min(len(rest), MaxFDsPerMessage)]
		rest = rest[len(chunk):]
		if _, _, err := c.WriteMsgUnix([]byte{'+'}, unix.UnixRights(chunk...), nil); err != nil {
			return nil, fmt.Errorf("handoff: sending %d sockets: %w", len(fds), err)
		}
	}
	// Until the successor says it serves, this agent keeps serving: a
	// successor that dies half-way costs nothing. It may first wait up to
	// t.SyncWait for its table.
	c.SetDeadline(time.Now().Add(t.SyncWait + t.Step))
	if line, err := r.ReadString('\n'); err != nil || line != "serving\n" {
		return nil, nil
	}
	stop(takesControl)
	_, err = c.Write([]byte("released\n"))
	to = &Successor{id: successor}
	if takesControl {
		to.conn = c
	}
	return to, err
}

// withoutControl leaves the control socket out of what is sent (files
// stays whole, for the caller to close).
func withoutControl(descs []SocketDesc, files []*os.File) ([]SocketDesc, []*os.File) {
	var d []SocketDesc
	var f []*os.File
	for i := range descs {
		if descs[i].Network != "control" {
			d, f = append(d, descs[i]), append(f, files[i])
		}
	}
	return d, f
}

// WatchSuccessor waits, once this agent has handed over to to (a successor
// that holds the exchange's connection open while it runs), for the
// successor's end. It returns nil when ctx ends first, or when an agent
// serves at the hand-off path as the successor ends: the successor handed
// over in turn, and that agent serves on. Otherwise nobody serves the
// node: it returns ErrSuccessorGone, for this agent to exit and be
// restarted afresh.
func WatchSuccessor(ctx context.Context, to *Successor, controlSocket string, log *slog.Logger) error {
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
	path := Path(controlSocket)
	if served(path) {
		log.Info("the agent this one handed the node over to has stopped; another agent serves at the hand-off path, which it handed over to: staying idle",
			"successor", to.id, "path", path)
		return nil
	}
	err := fmt.Errorf("%w (successor %q, %s): this agent, handed over and idle, exits for a fresh start to serve the node", ErrSuccessorGone, to.id, path)
	log.Error("the agent this one handed the node over to has stopped, and no agent serves in its place: exiting, to be restarted afresh",
		"successor", to.id, "path", path)
	return err
}

// served reports whether an agent listens at the hand-off path path. A
// listener whose process is exiting may still take the connection, and
// reset it as it closes: only one that holds it open, waiting for a
// greeting, serves.
func served(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(servedWait))
	_, err = c.Read(make([]byte, 1))
	return errors.Is(err, os.ErrDeadlineExceeded)
}

// servedWait is how long served waits for a connection it made to be
// reset.
const servedWait = 200 * time.Millisecond

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
			CloseAll(files)
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

func CloseAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// Listen opens the hand-off socket at Path(controlSocket), replacing a
// stale one.
func Listen(controlSocket string) (*net.UnixListener, error) {
	path := Path(controlSocket)
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

// FileOf duplicates a socket's descriptor for handing over.
func FileOf(c syscall.Conn) (*os.File, error) {
	switch c := c.(type) {
	case *net.UDPConn:
		return c.File()
	case *net.TCPListener:
		return c.File()
	}
	return nil, errors.New("unsupported socket type")
}
