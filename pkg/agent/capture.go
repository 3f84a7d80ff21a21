package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/redirect"
)

// CaptureConfig turns on DNS capture with eBPF.
type CaptureConfig struct {
	// BPFFS is where maps and links are pinned (redirect.DefaultBPFFS).
	BPFFS string
	// Cgroup is the cgroup v2 directory the programs attach to; empty means
	// the cgroup2 root, i.e. every pod on the node.
	Cgroup string
	// Interface carries the resolver's addresses (redirect.DefaultInterface).
	Interface string
	// StaleAfter is how old the heartbeat may get before the programs fail
	// open (redirect.DefaultStaleAfter).
	StaleAfter time.Duration
	// StateDir keeps the record of marked pods across restarts (default: the
	// control socket's directory).
	StateDir string
	// Port is where redirected queries go on the slot addresses
	// (redirect.DefaultPort). Anything but 53 keeps them clear of
	// istio-cni's in-pod DNS rules, which match destination port 53.
	Port uint16
}

// heartbeatEvery is how often the agent proves it is alive; a third of the
// default staleness bound, so one late beat never fails pods open.
const heartbeatEvery = time.Second

// stopGrace is how long an agent that stops without a successor keeps
// answering after it failed pods open: queries redirected just before are
// already on their way to its sockets.
const stopGrace = 200 * time.Millisecond

// stateFile is the name of the attachments record in StateDir.
const stateFile = "attachments.json"

// stateRetryEvery is how often a record that could not be written is tried
// again.
const stateRetryEvery = 5 * time.Second

// capture owns the eBPF side: the redirector, the pods it marks, and the
// record that lets a restarted agent know who they are.
type capture struct {
	cfg  CaptureConfig
	log  *slog.Logger
	r    *redirect.Redirector
	pods *podcache.Cache
	// slots maps each resolver address to its slot: a query that arrived on
	// slot i is forwarded to what the pod addressed through slot i.
	slots     map[netip.AddrPort]int
	resolvers map[netip.Addr]bool

	mu sync.Mutex // serialises marking and the state file
	// retry writes the record again after a failed write; nil when the
	// record on disk is current. Guarded by mu, like closed.
	retry  *time.Timer
	closed bool
	// saveErr is the last failed write's error while the record is not
	// current, for status.
	saveErr atomic.Pointer[error]

	beatOnce, stopOnce sync.Once
	stopBeat           chan struct{}
	beating            sync.WaitGroup
}

// resolverSlots derives the per-slot resolver endpoints from the first IPv4
// and the first IPv6 listen address: slot i is that address plus i, on port.
func resolverSlots(listen []netip.AddrPort, port uint16) (r4, r6 [redirect.Slots]netip.AddrPort, err error) {
	var have4, have6 bool
	for _, l := range listen {
		switch {
		case l.Addr().Is4() && !have4:
			have4 = true
			r4, err = consecutive(l.Addr(), port)
		case l.Addr().Is6() && !have6:
			have6 = true
			r6, err = consecutive(l.Addr(), port)
		}
		if err != nil {
			return r4, r6, err
		}
	}
	if !have4 && !have6 {
		return r4, r6, errors.New("capture needs an IPv4 or IPv6 --listen address for the resolver")
	}
	return r4, r6, nil
}

func consecutive(base netip.Addr, port uint16) (out [redirect.Slots]netip.AddrPort, err error) {
	a := base
	for i := range out {
		if !a.IsValid() {
			return out, fmt.Errorf("resolver address %s: the %d addresses after it must exist too (one per nameserver slot)", base, redirect.Slots-1)
		}
		out[i] = netip.AddrPortFrom(a, port)
		a = a.Next()
	}
	return out, nil
}

func newCapture(cfg CaptureConfig, log *slog.Logger, pods *podcache.Cache, socket string, r4, r6 [redirect.Slots]netip.AddrPort) (*capture, error) {
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Dir(socket)
	}
	if cfg.Interface == "" {
		cfg.Interface = redirect.DefaultInterface
	}
	c := &capture{cfg: cfg, log: log, pods: pods, slots: map[netip.AddrPort]int{}, resolvers: map[netip.Addr]bool{}, stopBeat: make(chan struct{})}
	var prefixes []netip.Prefix
	for i := range redirect.Slots {
		for _, ap := range []netip.AddrPort{r4[i], r6[i]} {
			if ap.IsValid() {
				c.slots[ap] = i
				c.resolvers[ap.Addr()] = true
				prefixes = append(prefixes, netip.PrefixFrom(ap.Addr(), ap.Addr().BitLen()))
			}
		}
	}
	kind, err := redirect.EnsureInterface(log, cfg.Interface, prefixes)
	if err != nil {
		return nil, fmt.Errorf("resolver interface: %w", err)
	}
	log.Info("resolver addresses ready", "interface", cfg.Interface, "kind", kind, "addresses", prefixes)
	c.r, err = redirect.Load(redirect.Config{
		BPFFS: cfg.BPFFS, CgroupPath: cfg.Cgroup, Resolver4: r4, Resolver6: r6, StaleAfter: cfg.StaleAfter, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// startBeating turns capture on: it writes the heartbeat now and every
// heartbeatEvery until stopBeating. Only an agent that serves a table may
// call it, or pods would be sent to a resolver that cannot answer them.
func (c *capture) startBeating() {
	c.beatOnce.Do(func() {
		if err := c.r.Heartbeat(); err != nil {
			c.log.Error("heartbeat failed: pods keep their own nameservers", "err", err)
		}
		c.beating.Add(1)
		go func() {
			defer c.beating.Done()
			t := time.NewTicker(heartbeatEvery)
			defer t.Stop()
			for {
				select {
				case <-c.stopBeat:
					return
				case <-t.C:
					if err := c.r.Heartbeat(); err != nil {
						c.log.Error("heartbeat failed: pods fail open once it is stale", "err", err)
					}
				}
			}
		}()
	})
}

// stopBeating stops writing the heartbeat. With failOpen it also makes the
// heartbeat stale at once, so pods reach their own nameservers now rather
// than after StaleAfter; a handoff leaves it fresh for the successor.
func (c *capture) stopBeating(failOpen bool) {
	c.stopOnce.Do(func() { close(c.stopBeat) })
	c.beating.Wait() // no beat can land after the stale mark below
	if failOpen {
		c.r.StopHeartbeat()
	}
}

// upstream returns the nameserver the pod behind client addressed through
// the resolver address local, when the programs learned it.
func (c *capture) upstream(client, local netip.AddrPort) (netip.AddrPort, bool) {
	slot, ok := c.slots[local]
	if !ok {
		return netip.AddrPort{}, false
	}
	p := c.pods.Lookup(client.Addr())
	if p == nil || p.Attachment == nil || p.Attachment.NetnsCookie == 0 {
		return netip.AddrPort{}, false
	}
	ns, ok := c.r.Nameserver(p.Attachment.NetnsCookie, slot)
	if !ok || c.resolvers[ns.Addr().Unmap()] {
		return netip.AddrPort{}, false // a pod that names the resolver itself
	}
	return ns, true
}

// apply records an attachment and marks or unmarks its netns to match
// a.Captured. Only marking can fail it: the record on disk is bookkeeping
// (see saveOrRetry).
func (c *capture) apply(a podcache.Attachment) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.setMark(a); err != nil {
		return err
	}
	c.pods.Attach(a)
	c.saveOrRetry()
	return nil
}

// forget unmarks and forgets the attachment with that key.
func (c *capture) forget(key string) (podcache.Attachment, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a, ok := c.pods.Detach(key)
	if !ok {
		return a, false, nil
	}
	err := c.r.Unmark(a.NetnsCookie)
	c.saveOrRetry()
	return a, true, err
}

// saveOrRetry writes the record of attachments. A write that fails never
// fails the pod it was written for (the mark is what captures it, and a
// restarted agent rebuilds lost records from the source and the runtime):
// it is logged, counted in ztdns_state_write_failures_total, shown by
// `ztdns status`, and tried again every stateRetryEvery until it works.
// Callers hold mu.
func (c *capture) saveOrRetry() {
	err := c.save()
	if err == nil {
		if c.retry != nil {
			c.retry.Stop()
			c.retry = nil
			c.saveErr.Store(nil)
			c.log.Info("the record of captured pods is written again", "path", c.statePath())
		}
		return
	}
	metricStateWriteFailures.Inc()
	if c.retry == nil {
		c.log.Error("cannot write the record of captured pods; pods are captured all the same, and the write is retried",
			"path", c.statePath(), "every", stateRetryEvery, "err", err)
	} else {
		c.log.Debug("the record of captured pods still cannot be written", "err", err)
	}
	c.saveErr.Store(&err)
	if c.closed {
		return
	}
	if c.retry == nil {
		c.retry = time.AfterFunc(stateRetryEvery, c.retrySave)
	} else {
		c.retry.Reset(stateRetryEvery)
	}
}

func (c *capture) retrySave() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.retry != nil && !c.closed {
		c.saveOrRetry()
	}
}

// unsaved returns why the record on disk is not current, or nil.
func (c *capture) unsaved() error {
	if p := c.saveErr.Load(); p != nil {
		return *p
	}
	return nil
}

func (c *capture) setMark(a podcache.Attachment) error {
	if a.NetnsCookie == 0 {
		return errors.New("no network namespace cookie")
	}
	if !a.Captured {
		return c.r.Unmark(a.NetnsCookie)
	}
	info := redirect.PodInfo{}
	for _, ip := range a.IPs {
		switch {
		case ip.Is4() && !info.IPv4.IsValid():
			info.IPv4 = ip
		case ip.Is6() && !info.IPv6.IsValid():
			info.IPv6 = ip
		}
	}
	return c.r.Mark(a.NetnsCookie, info)
}

// restore reads the attachments a previous agent recorded, drops those
// whose network namespace is gone (or is another one at the same path), and
// makes the pods map agree: marks nobody recorded are removed, recorded
// captured pods that lost their mark get it back.
func (c *capture) restore() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	saved, err := c.load()
	if err != nil {
		c.log.Warn("ignoring unreadable capture state; marks are rebuilt from the source and the runtime", "err", err)
	}
	for _, a := range saved {
		if a.NetnsPath != "" {
			cookie, err := redirect.NetnsCookie(a.NetnsPath)
			if err != nil || cookie != a.NetnsCookie {
				c.log.Info("pod's network namespace is gone; forgetting it", "pod", a.Namespace+"/"+a.Name, "netns", a.NetnsPath)
				continue
			}
		}
		c.pods.Attach(a)
	}
	err = c.reconcileLocked()
	c.saveOrRetry()
	return err
}

// reconcileLocked makes the pods map match the attachments. Callers hold mu.
func (c *capture) reconcileLocked() error {
	marked, err := c.r.Pods()
	if err != nil {
		return err
	}
	want := map[uint64]podcache.Attachment{}
	for _, a := range c.pods.Attachments() {
		if a.Captured {
			want[a.NetnsCookie] = a
		}
	}
	var errs []error
	have := map[uint64]bool{}
	for _, m := range marked {
		have[m.NetnsCookie] = true
		if _, ok := want[m.NetnsCookie]; !ok {
			c.log.Info("removing a stale mark", "netnsCookie", m.NetnsCookie)
			errs = append(errs, c.r.Unmark(m.NetnsCookie))
		}
	}
	for cookie, a := range want {
		if !have[cookie] {
			c.log.Info("restoring a lost mark", "pod", a.Namespace+"/"+a.Name, "netnsCookie", cookie)
			errs = append(errs, c.setMark(a))
		}
	}
	return errors.Join(errs...)
}

func (c *capture) statePath() string { return filepath.Join(c.cfg.StateDir, stateFile) }

func (c *capture) load() ([]podcache.Attachment, error) {
	b, err := os.ReadFile(c.statePath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []podcache.Attachment
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("%s: %w", c.statePath(), err)
	}
	return out, nil
}

// save writes the attachments atomically. Callers hold mu.
func (c *capture) save() error {
	all := c.pods.Attachments()
	list := make([]podcache.Attachment, 0, len(all))
	for _, a := range all {
		list = append(list, a)
	}
	slices.SortFunc(list, func(a, b podcache.Attachment) int {
		return strings.Compare(a.Key(), b.Key())
	})
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.cfg.StateDir, 0o750); err != nil {
		return err
	}
	tmp := c.statePath() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, c.statePath())
}

// close releases this process's hold on the programs; the pins stay.
func (c *capture) close() error {
	c.mu.Lock()
	c.closed = true
	if c.retry != nil {
		c.retry.Stop()
	}
	c.mu.Unlock()
	return c.r.Close()
}
