//go:build linux

package e2e

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	ossignal "os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/testenv"
)

// dnsLoop is a steady client, run inside a pod by the test binary (see
// startLoop): every -every it sends one A query for -name to the pod's own
// nameserver (the first of /etc/resolv.conf, or -server) from a fresh
// connected UDP socket, as glibc does, and waits up to -timeout for the
// answer without retrying, so every lost query counts. It runs for -for,
// or until SIGINT, and prints one line per query as it finishes: sequence
// number, send and finish times (Unix ns) and the outcome: the first
// address answered, or "timeout", "refused", "rcode:NAME", "empty",
// "error:...".
func dnsLoop(args []string) int {
	fs := flag.NewFlagSet("dnsloop", flag.ContinueOnError)
	server := fs.String("server", "", "nameserver `ADDR:PORT` (default: the first in /etc/resolv.conf)")
	name := fs.String("name", addressHost, "the name to ask for")
	every := fs.Duration("every", 20*time.Millisecond, "interval between queries")
	timeout := fs.Duration("timeout", time.Second, "how long to wait for each answer")
	duration := fs.Duration("for", 5*time.Second, "how long to keep sending")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *server == "" {
		conf, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil || len(conf.Servers) == 0 {
			fmt.Fprintf(os.Stderr, "dnsloop: no nameserver in /etc/resolv.conf: %v\n", err)
			return 2
		}
		*server = net.JoinHostPort(conf.Servers[0], "53")
	}
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	var wg sync.WaitGroup
	tick := time.NewTicker(*every)
	defer tick.Stop()
	stop := make(chan os.Signal, 1)
	ossignal.Notify(stop, syscall.SIGINT)
	end := time.After(*duration)
	for seq, sending := 0, true; sending; seq++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sent := time.Now()
			outcome := queryOnce(*server, *name, *timeout)
			done := time.Now()
			mu.Lock()
			defer mu.Unlock()
			fmt.Fprintf(out, "%d %d %d %s\n", seq, sent.UnixNano(), done.UnixNano(), outcome)
			if err := out.Flush(); err != nil { // the test reads as it goes
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}()
		select {
		case <-tick.C:
		case <-end:
			sending = false
		case <-stop:
			sending = false
		}
	}
	wg.Wait()
	return 0
}

// queryOnce asks one question over a fresh connected UDP socket.
func queryOnce(server, name string, timeout time.Duration) string {
	c := dns.Client{Net: "udp", Timeout: timeout}
	m := new(dns.Msg).SetQuestion(dns.Fqdn(name), dns.TypeA)
	r, _, err := c.Exchange(m, server)
	var nerr net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.As(err, &nerr) && nerr.Timeout():
		return "timeout"
	case err != nil:
		return "error:" + strings.ReplaceAll(err.Error(), " ", "_")
	}
	return outcome(r)
}

// outcome is the first address of an A answer, or what the reply is
// instead.
func outcome(r *dns.Msg) string {
	if r.Rcode != dns.RcodeSuccess {
		return "rcode:" + dns.RcodeToString[r.Rcode]
	}
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			return a.A.String()
		}
	}
	return "empty"
}

// loopQuery is one query of a dnsLoop run.
type loopQuery struct {
	seq        int
	sent, done time.Time
	outcome    string
}

// answer is the address answered, if there was one.
func (q loopQuery) answer() (netip.Addr, bool) {
	a, err := netip.ParseAddr(q.outcome)
	return a, err == nil
}

// loop is a dnsLoop running in a pod.
type loop struct {
	cmd    *exec.Cmd
	stdout testenv.Log // written line by line as queries finish
	stderr strings.Builder
	exited chan struct{} // closed when it exited; err is set then
	err    error
}

// startLoop starts a dnsLoop inside the pod and the test cgroup.
func (c *cluster) startLoop(t *testing.T, p *testenv.Pod, every, timeout, duration time.Duration) *loop {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), duration+30*time.Second)
	t.Cleanup(cancel)
	l := &loop{exited: make(chan struct{})}
	l.cmd = p.Command(ctx, c.cg, os.Args[0],
		"-every", every.String(), "-timeout", timeout.String(), "-for", duration.String())
	l.cmd.Env = append(os.Environ(), helperEnv+"=dnsloop")
	l.cmd.Stdout, l.cmd.Stderr = &l.stdout, &l.stderr
	if err := l.cmd.Start(); err != nil {
		t.Fatalf("start dnsloop: %v", err)
	}
	go func() {
		l.err = l.cmd.Wait()
		close(l.exited)
	}()
	t.Cleanup(func() {
		cancel()
		<-l.exited
	})
	return l
}

// answered counts the queries answered with addr so far.
func (l *loop) answered(addr netip.Addr) int {
	return strings.Count(l.stdout.String(), " "+addr.String()+"\n")
}

// stop ends the loop's sending: the queries in flight finish, and wait
// returns them all.
func (l *loop) stop(t *testing.T) {
	t.Helper()
	if err := l.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatalf("stop dnsloop: %v", err)
	}
}

// wait returns the loop's queries in the order they were sent.
func (l *loop) wait(t *testing.T) []loopQuery {
	t.Helper()
	<-l.exited
	if l.err != nil {
		t.Fatalf("dnsloop: %v\n%s", l.err, l.stderr.String())
	}
	var qs []loopQuery
	for _, line := range strings.Split(strings.TrimSpace(l.stdout.String()), "\n") {
		f := strings.Fields(line)
		if len(f) != 4 {
			t.Fatalf("dnsloop printed %q", line)
		}
		seq, err1 := strconv.Atoi(f[0])
		sent, err2 := strconv.ParseInt(f[1], 10, 64)
		done, err3 := strconv.ParseInt(f[2], 10, 64)
		if err := errors.Join(err1, err2, err3); err != nil {
			t.Fatalf("dnsloop printed %q: %v", line, err)
		}
		qs = append(qs, loopQuery{seq: seq, sent: time.Unix(0, sent), done: time.Unix(0, done), outcome: f[3]})
	}
	sort.Slice(qs, func(i, j int) bool { return qs[i].seq < qs[j].seq })
	return qs
}

// tally counts a run's queries: answered with each address, and lost (no
// answer at all) by reason.
type tally struct {
	sent     int
	answered map[netip.Addr]int
	lost     map[string]int
}

func tallyOf(qs []loopQuery) tally {
	r := tally{sent: len(qs), answered: map[netip.Addr]int{}, lost: map[string]int{}}
	for _, q := range qs {
		if a, ok := q.answer(); ok {
			r.answered[a]++
		} else {
			r.lost[q.outcome]++
		}
	}
	return r
}

func (r tally) lostTotal() int {
	n := 0
	for _, v := range r.lost {
		n += v
	}
	return n
}

func (r tally) String() string {
	return fmt.Sprintf("%d sent, %d lost %v, answered %v", r.sent, r.lostTotal(), r.lost, r.answered)
}
