//go:build linux

package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/pkg/dnswire"
)

// floodConfigEnv carries a FloodConfig, as JSON, to the flood helper.
const floodConfigEnv = "ZTDNS_TESTENV_FLOOD"

// FloodConfig is a load a fake pod puts on its nameserver: an attacker's
// flood, or the steady trickle of a pod that only wants its answers.
type FloodConfig struct {
	// Mode is one of
	//   - "udp": queries as fast as the pod can send them on Conns
	//     connected sockets, not waiting for answers (answers are counted
	//     as they come);
	//   - "tcp": queries on Conns connections, Window unanswered on each,
	//     the next sent when an answer comes; a connection the server
	//     closes is opened again;
	//   - "tcp-idle": Conns connections held open, sending nothing; one
	//     the server closes is opened again after Pause;
	//   - "probe": one query every Every, each from a fresh socket (UDP,
	//     or TCP with TCP set) as a stub resolver asks, waiting up to
	//     Timeout for its answer; with InFlight set, at most that many
	//     unanswered at once.
	Mode string `json:"mode"`
	// Server is the nameserver (ip:port); default the first nameserver of
	// the pod's /etc/resolv.conf, as a stub would ask it.
	Server string `json:"server,omitempty"`
	// Name is the question; a %d in it is replaced by a counter, which
	// makes every name unique. Type is A unless set (e.g. "TXT").
	Name string `json:"name,omitempty"`
	Type string `json:"type,omitempty"`
	TCP  bool   `json:"tcp,omitempty"`

	// Rate paces "udp" at that many queries a second in all (0: as fast
	// as the pod can send).
	Rate    int           `json:"rate,omitempty"`
	Conns   int           `json:"conns,omitempty"`
	Window  int           `json:"window,omitempty"`
	Every   time.Duration `json:"every,omitempty"`
	Timeout time.Duration `json:"timeout,omitempty"`
	Pause   time.Duration `json:"pause,omitempty"`
	// InFlight bounds "probe": at most that many queries unanswered (and,
	// over TCP, connections open) at once; the next waits for one to end
	// and then goes at once, the pacing resuming after it (0: no bound).
	// A pod that keeps it well under its per-pod shares (--pod-max-tcp,
	// --pod-max-forwarding) stays within them however late the answers
	// come (well under: a connection it closed counts until the resolver
	// reads the close). Without it, a resolver slowed by a loaded machine
	// finds the probes piled up, up to Timeout/Every of them, and refuses
	// those over the pod's shares.
	InFlight int `json:"inFlight,omitempty"`
	// For is how long the load lasts.
	For time.Duration `json:"for"`
}

// FloodResult is what the pod saw.
type FloodResult struct {
	Sent int `json:"sent"`
	// Rcodes counts the replies by rcode name (NOERROR, SERVFAIL, ...).
	Rcodes map[string]int `json:"rcodes"`
	// Answered counts probes that got NOERROR with at least one record;
	// Latencies are theirs, in order of sending.
	Answered  int             `json:"answered"`
	Latencies []time.Duration `json:"latencies,omitempty"`
	// Timeouts and Errors count probes that got no reply in time, or
	// failed on the socket.
	Timeouts int `json:"timeouts"`
	Errors   int `json:"errors"`
	// Opened counts TCP connections the pod opened, Closed those the
	// server closed.
	Opened int `json:"opened"`
	Closed int `json:"closed"`
}

// AnsweredFraction is the share of probes answered.
func (r FloodResult) AnsweredFraction() float64 {
	if r.Sent == 0 {
		return 0
	}
	return float64(r.Answered) / float64(r.Sent)
}

// LatencyQuantile is the q-quantile (0 < q <= 1) of the answered probes'
// latencies; probes that were not answered count as infinitely slow.
func (r FloodResult) LatencyQuantile(q float64) time.Duration {
	if r.Sent == 0 {
		return 0
	}
	l := slices.Clone(r.Latencies)
	slices.Sort(l)
	i := int(q*float64(r.Sent)+0.999999) - 1
	if i >= len(l) {
		return time.Duration(1<<63 - 1)
	}
	return l[max(i, 0)]
}

// Flood is a load running in a pod; Wait returns what it saw.
type Flood struct {
	cmd *exec.Cmd
	out bytes.Buffer
	err bytes.Buffer
}

// StartFlood runs cfg inside the pod and the cgroup (so the capture
// programs see its sockets), as the test binary in helper mode: the test
// binary must call RunHelper first in TestMain or an init function. It is
// killed when the test ends.
func StartFlood(tb testing.TB, p *Pod, cg *Cgroup, cfg FloodConfig) *Flood {
	tb.Helper()
	b, err := json.Marshal(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	f := &Flood{cmd: p.Command(ctx, cg, os.Args[0])}
	f.cmd.Env = append(os.Environ(), helperEnv+"=flood", floodConfigEnv+"="+string(b))
	f.cmd.Stdout, f.cmd.Stderr = &f.out, &f.err
	if err := f.cmd.Start(); err != nil {
		tb.Fatalf("testenv: start flood: %v", err)
	}
	tb.Cleanup(func() { _ = f.cmd.Wait() })
	return f
}

// Wait waits for the load to end and returns its result.
func (f *Flood) Wait(tb testing.TB) FloodResult {
	tb.Helper()
	if err := f.cmd.Wait(); err != nil {
		tb.Fatalf("testenv: flood: %v\n%s", err, f.err.String())
	}
	var r FloodResult
	if err := json.Unmarshal(f.out.Bytes(), &r); err != nil {
		tb.Fatalf("testenv: flood printed %q: %v\n%s", f.out.String(), err, f.err.String())
	}
	return r
}

// flood is the helper side: it runs the load in FloodConfig and prints a
// FloodResult as JSON.
func flood() int {
	var cfg FloodConfig
	if err := json.Unmarshal([]byte(os.Getenv(floodConfigEnv)), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "flood: bad config:", err)
		return 2
	}
	if cfg.Server == "" {
		conf, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil || len(conf.Servers) == 0 {
			fmt.Fprintln(os.Stderr, "flood: no nameserver in /etc/resolv.conf:", err)
			return 2
		}
		cfg.Server = net.JoinHostPort(conf.Servers[0], "53")
	}
	l := newFloodLoad(cfg)
	switch cfg.Mode {
	case "udp":
		l.run(l.udp)
	case "tcp":
		l.run(l.tcp)
	case "tcp-idle":
		l.run(l.tcpIdle)
	case "probe":
		l.probe()
	default:
		fmt.Fprintf(os.Stderr, "flood: unknown mode %q\n", cfg.Mode)
		return 2
	}
	if err := json.NewEncoder(os.Stdout).Encode(&l.res); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

type floodLoad struct {
	cfg   FloodConfig
	qtype uint16
	end   time.Time

	mu  sync.Mutex
	n   int // names asked so far, for unique names
	res FloodResult
}

// newFloodLoad starts the load of cfg, its Server set, from now.
func newFloodLoad(cfg FloodConfig) *floodLoad {
	cfg.Conns, cfg.Window = max(cfg.Conns, 1), max(cfg.Window, 1)
	qtype := dns.TypeA
	if cfg.Type != "" {
		qtype = dns.StringToType[strings.ToUpper(cfg.Type)]
	}
	return &floodLoad{cfg: cfg, qtype: qtype, end: time.Now().Add(cfg.For), res: FloodResult{Rcodes: map[string]int{}}}
}

// query packs the next question.
func (l *floodLoad) query() []byte {
	l.mu.Lock()
	n := l.n
	l.n++
	l.res.Sent++
	l.mu.Unlock()
	name := l.cfg.Name
	if strings.Contains(name, "%d") {
		name = fmt.Sprintf(name, n)
	}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), l.qtype)
	m.Id = uint16(n)
	b, _ := m.Pack()
	return b
}

// count records a reply (or, with reply nil, a failure) and, for a probe,
// its latency.
func (l *floodLoad) count(reply []byte, err error, took time.Duration, probe bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case err != nil && isTimeout(err):
		l.res.Timeouts++
	case err != nil:
		l.res.Errors++
	case len(reply) >= dnswire.HeaderLen:
		h, _ := dnswire.ReadHeader(reply)
		l.res.Rcodes[dns.RcodeToString[h.Rcode()]]++
		if probe && h.Rcode() == dns.RcodeSuccess && h.ANCount > 0 {
			l.res.Answered++
			l.res.Latencies = append(l.res.Latencies, took)
		}
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// run runs one worker per connection until the end.
func (l *floodLoad) run(worker func()) {
	var wg sync.WaitGroup
	for range l.cfg.Conns {
		wg.Go(worker)
	}
	wg.Wait()
}

func (l *floodLoad) udp() {
	c, err := net.Dial("udp", l.cfg.Server)
	if err != nil {
		l.count(nil, err, 0, false)
		return
	}
	defer c.Close()
	go func() {
		buf := make([]byte, 65535)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			l.count(buf[:n], nil, 0, false)
		}
	}()
	// Paced: a batch every 10 ms; unpaced: one batch after another.
	batch, tick := 1, time.Duration(0)
	if l.cfg.Rate > 0 {
		batch, tick = max(l.cfg.Rate/l.cfg.Conns/100, 1), 10*time.Millisecond
	}
	next := time.Now()
	for time.Now().Before(l.end) {
		for range batch {
			_, _ = c.Write(l.query()) // a full socket buffer drops it: a flood's loss
		}
		next = next.Add(tick)
		time.Sleep(time.Until(next))
	}
}

// dial opens a TCP connection to the server and counts it, or counts the
// failure and waits Pause.
func (l *floodLoad) dial() (net.Conn, bool) {
	c, err := net.Dial("tcp", l.cfg.Server)
	if err != nil {
		l.count(nil, err, 0, false)
		time.Sleep(l.cfg.Pause)
		return nil, false
	}
	l.mu.Lock()
	l.res.Opened++
	l.mu.Unlock()
	return c, true
}

func (l *floodLoad) tcp() {
	for time.Now().Before(l.end) {
		c, ok := l.dial()
		if !ok {
			continue
		}
		c.SetDeadline(l.end)
		window := make(chan struct{}, l.cfg.Window)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				reply, err := dnstest.ReadTCP(c)
				if err != nil {
					return
				}
				l.count(reply, nil, 0, false)
				<-window
			}
		}()
	send:
		for time.Now().Before(l.end) {
			select {
			case window <- struct{}{}:
			case <-done:
				break send
			}
			if dnstest.WriteTCP(c, l.query()) != nil {
				break
			}
		}
		c.Close()
		<-done
		if time.Now().Before(l.end) {
			l.closed()
		}
	}
}

func (l *floodLoad) tcpIdle() {
	for time.Now().Before(l.end) {
		c, ok := l.dial()
		if !ok {
			continue
		}
		c.SetReadDeadline(l.end)
		_, err := c.Read(make([]byte, 1))
		c.Close()
		if !isTimeout(err) {
			l.closed()
			time.Sleep(l.cfg.Pause)
		}
	}
}

func (l *floodLoad) closed() {
	l.mu.Lock()
	l.res.Closed++
	l.mu.Unlock()
}

// probe asks one question every Every, each on a fresh socket; with
// InFlight set, a question waits for room among the unanswered ones.
func (l *floodLoad) probe() {
	var (
		wg   sync.WaitGroup
		room chan struct{} // a slot per unanswered question; nil: no bound
	)
	if l.cfg.InFlight > 0 {
		room = make(chan struct{}, l.cfg.InFlight)
	}
	tick := time.NewTicker(l.cfg.Every)
	defer tick.Stop()
	for time.Now().Before(l.end) {
		if room != nil {
			room <- struct{}{}
			if !time.Now().Before(l.end) { // the wait outlasted the load
				break
			}
		}
		q := l.query()
		wg.Go(func() {
			start := time.Now()
			reply, err := l.exchange(q) // its socket closed when it returns
			l.count(reply, err, time.Since(start), true)
			if room != nil {
				<-room
			}
		})
		<-tick.C
	}
	wg.Wait()
}

func (l *floodLoad) exchange(q []byte) ([]byte, error) {
	network := "udp"
	if l.cfg.TCP {
		network = "tcp"
	}
	c, err := net.DialTimeout(network, l.cfg.Server, l.cfg.Timeout)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(l.cfg.Timeout))
	if l.cfg.TCP {
		if err := dnstest.WriteTCP(c, q); err != nil {
			return nil, err
		}
		return dnstest.ReadTCP(c)
	}
	if _, err := c.Write(q); err != nil {
		return nil, err
	}
	buf := make([]byte, 65535)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		if n >= 2 && buf[0] == q[0] && buf[1] == q[1] {
			return buf[:n], nil
		}
	}
}
