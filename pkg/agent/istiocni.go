package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztdns/ztdns/pkg/ambient/istiocni"
	"github.com/ztdns/ztdns/pkg/cni"
	"github.com/ztdns/ztdns/pkg/podcache"
)

// A captured pod's netfilter rules are looked at in the background, never
// while a scrape, `ztdns pods` or `ztdns status` waits: each look enters
// the pod's network namespace and lists its rules (0.5-0.9 ms), which on a
// node of a thousand pods, at every scrape, took a second of CPU, and anyone
// who reaches the metrics port can scrape. Every istioRulesTick the agent
// looks at a bounded number of the captured pods whose look is due: first
// those never looked at (captured since the last tick), then those whose
// first look is istioRulesRecheck old (istio-cni installs its rules as the
// pod starts, perhaps just after ztdns's ADD), then the others every
// istioRulesRefreshEvery, oldest first. A CNI ADD that captures a pod wakes
// the refresh for the pods never looked at (wake), after it is answered;
// `ztdns capture add` looks at its namespace before it answers (lookNow).
// What is reported is the last look.
const (
	istioRulesTick         = time.Second
	istioRulesRecheck      = 10 * time.Second
	istioRulesRefreshEvery = 5 * time.Minute
	// istioRulesMinPerTick is the fewest pods a tick may look at; the
	// most is twice the pods over the ticks of istioRulesRefreshEvery, so
	// that a burst of new pods is caught up with.
	istioRulesMinPerTick = 8
)

// istioRules remembers which captured pods also carry istio-cni's in-pod
// DNS rules. Those rules cannot take ztdns's redirected queries (they match
// destination port 53; the redirect goes to --capture-port), so such a pod
// is still answered by ztdns: it is reported because two components claim
// its DNS and the operator should turn one off.
type istioRules struct {
	mu   sync.Mutex
	seen map[uint64]istioRulesLook // by netns cookie
	// inspect is istiocni.Inspect; tests replace it.
	inspect func(netnsPath string, cookie uint64) (istiocni.Finding, error)
	// woken is wake's signal to keepIstioRulesFresh; made by woke.
	woken chan struct{}
}

// woke returns the channel wake signals on.
func (r *istioRules) woke() chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.woken == nil {
		r.woken = make(chan struct{}, 1)
	}
	return r.woken
}

// wake has the refresh look at the pods never looked at now, rather than
// at its next tick: a pod was just captured. It does not wait.
func (r *istioRules) wake() {
	select {
	case r.woke() <- struct{}{}:
	default:
	}
}

// lookNow looks at a captured pod's rules at once, unless they were
// looked at already.
func (r *istioRules) lookNow(log *slog.Logger, a podcache.Attachment) {
	r.mu.Lock()
	_, seen := r.seen[a.NetnsCookie]
	r.mu.Unlock()
	if a.Captured && a.NetnsPath != "" && !seen {
		r.look(log, a, time.Now())
	}
}

type istioRulesLook struct {
	found istiocni.Finding
	// unknown: some of the namespace's rules could not be read (a pod's
	// root can fill them past the bound), so found may miss a backend.
	unknown bool
	logged  bool // the error was logged, once for the namespace
	at      time.Time
	looks   int
}

// due is when the namespace is to be looked at again.
func (l istioRulesLook) due() time.Time {
	if l.looks < 2 {
		return l.at.Add(istioRulesRecheck)
	}
	return l.at.Add(istioRulesRefreshEvery)
}

// String is what ztdns shows: the backends found, and "unknown" when
// some rules could not be read.
func (l istioRulesLook) String() string {
	if l.unknown {
		return strings.Join(append(slices.Clone([]string(l.found)), "unknown"), ",")
	}
	return l.found.String()
}

// last returns the last look at the attachment's netns: nothing for a pod
// not captured, or not looked at yet. It never looks itself.
func (r *istioRules) last(a podcache.Attachment) istioRulesLook {
	if !a.Captured || a.NetnsPath == "" {
		return istioRulesLook{}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[a.NetnsCookie]
}

// refresh is one tick: it looks at the captured pods whose look is due (at
// most the tick's share of them, those never looked at first; with newOnly,
// only those), and forgets the pods no longer captured. It returns how many
// it looked at.
func (r *istioRules) refresh(log *slog.Logger, pods *podcache.Cache, now time.Time, newOnly bool) int {
	type target struct {
		a   podcache.Attachment
		due time.Time // zero: never looked at
	}
	var captured []target
	live := map[uint64]bool{}
	pods.RangeAttachments(func(_ string, a podcache.Attachment) {
		if a.Captured && a.NetnsPath != "" && !live[a.NetnsCookie] {
			live[a.NetnsCookie] = true
			a.IPs = nil
			captured = append(captured, target{a: a})
		}
	})
	r.mu.Lock()
	for i, t := range captured {
		if l, ok := r.seen[t.a.NetnsCookie]; ok {
			captured[i].due = l.due()
		}
	}
	maps.DeleteFunc(r.seen, func(cookie uint64, _ istioRulesLook) bool { return !live[cookie] })
	r.mu.Unlock()
	n := len(captured)
	due := slices.DeleteFunc(captured, func(t target) bool { return t.due.After(now) || newOnly && !t.due.IsZero() })
	slices.SortFunc(due, func(x, y target) int { return x.due.Compare(y.due) })
	most := max(istioRulesMinPerTick, int((2*int64(n)*int64(istioRulesTick)+int64(istioRulesRefreshEvery)-1)/int64(istioRulesRefreshEvery)))
	due = due[:min(len(due), most)]
	for _, t := range due {
		r.look(log, t.a, now)
	}
	return len(due)
}

// look looks at what istio-cni left in the attachment's netns, and keeps
// it. Only refresh calls it.
func (r *istioRules) look(log *slog.Logger, a podcache.Attachment, now time.Time) {
	r.mu.Lock()
	last := r.seen[a.NetnsCookie]
	inspect := r.inspect
	r.mu.Unlock()
	if inspect == nil {
		inspect = istiocni.Inspect
	}
	l := istioRulesLook{logged: last.logged, at: now, looks: last.looks + 1}
	found, err := inspect(a.NetnsPath, a.NetnsCookie)
	l.found = found
	switch {
	case err == nil:
	case errors.Is(err, istiocni.ErrOtherNetns) || errors.Is(err, os.ErrNotExist):
		// The pod's namespace is gone: nothing to report.
	default:
		l.unknown = true
		if !l.logged {
			log.Warn("cannot read a captured pod's netfilter rules: whether istio-cni's DNS capture rules are there is unknown",
				"pod", a.Namespace+"/"+a.Name, "netns", a.NetnsPath, "netnsCookie", a.NetnsCookie, "err", err)
			l.logged = true
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen == nil {
		r.seen = map[uint64]istioRulesLook{}
	}
	r.seen[a.NetnsCookie] = l
}

// keepIstioRulesFresh runs refresh every istioRulesTick, and for the new
// pods when woken, until ctx ends or the agent hands over to a successor.
func (a *Agent) keepIstioRulesFresh(ctx context.Context) {
	t := time.NewTicker(istioRulesTick)
	defer t.Stop()
	woken := a.istioRules.woke()
	for {
		newOnly := false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-woken:
			newOnly = true
		}
		if a.handedOver.Load() {
			return
		}
		a.istioRules.refresh(a.log, a.pods, time.Now(), newOnly)
	}
}

// doublyCaptured lists "namespace/name (backends)" of captured pods with
// istio-cni's DNS rules, and "namespace/name" of those whose rules could
// not be read (nothing found, but unknown), as last looked at (refresh).
func (a *Agent) doublyCaptured() (pods, unknown []string) {
	if a.dataplane == nil {
		return nil, nil
	}
	a.istioRules.mu.Lock()
	seen := maps.Clone(a.istioRules.seen)
	a.istioRules.mu.Unlock()
	a.pods.RangeAttachments(func(_ string, att podcache.Attachment) {
		if !att.Captured || att.NetnsPath == "" {
			return
		}
		switch l := seen[att.NetnsCookie]; {
		case l.found.Present():
			pods = append(pods, fmt.Sprintf("%s/%s (%s)", att.Namespace, att.Name, l))
		case l.unknown:
			unknown = append(unknown, att.Namespace+"/"+att.Name)
		}
	})
	slices.Sort(pods)
	slices.Sort(unknown)
	return pods, unknown
}

// doubleCaptureWarning is the status warning for doublyCaptured pods.
// istio-cni writes a pod's rules when it enrolls the pod and, with its
// reconcileIptablesOnStartup (the default), again for every enrolled pod
// at each start of its agent: either change below reaches running pods
// then, or at their own restart.
func doubleCaptureWarning(pods []string) string {
	return fmt.Sprintf("%d captured pod(s) also carry istio-cni's DNS capture rules: %s. ztdns answers them (its redirect "+
		"does not match those rules), but Istio's DNS capture is on for them: set values.cni.ambient.dnsCapture=false "+
		"on Istio, or annotate them ambient.istio.io/dns-capture: \"false\" with ztdns.io/dns-capture: \"true\"; "+
		"istio-cni rewrites running pods' rules when its agent on their node starts again (an upgrade that changes "+
		"dnsCapture restarts it) or the pod does (see README)",
		len(pods), strings.Join(pods, ", "))
}

// istioRulesWarnings are status's warnings about istio-cni's DNS rules.
func (a *Agent) istioRulesWarnings() []string {
	var out []string
	pods, unknown := a.doublyCaptured()
	if len(pods) > 0 {
		out = append(out, doubleCaptureWarning(pods))
	}
	if len(unknown) > 0 {
		out = append(out, istioRulesUnknownWarning(unknown))
	}
	if w := a.istioChain.excludes.warning(); w != "" {
		out = append(out, w)
	}
	return out
}

// istioRulesUnknownWarning is the status warning for pods whose rules
// could not be read.
func istioRulesUnknownWarning(pods []string) string {
	return fmt.Sprintf("%d captured pod(s)' netfilter rules could not be read, so whether they also carry istio-cni's DNS "+
		"capture rules is unknown (the agent's log says why): %s", len(pods), strings.Join(pods, ", "))
}

var doubleCaptureDesc = prometheus.NewDesc("ztdns_capture_istio_dns_rules_pods",
	"Captured pods whose network namespace also holds istio-cni's DNS capture rules (ztdns answers them; Istio's DNS capture should be off).",
	nil, nil)

var istioRulesUnknownDesc = prometheus.NewDesc("ztdns_capture_istio_dns_rules_unknown_pods",
	"Captured pods whose network namespace's netfilter rules could not be read: whether they hold istio-cni's DNS capture rules is unknown.",
	nil, nil)

// istioRulesCollector exports what the last looks at captured pods' rules
// found (refresh); a scrape looks at no pod itself.
type istioRulesCollector struct {
	a *Agent
}

func (c istioRulesCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- doubleCaptureDesc
	ch <- istioRulesUnknownDesc
	ch <- istioExcludesDifferDesc
}

func (c istioRulesCollector) Collect(ch chan<- prometheus.Metric) {
	if c.a.dataplane == nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(istioExcludesDifferDesc, prometheus.GaugeValue, boolValue(c.a.istioChain.excludes.differs()))
	doubly, unknown := c.a.doublyCaptured()
	ch <- prometheus.MustNewConstMetric(doubleCaptureDesc, prometheus.GaugeValue, float64(len(doubly)))
	ch <- prometheus.MustNewConstMetric(istioRulesUnknownDesc, prometheus.GaugeValue, float64(len(unknown)))
}

// istioExcludes compares the namespaces istio-cni's entry in the node's
// CNI chain excludes (cni.Chain.IstioExcludeNamespaces, istio-cni's
// excludeNamespaces) with the agent's --exclude-namespaces, which should
// mirror them. They are compared, not followed: where enrollment is
// required, a pod of a namespace only istio-cni excludes is left alone
// anyway (istio-cni never enrolls it: not-enrolled), and one of a
// namespace only ztdns excludes is merely not captured; the names are
// reported so that the operator makes them agree (without
// --require-istio-enrollment, the first would be captured and answered
// with VIPs ztunnel routes nothing for). Its zero value compares nothing
// (start).
type istioExcludes struct {
	mu      sync.Mutex
	log     *slog.Logger
	own     []string // --exclude-namespaces, sorted
	started bool

	file   string
	theirs []string // istio-cni's, sorted, when they differ from own
	cut    bool     // istio-cni's entry named more than cni.MaxIstioExcludeNamespaces
	differ bool
}

// start sets the agent's own list and the log.
func (e *istioExcludes) start(own []string, log *slog.Logger) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.own = sortedNames(own)
	e.log, e.started = log, true
}

// observe takes a look at the chain: a change of whether the lists differ,
// or of istio-cni's list while they do, is logged once.
func (e *istioExcludes) observe(c cni.Chain) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.started {
		return
	}
	var theirs []string
	known := c.IstioCNI && c.IstioExcludeNamespacesKnown
	differ := known
	if differ {
		theirs = sortedNames(c.IstioExcludeNamespaces)
		// A cut list names more than was read: equal to own up to the
		// cut is no proof that it is own.
		differ = c.IstioExcludeNamespacesCut || !slices.Equal(theirs, e.own)
	}
	if differ == e.differ && slices.Equal(theirs, e.theirs) {
		return
	}
	was := e.differ
	e.file, e.differ, e.cut = c.File, differ, c.IstioExcludeNamespacesCut
	if !differ {
		theirs = nil
	}
	e.theirs = theirs
	switch {
	case differ:
		e.log.Warn("istio-cni excludes other namespaces than --exclude-namespaces: "+e.advice(),
			"file", c.File, "istio_cni", namesOrNone(theirs, e.cut), "exclude_namespaces", namesOrNone(e.own, false))
	case was && !known:
		// Not agreement: istio-cni's entry is gone (a primary plugin
		// rewriting the file drops it for a moment) or has no list.
		e.log.Info("istio-cni's entry in the node's CNI chain is gone or carries no exclude_namespaces: nothing to compare --exclude-namespaces with", "file", c.File)
	case was:
		e.log.Info("istio-cni excludes the namespaces --exclude-namespaces names again", "file", c.File)
	}
}

// advice says what a difference means and what to do.
func (e *istioExcludes) advice() string {
	return "istio-cni enrolls no pod of the namespaces it excludes, whose pods ztdns then leaves alone as not-enrolled " +
		"(captured on their labels with --require-istio-enrollment=false), and ztdns captures no pod of those it excludes; " +
		"make --exclude-namespaces (the chart's cni.excludeNamespaces) equal to istio-cni's excludeNamespaces"
}

// warning is status's warning while the lists differ, "" otherwise.
func (e *istioExcludes) warning() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.differ {
		return ""
	}
	return fmt.Sprintf("istio-cni's entry in the node's CNI chain (%s) excludes the namespaces %s, --exclude-namespaces %s: %s",
		e.file, namesOrNone(e.theirs, e.cut), namesOrNone(e.own, false), e.advice())
}

// comparing reports whether start was called.
func (e *istioExcludes) comparing() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.started
}

// differs reports whether the lists differ, for the gauge.
func (e *istioExcludes) differs() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.differ
}

// sortedNames is names sorted, each once, without empty ones.
func sortedNames(names []string) []string {
	out := slices.DeleteFunc(slices.Clone(names), func(n string) bool { return n == "" })
	slices.Sort(out)
	return slices.Compact(out)
}

// namesOrNone lists names for a message: "[]" for none, the first ten and
// how many more, "…" when the list was cut.
func namesOrNone(names []string, cut bool) string {
	const most = 10
	shown := names[:min(len(names), most)]
	s := "[" + strings.Join(shown, " ")
	if len(names) > most {
		s += fmt.Sprintf(" and %d more", len(names)-most)
	}
	if cut {
		s += " …"
	}
	return s + "]"
}

var istioExcludesDifferDesc = prometheus.NewDesc("ztdns_cni_istio_exclude_namespaces_differ",
	"1 while istio-cni's entry in the node's CNI chain excludes other namespaces than --exclude-namespaces (see ztdns status), 0 otherwise.",
	nil, nil)
