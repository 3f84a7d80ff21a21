package agent

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/source"
	"github.com/ztdns/ztdns/pkg/version"
)

// httpHandler serves /metrics, /healthz (the resolver answers on every
// address, see resolverAnswers) and /readyz (the first table is built and
// being served; 200 also while the source fails since, with a body that
// says so).
func (a *Agent) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := a.resolverAnswers(r.Context()); err != nil {
			http.Error(w, "the resolver does not answer: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := a.readiness(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		if err := a.sourceFailing(); err != nil {
			fmt.Fprintf(w, "ok, %s\n", err)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

func (a *Agent) accessLogStatus() control.AccessLog {
	l := a.cfg.AccessLog
	on, sample := l.Settings()
	return control.AccessLog{On: on, Sample: sample, Destination: l.Destination(), Dropped: l.Dropped()}
}

// readiness is nil once the agent serves its first table, until it hands
// the resolver over. A source that fails after that does not make the
// agent unready (sourceFailing says so instead): it serves its last table,
// as CoreDNS's ready plugin and NodeLocal DNSCache stay ready once synced.
// Were it unready, an API server's restart would turn every node's agent
// NotReady at once, for nothing a kubelet or a rollout could mend.
func (a *Agent) readiness() error {
	if a.handedOver.Load() {
		return errors.New("handed the resolver over to a newer agent")
	}
	if a.successor.Load() {
		return errors.New("a newer agent is taking the resolver over: serving until it has its table")
	}
	if !a.ready.Load() {
		// The source says why, if it knows: a resource RBAC refuses, an
		// API server it cannot reach.
		if h, ok := a.cfg.Source.(source.HealthReporter); ok {
			if err := h.Healthy(); err != nil {
				return fmt.Errorf("waiting for the first full sync of the source: %s", strings.ReplaceAll(err.Error(), "\n", "; "))
			}
		}
		return errors.New("waiting for the first full sync of the source")
	}
	return nil
}

// sourceFailing says, on one line, that a ready agent serves its last
// table because its source fails (an API server it cannot reach); nil
// while the source keeps up, or before the first table (readiness says
// it then).
func (a *Agent) sourceFailing() error {
	if !a.ready.Load() {
		return nil
	}
	if h, ok := a.cfg.Source.(source.HealthReporter); ok {
		if err := h.Healthy(); err != nil {
			return fmt.Errorf("serving the last table; the source is failing: %s", strings.ReplaceAll(err.Error(), "\n", "; "))
		}
	}
	return nil
}

func (a *Agent) status() control.Status {
	tbl := a.server.Table()
	st := control.Status{Names: tbl.Len(), Pods: len(a.pods.List())}
	for reason, n := range tbl.HostsWithoutVIP() {
		if n > 0 {
			if st.HostsWithoutVIP == nil {
				st.HostsWithoutVIP = map[string]int{}
			}
			st.HostsWithoutVIP[reason] = n
		}
	}
	st.Build = version.Get()
	st.AccessLog = a.accessLogStatus()
	if err := a.readiness(); err != nil {
		st.NotReady = err.Error()
	} else {
		st.Ready = true
		if err := a.sourceFailing(); err != nil {
			st.SourceFailing = err.Error()
		}
	}
	st.Capture = a.capture != nil
	if a.capture != nil {
		// What ztdns_capture_fail_open says; it errs only on a closed
		// redirector (the agent stopping) or an unreadable clock.
		st.FailingOpen, _ = a.capture.r.FailingOpen()
		// Errs before the hand-over attaches this agent's programs, or
		// once it is closed: nothing to tell then.
		if at, err := a.capture.r.CheckAttachment(); err == nil {
			st.CaptureProblems = at.Problems
		}
		for _, p := range a.capture.cfg.Nameservers {
			st.CaptureNameservers = append(st.CaptureNameservers, p.String())
		}
	}
	for _, l := range a.addrs {
		st.Listen = append(st.Listen, l.String())
	}
	for _, u := range a.cfg.Upstreams {
		st.FallbackUpstreams = append(st.FallbackUpstreams, u.String())
	}
	now := time.Now()
	for _, u := range a.fwd.Asked() {
		st.AskedUpstreams = append(st.AskedUpstreams, control.AskedUpstream{Address: u.Upstream,
			Idle: now.Sub(u.Last).Round(time.Millisecond).String(), Results: u.Results})
	}
	a.mu.Lock()
	st.Warnings, st.WarningsOmitted = a.warnings, a.warningsOmitted
	if a.vipsFrom != "" {
		st.VIPs = string(a.cfg.VIPSource) + ": " + a.vipsFrom
	}
	st.DefaultExportTo = a.exportToFrom
	ipv6Off := a.ipv6Warning()
	a.mu.Unlock()
	if ipv6Off != "" { // the node's, first
		st.Warnings = append([]string{ipv6Off}, st.Warnings...)
	}
	if w := a.selfUpstreamsWarning(); w != "" {
		st.Warnings = append([]string{w}, st.Warnings...)
	}
	if a.nofile != "" { // the process's, before
		st.Warnings = append([]string{a.nofile}, st.Warnings...)
	}
	if short := a.memory.warning(); short != "" { // the agent's own, first of all
		st.Warnings = append([]string{short}, st.Warnings...)
	}
	if a.cfg.CNI != nil && !a.handedOver.Load() {
		if _, w := a.cniInstall.get(); w != "" { // pods on the node uncaptured: first
			st.Warnings = append([]string{w}, st.Warnings...)
		}
	}
	if w := a.istioRulesWarnings(); len(w) > 0 {
		st.Warnings = append(slices.Clone(st.Warnings), w...)
	}
	if a.capture != nil {
		if err := a.capture.ctl.Unsaved(); err != nil {
			st.StateUnsaved = err.Error()
		}
	}
	if er, ok := a.cfg.Source.(source.ErrorReporter); ok {
		for _, err := range er.Errors() {
			st.SourceErrors = append(st.SourceErrors, err.Error())
		}
	}
	if wr, ok := a.cfg.Source.(source.WarningReporter); ok {
		for _, err := range wr.Warnings() {
			st.SourceWarnings = append(st.SourceWarnings, err.Error())
		}
	}
	return st
}
