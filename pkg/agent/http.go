package agent

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ztdns/ztdns/pkg/source"
)

// httpHandler serves /metrics, /healthz (the resolver answers on every
// address, see resolverAnswers; one round at a time, healthRounds) and
// /readyz (the first table is built and being served; 200 also while the
// source fails since, with a body that says so).
func (a *Agent) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
	var rounds healthRounds
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := rounds.do(r.Context(), a.resolverAnswers); err != nil {
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
	if a.stopping.Load() {
		return errors.New("stopping")
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
