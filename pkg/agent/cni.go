package agent

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/ztdns/ztdns/pkg/ambient"
	"github.com/ztdns/ztdns/pkg/cni"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/redirect"
)

// Reasons the agent gives besides pkg/ambient's.
const (
	reasonCaptureOff = "capture-off" // the agent runs with --capture=false
	reasonHostNetns  = "host-netns"  // the sandbox is the node's own namespace
	reasonByHand     = "by-hand"     // ztdns capture add
)

// CNIConfig installs the chained plugin into the node's CNI configuration.
type CNIConfig struct {
	// BinDir and ConfDir are the runtime's (mounted from the host).
	BinDir  string
	ConfDir string
	// Plugin is the plugin's conflist entry.
	Plugin cni.Config
}

// cniInstallInterval is how often the installer looks again: for the
// primary plugin's configuration to appear, and for it to be rewritten
// without our entry (primary plugins regenerate their conflist).
const cniInstallInterval = 5 * time.Second

// cniAdd records a new sandbox, decides whether its DNS is captured and
// marks it. A repeated ADD changes nothing. What the request says is checked
// first (verifyAdd): it must match the network namespace it names.
func (a *Agent) cniAdd(req control.CNIAddRequest) (control.CNIAddResponse, error) {
	resp, err := a.addSandbox(req)
	switch {
	case err == nil:
		metricCNIEvents.WithLabelValues("add", resp.Reason).Inc()
	case control.StatusOf(err) == http.StatusForbidden:
		metricCNIEvents.WithLabelValues("add", "refused").Inc()
		a.log.Warn("refused a CNI ADD", "pod", req.PodNamespace+"/"+req.PodName, "container", req.ContainerID, "netns", req.Netns, "err", err)
	default:
		metricCNIEvents.WithLabelValues("add", "error").Inc()
	}
	return resp, err
}

func (a *Agent) addSandbox(req control.CNIAddRequest) (control.CNIAddResponse, error) {
	if err := req.Validate(); err != nil { // a replayed record did not pass the API
		return control.CNIAddResponse{}, control.Invalid(err)
	}
	if err := a.verifyAdd(req); err != nil {
		if a.capture == nil {
			// Nothing to honour, so no reason to fail the pod; but an
			// unverified claim is not recorded either (an agent without
			// capture may lack the privilege to look into namespaces).
			a.log.Debug("not recording a CNI ADD the agent cannot verify", "pod", req.PodNamespace+"/"+req.PodName, "err", err)
			return control.CNIAddResponse{Captured: false, Reason: reasonCaptureOff}, nil
		}
		return control.CNIAddResponse{}, err
	}
	att := podcache.Attachment{
		ContainerID: req.ContainerID, Namespace: req.PodNamespace, Name: req.PodName, UID: req.PodUID,
		NetnsPath: req.Netns, NetnsCookie: req.NetnsCookie, IPs: req.IPs,
	}
	att.Captured, att.Reason = a.decide(att)
	if a.capture == nil {
		a.pods.Attach(att) // still tells the resolver who is asking
		return control.CNIAddResponse{Captured: false, Reason: att.Reason}, nil
	}
	if err := a.capture.apply(att); err != nil {
		return control.CNIAddResponse{}, fmt.Errorf("marking %s/%s: %w", req.PodNamespace, req.PodName, err)
	}
	a.log.Info("CNI ADD", "pod", req.PodNamespace+"/"+req.PodName, "container", req.ContainerID,
		"netnsCookie", req.NetnsCookie, "ips", req.IPs, "captured", att.Captured, "reason", att.Reason)
	return control.CNIAddResponse{Captured: att.Captured, Reason: att.Reason}, nil
}

// cniDel forgets a sandbox and unmarks it. Unknown containers are fine.
func (a *Agent) cniDel(req control.CNIDelRequest) error {
	if err := req.Validate(); err != nil {
		metricCNIEvents.WithLabelValues("del", "error").Inc()
		return control.Invalid(err)
	}
	if a.capture == nil {
		a.pods.Detach(req.ContainerID)
		metricCNIEvents.WithLabelValues("del", "ok").Inc()
		return nil
	}
	att, ok, err := a.capture.forget(req.ContainerID)
	if ok {
		a.log.Info("CNI DEL", "pod", att.Namespace+"/"+att.Name, "container", req.ContainerID)
	}
	if err != nil {
		metricCNIEvents.WithLabelValues("del", "error").Inc()
		return err
	}
	metricCNIEvents.WithLabelValues("del", "ok").Inc()
	return nil
}

// decide applies Istio's ambient rules to a CNI attachment, with what the
// source knows about the pod and its namespace right now. Pods marked by
// hand are always captured.
func (a *Agent) decide(att podcache.Attachment) (bool, string) {
	switch {
	case att.ContainerID == "":
		return true, reasonByHand
	case a.capture == nil:
		return false, reasonCaptureOff
	case slices.Contains(a.hostCookies, att.NetnsCookie):
		return false, reasonHostNetns
	}
	var spec *model.Pod
	if p := a.pods.Get(att.Namespace, att.Name); p != nil {
		spec = p.Spec
	}
	var ns *model.Namespace
	if m := a.namespaces.Load(); m != nil {
		ns = (*m)[att.Namespace]
	}
	return ambient.Decide(spec, ns, a.cfg.DNSCaptureDefault)
}

// redecide re-applies the rules to every recorded pod, marking and
// unmarking those whose decision changed: how a namespace label or a pod
// annotation added at run time takes effect, without a restart.
func (a *Agent) redecide() {
	// Before the source's first snapshot every namespace looks unlabelled:
	// deciding then would unmark every restored pod until it arrives.
	if a.capture == nil || a.namespaces.Load() == nil {
		return
	}
	a.decideMu.Lock()
	defer a.decideMu.Unlock()
	for _, att := range a.pods.Attachments() {
		captured, reason := a.decide(att)
		if captured == att.Captured && reason == att.Reason {
			continue
		}
		att.Captured, att.Reason = captured, reason
		if err := a.capture.apply(att); err != nil {
			a.log.Error("applying a changed capture decision failed", "pod", att.Namespace+"/"+att.Name, "err", err)
			continue
		}
		a.log.Info("capture decision changed", "pod", att.Namespace+"/"+att.Name, "captured", captured, "reason", reason)
	}
	a.adoptRunningPods()
}

// replayPending applies the CNI events the plugin recorded while this agent
// was unreachable: DELs first (a sandbox may have come and gone), then ADDs
// whose network namespace still exists.
func (a *Agent) replayPending() {
	dir := a.pendingDir()
	dels, err := cni.PendingDeletes(dir)
	if err != nil {
		a.log.Error("reading pending CNI deletes", "dir", dir, "err", err)
	}
	for _, d := range dels {
		if err := a.cniDel(d); err != nil {
			a.log.Error("replaying a CNI DEL failed", "container", d.ContainerID, "err", err)
			continue
		}
		cni.ForgetPendingDelete(dir, d.ContainerID)
	}
	adds, err := cni.PendingAdds(dir)
	if err != nil {
		a.log.Error("reading pending CNI adds", "dir", dir, "err", err)
	}
	for _, ad := range adds {
		// Checked like an ADD from the plugin: a pod that is gone, or whose
		// namespace is now another one, is refused and forgotten.
		if _, err := a.cniAdd(ad); err != nil && control.StatusOf(err) == http.StatusInternalServerError {
			a.log.Error("replaying a CNI ADD failed", "pod", ad.PodNamespace+"/"+ad.PodName, "err", err)
			continue
		} else if err != nil {
			a.log.Info("not replaying a CNI ADD recorded while the agent was away", "pod", ad.PodNamespace+"/"+ad.PodName, "err", err)
		}
		cni.ForgetPendingAdd(dir, ad.ContainerID)
	}
}

func (a *Agent) pendingDir() string {
	if a.cfg.CNI != nil && a.cfg.CNI.Plugin.PendingDir != "" {
		return a.cfg.CNI.Plugin.PendingDir
	}
	return filepath.Join(filepath.Dir(a.cfg.Socket), "pending")
}

// installCNI puts the plugin into the node's CNI configuration and keeps it
// there until ctx ends.
func (a *Agent) installCNI(ctx context.Context) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	plugin := a.cfg.CNI.Plugin
	if plugin.SocketPath == "" {
		plugin.SocketPath = a.cfg.Socket
	}
	entry, err := plugin.Entry()
	if err != nil {
		return err
	}
	cfg := cni.InstallConfig{BinDir: a.cfg.CNI.BinDir, ConfDir: a.cfg.CNI.ConfDir, Binary: self, PluginConf: entry, Logger: a.log}
	if err := cni.WaitAndInstall(ctx, cfg, cniInstallInterval); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	t := time.NewTicker(cniInstallInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := cni.Install(cfg); err != nil {
				a.log.Error("keeping the CNI plugin installed failed", "err", err)
			}
		}
	}
}

// adoptRunningPods finds the network namespaces of pods on this node that
// should be captured but that no CNI event announced (they started before
// ztdns was installed), by scanning /proc for the namespace that holds the
// pod's IP. It scans when that set of pods changed, and otherwise at most
// every adoptInterval.
func (a *Agent) adoptRunningPods() {
	if a.cfg.NodeName == "" {
		return // standalone: pods in manifests are not processes here
	}
	var want []*podcache.Pod
	for _, p := range a.pods.List() {
		if p.Attachment == nil && p.Spec != nil && p.Spec.NodeName == a.cfg.NodeName && len(p.IPs) > 0 {
			if captured, _ := ambient.Decide(p.Spec, a.namespaceOf(p.Namespace), a.cfg.DNSCaptureDefault); captured {
				want = append(want, p)
			}
		}
	}
	key := ""
	for _, p := range want {
		key += p.Key() + ","
	}
	if len(want) == 0 || (key == a.adoptKey && time.Since(a.adoptedAt) < adoptInterval) {
		return
	}
	a.adoptKey, a.adoptedAt = key, time.Now()
	found := netnsByIP(a.hostCookies)
	for _, p := range want {
		for _, ip := range p.IPs {
			n, ok := found[ip]
			if !ok {
				continue
			}
			att := podcache.Attachment{ContainerID: "adopted-" + strconv.FormatUint(n.cookie, 10), Namespace: p.Namespace, Name: p.Name,
				UID: p.UID, NetnsPath: n.path, NetnsCookie: n.cookie, IPs: p.IPs}
			att.Captured, att.Reason = a.decide(att)
			if err := a.capture.apply(att); err != nil {
				a.log.Error("adopting a running pod failed", "pod", p.Key(), "err", err)
			} else {
				a.log.Info("adopted a running pod", "pod", p.Key(), "netns", n.path, "captured", att.Captured)
			}
			break
		}
	}
}

// adoptInterval bounds how often /proc is scanned for the same pods.
const adoptInterval = 30 * time.Second

type foundNetns struct {
	path   string
	cookie uint64
}

// netnsByIP maps the addresses of every network namespace a process on the
// node lives in (but the node's own) to that namespace.
func netnsByIP(hostCookies []uint64) map[netip.Addr]foundNetns {
	out := map[netip.Addr]foundNetns{}
	seen := map[uint64]bool{}
	procs, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	for _, path := range procs {
		cookie, err := redirect.NetnsCookie(path)
		if err != nil || slices.Contains(hostCookies, cookie) || seen[cookie] {
			continue
		}
		seen[cookie] = true
		addrs, err := redirect.NetnsAddrs(path)
		if err != nil {
			continue
		}
		for _, ip := range addrs {
			out[ip] = foundNetns{path: path, cookie: cookie}
		}
	}
	return out
}

func (a *Agent) namespaceOf(name string) *model.Namespace {
	if m := a.namespaces.Load(); m != nil {
		return (*m)[name]
	}
	return nil
}

// setNamespaces keeps the snapshot's namespaces for decisions.
func (a *Agent) setNamespaces(list []model.Namespace) {
	m := make(map[string]*model.Namespace, len(list))
	for i := range list {
		m[list[i].Name] = &list[i]
	}
	a.namespaces.Store(&m)
}
