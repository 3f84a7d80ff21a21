package forward

import (
	"net/netip"
	"slices"
	"strings"
)

// KnowUpstreams makes us known upstreams from now on, as
// WithKnownUpstreams does at New: for nameservers the agent learns once it
// runs (the cluster DNS Service). One that holds a label of those pods
// chose keeps it, and gives its place among them back; one counted under
// "other" gets a label of its own from now on.
func (f *Forwarder) KnowUpstreams(us ...netip.AddrPort) { f.upstreams.know(us) }

// KnownUpstreams returns the "to" labels of the known upstreams, sorted.
func (f *Forwarder) KnownUpstreams() []string { return f.upstreams.known() }

// Knows reports whether u is a known upstream (WithKnownUpstreams,
// KnowUpstreams): a nameserver the node asks for every pod, not one a pod
// chose. The resolver asks it of the upstream of each SERVFAIL it relays
// or makes for a forward, to say whose failure that answer is.
func (f *Forwarder) Knows(u netip.AddrPort) bool { return f.upstreams.knows(u) }

func (m *upstreamMetrics) know(us []netip.AddrPort) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, u := range us {
		u, ok := canonicalUpstream(u)
		if !ok {
			continue
		}
		switch l, ok := m.labels[u]; {
		case !ok:
			m.labels[u] = &upstreamLabel{to: u.String(), known: true}
		case !l.known:
			l.known = true
			m.chosen--
		}
	}
}

func (m *upstreamMetrics) known() []string {
	m.mu.Lock()
	var out []string
	for _, l := range m.labels {
		if l.known {
			out = append(out, l.to)
		}
	}
	m.mu.Unlock()
	slices.SortFunc(out, strings.Compare)
	return out
}

func (m *upstreamMetrics) knows(u netip.AddrPort) bool {
	u, ok := canonicalUpstream(u)
	if !ok {
		return false
	}
	m.mu.Lock()
	l := m.labels[u]
	known := l != nil && l.known
	m.mu.Unlock()
	return known
}
