package kube

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/miekg/dns"
)

// This file reads kube-dns's Corefile: which server block serves the
// cluster domain, and what its kubernetes plugin is told there. ztdns
// answers the names of the cluster domain it knows itself, so where the
// cluster's kube-dns is configured away from CoreDNS's defaults, ambient
// pods would silently get other answers from ztdns than from kube-dns. The
// source follows what it can (the TTL: see kubedns.go) and names what it
// cannot.

// maxCorefileBytes bounds the Corefile the source parses: a kube-dns
// Corefile is a few hundred bytes; past this (a ConfigMap may hold 1 MiB)
// it is not parsed, and the defaults stay.
const maxCorefileBytes = 64 << 10

// kubernetesMaxTTL is the largest ttl the kubernetes plugin accepts
// (plugin/kubernetes/setup.go: 0 to 3600).
const kubernetesMaxTTL = 3600

// corefileDefaultTTL is the TTL of the kubernetes plugin without a ttl line
// (plugin/kubernetes defaultTTL).
const corefileDefaultTTL = 5

// kubeDNSConfig is what the source reads of the Corefile for the cluster
// domain.
type kubeDNSConfig struct {
	// served is false when no kubernetes plugin of the server block that
	// gets the cluster domain's queries serves it.
	served bool
	// ttl is the kubernetes plugin's ttl: corefileDefaultTTL without the
	// line; 0 is CoreDNS's "do not cache".
	ttl uint32
	// unfollowed are the settings ztdns does not follow for the names it
	// answers, each with what ambient pods get instead, in the Corefile's
	// order.
	unfollowed []string
}

// directive is one line of a Corefile block: a name, its arguments and the
// lines of its own block, if it opens one.
type directive struct {
	name  string
	args  []string
	block []directive
}

// serverBlock is a Corefile server block: its keys (zones with an optional
// scheme and port) and its plugins.
type serverBlock struct {
	keys    []string
	plugins []directive
}

// corefileToken is a word of a Corefile, on its line; quoted words are
// never braces.
type corefileToken struct {
	text   string
	line   int
	quoted bool
}

func (t corefileToken) is(s string) bool { return !t.quoted && t.text == s }

// tokenizeCorefile splits a Corefile into words as Caddy's lexer does:
// whitespace separates them, `#` at the start of a word comments out the
// rest of the line, and "double quotes" or `backquotes` hold a word with
// spaces (\" escapes a quote in double quotes).
func tokenizeCorefile(text string) ([]corefileToken, error) {
	var out []corefileToken
	line := 1
	for i := 0; i < len(text); {
		c := text[i]
		switch {
		case c == '\n':
			line++
			i++
		case c == ' ' || c == '\t' || c == '\r':
			i++
		case c == '#':
			for i < len(text) && text[i] != '\n' {
				i++
			}
		case c == '"' || c == '`':
			start, j := line, i+1
			var b strings.Builder
			for ; j < len(text) && text[j] != c; j++ {
				if c == '"' && text[j] == '\\' && j+1 < len(text) && text[j+1] == '"' {
					j++
				}
				if text[j] == '\n' {
					line++
				}
				b.WriteByte(text[j])
			}
			if j == len(text) {
				return nil, fmt.Errorf("line %d: unterminated quote", start)
			}
			out = append(out, corefileToken{text: b.String(), line: start, quoted: true})
			i = j + 1
		default:
			j := i
			for j < len(text) && !strings.ContainsRune(" \t\r\n", rune(text[j])) {
				j++
			}
			out = append(out, corefileToken{text: text[i:j], line: line})
			i = j
		}
	}
	return out, nil
}

// parseCorefile reads a Corefile's server blocks. Snippets ("(name) {…}")
// are skipped; a server block must have braces (CoreDNS allows one
// without when it is alone in the file, which no kube-dns ConfigMap
// writes).
func parseCorefile(text string) ([]serverBlock, error) {
	if len(text) > maxCorefileBytes {
		return nil, fmt.Errorf("Corefile of %d bytes: ztdns reads at most %d", len(text), maxCorefileBytes)
	}
	toks, err := tokenizeCorefile(text)
	if err != nil {
		return nil, err
	}
	var out []serverBlock
	for i := 0; i < len(toks); {
		var keys []string
		for i < len(toks) && !toks[i].is("{") {
			if toks[i].is("}") {
				return nil, fmt.Errorf("line %d: } without {", toks[i].line)
			}
			for k := range strings.SplitSeq(toks[i].text, ",") {
				if k != "" {
					keys = append(keys, k)
				}
			}
			i++
		}
		if i == len(toks) {
			return nil, fmt.Errorf("line %d: server block %s without {", toks[i-1].line, strings.Join(keys, " "))
		}
		if len(keys) == 0 {
			return nil, fmt.Errorf("line %d: { without a server block's zones", toks[i].line)
		}
		var plugins []directive
		plugins, i, err = parseCorefileBlock(toks, i+1)
		if err != nil {
			return nil, err
		}
		if strings.HasPrefix(keys[0], "(") {
			continue // a snippet
		}
		out = append(out, serverBlock{keys: keys, plugins: plugins})
	}
	return out, nil
}

// parseCorefileBlock reads the lines of a block from toks[i] to its
// closing brace, and returns them and the index past the brace.
func parseCorefileBlock(toks []corefileToken, i int) ([]directive, int, error) {
	var out []directive
	for i < len(toks) {
		if toks[i].is("}") {
			return out, i + 1, nil
		}
		if toks[i].is("{") {
			return nil, 0, fmt.Errorf("line %d: { without a directive", toks[i].line)
		}
		d := directive{name: toks[i].text}
		line := toks[i].line
		i++
		for i < len(toks) && toks[i].line == line && !toks[i].is("{") && !toks[i].is("}") {
			d.args = append(d.args, toks[i].text)
			i++
		}
		if i < len(toks) && toks[i].line == line && toks[i].is("{") {
			var err error
			if d.block, i, err = parseCorefileBlock(toks, i+1); err != nil {
				return nil, 0, err
			}
		}
		out = append(out, d)
	}
	return nil, 0, errors.New("a block is not closed: } missing")
}

// keyZone is the zone and port of a server block's key ("dns://.:53",
// "cluster.local:53", "cluster.local").
func keyZone(key string) (zone, port string) {
	if i := strings.Index(key, "://"); i >= 0 {
		key = key[i+3:]
	}
	if i := strings.LastIndexByte(key, ':'); i >= 0 && !strings.Contains(key[:i], ":") {
		key, port = key[:i], key[i+1:]
	}
	return dns.CanonicalName(key), port
}

// kubeDNSConfigOf finds the server block that gets the queries for
// domain on port 53 (the one with the longest zone that holds it, as
// CoreDNS picks), and in it the kubernetes plugin serving domain, and
// reads what it is told. Plugins other than kubernetes that change the
// answers of the cluster domain's names (rewrite, template) are named in
// unfollowed too.
func kubeDNSConfigOf(blocks []serverBlock, domain string) (kubeDNSConfig, error) {
	domain = dns.CanonicalName(domain)
	var best *serverBlock
	bestLen := -1
	for i := range blocks {
		for _, k := range blocks[i].keys {
			zone, port := keyZone(k)
			if (port != "" && port != "53") || !dns.IsSubDomain(zone, domain) {
				continue
			}
			if len(zone) > bestLen {
				best, bestLen = &blocks[i], len(zone)
			}
		}
	}
	out := kubeDNSConfig{ttl: corefileDefaultTTL}
	if best == nil {
		return out, nil
	}
	for _, p := range best.plugins {
		switch p.name {
		case "kubernetes":
			zones := p.args
			if len(zones) == 0 {
				zones = best.keys
			}
			if !slices.ContainsFunc(zones, func(z string) bool { zone, _ := keyZone(z); return dns.IsSubDomain(zone, domain) }) {
				continue
			}
			if out.served {
				continue // CoreDNS refuses a second one; the first serves
			}
			out.served = true
			if err := out.readKubernetes(p); err != nil {
				return kubeDNSConfig{}, err
			}
		case "rewrite", "template":
			if touches(p, domain) {
				out.unfollowed = append(out.unfollowed, fmt.Sprintf(
					"%s: kube-dns rewrites names or answers of %s (%s); ztdns answers the names it knows as the kubernetes plugin alone would",
					p.name, strings.TrimSuffix(domain, "."), strings.Join(append([]string{p.name}, p.args...), " ")))
			}
		}
	}
	return out, nil
}

// touches reports whether a rewrite or template directive may apply to
// names of domain: a template for a zone that holds domain (or without
// zones), a rewrite whose arguments or block name domain (its patterns are
// regular expressions or names; one that does not spell the domain is
// taken not to touch it).
func touches(p directive, domain string) bool {
	bare := strings.TrimSuffix(domain, ".")
	mentions := func(words []string) bool {
		for _, w := range words {
			if strings.Contains(w, bare) || strings.Contains(w, strings.ReplaceAll(bare, ".", `\.`)) {
				return true
			}
		}
		return false
	}
	if p.name == "template" {
		// template CLASS TYPE [ZONE...]
		if len(p.args) <= 2 {
			return true
		}
		for _, z := range p.args[2:] {
			if dns.IsSubDomain(dns.CanonicalName(z), domain) || dns.IsSubDomain(domain, dns.CanonicalName(z)) {
				return true
			}
		}
		return false
	}
	if mentions(p.args) {
		return true
	}
	for _, d := range p.block {
		if mentions(append([]string{d.name}, d.args...)) {
			return true
		}
	}
	return false
}

// readKubernetes reads the kubernetes plugin's block (plugin/kubernetes
// setup.go ParseStanza): ttl, and the options ztdns does not follow.
func (c *kubeDNSConfig) readKubernetes(p directive) error {
	note := func(format string, args ...any) { c.unfollowed = append(c.unfollowed, fmt.Sprintf(format, args...)) }
	for _, d := range p.block {
		switch d.name {
		case "ttl":
			if len(d.args) != 1 {
				return fmt.Errorf("kubernetes: ttl wants one number, has %q", d.args)
			}
			n, err := strconv.Atoi(d.args[0])
			if err != nil || n < 0 || n > kubernetesMaxTTL {
				return fmt.Errorf("kubernetes: ttl %q: want 0 to %d", d.args[0], kubernetesMaxTTL)
			}
			c.ttl = uint32(n)
		case "endpoint_pod_names":
			note("kubernetes endpoint_pod_names: kube-dns names a headless Service's endpoint without a hostname by its pod's name; " +
				"ztdns answers it, its SRV target and its PTR, by the dashed address (10-244-1-5.…)")
		case "ignore":
			if slices.Contains(d.args, "empty_service") {
				note("kubernetes ignore empty_service: kube-dns answers NXDOMAIN for a ClusterIP Service without ready endpoints; " +
					"ztdns answers its ClusterIP")
			}
		case "namespaces":
			note("kubernetes namespaces %s: kube-dns answers only these namespaces' names; ztdns answers the Services of every namespace",
				strings.Join(d.args, " "))
		case "noendpoints":
			note("kubernetes noendpoints: kube-dns answers no endpoint records; ztdns answers a headless Service's endpoints and their names")
		case "labels":
			note("kubernetes labels %s: kube-dns answers only the Services these labels select; ztdns answers every Service",
				strings.Join(d.args, " "))
		}
	}
	return nil
}
