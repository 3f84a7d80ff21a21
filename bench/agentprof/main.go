// Command agentprof runs the ztdns agent in-process (the same pkg/agent wiring
// as `ztdns agent --capture=false --config-dir DIR`) with Go's profilers, so
// `make bench` can say where the agent's CPU and memory go without root or
// perf.
//
// Signals drive it, so the profile covers exactly the load the bench sends:
//
//	SIGUSR1  write heap-start.pprof, start the CPU profile (cpu.pprof)
//	SIGUSR2  stop it, write heap.pprof and exit; allocations during the load
//	         are heap.pprof's alloc_* samples less heap-start.pprof's
//	         (go tool pprof -diff_base heap-start.pprof heap.pprof)
//	SIGTERM  exit without writing more
//
// Usage: agentprof -config-dir DIR -listen ADDR -upstream ADDR -socket PATH -out DIR
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"syscall"

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
	out := flag.String("out", ".", "directory for cpu.pprof, heap-start.pprof and heap.pprof")
	flag.Parse()
	if err := run(*configDir, *listen, *upstream, *socket, *out); err != nil {
		fmt.Fprintln(os.Stderr, "agentprof:", err)
		os.Exit(1)
	}
}

func run(configDir, listen, upstream, socket, out string) error {
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

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- agent.Run(ctx, agent.Config{
			Source:    configdir.New(configDir, configdir.WithLogger(log)),
			Listen:    []netip.AddrPort{la},
			Upstreams: []netip.AddrPort{ua},
			Socket:    socket,
			Logger:    log,
			Limits:    quota.Limits{QPS: -1}, // dnsperf is one source at full speed
		})
	}()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGTERM, os.Interrupt)
	var cpu *os.File
	for {
		select {
		case err := <-done:
			return err
		case sig := <-sigs:
			switch sig {
			case syscall.SIGUSR1:
				if cpu != nil {
					continue
				}
				if err := writeHeap(filepath.Join(out, "heap-start.pprof")); err != nil {
					return err
				}
				if cpu, err = os.Create(filepath.Join(out, "cpu.pprof")); err != nil {
					return err
				}
				if err := pprof.StartCPUProfile(cpu); err != nil {
					return fmt.Errorf("starting the CPU profile: %w", err)
				}
			case syscall.SIGUSR2:
				if cpu != nil {
					pprof.StopCPUProfile()
					if err := cpu.Close(); err != nil {
						return err
					}
				}
				if err := writeHeap(filepath.Join(out, "heap.pprof")); err != nil {
					return err
				}
				cancel()
				return <-done
			default:
				cancel()
				return <-done
			}
		}
	}
}

func writeHeap(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	runtime.GC() // the profile shows live objects as of the last GC
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		f.Close()
		return fmt.Errorf("writing the heap profile: %w", err)
	}
	return f.Close()
}
