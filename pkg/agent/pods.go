package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"

	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/redirect"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// Control-socket paths for capture by hand and the pod list.
const (
	PathCapture = "/v1/capture"
	PathPods    = "/v1/pods"
)

// CaptureRequest marks (POST) or unmarks (DELETE) a network namespace: how a
// VM, a test or an operator captures a namespace without a CNI plugin.
type CaptureRequest struct {
	// Netns is the network namespace's path, e.g. /run/netns/pod1.
	Netns string `json:"netns"`
	// Namespace and Name say who the pod is (for namespace views and
	// `ztdns pods`); Namespace defaults to "default", Name to the netns path.
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
}

// PodRow is one pod as `ztdns pods` shows it.
type PodRow struct {
	Namespace   string   `json:"namespace"`
	Name        string   `json:"name"`
	ContainerID string   `json:"containerID,omitempty"`
	NetnsCookie uint64   `json:"netnsCookie"`
	NetnsPath   string   `json:"netnsPath,omitempty"`
	IPs         []string `json:"ips"`
	// Captured is the decision; Marked says whether the pods map holds it.
	Captured    bool     `json:"captured"`
	Reason      string   `json:"reason,omitempty"`
	Marked      bool     `json:"marked"`
	Redirected  uint64   `json:"redirected"`
	Restored    uint64   `json:"restored"`
	Nameservers []string `json:"nameservers,omitempty"`
	// Resolver is what the pod holds of the resolver and was refused by its
	// per-pod limits.
	Resolver quota.Usage `json:"resolver"`
}

func (a *Agent) registerCaptureHandlers(mux *http.ServeMux) {
	mux.HandleFunc("GET "+PathPods, func(w http.ResponseWriter, _ *http.Request) {
		rows, err := a.podRows()
		if err != nil {
			control.WriteError(w, http.StatusInternalServerError, err)
			return
		}
		control.WriteJSON(w, http.StatusOK, rows)
	})
	mux.HandleFunc("POST "+PathCapture, func(w http.ResponseWriter, r *http.Request) {
		req, ok := decodeCapture(w, r)
		if !ok {
			return
		}
		row, err := a.captureNetns(req)
		if err != nil {
			control.WriteError(w, http.StatusBadRequest, err)
			return
		}
		control.WriteJSON(w, http.StatusOK, row)
	})
	mux.HandleFunc("DELETE "+PathCapture, func(w http.ResponseWriter, r *http.Request) {
		req, ok := decodeCapture(w, r)
		if !ok {
			return
		}
		if err := a.releaseNetns(req); err != nil {
			control.WriteError(w, http.StatusBadRequest, err)
			return
		}
		control.WriteJSON(w, http.StatusOK, struct{}{})
	})
}

func decodeCapture(w http.ResponseWriter, r *http.Request) (CaptureRequest, bool) {
	var req CaptureRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		control.WriteError(w, http.StatusBadRequest, fmt.Errorf("bad request: %w", err))
		return req, false
	}
	if req.Netns == "" {
		control.WriteError(w, http.StatusBadRequest, errors.New("netns is required"))
		return req, false
	}
	return req, true
}

var errNoCapture = errors.New("this agent runs with --capture=false")

// captureNetns marks a network namespace by hand.
func (a *Agent) captureNetns(req CaptureRequest) (PodRow, error) {
	if a.capture == nil {
		return PodRow{}, errNoCapture
	}
	cookie, err := redirect.NetnsCookie(req.Netns)
	if err != nil {
		return PodRow{}, err
	}
	ips, err := redirect.NetnsAddrs(req.Netns)
	if err != nil {
		return PodRow{}, err
	}
	if req.Namespace == "" {
		req.Namespace = "default"
	}
	if req.Name == "" {
		req.Name = req.Netns
	}
	// The same netns marked again under another name replaces the record.
	if p := a.pods.ByCookie(cookie); p != nil && p.Attachment != nil && p.Attachment.ContainerID == "" {
		a.capture.forget(p.Attachment.Key())
	}
	att := podcache.Attachment{Namespace: req.Namespace, Name: req.Name, NetnsPath: req.Netns, NetnsCookie: cookie, IPs: ips,
		Captured: true, Reason: reasonByHand}
	if err := a.capture.apply(att); err != nil {
		return PodRow{}, err
	}
	a.log.Info("captured a network namespace", "netns", req.Netns, "pod", req.Namespace+"/"+req.Name, "netnsCookie", cookie, "ips", ips)
	rows, err := a.podRows()
	for _, r := range rows {
		if r.NetnsCookie == cookie {
			return r, err
		}
	}
	return PodRow{}, errors.Join(err, errors.New("marked, but the pod is not listed"))
}

// releaseNetns unmarks a network namespace marked by hand. The netns may
// be gone already: the record is then found by its path.
func (a *Agent) releaseNetns(req CaptureRequest) error {
	if a.capture == nil {
		return errNoCapture
	}
	for key, att := range a.pods.Attachments() {
		if att.NetnsPath == req.Netns {
			_, _, err := a.capture.forget(key)
			a.log.Info("released a network namespace", "netns", req.Netns, "pod", att.Namespace+"/"+att.Name)
			return err
		}
	}
	if cookie, err := redirect.NetnsCookie(req.Netns); err == nil {
		return a.capture.r.Unmark(cookie) // marked by someone else's record
	}
	return fmt.Errorf("%s is not captured", req.Netns)
}

// podRows joins the registry with the pods map.
func (a *Agent) podRows() ([]PodRow, error) {
	marks := map[uint64]redirect.MarkedPod{}
	if a.capture != nil {
		marked, err := a.capture.r.Pods()
		if err != nil {
			return nil, err
		}
		for _, m := range marked {
			marks[m.NetnsCookie] = m
		}
	}
	var rows []PodRow
	for _, p := range a.pods.List() {
		row := PodRow{Namespace: p.Namespace, Name: p.Name, Resolver: a.server.PodUsage(p)}
		for _, ip := range p.IPs {
			row.IPs = append(row.IPs, ip.String())
		}
		if att := p.Attachment; att != nil {
			row.ContainerID, row.NetnsCookie, row.NetnsPath = att.ContainerID, att.NetnsCookie, att.NetnsPath
			row.Captured, row.Reason = att.Captured, att.Reason
			if m, ok := marks[att.NetnsCookie]; ok {
				row.Marked, row.Redirected, row.Restored = true, m.Counters.Redirected, m.Counters.Restored
				row.Nameservers = nameserverStrings(m)
				delete(marks, att.NetnsCookie)
			}
		}
		rows = append(rows, row)
	}
	for cookie, m := range marks { // marked, but no record says whose
		row := PodRow{NetnsCookie: cookie, Marked: true, Redirected: m.Counters.Redirected, Restored: m.Counters.Restored, Nameservers: nameserverStrings(m)}
		for _, ip := range []netip.Addr{m.IPv4, m.IPv6} {
			if ip.IsValid() {
				row.IPs = append(row.IPs, ip.String())
			}
		}
		rows = append(rows, row)
	}
	return rows, nil
}

func nameserverStrings(m redirect.MarkedPod) []string {
	var out []string
	for _, ns := range m.Nameservers {
		if ns.Addr.IsValid() {
			out = append(out, ns.Addr.String())
		}
	}
	return out
}
