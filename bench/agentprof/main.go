// Command agentprof runs the ztdns agent in-process (the same pkg/agent wiring
// as `ztdns agent --capture=false --config-dir DIR`) with Go's profilers on
// an HTTP address (net/http/pprof), so a benchmark can say where the agent's
// CPU and memory go without root or perf: test/bench fetches
// /debug/pprof/profile for the length of a measured run and
// /debug/pprof/heap after it when run with -profile go.
//
// Usage: agentprof -config-dir DIR -listen ADDR -upstream ADDR -socket PATH -pprof ADDR
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/ztdns/ztdns/pkg/agent"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// memProfileRate samples the heap finely enough that a table of tens of
// thousands of small entries is accounted for accurately (the default, one
// sample per 512 KiB, misjudges it by a third from run to run).
const memProfileRate = 4096

func main() {
	runtime.MemProfileRate = memProfileRate
	configDir := flag.String("config-dir", "", "manifests to serve")
	listen := flag.String("listen", "127.0.0.1:15353", "resolver address")
	upstream := flag.String("upstream", "", "upstream nameserver address (required; never the machine's own)")
	socket := flag.String("socket", "", "control socket path")
	pprofAddr := flag.String("pprof", "127.0.0.1:0", "address of the /debug/pprof/ endpoints (loopback)")
	flag.Parse()
	if err := run(*configDir, *listen, *upstream, *socket, *pprofAddr); err != nil {
		fmt.Fprintln(os.Stderr, "agentprof:", err)
		os.Exit(1)
	}
}

func run(configDir, listen, upstream, socket, pprofAddr string) error {
	if configDir == "" || upstream == "" || socket == "" {
		return errors.New("-config-dir, -upstream and -socket are required")
	}
	la, err := netip.ParseAddrPort(listen)
	if err != nil {
		return fmt.Errorf("-listen: %w", err)
	}
	ua, err := netip.ParseAddrPort(upstream)
	if err != nil {
		return fmt.Errorf("-upstream: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	ln, err := net.Listen("tcp", pprofAddr)
	if err != nil {
		return fmt.Errorf("-pprof: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	// The benchmark reads where to fetch profiles from this line.
	fmt.Fprintf(os.Stderr, "pprof on http://%s/debug/pprof/\n", ln.Addr())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return agent.Run(ctx, agent.Config{
		Source:    configdir.New(configDir, configdir.WithLogger(log)),
		Listen:    []netip.AddrPort{la},
		Upstreams: []netip.AddrPort{ua},
		Socket:    socket,
		Logger:    log,
		Limits:    quota.Limits{QPS: -1}, // dnsperf is one source at full speed
	})
}
