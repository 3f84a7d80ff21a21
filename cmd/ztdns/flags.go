package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/ztdns/ztdns/pkg/agent"
	"github.com/ztdns/ztdns/pkg/redirect"
)

// listFlag is a repeatable, comma-separated flag of values parse takes one
// by one; its first use replaces the default.
type listFlag[T fmt.Stringer] struct {
	vals  []T
	typ   string // names the value in --help
	parse func(string) (T, error)
	set   bool
}

// addrPortList is a list of addresses (see parseAddrPort); a bare IP gets
// defaultPort.
func addrPortList(defaults []netip.AddrPort, defaultPort uint16) *listFlag[netip.AddrPort] {
	return &listFlag[netip.AddrPort]{vals: defaults, typ: "addrs",
		parse: func(s string) (netip.AddrPort, error) { return parseAddrPort(s, defaultPort) }}
}

// prefixList is a list of address prefixes; a bare address is a prefix of
// its full length (/32, /128).
func prefixList() *listFlag[netip.Prefix] {
	return &listFlag[netip.Prefix]{typ: "cidrs", parse: redirect.ParseCaptureNameserver}
}

func (l *listFlag[T]) String() string {
	var s []string
	for _, v := range l.vals {
		s = append(s, v.String())
	}
	return strings.Join(s, ",")
}

func (l *listFlag[T]) Type() string { return l.typ }

func (l *listFlag[T]) Set(v string) error {
	if !l.set {
		l.vals, l.set = nil, true
	}
	for _, part := range strings.Split(v, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		x, err := l.parse(part)
		if err != nil {
			return err
		}
		l.vals = append(l.vals, x)
	}
	return nil
}

// parseAddrPort reads an address of --listen or --upstream: 10.0.0.5:53,
// [2001:db8::5]:53, or an address alone, which gets defaultPort. Brackets
// are taken around an IPv4 address too ([10.0.0.5]:53), so that one
// "[$(HOST_IP)]:53" serves nodes of either family. An IPv6 address without
// brackets is all address, and a port after it needs the brackets: where
// the last group could be a port (2001:db8::5:53, as "$(HOST_IP):53" gives
// on an IPv6 node), it is refused with the bracketed forms to write, rather
// than read as another host's address (the resolver binds with
// IP_FREEBIND, and a nameserver is not dialled first: nothing would fail).
func parseAddrPort(s string, defaultPort uint16) (netip.AddrPort, error) {
	if inner, ok := strings.CutPrefix(s, "["); ok {
		host, rest, closed := strings.Cut(inner, "]")
		a, err := netip.ParseAddr(host)
		if !closed || err != nil {
			return netip.AddrPort{}, fmt.Errorf("%q is not an address or address:port", s)
		}
		if rest == "" {
			return netip.AddrPortFrom(a.Unmap(), defaultPort), nil
		}
		port, ok := strings.CutPrefix(rest, ":")
		n, err := strconv.ParseUint(port, 10, 16)
		if !ok || err != nil {
			return netip.AddrPort{}, fmt.Errorf("%q: want [ADDR]:PORT with a port up to 65535", s)
		}
		return netip.AddrPortFrom(a.Unmap(), uint16(n)), nil
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil // IPv4
	}
	a, err := netip.ParseAddr(s)
	// Read as an IPv6 address and a port split at the last colon, as
	// "$(HOST_IP):53" gives on an IPv6 node.
	ap, perr := netip.ParseAddrPort(agent.BracketIPv6HostPort(s))
	withPort := perr == nil && ap.Addr().Is6()
	switch {
	case err == nil && withPort:
		return netip.AddrPort{}, fmt.Errorf("%q: address %s or port %d of %s? An IPv6 address goes in brackets: write [%s] or %s",
			s, a, ap.Port(), ap.Addr(), a, ap)
	case withPort:
		return netip.AddrPort{}, fmt.Errorf("%q: an IPv6 address with a port goes in brackets: %s", s, ap)
	case err != nil:
		return netip.AddrPort{}, fmt.Errorf("%q is not an address or address:port", s)
	}
	return netip.AddrPortFrom(a.Unmap(), defaultPort), nil
}

// byteSize is a flag of bytes in Kubernetes quantity form: 4Mi, 512Ki,
// 1048576. zero allows 0 (for a bound 0 turns off).
type byteSize struct {
	n    int64
	zero bool
}

func (b *byteSize) String() string {
	if b == nil {
		return ""
	}
	return resource.NewQuantity(b.n, resource.BinarySI).String()
}

// Type names the value in --help.
func (b *byteSize) Type() string { return "bytes" }

func (b *byteSize) Set(v string) error {
	q, err := resource.ParseQuantity(v)
	if err != nil || q.Sign() < 0 || (q.Sign() == 0 && !b.zero) {
		return fmt.Errorf("%q is not a positive size in bytes (e.g. 4Mi)", v)
	}
	b.n = q.Value()
	return nil
}

// newLogger builds the process logger from --log-level and --log-format.
func newLogger(level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// oneDashLongFlags rewrites the single-dash long flags of Go's flag package
// ("-socket PATH", "-config-dir=DIR"), which earlier releases took and
// scripts and manifests may still pass, into their GNU spelling ("--socket")
// for the command args run. A dash and several letters that name no long
// flag are left to pflag: a shorthand with its value attached ("-ojson").
// The one-letter long flags of old ("--o json") become the shorthands they
// now are. Flag values are never rewritten, nor is anything after "--".
func oneDashLongFlags(root *cobra.Command, args []string) []string {
	cmd, _, err := root.Find(args)
	if err != nil {
		return args // Execute reports it
	}
	cmd.InitDefaultHelpFlag()
	flags := pflag.NewFlagSet(cmd.Name(), pflag.ContinueOnError)
	flags.AddFlagSet(cmd.Flags())
	flags.AddFlagSet(cmd.InheritedFlags())
	out := slices.Clone(args)
	for i := 0; i < len(out); i++ {
		a := out[i]
		if a == "--" {
			break
		}
		if len(a) < 2 || a[0] != '-' {
			continue
		}
		dashes := 1
		if a[1] == '-' {
			dashes = 2
		}
		name, _, inline := strings.Cut(a[dashes:], "=")
		var f *pflag.Flag
		switch {
		case dashes == 2:
			if f = flags.Lookup(name); f == nil && len(name) == 1 {
				if f = flags.ShorthandLookup(name); f != nil {
					out[i] = a[1:] // --o json → -o json
				}
			}
		case len(name) == 1:
			f = flags.ShorthandLookup(name)
		default:
			if f = flags.Lookup(name); f != nil {
				out[i] = "-" + a // -socket → --socket
			}
		}
		if f != nil && !inline && f.NoOptDefVal == "" {
			i++ // the next argument is this flag's value
		}
	}
	return out
}
