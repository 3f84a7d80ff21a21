package dnstest

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/podcache"
)

// HangingPods is a pod registry for a resolver (resolver.Options.Pods)
// that finds no pod, and whose Lookup, which the resolver's loops call for
// every query and connection, hangs while Hanging is set, until Unhang: a
// deadlock in the answer path, as a test makes one.
type HangingPods struct {
	Hanging     atomic.Bool
	entered     chan struct{} // one send per Lookup that hangs
	releaseOnce sync.Once
	release     chan struct{}
}

// NewHangingPods returns a HangingPods that does not hang yet.
func NewHangingPods() *HangingPods {
	return &HangingPods{entered: make(chan struct{}, 16), release: make(chan struct{})}
}

func (p *HangingPods) Lookup(netip.Addr) *podcache.Pod {
	if p.Hanging.Load() {
		select {
		case p.entered <- struct{}{}:
		default:
		}
		<-p.release
	}
	return nil
}

func (p *HangingPods) Owners() map[netip.Addr]*podcache.Pod { return nil }
func (p *HangingPods) List() []*podcache.Pod                { return nil }
func (p *HangingPods) OnChange(func()) (stop func())        { return func() {} }

// Unhang lets every Lookup that hangs, and those to come, return; a test
// calls it before the resolver closes, whose loops must end.
func (p *HangingPods) Unhang() { p.releaseOnce.Do(func() { close(p.release) }) }

// WaitHung waits until a loop hangs in Lookup, on what it was sent.
func (p *HangingPods) WaitHung(t testing.TB, what string) {
	t.Helper()
	select {
	case <-p.entered:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no loop hangs after 10s", what)
	}
}
