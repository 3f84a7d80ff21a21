package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztdns/ztdns/pkg/ambient/istiocni"
	"github.com/ztdns/ztdns/pkg/podcache"
)

// istioRulesMaxAge is how long a look at a pod's netfilter rules stays
// good: istio-cni installs them when the pod starts, or later when
// ambient is turned on for it.
const istioRulesMaxAge = 10 * time.Second

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
}

type istioRulesLook struct {
	found istiocni.Finding
	// unknown: some of the namespace's rules could not be read (a pod's
	// root can fill them past the bound), so found may miss a backend.
	unknown bool
	logged  bool // the error was logged, once for the namespace
	at      time.Time
}

// String is what ztdns shows: the backends found, and "unknown" when
// some rules could not be read.
func (l istioRulesLook) String() string {
	if l.unknown {
		return strings.Join(append(slices.Clone([]string(l.found)), "unknown"), ",")
	}
	return l.found.String()
}

// look returns what istio-cni left in the attachment's netns, looking again
// when the last look is older than istioRulesMaxAge.
func (r *istioRules) look(log *slog.Logger, a podcache.Attachment) istioRulesLook {
	if !a.Captured || a.NetnsPath == "" {
		return istioRulesLook{}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	last, ok := r.seen[a.NetnsCookie]
	if ok && time.Since(last.at) < istioRulesMaxAge {
		return last
	}
	inspect := r.inspect
	if inspect == nil {
		inspect = istiocni.Inspect
	}
	l := istioRulesLook{logged: last.logged, at: time.Now()}
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
	if r.seen == nil {
		r.seen = map[uint64]istioRulesLook{}
	}
	r.seen[a.NetnsCookie] = l
	return l
}

// doublyCaptured lists "namespace/name (backends)" of captured pods with
// istio-cni's DNS rules, and "namespace/name" of those whose rules could
// not be read (nothing found, but unknown), and forgets pods no longer
// captured.
func (a *Agent) doublyCaptured() (pods, unknown []string) {
	if a.capture == nil {
		return nil, nil
	}
	live := map[uint64]bool{}
	for _, att := range a.pods.Attachments() {
		live[att.NetnsCookie] = true
		switch l := a.istioRules.look(a.log, att); {
		case l.found.Present():
			pods = append(pods, fmt.Sprintf("%s/%s (%s)", att.Namespace, att.Name, l))
		case l.unknown:
			unknown = append(unknown, att.Namespace+"/"+att.Name)
		}
	}
	a.istioRules.mu.Lock()
	for cookie := range a.istioRules.seen {
		if !live[cookie] {
			delete(a.istioRules.seen, cookie)
		}
	}
	a.istioRules.mu.Unlock()
	slices.Sort(pods)
	slices.Sort(unknown)
	return pods, unknown
}

// doubleCaptureWarning is the status warning for doublyCaptured pods.
func doubleCaptureWarning(pods []string) string {
	return fmt.Sprintf("%d captured pod(s) also carry istio-cni's DNS capture rules: %s. ztdns answers them (its redirect "+
		"does not match those rules), but Istio's DNS capture is on for them: set values.cni.ambient.dnsCapture=false "+
		"on Istio, or annotate them ambient.istio.io/dns-capture: \"false\" with ztdns.io/dns-capture: \"true\" (see README)",
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
