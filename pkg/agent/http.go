package agent

import (
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/source"
)

// httpHandler serves /metrics, /healthz (the process is up) and /readyz
// (the first table is built and being served).
func (a *Agent) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := a.readiness(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// readiness is nil once the agent serves its first table.
func (a *Agent) readiness() error {
	if a.handedOver.Load() {
		return errors.New("handed the resolver over to a newer agent")
	}
	if !a.ready.Load() {
		return errors.New("waiting for the first full sync of the source")
	}
	if h, ok := a.cfg.Source.(source.HealthReporter); ok {
		if err := h.Healthy(); err != nil {
			return fmt.Errorf("serving the last table; the source is failing: %w", err)
		}
	}
	return nil
}

// controlHandler serves the control socket.
func (a *Agent) controlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/table", func(w http.ResponseWriter, r *http.Request) {
		control.WriteJSON(w, http.StatusOK, a.server.Table().Rows(r.URL.Query().Get("namespace")))
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) {
		control.WriteJSON(w, http.StatusOK, a.status())
	})
	a.registerCaptureHandlers(mux)
	a.registerCNIHandlers(mux)
	return mux
}

// Status is what `ztdns status` prints.
type Status struct {
	Ready     bool     `json:"ready"`
	NotReady  string   `json:"notReady,omitempty"`
	Names     int      `json:"names"`
	Pods      int      `json:"pods"`
	Listen    []string `json:"listen"`
	Capture   bool     `json:"capture"`
	Upstreams []string `json:"upstreams"`
	// VIPs says where ServiceEntry VIPs come from now (--vip-source).
	VIPs string `json:"vips,omitempty"`
	// Warnings are objects left out of the name table, and captured pods
	// that istio-cni's DNS rules claim too.
	Warnings []string `json:"warnings,omitempty"`
	// SourceErrors are inputs the source could not read; their previous
	// good state is still served.
	SourceErrors []string `json:"sourceErrors,omitempty"`
}

func (a *Agent) status() Status {
	st := Status{Names: a.server.Table().Len(), Pods: len(a.pods.List())}
	if err := a.readiness(); err != nil {
		st.NotReady = err.Error()
	} else {
		st.Ready = true
	}
	st.Capture = a.capture != nil
	for _, l := range a.addrs {
		st.Listen = append(st.Listen, l.String())
	}
	for _, u := range a.cfg.Upstreams {
		st.Upstreams = append(st.Upstreams, u.String())
	}
	a.mu.Lock()
	st.Warnings = a.warnings
	if a.vipsFrom != "" {
		st.VIPs = string(a.cfg.VIPSource) + ": " + a.vipsFrom
	}
	a.mu.Unlock()
	if pods := a.doublyCaptured(); len(pods) > 0 {
		st.Warnings = append(slices.Clone(st.Warnings), doubleCaptureWarning(pods))
	}
	if er, ok := a.cfg.Source.(source.ErrorReporter); ok {
		for _, err := range er.Errors() {
			st.SourceErrors = append(st.SourceErrors, err.Error())
		}
	}
	return st
}
