//go:build linux

package bench

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/testenv"
)

// dnsperfLoad is one dnsperf run.
type dnsperfLoad struct {
	server   string // address dnsperf sends to
	port     int
	queries  string // data file: "name type" a line
	rate     int    // queries per second; 0 is as fast as answers come
	duration time.Duration
}

// args is dnsperf's command line: one thread, -clients source sockets and
// -outstanding queries in flight, enough to keep one unbound thread busy on
// two CPUs, which dnsperf and the server share.
func (l dnsperfLoad) args() []string {
	a := []string{"-s", l.server, "-p", strconv.Itoa(l.port), "-d", l.queries,
		"-l", strconv.FormatFloat(l.duration.Seconds(), 'f', -1, 64),
		"-c", strconv.Itoa(*flagClients), "-q", strconv.Itoa(*flagOutstanding), "-T", "1"}
	if l.rate > 0 {
		a = append(a, "-Q", strconv.Itoa(l.rate))
	}
	return a
}

// starter prepares a command where the load comes from: the test's own
// namespace (exec.CommandContext), or inside a pod and its cgroup.
type starter func(ctx context.Context, name string, args ...string) *exec.Cmd

func local(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, name, args...)
}

// dnsperfResult is what one run reported.
type dnsperfResult struct {
	sent, completed, lost, noerror int64
	runtime                        time.Duration
	// cpu is dnsperf's own user+system time during its -l seconds (after
	// them it spins until lost queries time out, which is no work of the
	// query path).
	cpu    time.Duration
	output string
}

// runDnsperf runs dnsperf with l and fails the test when it fails or
// nothing was answered.
func runDnsperf(tb testing.TB, l dnsperfLoad, start starter) dnsperfResult {
	tb.Helper()
	bin := testenv.LookPath(tb, "dnsperf")
	ctx, cancel := context.WithTimeout(tb.Context(), l.duration+time.Minute)
	defer cancel()
	cmd := start(ctx, bin, l.args()...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	began := time.Now()
	if err := cmd.Start(); err != nil {
		tb.Fatalf("dnsperf: %v", err)
	}
	// The process is dnsperf itself: `ip netns exec` and nsenter exec it.
	var window *procSample
	select {
	case <-time.After(l.duration - time.Since(began)):
		if s, err := readProc(cmd.Process.Pid); err == nil {
			window = &s
		}
	case <-ctx.Done():
	}
	if err := cmd.Wait(); err != nil {
		tb.Fatalf("dnsperf %s: %v\n%s%s", strings.Join(l.args(), " "), err, stderr.String(), out.String())
	}
	r, err := parseDnsperf(out.String())
	if err != nil {
		tb.Fatalf("dnsperf: %v\n%s%s", err, stderr.String(), out.String())
	}
	if window != nil {
		r.cpu = window.cpu
	} else { // it ended before the window did: all of it counts
		r.cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	if r.completed == 0 {
		tb.Fatalf("dnsperf: nothing answered\n%s%s", stderr.String(), out.String())
	}
	return r
}

// parseDnsperf reads dnsperf's report.
func parseDnsperf(out string) (dnsperfResult, error) {
	r := dnsperfResult{output: out}
	fields := map[string]*int64{"Queries sent": &r.sent, "Queries completed": &r.completed, "Queries lost": &r.lost}
	found := 0
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		words := strings.Fields(v)
		if len(words) == 0 {
			continue
		}
		switch {
		case fields[k] != nil:
			n, err := strconv.ParseInt(words[0], 10, 64)
			if err != nil {
				return r, fmt.Errorf("%q: %w", line, err)
			}
			*fields[k] = n
			found++
		case k == "Run time (s)":
			s, err := strconv.ParseFloat(words[0], 64)
			if err != nil {
				return r, fmt.Errorf("%q: %w", line, err)
			}
			r.runtime = time.Duration(s * float64(time.Second))
			found++
		case k == "Response codes":
			for i := 0; i+1 < len(words); i += 3 { // NOERROR 123 (99.00%), NXDOMAIN ...
				if strings.TrimSuffix(words[i], ",") == "NOERROR" {
					r.noerror, _ = strconv.ParseInt(words[i+1], 10, 64)
				}
			}
		}
	}
	if found < 4 {
		return r, fmt.Errorf("no statistics in dnsperf's output")
	}
	return r, nil
}
