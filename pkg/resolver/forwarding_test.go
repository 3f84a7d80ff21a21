package resolver

import (
	"testing"

	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// TestForwardEndedForASourceUnderItsShare: with every slot taken, a source
// within its share gets the slot of the oldest forward of the source most
// over its share; that slot is given back exactly once, whether the
// forward's goroutine had started (it is cancelled) or not (it learns so
// when it starts).
func TestForwardEndedForASourceUnderItsShare(t *testing.T) {
	const slots = 8
	s := New(Options{MaxInflight: slots, Limits: quota.Limits{QPS: -1, Forwarding: -1}})
	defer s.Close()
	var a, b, c quota.Source
	start := func(src *quota.Source) *forwardSlot {
		t.Helper()
		fw := &forwardSlot{source: src}
		if v := s.startForward(fw); v != quota.Taken {
			t.Fatalf("forward %d of a source: verdict %d, want Taken", src.Usage().Forwarding+1, v)
		}
		return fw
	}
	var as []*forwardSlot
	for range 6 { // alone: held to no share
		as = append(as, start(&a))
	}
	bs := []*forwardSlot{start(&b), start(&b)} // at its share, 8/(2+1)
	cancelled := 0
	for i, fw := range append(as, bs...) {
		if i == 0 {
			continue // a's oldest has not started yet
		}
		if !s.forwards.arm(fw, func() { cancelled++ }) {
			t.Fatal("a forward no one ended was not armed")
		}
	}
	if s.forwarding.Used() != slots {
		t.Fatalf("%d slots taken, want all %d", s.forwarding.Used(), slots)
	}

	// c holds nothing: within its share, it takes a's oldest, not started.
	c1 := start(&c)
	if s.forwards.arm(as[0], func() {}) {
		t.Error("a's oldest forward, ended before it started, was armed")
	}
	if s.forwards.remove(as[0]) {
		t.Error("a's ended forward was still among those in flight: its slot would be given back twice")
	}
	// Again: a's next oldest, started, is cancelled.
	c2 := start(&c)
	if cancelled != 1 {
		t.Errorf("%d forwards cancelled, want 1: a's second", cancelled)
	}
	if s.forwards.remove(as[1]) {
		t.Error("a's cancelled forward was still among those in flight")
	}
	if u := a.Usage(); u.Forwarding != 4 || u.ForwardRefused != 2 {
		t.Errorf("a holds %d forwards and was refused %d, want 4 and 2", u.Forwarding, u.ForwardRefused)
	}
	if u := b.Usage(); u.Forwarding != 2 || u.ForwardRefused != 0 {
		t.Errorf("b, at its share, holds %d forwards and was refused %d, want 2 and 0", u.Forwarding, u.ForwardRefused)
	}
	if s.forwarding.Used() != slots {
		t.Errorf("%d slots taken, want all %d", s.forwarding.Used(), slots)
	}

	// The rest end as forwards do, each giving its slot back once.
	for _, fw := range append(append(as[2:], bs...), c1, c2) {
		if !s.forwards.remove(fw) {
			t.Fatal("a forward in flight was not among those in flight")
		}
		s.endForward(fw.source)
	}
	if s.forwarding.Used() != 0 || s.forwarding.Holders() != 0 || s.forwards.list.Front() != nil {
		t.Errorf("after every forward ended: %d slots taken by %d sources, list from %p; want none", s.forwarding.Used(), s.forwarding.Holders(), s.forwards.list.Front())
	}
}
