package quota

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestRateAllowsBurstThenSustainedRate(t *testing.T) {
	r := NewRate(10, 20) // 10/s, 20 at once
	var s Source
	allowed := func(now time.Duration, n int) int {
		got := 0
		for range n {
			if s.Allow(int64(now), r) {
				got++
			}
		}
		return got
	}
	if got := allowed(0, 30); got != 20 {
		t.Errorf("a burst of 30 at once: %d allowed, want the burst of 20", got)
	}
	if got := allowed(time.Second, 30); got != 10 {
		t.Errorf("a second later: %d allowed, want 10 (the rate)", got)
	}
	if got := allowed(time.Second+50*time.Millisecond, 5); got != 0 {
		t.Errorf("50 ms later: %d allowed, want 0 (one every 100 ms)", got)
	}
	if got := allowed(time.Second+100*time.Millisecond, 5); got != 1 {
		t.Errorf("100 ms later: %d allowed, want 1", got)
	}
	if got := allowed(time.Hour, 100); got != 20 {
		t.Errorf("after a long pause: %d allowed, want the burst of 20, not more", got)
	}
	if u := s.Usage(); u.RateLimited != 10+20+5+4+80 {
		t.Errorf("RateLimited = %d, want %d", u.RateLimited, 10+20+5+4+80)
	}
}

// TestRateWait: Wait says when Allow allows the next query again.
func TestRateWait(t *testing.T) {
	r := NewRate(10, 2) // one every 100 ms, 2 at once
	var s Source
	if d := s.Wait(0, r); d != 0 {
		t.Errorf("a full bucket: wait %v, want 0", d)
	}
	s.Allow(0, r)
	s.Allow(0, r)
	now := int64(30 * time.Millisecond)
	if d := s.Wait(now, r); d != 70*time.Millisecond {
		t.Errorf("the burst spent 30 ms ago: wait %v, want 70ms", d)
	}
	if s.Allow(now+int64(69*time.Millisecond), r) || !s.Allow(now+int64(70*time.Millisecond), r) {
		t.Error("Allow does not allow the next query exactly when Wait said")
	}
	if d := s.Wait(0, NewRate(0, 0)); d != 0 {
		t.Errorf("no rate: wait %v, want 0", d)
	}
}

func TestRateZeroIsUnlimited(t *testing.T) {
	var s Source
	for i := range 100000 {
		if !s.Allow(0, NewRate(0, 0)) {
			t.Fatalf("query %d refused without a rate", i)
		}
	}
}

func TestRateIsExactUnderConcurrency(t *testing.T) {
	r := NewRate(1, 1000)
	var s Source
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := 0
	for range 8 {
		wg.Go(func() {
			n := 0
			for range 1000 {
				if s.Allow(0, r) {
					n++
				}
			}
			mu.Lock()
			allowed += n
			mu.Unlock()
		})
	}
	wg.Wait()
	if allowed != 1000 {
		t.Errorf("8 goroutines × 1000 queries at once: %d allowed, want exactly the burst of 1000", allowed)
	}
}

func TestSlotsAreBoundedAndCounted(t *testing.T) {
	var s Source
	for i := range 3 {
		if s.StartForward(3, nil) != Taken {
			t.Fatalf("forward %d refused under the bound of 3", i)
		}
	}
	if s.StartForward(3, nil) != OverSource {
		t.Error("a fourth forward was allowed with a bound of 3")
	}
	s.EndForward(nil)
	if s.StartForward(3, nil) != Taken {
		t.Error("a slot that was given back was not reused")
	}
	for i := range 2 {
		if s.OpenConn(2, nil) != Taken {
			t.Fatalf("connection %d refused under the bound of 2", i)
		}
	}
	if s.OpenConn(2, nil) != OverSource || s.OpenConn(2, nil) != OverSource {
		t.Error("a connection over the bound of 2 was allowed")
	}
	want := Usage{ForwardRefused: 1, TCPRefused: 2, Forwarding: 3, TCPConns: 2}
	if got := s.Usage(); got != want {
		t.Errorf("Usage() = %+v, want %+v", got, want)
	}
	if (*Source)(nil).Usage() != (Usage{}) {
		t.Error("a nil Source has usage")
	}
}

func TestTableIsBounded(t *testing.T) {
	tb := NewTable(4)
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}) }
	own := map[*Source]bool{}
	for i := range 10 {
		s := tb.Get(addr(i), 0)
		s.StartForward(0, nil) // busy: a sweep must keep it
		own[s] = true
	}
	if tb.Len() != 4 {
		t.Errorf("%d addresses have entries, want the bound of 4", tb.Len())
	}
	if len(own) != 5 {
		t.Errorf("10 addresses got %d distinct sources, want 4 of their own and one shared", len(own))
	}
	if tb.Get(addr(0), 0) != tb.Get(addr(0), 0) || tb.Get(addr(8), 0) != tb.Get(addr(9), 0) {
		t.Error("an address's source changed between lookups, or two over the bound do not share one")
	}
	if got := tb.Get(netip.MustParseAddr("::ffff:203.0.113.0"), 0); got != tb.Get(addr(0), 0) {
		t.Error("an IPv4-mapped address does not find its IPv4 entry")
	}

	// Idle entries are forgotten when room is needed (at most once a
	// second); busy ones stay.
	tb.Get(addr(0), 0).EndForward(nil)
	tb.Get(addr(1), 0).EndForward(nil)
	now := int64(2 * time.Second)
	a, b := tb.Get(addr(20), now), tb.Get(addr(21), now)
	if a == b || tb.Len() != 4 {
		t.Errorf("after two entries went idle: new addresses share a source (%v) or %d entries, want 4", a == b, tb.Len())
	}
	if c := tb.Get(addr(22), now); c != tb.Get(addr(23), now) {
		t.Error("with the table full of busy entries, new addresses do not share the overflow source")
	}
}

func TestBudget(t *testing.T) {
	b := NewBudget(100, 0)
	if b.TryTake(nil, 60) != Taken || b.TryTake(nil, 40) != Taken {
		t.Fatal("taking 100 of 100 failed")
	}
	if b.TryTake(nil, 1) == Taken {
		t.Error("took more than the budget")
	}
	b.Give(nil, 60)
	if b.TryTake(nil, 50) != Taken || b.Used() != 90 || b.Peak() != 100 {
		t.Errorf("after giving back 60 and taking 50: used %d, peak %d; want 90 and 100", b.Used(), b.Peak())
	}
	var unbounded *Budget = NewBudget(0, 0)
	if unbounded != nil || unbounded.TryTake(nil, 1<<40) != Taken {
		t.Error("a budget of 0 is not unbounded")
	}
	unbounded.Give(nil, 1<<40) // a nil budget counts nothing
}

// TestPoolFairShare: below half of the pool a source takes up to its own
// bound; past half, one over its share (the pool divided among holders
// and one more) is refused as over its own bound, while a source under
// its share still gets in.
func TestPoolFairShare(t *testing.T) {
	p := NewPool(16)
	var a, b, c Source
	for i := range 8 {
		if v := a.StartForward(0, p); v != Taken {
			t.Fatalf("a's forward %d with the pool at most half used: %v, want Taken", i, v)
		}
	}
	// b: share 16/3 = 5 once it holds some.
	for i := range 5 {
		if v := b.StartForward(0, p); v != Taken {
			t.Fatalf("b's forward %d under its share: %v, want Taken", i, v)
		}
	}
	if v := b.StartForward(0, p); v != OverSource {
		t.Errorf("b's sixth forward: %v, want OverSource (share 5)", v)
	}
	// c: share 16/4 = 4, and 3 left in the pool.
	for i := range 3 {
		if v := c.StartForward(0, p); v != Taken {
			t.Fatalf("c's forward %d: %v, want Taken", i, v)
		}
	}
	if v := c.StartForward(0, p); v != OverPool {
		t.Errorf("c's fourth forward with the pool used up: %v, want OverPool", v)
	}
	if p.Used() != 16 || p.Holders() != 3 {
		t.Errorf("pool used %d by %d holders, want 16 by 3", p.Used(), p.Holders())
	}
	if v := a.StartForward(0, p); v != OverSource {
		t.Errorf("a's ninth forward: %v, want OverSource (over its fair share of 4)", v)
	}
	if u := a.Usage(); u.Forwarding != 8 || u.ForwardRefused != 1 {
		t.Errorf("a's usage %+v, want 8 forwarding and 1 refused", u)
	}
	if u := c.Usage(); u.ForwardRefused != 0 {
		t.Errorf("c, under its share, was counted refused: %+v", u)
	}
	for range 8 {
		a.EndForward(p)
	}
	if p.Holders() != 2 || p.Used() != 8 {
		t.Errorf("after a gave everything back: %d holders, %d used; want 2 and 8", p.Holders(), p.Used())
	}
}

// TestPoolHoldersUnderConcurrency: the holders and what they hold are
// counted exactly however takes and gives interleave: several goroutines
// per source take bytes of varied sizes from a small budget and give them
// back, so that sources start and stop holding while others do, and both
// kinds of refusal happen (a source over its own bound or its share, the
// budget spent). At every quiescent point, and at the end, Holders() is
// the number of sources holding something and Used() the sum of what
// everyone holds.
func TestPoolHoldersUnderConcurrency(t *testing.T) {
	const (
		size, perSource  = 512, 200
		sources          = 8
		perSourceWorkers = 4
		phases, rounds   = 50, 1000
		maxHeld          = 3 // takes one worker holds at once
	)
	b := NewBudget(size, perSource)
	srcs := make([]Source, sources)
	type worker struct {
		src  *Source // nil: work of no source
		held []int   // the sizes it holds now
	}
	var workers []*worker
	for i := range srcs {
		for range perSourceWorkers {
			workers = append(workers, &worker{src: &srcs[i]})
		}
	}
	workers = append(workers, &worker{}, &worker{})
	var verdicts [OverPool + 1]atomic.Int64
	check := func(when string) {
		t.Helper()
		var used int64
		held := map[*Source]int64{}
		for _, w := range workers {
			for _, n := range w.held {
				used += int64(n)
				held[w.src] += int64(n)
			}
		}
		var holders int64
		for i := range srcs {
			s := &srcs[i]
			if held[s] > 0 {
				holders++
			}
			if got := s.Usage().InflightBytes; got != held[s] || got > perSource {
				t.Errorf("%s: source %d counts %d bytes, holds %d (its bound %d)", when, i, got, held[s], perSource)
			}
		}
		if b.pool.Holders() != holders || b.Used() != used {
			t.Fatalf("%s: the budget counts %d holders and %d bytes used; %d sources hold %d bytes", when, b.pool.Holders(), b.Used(), holders, used)
		}
		if b.Peak() > size {
			t.Fatalf("%s: peak %d over the budget of %d", when, b.Peak(), size)
		}
	}
	for phase := range phases {
		var wg sync.WaitGroup
		for wi, w := range workers {
			wg.Go(func() {
				rng := uint32(wi*7919+phase*104729) | 1
				for range rounds {
					rng = rng*1664525 + 1013904223
					if len(w.held) == maxHeld || len(w.held) > 0 && rng&(1<<7) == 0 {
						j := int(rng>>8) % len(w.held)
						b.Give(w.src, w.held[j])
						w.held = append(w.held[:j], w.held[j+1:]...)
						continue
					}
					n := int(rng>>24)%64 + 1
					v := b.TryTake(w.src, n)
					verdicts[v].Add(1)
					if v == Taken {
						w.held = append(w.held, n)
					}
				}
			})
		}
		wg.Wait() // quiescent: every worker keeps what it holds
		check(fmt.Sprintf("after phase %d", phase))
	}
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Go(func() {
			for _, n := range w.held {
				b.Give(w.src, n)
			}
			w.held = nil
		})
	}
	wg.Wait()
	check("at the end")
	if b.pool.Holders() != 0 || b.Used() != 0 {
		t.Errorf("after every byte was given back: %d holders, %d used", b.pool.Holders(), b.Used())
	}
	t.Logf("taken %d, refused %d over a source's bound or share and %d with the budget spent; peak %d of %d",
		verdicts[Taken].Load(), verdicts[OverSource].Load(), verdicts[OverPool].Load(), b.Peak(), size)
	if verdicts[OverSource].Load() == 0 || verdicts[OverPool].Load() == 0 {
		t.Errorf("refusals: %d over a source's bound or share, %d with the budget spent; want both kinds",
			verdicts[OverSource].Load(), verdicts[OverPool].Load())
	}
}

func TestBudgetPerSource(t *testing.T) {
	b := NewBudget(200, 80)
	var s, o Source
	if b.TryTake(&s, 80) != Taken || b.TryTake(&s, 1) == Taken {
		t.Error("a source took other than its bound of 80")
	}
	if b.TryTake(&o, 20) != Taken || b.TryTake(nil, 50) != Taken {
		t.Error("another source or work of none was refused under the budget")
	}
	// 150 of 200 spent by two sources: a share is 200/3 = 66.
	if b.TryTake(&o, 47) == Taken {
		t.Error("a source took past its share of a budget more than half spent")
	}
	if b.TryTake(&o, 46) != Taken {
		t.Error("a source was refused up to its share")
	}
	b.Give(&s, 80)
	b.Give(&s, 0) // what the forwarder gives back for no reply
	if b.pool.Holders() != 1 {
		t.Errorf("giving nothing moved the holders to %d, want 1", b.pool.Holders())
	}
	if b.TryTake(&o, 0) != Taken || b.pool.Holders() != 1 {
		t.Errorf("taking nothing moved the holders to %d, want 1", b.pool.Holders())
	}
	if u := s.Usage(); u.InflightBytes != 0 || b.Used() != 116 {
		t.Errorf("after giving back: source holds %d, budget used %d; want 0 and 116", u.InflightBytes, b.Used())
	}
}

// TestBudgetSaysWhichBoundRefused: a source over its own bound or its fair
// share is told OverSource, the work of any source refused because the
// budget is spent OverPool, so that the caller counts each as the
// source's or the node's.
func TestBudgetSaysWhichBoundRefused(t *testing.T) {
	b := NewBudget(200, 80)
	var s, o, third Source
	if v := b.TryTake(&s, 81); v != OverSource {
		t.Errorf("81 bytes with a bound of 80 a source: %v, want OverSource", v)
	}
	if v := b.TryTake(&s, 80); v != Taken {
		t.Fatalf("80 bytes within every bound: %v, want Taken", v)
	}
	if b.TryTake(&o, 20) != Taken || b.TryTake(nil, 50) != Taken {
		t.Fatal("another source or work of none was refused under the budget")
	}
	// 150 of 200 spent by two sources: a share is 200/3 = 66.
	if v := b.TryTake(&o, 47); v != OverSource {
		t.Errorf("past its fair share: %v, want OverSource", v)
	}
	if v := b.TryTake(&o, 46); v != Taken {
		t.Fatalf("up to its fair share: %v, want Taken", v)
	}
	// 196 of 200 spent: a source within its share (200/4 = 50), and work
	// of none, find the budget spent.
	if v := b.TryTake(&third, 5); v != OverPool {
		t.Errorf("5 bytes with 4 left, within the source's share: %v, want OverPool", v)
	}
	if v := b.TryTake(nil, 5); v != OverPool {
		t.Errorf("5 bytes of no source with 4 left: %v, want OverPool", v)
	}
	if v := (*Budget)(nil).TryTake(&s, 1<<40); v != Taken {
		t.Errorf("a nil budget: %v, want Taken", v)
	}
	if b.Used() != 196 || b.pool.Holders() != 2 {
		t.Errorf("used %d by %d holders, want 196 by 2", b.Used(), b.pool.Holders())
	}
}

// TestBudgetTakesBackAHold: a source within its share that finds the
// budget spent gets room: the biggest hold of the source most over its
// share is ended and its bytes given back at once, once; the work whose
// hold it was takes and gives nothing more.
func TestBudgetTakesBackAHold(t *testing.T) {
	b := NewBudget(100, 0)
	var over, fair, asking Source
	var ended []string
	hold := func(s *Source, name string, n int) *Hold {
		h := NewHold(s, func() { ended = append(ended, name) })
		if v := b.Grow(h, n); v != Taken {
			t.Fatalf("%s: %d bytes %v, want Taken", name, n, v)
		}
		return h
	}
	small, big := hold(&over, "small", 20), hold(&over, "big", 40)
	hold(&fair, "fair", 30)
	// 90 of 100 held by two sources: with the asking one a share is 33,
	// and one source is over it.
	if v := b.TryTake(&asking, 20); v != Taken {
		t.Fatalf("a source within its share, the budget spent: %v, want Taken", v)
	}
	if len(ended) != 1 || ended[0] != "big" {
		t.Fatalf("ended %v: want the biggest hold of the source over its share", ended)
	}
	if b.Used() != 70 || over.Usage().InflightBytes != 20 {
		t.Errorf("used %d, the source over its share holds %d; want 70 and 20", b.Used(), over.Usage().InflightBytes)
	}
	// The ended work takes nothing more, and gives nothing back again.
	if v := b.Grow(big, 5); v != OverSource {
		t.Errorf("a hold taken back grows: %v, want OverSource", v)
	}
	if b.Drop(big) || b.Keep(big) {
		t.Error("a hold taken back says its bytes were its own")
	}
	if b.Used() != 70 || over.Usage().InflightBytes != 20 {
		t.Errorf("after the ended work stopped: used %d, its source holds %d; want 70 and 20", b.Used(), over.Usage().InflightBytes)
	}
	if !b.Keep(small) || b.Used() != 70 {
		t.Errorf("a hold kept: used %d, want 70", b.Used())
	}
	b.Give(&over, 20)
	if !b.Drop(NewHold(&fair, nil)) || b.Used() != 50 {
		t.Errorf("a hold of nothing dropped: used %d, want 50", b.Used())
	}

	// Bytes taken without a hold, and a hold within its share, are not
	// taken back.
	b = NewBudget(100, 0)
	var plain, within, late Source
	b.TryTake(&plain, 60)
	hold(&within, "within", 30)
	if v := b.TryTake(&late, 20); v != OverPool || len(ended) != 1 {
		t.Errorf("no hold over its share: %v, ended %v; want OverPool and no more", v, ended)
	}
}
