// What a hand-over does with the agent's own sockets and programs: the
// successor, once the predecessor stopped serving, points the programs at
// its own addresses (finishTakeover); the predecessor lists its sockets for
// the successor (handoffSockets) and closes its copies once drained
// (closeHandedOver). The exchange itself is package handoff's.

package agent

import (
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/handoff"
)

// finishTakeover, once the predecessor has stopped serving, points the
// programs at this agent's addresses and port, and then lets go of those
// it served for the predecessor.
func (a *Agent) finishTakeover() error {
	if a.capture == nil {
		return nil
	}
	if err := a.capture.takeOverConfig(); err != nil {
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
	a.capture.dropOtherAddrs()
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
	if a.ctl != nil {
		f, err := control.ListenerFile(a.ctl)
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
