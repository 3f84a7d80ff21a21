package agent

import (
	"fmt"
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
}

type istioRulesLook struct {
	found istiocni.Finding
	at    time.Time
}

// look returns what istio-cni left in the attachment's netns, looking again
// when the last look is older than istioRulesMaxAge.
func (r *istioRules) look(a podcache.Attachment) istiocni.Finding {
	if !a.Captured || a.NetnsPath == "" {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if l, ok := r.seen[a.NetnsCookie]; ok && time.Since(l.at) < istioRulesMaxAge {
		return l.found
	}
	found, err := istiocni.Inspect(a.NetnsPath, a.NetnsCookie)
	if err != nil {
		found = nil // the netns is gone, another one now, or unreadable: nothing to report
	}
	if r.seen == nil {
		r.seen = map[uint64]istioRulesLook{}
	}
	r.seen[a.NetnsCookie] = istioRulesLook{found: found, at: time.Now()}
	return found
}

// doublyCaptured lists "namespace/name (backends)" of captured pods with
// istio-cni's DNS rules, and forgets pods no longer captured.
func (a *Agent) doublyCaptured() []string {
	if a.capture == nil {
		return nil
	}
	var out []string
	live := map[uint64]bool{}
	for _, att := range a.pods.Attachments() {
		live[att.NetnsCookie] = true
		if f := a.istioRules.look(att); f.Present() {
			out = append(out, fmt.Sprintf("%s/%s (%s)", att.Namespace, att.Name, f))
		}
	}
	a.istioRules.mu.Lock()
	for cookie := range a.istioRules.seen {
		if !live[cookie] {
			delete(a.istioRules.seen, cookie)
		}
	}
	a.istioRules.mu.Unlock()
	slices.Sort(out)
	return out
}

// doubleCaptureWarning is the status warning for doublyCaptured pods.
func doubleCaptureWarning(pods []string) string {
	return fmt.Sprintf("%d captured pod(s) also carry istio-cni's DNS capture rules: %s. ztdns answers them (its redirect "+
		"does not match those rules), but Istio's DNS capture is on for them: set values.cni.ambient.dnsCapture=false "+
		"on Istio, or annotate them ambient.istio.io/dns-capture: \"false\" with ztdns.io/dns-capture: \"true\" (see README)",
		len(pods), strings.Join(pods, ", "))
}

var doubleCaptureDesc = prometheus.NewDesc("ztdns_capture_istio_dns_rules_pods",
	"Captured pods whose network namespace also holds istio-cni's DNS capture rules (ztdns answers them; Istio's DNS capture should be off).",
	nil, nil)
