// Package clock is the time a paced loop reads and waits on: the system's,
// or in tests a Fake that moves only when told to.
package clock

import (
	"slices"
	"sync"
	"time"
)

// Clock is time.Now and time.After, or a test's Fake.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

// System is the system's clock.
type System struct{}

func (System) Now() time.Time                         { return time.Now() }
func (System) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Later returns the later of a and b.
func Later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// Fake is a Clock that moves only when told to.
type Fake struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeWaiter
	afters  int       // After calls
	last    time.Time // the deadline of the last After call
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

// NewFake returns a Fake that reads now.
func NewFake(now time.Time) *Fake { return &Fake{now: now} }

func (c *Fake) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *Fake) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	c.afters++
	c.last = c.now.Add(d)
	if d <= 0 {
		ch <- c.now
	} else {
		c.waiters = append(c.waiters, fakeWaiter{c.last, ch})
	}
	return ch
}

// Advance moves the clock on by d, firing the timers due by then.
func (c *Fake) Advance(d time.Duration) { c.AdvanceTo(c.Now().Add(d)) }

// AdvanceTo moves the clock on to t (if it is later), firing the timers
// due by then.
func (c *Fake) AdvanceTo(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.now) {
		c.now = t
	}
	c.waiters = slices.DeleteFunc(c.waiters, func(w fakeWaiter) bool {
		if w.at.After(c.now) {
			return false
		}
		w.ch <- c.now
		return true
	})
}

// Calls returns how many timers were asked for, and the last one's
// deadline.
func (c *Fake) Calls() (n int, last time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.afters, c.last
}

// WaitingWithin reports whether a timer is set to fire within d.
func (c *Fake) WaitingWithin(d time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.ContainsFunc(c.waiters, func(w fakeWaiter) bool { return w.at.Before(c.now.Add(d)) })
}
