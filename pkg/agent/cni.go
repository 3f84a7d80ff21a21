// CNI events: the plugin's ADDs and DELs, checked against the network
// namespace and the source, recorded (and marked, with capture); those the
// plugin recorded while no agent answered, replayed; and the fence a
// handed-over agent puts on capture.

package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"slices"
	"sync"

	"github.com/ztdns/ztdns/pkg/capture"
	"github.com/ztdns/ztdns/pkg/cni"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/podcache"
)

// cniAdd records a new sandbox, decides whether its DNS is captured and
// marks it. A repeated ADD changes nothing. What the request says is checked
// first: it must match the network namespace it names (verifyAdd), or it is
// refused; and the source's view of the pod (sourceDisagrees), or it is
// answered "not captured" and not recorded.
//
// An ADD that arrived before a DEL of its container was carried out is
// refused: the plugin gave up waiting for it (under onAgentUnreachable
// "fail" the runtime then tears the sandbox down), and carrying it out
// after the DEL, while the namespace still exists (ztdns's DEL runs before
// the primary plugin's), would record and mark a dead sandbox. cniMu does
// not keep the order in which events arrive, so the ADD waits for it in
// waitingAdds, where the DEL finds it.
func (a *Agent) cniAdd(req control.CNIAddRequest) (control.CNIAddResponse, error) {
	w := a.waitingAdds.add(req.ContainerID)
	defer a.waitingAdds.remove(w)
	a.cniMu.Lock()
	defer a.cniMu.Unlock()
	if a.handedOver.Load() {
		return control.CNIAddResponse{}, errHandedOver
	}
	if a.waitingAdds.deletedSince(w) {
		metricCNIEvents.WithLabelValues("add", "refused").Inc()
		a.log.Info("not carrying out a CNI ADD whose container was deleted after it arrived", "pod", req.PodNamespace+"/"+req.PodName,
			"container", req.ContainerID)
		return control.CNIAddResponse{}, control.Refused(fmt.Errorf("container %s was deleted after this ADD was sent: the runtime gave up on it",
			req.ContainerID))
	}
	return a.cniAddLocked(req)
}

// waitingAdds is the CNI ADDs that arrived and are not done (cniAdd), by
// container ID: as many as the control socket's connections answered at
// once. A DEL carried out meanwhile flags its container's (deleted).
type waitingAdds struct {
	mu   sync.Mutex
	byID map[string][]*waitingAdd
}

type waitingAdd struct {
	id      string
	deleted bool // a DEL of id was carried out since the ADD arrived
}

func (w *waitingAdds) add(id string) *waitingAdd {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.byID == nil {
		w.byID = map[string][]*waitingAdd{}
	}
	add := &waitingAdd{id: id}
	w.byID[id] = append(w.byID[id], add)
	return add
}

func (w *waitingAdds) remove(add *waitingAdd) {
	w.mu.Lock()
	defer w.mu.Unlock()
	rest := slices.DeleteFunc(w.byID[add.id], func(o *waitingAdd) bool { return o == add })
	if len(rest) == 0 {
		delete(w.byID, add.id)
	} else {
		w.byID[add.id] = rest
	}
}

// deleted flags the waiting ADDs of container id: a DEL of it was carried
// out after they arrived.
func (w *waitingAdds) deleted(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, add := range w.byID[id] {
		add.deleted = true
	}
}

func (w *waitingAdds) deletedSince(add *waitingAdd) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return add.deleted
}

// waiting is how many ADDs of container id wait.
func (w *waitingAdds) waiting(id string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.byID[id])
}

// errHandedOver answers a CNI event (or capture add/del) that waited for
// cniMu while the agent handed over (fenceCapture holds it): the successor
// takes the event, so the plugin treats it as an agent it could not reach
// (503), which under onAgentUnreachable "allow" records it for replay
// instead of failing the pod.
var errHandedOver = control.Unavailable(errors.New("this agent handed over to a new one: try the new one"))

// cniAddLocked is cniAdd under cniMu, for the plugin's ADDs and replayed
// ones. A failed ADD, refused (403) or failing (400, 500), is logged with
// its pod and cause, one line per ratelog.Every (10 s) across all failed
// ADDs (failedAdds); the next line says how many went unlogged, and
// ztdns_cni_events_total counts each. The plugin fails the pod's sandbox
// with it, and the kubelet retries it, so a cause that lasts (a full pods
// map, say) fails every new pod on the node again and again.
func (a *Agent) cniAddLocked(req control.CNIAddRequest) (control.CNIAddResponse, error) {
	resp, err := a.addSandbox(req)
	if err == nil {
		metricCNIEvents.WithLabelValues("add", resp.Reason).Inc()
		return resp, nil
	}
	outcome, msg := "error", "a CNI ADD failed: the plugin fails the pod's sandbox"
	if control.StatusOf(err) == http.StatusForbidden {
		outcome, msg = "refused", "refused a CNI ADD"
	}
	metricCNIEvents.WithLabelValues("add", outcome).Inc()
	a.failedAdds.Log(a.log, slog.LevelWarn, msg, "pod", req.PodNamespace+"/"+req.PodName, "container", req.ContainerID, "netns", req.Netns,
		"status", control.StatusOf(err), "err", err)
	return resp, err
}

func (a *Agent) addSandbox(req control.CNIAddRequest) (control.CNIAddResponse, error) {
	// As the API does: a replayed record did not pass it.
	req.KeepPodAddrs()
	if err := req.Validate(); err != nil {
		return control.CNIAddResponse{}, control.Invalid(err)
	}
	if err := a.verifyAdd(req); err != nil {
		if a.dataplane == nil {
			// Nothing to honour, so no reason to fail the pod; but an
			// unverified claim is not recorded either (an agent without
			// capture may lack the privilege to look into namespaces).
			a.log.Debug("not recording a CNI ADD the agent cannot verify", "pod", req.PodNamespace+"/"+req.PodName, "err", err)
			return control.CNIAddResponse{Captured: false, Reason: capture.ReasonCaptureOff}, nil
		}
		return control.CNIAddResponse{}, err
	}
	if err := a.sourceDisagrees(req); err != nil {
		// The source may be the one that is wrong (its watch lags behind
		// the runtime): failing the ADD would fail the pod on every retry
		// until it catches up, whatever the plugin's onAgentUnreachable.
		// Nothing is recorded, so the claim gets nothing; once the source
		// agrees, the running pod is adopted.
		a.log.Warn("not capturing a pod whose ADD the agent's source contradicts; it is adopted once the source agrees",
			"pod", req.PodNamespace+"/"+req.PodName, "container", req.ContainerID, "netns", req.Netns, "err", err)
		return control.CNIAddResponse{Captured: false, Reason: capture.ReasonSourceMismatch}, nil
	}
	att := podcache.Attachment{
		ContainerID: req.ContainerID, Namespace: req.PodNamespace, Name: req.PodName, UID: req.PodUID,
		NetnsPath: req.Netns, NetnsCookie: req.NetnsCookie, IPs: req.IPs,
	}
	att.Captured, att.Reason = a.decide(att)
	a.forgetDeadClaims(att)
	if a.dataplane == nil {
		a.pods.Attach(att) // still tells the resolver who is asking
		return control.CNIAddResponse{Captured: false, Reason: att.Reason}, nil
	}
	if err := a.dataplane.controller.Apply(att); err != nil {
		return control.CNIAddResponse{}, fmt.Errorf("marking %s/%s: %w", req.PodNamespace, req.PodName, err)
	}
	a.log.Info("CNI ADD", "pod", req.PodNamespace+"/"+req.PodName, "container", req.ContainerID,
		"netnsCookie", req.NetnsCookie, "ips", req.IPs, "captured", att.Captured, "reason", att.Reason)
	if att.Captured {
		a.istioRules.wake() // looked at once the ADD is answered, not before
	}
	return control.CNIAddResponse{Captured: att.Captured, Reason: att.Reason}, nil
}

// cniDel forgets a sandbox and unmarks it. Unknown containers are fine. A
// container the agent never heard of may be a pod it adopted (found
// running, announced by no ADD): the pod's namespace and name find that.
func (a *Agent) cniDel(req control.CNIDelRequest) error {
	a.cniMu.Lock()
	defer a.cniMu.Unlock()
	if a.handedOver.Load() {
		return errHandedOver
	}
	return a.cniDelLocked(req)
}

func (a *Agent) cniDelLocked(req control.CNIDelRequest) error {
	if err := req.Validate(); err != nil {
		metricCNIEvents.WithLabelValues("del", "error").Inc()
		return control.Invalid(err)
	}
	a.waitingAdds.deleted(req.ContainerID)
	if a.dataplane == nil {
		a.pods.Detach(req.ContainerID)
		metricCNIEvents.WithLabelValues("del", "ok").Inc()
		return nil
	}
	att, ok, err := a.dataplane.controller.Forget(req.ContainerID)
	if ok {
		a.log.Info("CNI DEL", "pod", att.Namespace+"/"+att.Name, "container", req.ContainerID)
	}
	if !ok && err == nil && req.PodName != "" {
		var released []podcache.Attachment
		released, err = a.dataplane.controller.ForgetAdopted(req.PodNamespace, req.PodName, req.Netns)
		for _, att := range released {
			a.log.Info("CNI DEL of an adopted pod", "pod", att.Namespace+"/"+att.Name, "container", req.ContainerID, "adopted", att.ContainerID)
		}
	}
	if err != nil {
		metricCNIEvents.WithLabelValues("del", "error").Inc()
		return err
	}
	metricCNIEvents.WithLabelValues("del", "ok").Inc()
	return nil
}

// decide is the capture decision for an attachment: the controller's, or
// none without capture.
func (a *Agent) decide(att podcache.Attachment) (bool, string) {
	if a.dataplane == nil {
		return false, capture.ReasonCaptureOff
	}
	return a.dataplane.controller.Decide(att)
}

// replayPending applies the CNI events the plugin recorded while no agent
// answered it: DELs first (a sandbox may have come and gone), then ADDs
// whose network namespace still exists. It runs before the control socket
// listens, and again while it does (keepHouse): the plugin may record an
// event in the gap between a predecessor closing its socket and this
// agent's opening, or just as this one opens it.
func (a *Agent) replayPending() {
	dir := a.pendingDir()
	dels, err := cni.PendingDeletes(dir)
	if err != nil {
		a.log.Error("reading pending CNI deletes", "dir", dir, "err", err)
	}
	for _, d := range dels {
		a.replayDel(dir, d)
	}
	adds, err := cni.PendingAdds(dir)
	if err != nil {
		a.log.Error("reading pending CNI adds", "dir", dir, "err", err)
	}
	for _, ad := range adds {
		a.replayAdd(dir, ad)
	}
}

// replayDel applies one recorded DEL; one the agent refuses (4xx) is
// forgotten, as replayAdd does.
func (a *Agent) replayDel(dir string, d control.CNIDelRequest) {
	a.cniMu.Lock()
	defer a.cniMu.Unlock()
	if a.handedOver.Load() { // the successor replays what is left
		return
	}
	if err := a.cniDelLocked(d); err != nil && control.StatusOf(err) >= http.StatusInternalServerError {
		a.log.Error("replaying a CNI DEL failed", "container", d.ContainerID, "err", err)
		return
	} else if err != nil { // refused as it stands: every replay would be
		a.log.Info("not replaying a CNI DEL recorded while the agent was away", "container", d.ContainerID, "err", err)
	}
	cni.ForgetPendingDelete(dir, d.ContainerID)
}

// replayAdd applies one recorded ADD, checked like an ADD from the plugin:
// a pod that is gone, or whose namespace is now another one, is refused and
// forgotten.
func (a *Agent) replayAdd(dir string, ad control.CNIAddRequest) {
	a.cniMu.Lock()
	defer a.cniMu.Unlock()
	if a.handedOver.Load() { // the successor replays what is left
		return
	}
	// The plugin forgets a pod's recorded ADD before it sends the pod's
	// DEL: a record gone since the directory was read is a pod deleted
	// meanwhile, and its DEL (serialised by cniMu) is done or waiting.
	if !cni.HasPendingAdd(dir, ad.ContainerID) {
		return
	}
	if _, err := a.cniAddLocked(ad); err != nil && control.StatusOf(err) >= http.StatusInternalServerError {
		a.log.Error("replaying a CNI ADD failed", "pod", ad.PodNamespace+"/"+ad.PodName, "err", err)
		return
	} else if err != nil {
		a.log.Info("not replaying a CNI ADD recorded while the agent was away", "pod", ad.PodNamespace+"/"+ad.PodName, "err", err)
	}
	cni.ForgetPendingAdd(dir, ad.ContainerID)
}

// forgetDeadClaims forgets, for an ADD about to be recorded, the other
// records that claim one of its IPs and whose network namespace is dead:
// the old pod's DEL is late (saved to pending/ while no agent answered),
// or never comes for a pod the source keeps (a completed Job's). The new
// record owns the IP anyway, being the newest (podcache's AttachOrder);
// this forgets the dead one now rather than at the next housekeeping.
// Callers hold cniMu.
func (a *Agent) forgetDeadClaims(att podcache.Attachment) {
	if a.dataplane != nil {
		a.dataplane.controller.ForgetDeadClaims(att) // it logs what it forgets
		return
	}
	ns := capture.ProcNamespaces{Root: a.cfg.ProcRoot}
	dead := func(_ string, b podcache.Attachment) bool { return capture.NetnsDead(ns, b) }
	for key, b := range a.pods.DeadClaims(att, dead) {
		a.pods.Detach(key)
		capture.LogForgottenClaim(a.log, b, att, nil)
	}
}

// fenceCapture makes this agent, handed over (handedOver is set), leave
// capture's shared state to its successor, which marks pods and writes the
// record from the moment it hears "released": no CNI event or replay is
// half-way once cniMu is held, and replays left stop at the next event;
// the controller's fence waits for a Redecide under way, then makes every
// later one, housekeeping's sweep, and any mark or write do nothing; and
// the dataplane's fence ends its repairs of the links (keepAttached), which
// the successor replaces.
func (a *Agent) fenceCapture() {
	a.cniMu.Lock()
	defer a.cniMu.Unlock()
	if a.dataplane != nil {
		a.dataplane.controller.Fence()
		a.dataplane.fence()
	}
}

func (a *Agent) pendingDir() string {
	if a.cfg.CNI != nil && a.cfg.CNI.Plugin.PendingDir != "" {
		return a.cfg.CNI.Plugin.PendingDir
	}
	return filepath.Join(filepath.Dir(a.cfg.Socket), "pending")
}
