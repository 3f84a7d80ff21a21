// Both sides of a hand-over, as far as they are the agent's: the successor
// takes the running agent's sockets (takeOverRunning) and, once the
// predecessor stopped serving, points the programs at its own addresses
// (finishTakeover); the predecessor lists its sockets for the successor
// (handoffSockets), stops serving (handOver) and closes its copies
// (closeHandedOver). The exchange itself is package handoff's.

package agent

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/handoff"
)

// takeOverRunning takes over a running agent's sockets, if there is one,
// before anything is bound: a restart then loses no query (see package
// handoff). It returns nil and no error when no agent answers, or one
// answers that is not root (a warning says so: this agent binds fresh
// sockets). It refuses to start, with an error saying why, beside an agent
// it must not take the node from: one of a newer release, the one this
// agent's pod handed over to, or one whose hand-over failed. It records the
// predecessor, to which this agent never hands over.
//
// The socket directory, where the hand-off socket is, is checked first,
// and the marker the CNI plugin looks for put there.
func (a *Agent) takeOverRunning(access control.Access) (*handoff.Inherited, error) {
	// The socket directory is checked before anything in it is trusted: the
	// hand-off socket a predecessor offers lives there too.
	if err := control.PrepareDir(a.cfg.Socket, access); err != nil {
		return nil, err
	}
	// At every start: the CNI plugin records what this agent misses while
	// it restarts only when it finds the marker, which only an uninstall
	// removes.
	if err := control.MarkInstalled(a.cfg.Socket); err != nil {
		return nil, err
	}
	in, err := handoff.TakeOver(a.cfg.Socket, a.id, a.cfg.Generation, a.cfg.handoffTimeouts, a.log)
	if errors.Is(err, handoff.ErrRefusedOlder) {
		// An older release's pod, its container restarted after the newer
		// one's agent started (with or without a hand-over): taking the
		// node would leave the newer agent idle, and the node without a
		// resolver once the rollout deleted this pod.
		return nil, fmt.Errorf("the agent serving the node (at %s) is of a later pod template generation, a newer release's, and keeps serving: "+
			"this agent, an older release's, serves nothing and exits; the rollout deletes its pod: %w", handoff.Path(a.cfg.Socket), err)
	}
	if errors.Is(err, handoff.ErrRefusedRestart) {
		// This agent's pod handed the node over, and its container was
		// restarted (OOM-killed, its liveness probe) before the pod was
		// deleted: serving, or starting capture afresh, would take the node
		// from the new agent, or fail its pods open.
		return nil, fmt.Errorf("this agent's pod handed the node over, and the agent that took it (at %s) keeps serving: "+
			"this agent, its container restarted since, serves nothing and exits; the rollout deletes its pod: %w", handoff.Path(a.cfg.Socket), err)
	}
	if err != nil && !errors.Is(err, handoff.ErrPeerNotRoot) {
		// It serves on: a second agent with fresh sockets beside it would
		// split the queries between two tables, and both mark and beat.
		return nil, fmt.Errorf("a running agent answered at %s, but taking its sockets over failed; stop it or retry: %w",
			handoff.Path(a.cfg.Socket), err)
	}
	if err != nil {
		a.log.Warn("could not take over the running agent's sockets; binding fresh ones", "err", err)
	}
	if in != nil {
		a.predecessor = in.From
	} else if a.cfg.PodUID != "" {
		// Restarted in a pod whose agent took over before: it refuses the
		// same agent (see package handoff).
		a.predecessor = handoff.RecordedPredecessor(a.cfg.Socket, a.id, a.log)
	}
	return in, nil
}

// finishTakeover, once the predecessor has stopped serving, points the
// programs at this agent's addresses and port, and then lets go of those
// it served for the predecessor.
func (a *Agent) finishTakeover() error {
	if a.dataplane == nil {
		return nil
	}
	if err := a.dataplane.takeOverConfig(); err != nil {
		return fmt.Errorf("capture: pointing the programs at this agent's addresses: %w", err)
	}
	if a.programsSwitched != nil {
		a.programsSwitched()
	}
	if len(a.retired) > 0 {
		time.Sleep(stopGrace) // queries redirected just before are on their way
		a.retiredDone.Store(true)
		for _, c := range a.retired {
			c.Close()
		}
		a.retired = nil
	}
	a.dataplane.dropOtherAddrs()
	return nil
}

// handoffSockets lists this agent's sockets for a successor.
func (a *Agent) handoffSockets() ([]handoff.SocketDesc, []*os.File, error) {
	var descs []handoff.SocketDesc
	var files []*os.File
	add := func(network string, c syscall.Conn, addr net.Addr) error {
		f, err := handoff.FileOf(c)
		if err != nil {
			return err
		}
		descs = append(descs, handoff.SocketDesc{Network: network, Addr: addrPortString(addr)})
		files = append(files, f)
		return nil
	}
	for _, c := range a.udp {
		if err := add("udp", c, c.LocalAddr()); err != nil {
			handoff.CloseAll(files)
			return nil, nil, err
		}
	}
	for _, l := range a.tcp {
		if err := add("tcp", l, l.Addr()); err != nil {
			handoff.CloseAll(files)
			return nil, nil, err
		}
	}
	if a.metrics != nil {
		if err := add("metrics", a.metrics, a.metrics.Addr()); err != nil {
			handoff.CloseAll(files)
			return nil, nil, err
		}
	}
	if a.controlLn != nil {
		f, err := control.ListenerFile(a.controlLn)
		if err != nil {
			handoff.CloseAll(files)
			return nil, nil, err
		}
		descs = append(descs, handoff.SocketDesc{Network: "control", Addr: a.cfg.Socket})
		files = append(files, f)
	}
	return descs, files, nil
}

// closeHandedOver closes this agent's copies of the sockets it handed over,
// once drained: the successor holds its own. A copy kept unread would stay
// in its address's SO_REUSEPORT group, and should the successor die, the
// kernel would hand it part of the queries to the agent bound next.
func (a *Agent) closeHandedOver() {
	for _, c := range a.udp {
		c.Close()
	}
	for _, l := range a.tcp {
		l.Close()
	}
	if a.metrics != nil {
		a.metrics.Close() // its server's shutdown closes it too, soon
	}
}

func addrPortString(a net.Addr) string {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort().String()
	case *net.TCPAddr:
		return a.AddrPort().String()
	}
	return a.String()
}

// handOverStops are the parts of a serving agent that handOver stops, as
// run started them.
type handOverStops struct {
	control func()    // stops the control socket's server; returns once it has
	metrics func()    // stops the metrics server
	cni     func()    // stops the CNI installer; returns once it has
	offer   io.Closer // the hand-off listener
}

// handOver is a serving agent's side of a hand-over once the successor
// serves (handoff.Offer's stop, before "released"): this agent stops
// serving, in an order that leaves the successor each part as it takes it
// and no pod without a resolver or a beat, and lets go of its sockets.
// takesControl says the successor took the control socket's listener too,
// whose path this agent then leaves in place.
func (a *Agent) handOver(takesControl bool, stop handOverStops) {
	a.log.Info("handing the resolver's sockets to a new agent; this one stops serving")
	// The control socket first, while this agent still acts on
	// what it is asked: it stops accepting, and answers a request
	// on every connection it took, however late the request
	// comes (a CNI ADD is carried out, not answered "handed
	// over"), for 2 s at most; one that comes later is left
	// unread, which its caller sees reset and sends again (see
	// control.Serve). A successor that took the socket accepts
	// what waits in its backlog, and what comes next, once it
	// serves; one that did not binds the path after "released".
	if takesControl {
		control.KeepPathOnClose(a.controlLn)
	}
	stop.control()
	a.handedOver.Store(true) // readiness says so from here on
	a.fenceCapture()         // before "released": the successor marks pods next
	stop.metrics()           // the successor answers probes and scrapes on the same socket
	stop.cni()               // the successor installs its plugin from "released" on
	a.server.Drain()
	// Beating on while draining: the successor starts only after
	// "released", and a drain as long as the staleness bound would
	// fail every pod open in between. Fenced, this agent marks
	// nothing meanwhile.
	if a.dataplane != nil {
		a.dataplane.stopBeating(false) // the successor beats now
	}
	// Before "released" too: a successor that dies before it
	// listens at the hand-off path leaves this listener there,
	// which would take the next agent's request and never answer
	// it. Closed, it refuses, and that agent starts afresh on
	// sockets nobody else holds.
	a.closeHandedOver()
	stop.offer.Close()
}
