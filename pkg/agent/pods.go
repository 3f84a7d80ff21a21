package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/ztdns/ztdns/pkg/capture"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/redirect"
)

var errNoCapture = control.Invalid(errors.New("this agent runs with --capture=false"))

// captureNetns marks a network namespace by hand. The agent opens it itself
// and records what it finds there; the node's own namespace and one the
// container runtime recorded for a pod are refused.
func (a *Agent) captureNetns(req control.CaptureRequest) (control.PodRow, error) {
	if a.dataplane == nil {
		return control.PodRow{}, errNoCapture
	}
	// What it checks against the records, CNI events change.
	a.cniMu.Lock()
	defer a.cniMu.Unlock()
	if a.handedOver.Load() { // waited while the agent handed over
		return control.PodRow{}, errHandedOver
	}
	ns, err := a.inspectNetns(req.Netns)
	if err != nil {
		return control.PodRow{}, err
	}
	if req.Namespace == "" {
		req.Namespace = "default"
	}
	if req.Name == "" {
		req.Name = req.Netns
	}
	// Namespaces released by hand under this name, and those gone (`ip
	// netns del` and `add` again: another namespace at the path, which
	// housekeeping would forget within 30 s): the new one takes it.
	var released []string
	nodeNS := capture.ProcNamespaces{Root: a.cfg.ProcRoot}
	for key, att := range a.pods.Attachments() {
		switch {
		case att.NetnsCookie == ns.cookie && att.ContainerID != "":
			return control.PodRow{}, control.Refused(fmt.Errorf("%s is pod %s/%s's, %s: capture add is for namespaces no runtime manages",
				req.Netns, att.Namespace, att.Name, recordedBy(att)))
		case att.Namespace == req.Namespace && att.Name == req.Name && runtimesRecord(att):
			// Records are merged by namespace/name: a hand-made one would
			// take the runtime's pod's place.
			return control.PodRow{}, control.Refused(fmt.Errorf("pod %s/%s is recorded by the container runtime (network namespace %s): capture add needs another --name",
				req.Namespace, req.Name, att.NetnsPath))
		case att.Namespace == req.Namespace && att.Name == req.Name && att.ContainerID != "": // adopted
			return control.PodRow{}, control.Refused(fmt.Errorf("%s/%s is already the name of network namespace %s, %s: capture add needs another --name",
				req.Namespace, req.Name, att.NetnsPath, recordedBy(att)))
		case att.Namespace == req.Namespace && att.Name == req.Name && att.NetnsCookie != ns.cookie && (!att.Captured || capture.NetnsDead(nodeNS, att)):
			released = append(released, key)
		case att.Namespace == req.Namespace && att.Name == req.Name && att.NetnsCookie != ns.cookie:
			// Another namespace marked by hand under this name: merged by
			// name, one would hide the other.
			return control.PodRow{}, control.Refused(fmt.Errorf("%s/%s is already the name of network namespace %s: release it (capture del) or give another --name",
				req.Namespace, req.Name, att.NetnsPath))
		}
	}
	// The same netns marked again (under another name, say) has the same
	// key: Apply replaces its record and keeps its mark and nameserver
	// slots, which an unmark would drop.
	for _, key := range released {
		old, ok, err := a.dataplane.controller.Forget(key)
		if err != nil {
			return control.PodRow{}, err
		}
		if ok && old.Captured {
			a.log.Info("network namespace captured by hand is gone; forgetting it for the one captured under its name",
				"pod", old.Namespace+"/"+old.Name, "netns", old.NetnsPath, "netnsCookie", old.NetnsCookie, "ips", old.IPs)
		}
	}
	att := podcache.Attachment{Namespace: req.Namespace, Name: req.Name, NetnsPath: req.Netns, NetnsCookie: ns.cookie, IPs: ns.addrs,
		Captured: true, Reason: capture.ReasonByHand}
	if err := a.dataplane.controller.Apply(att); err != nil {
		return control.PodRow{}, err
	}
	a.log.Info("captured a network namespace", "netns", req.Netns, "pod", req.Namespace+"/"+req.Name, "netnsCookie", ns.cookie, "ips", ns.addrs)
	a.istioRules.lookNow(a.log, att) // the row shows it
	rows, err := a.podRows()
	for _, r := range rows {
		if r.NetnsCookie == ns.cookie {
			return r, err
		}
	}
	return control.PodRow{}, errors.Join(err, errors.New("marked, but the pod is not listed"))
}

// readdressByHand reads again the addresses of the network namespaces
// marked by hand (captured or released) and records those that changed: a
// namespace captured before it was given its address (`ip netns add`,
// `capture add`, then its veth and address) would otherwise stay unknown
// by that address, its queries answered as those of a client outside every
// namespace. It reads them as capture add does, one namespace at a time,
// outside cniMu (about half a millisecond each); a namespace gone, or
// another at the path, is left to housekeeping's Redecide, which forgets
// its record.
func (a *Agent) readdressByHand() {
	if a.dataplane == nil {
		return
	}
	for key, att := range a.pods.Attachments() {
		if att.ContainerID != "" || a.handedOver.Load() {
			continue
		}
		ns, err := a.inspectNetns(att.NetnsPath)
		if err != nil || ns.cookie != att.NetnsCookie || slices.Equal(ns.addrs, att.IPs) {
			continue
		}
		old, changed, err := a.dataplane.controller.Readdress(key, att.NetnsCookie, ns.addrs)
		switch {
		case errors.Is(err, capture.ErrFenced): // handed over: the successor reads them
			return
		case err != nil:
			a.log.Error("recording the new addresses of a network namespace captured by hand failed", "netns", att.NetnsPath,
				"pod", att.Namespace+"/"+att.Name, "ips", ns.addrs, "err", err)
		case changed:
			a.log.Info("a network namespace captured by hand has new addresses", "netns", att.NetnsPath,
				"pod", old.Namespace+"/"+old.Name, "ips", ns.addrs, "before", old.IPs)
		}
	}
}

// releaseNetns unmarks a network namespace marked by hand. Its record
// stays, not captured, while the namespace lives (capture.Release). The
// netns may be gone already: the record is then found by its path, and
// forgotten. A pod the container runtime recorded is released by its DEL,
// not by hand.
func (a *Agent) releaseNetns(req control.CaptureRequest) error {
	if a.dataplane == nil {
		return errNoCapture
	}
	a.cniMu.Lock()
	defer a.cniMu.Unlock()
	if a.handedOver.Load() {
		return errHandedOver
	}
	atts := a.pods.Attachments()
	for key, att := range atts {
		if att.NetnsPath == req.Netns && att.ContainerID == "" {
			if !att.Captured {
				return control.Invalid(fmt.Errorf("%s is not captured: released already", req.Netns))
			}
			_, _, err := a.dataplane.controller.Release(key)
			a.log.Info("released a network namespace", "netns", req.Netns, "pod", att.Namespace+"/"+att.Name)
			return err
		}
	}
	for _, att := range atts {
		if att.NetnsPath == req.Netns {
			return control.Refused(fmt.Errorf("%s is pod %s/%s's, %s: its CNI DEL releases it",
				req.Netns, att.Namespace, att.Name, recordedBy(att)))
		}
	}
	ns, err := a.inspectNetns(req.Netns)
	if err != nil {
		return err
	}
	if p := a.pods.ByCookie(ns.cookie); p != nil && p.Attachment != nil {
		if p.Attachment.ContainerID != "" {
			return control.Refused(fmt.Errorf("%s is pod %s's, %s (at %s): its CNI DEL releases it",
				req.Netns, p.Key(), recordedBy(*p.Attachment), p.Attachment.NetnsPath))
		}
		return control.Refused(fmt.Errorf("%s is pod %s's (recorded at %s): release it there", req.Netns, p.Key(), p.Attachment.NetnsPath))
	}
	// A stale mark nobody records.
	if removed, err := a.dataplane.controller.UnmarkStale(ns.cookie); removed || err != nil {
		return err
	}
	return control.Invalid(fmt.Errorf("%s is not captured", req.Netns))
}

// runtimesRecord reports whether a CNI ADD recorded the attachment: an
// adopted one (a pod running before the agent) carries an ID the agent
// made up, and one marked by hand none.
func runtimesRecord(att podcache.Attachment) bool {
	return att.ContainerID != "" && !strings.HasPrefix(att.ContainerID, capture.AdoptedPrefix)
}

// recordedBy says, for a refusal, how a pod's record came to be.
func recordedBy(att podcache.Attachment) string {
	switch {
	case runtimesRecord(att):
		return "recorded by the container runtime"
	case att.ContainerID != "":
		return "a pod the container runtime runs, adopted by the agent when it started"
	}
	return "marked by hand"
}

// podRows joins the registry with the pods map.
func (a *Agent) podRows() ([]control.PodRow, error) {
	marks := map[uint64]redirect.MarkedPod{}
	if a.dataplane != nil && a.dataplane.r != nil {
		marked, err := a.dataplane.r.Pods()
		if err != nil {
			return nil, err
		}
		for _, m := range marked {
			marks[m.NetnsCookie] = m
		}
	}
	var rows []control.PodRow
	for _, p := range a.pods.List() {
		row := control.PodRow{Namespace: p.Namespace, Name: p.Name, Resolver: a.server.PodUsage(p)}
		for _, ip := range p.IPs {
			row.IPs = append(row.IPs, ip.String())
		}
		row.Captured, row.Reason = a.podDecision(p)
		if att := p.Attachment; att != nil {
			row.ContainerID, row.NetnsCookie, row.NetnsPath = att.ContainerID, att.NetnsCookie, att.NetnsPath
			row.IstioDNSRules = a.istioRules.last(*att).String()
			if m, ok := marks[att.NetnsCookie]; ok {
				fillMarked(&row, m)
				delete(marks, att.NetnsCookie)
			}
		}
		rows = append(rows, row)
	}
	for cookie, m := range marks { // marked, but no record says whose
		row := control.PodRow{NetnsCookie: cookie}
		fillMarked(&row, m)
		for _, ip := range []netip.Addr{m.IPv4, m.IPv6} {
			if ip.IsValid() {
				row.IPs = append(row.IPs, ip.String())
			}
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// podDecision is p's capture decision as `ztdns pods` shows it (and
// ztdns_capture_pods counts it): its record's; for a pod no record holds,
// not captured, with the rules' reason for leaving it alone
// (capture.Controller.Unrecorded), or none (""); with capture off,
// capture-off, as a record made then says (decide).
func (a *Agent) podDecision(p *podcache.Pod) (captured bool, reason string) {
	if att := p.Attachment; att != nil {
		return att.Captured, att.Reason
	}
	if a.dataplane == nil {
		return false, capture.ReasonCaptureOff
	}
	return false, a.dataplane.controller.Unrecorded(p)
}

// fillMarked fills in what the pods map holds of a marked namespace: one
// place for both kinds of row, so a counter added to the map shows in each.
func fillMarked(row *control.PodRow, m redirect.MarkedPod) {
	row.Marked = true
	row.Redirected, row.Restored, row.SkippedStale = m.Counters.Redirected, m.Counters.Restored, m.Counters.SkippedStale
	row.Sockets = m.Sockets
	row.Nameservers = learnedNameservers(m)
}

// learnedNameservers are the pod's learned slots, each with its number: a
// free slot is left out, and the rest keep theirs.
func learnedNameservers(m redirect.MarkedPod) []control.PodNameserver {
	var out []control.PodNameserver
	for slot, ns := range m.Nameservers {
		if ns.Addr.IsValid() {
			out = append(out, control.PodNameserver{Slot: slot, Address: ns.Addr.String(), Idle: ns.Idle.Round(time.Millisecond).String(),
				Unconfirmed: ns.Unconfirmed})
		}
	}
	return out
}
