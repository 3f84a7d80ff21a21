package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/api/resource"

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

// addrPortList is a list of addresses; a bare IP gets defaultPort.
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

func parseAddrPort(s string, defaultPort uint16) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(strings.Trim(s, "[]"))
	if err != nil {
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
