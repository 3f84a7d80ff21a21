package agent

import (
	"context"
	"errors"
	"iter"
	"time"

	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/source"
	"github.com/ztdns/ztdns/pkg/version"
)

// controlAPI is what the agent does for its control socket (pkg/control
// routes, decodes and validates the requests).
type controlAPI struct{ a *Agent }

var _ control.API = controlAPI{}

func (c controlAPI) Status() control.Status { return c.a.status() }

// Table is refused until the first table is served: before it the
// resolver's table is an empty one, which would list no names, as if the
// cluster had none.
func (c controlAPI) Table(ctx context.Context, namespace string) (iter.Seq[control.TableRow], error) {
	select {
	case <-c.a.firstTable:
	default:
		why := "waiting for the first full sync of the source"
		if err := c.a.readiness(); err != nil {
			why = err.Error()
		}
		return nil, control.Unavailable(errors.New("no table yet, the agent is not ready: " + why))
	}
	return c.a.server.Table().AllRows(ctx, namespace), nil
}

func (c controlAPI) Pods() ([]control.PodRow, error) { return c.a.podRows() }

func (c controlAPI) CaptureAdd(req control.CaptureRequest) (control.PodRow, error) {
	return c.a.captureNetns(req)
}

func (c controlAPI) CaptureDel(req control.CaptureRequest) error { return c.a.releaseNetns(req) }

func (c controlAPI) CNIAdd(req control.CNIAddRequest) (control.CNIAddResponse, error) {
	return c.a.cniAdd(req)
}

func (c controlAPI) CNIDel(req control.CNIDelRequest) error { return c.a.cniDel(req) }

func (c controlAPI) SetAccessLog(req control.AccessLogRequest) (control.AccessLog, error) {
	if err := c.a.cfg.AccessLog.Set(req.On, req.Sample); err != nil {
		return control.AccessLog{}, control.Invalid(err)
	}
	st := c.a.accessLogStatus()
	c.a.log.Info("access log switched", "on", st.On, "sample", st.Sample, "destination", st.Destination)
	return st, nil
}

func (a *Agent) accessLogStatus() control.AccessLog {
	l := a.cfg.AccessLog
	on, sample := l.Settings()
	return control.AccessLog{On: on, Sample: sample, Destination: l.Destination(), Dropped: l.Dropped()}
}

// status is what `ztdns status` shows: the agent's state as it answers
// the control socket's GET /status.
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
	st.Capture = a.dataplane != nil
	if a.dataplane != nil {
		// What ztdns_capture_fail_open says; it errs only on a closed
		// redirector (the agent stopping) or an unreadable clock.
		st.FailingOpen, _ = a.dataplane.r.FailingOpen()
		st.ResolverStalled = a.dataplane.stallReason()
		// Errs before the hand-over attaches this agent's programs, or
		// once it is closed: nothing to tell then.
		if at, err := a.dataplane.r.CheckAttachment(); err == nil {
			st.CaptureProblems = at.Problems
		}
		cg, why := a.dataplane.r.Cgroup()
		st.CaptureCgroup = cg + " (" + why + ")"
		for _, p := range a.dataplane.cfg.Nameservers {
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
	tableWarnings := a.warnings
	st.WarningsOmitted = a.warningsOmitted
	if a.vipsFrom != "" {
		st.VIPs = string(a.cfg.VIPSource) + ": " + a.vipsFrom
	}
	st.DefaultExportTo = a.exportToFrom
	ipv6Off := a.ipv6Warning()
	a.mu.Unlock()
	st.Warnings = a.statusWarnings(ipv6Off, tableWarnings)
	if a.dataplane != nil {
		if err := a.dataplane.controller.Unsaved(); err != nil {
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

// statusWarnings lists status's warnings most pressing first, as an
// operator reads them (`ztdns status` shows the first few): the agent's
// own, whose cost falls on every pod of the node, before the table's, a
// few objects each, and the pods istio-cni's DNS rules claim too. ipv6Off
// (ipv6Warning) and table (the last build's) are read under a.mu.
func (a *Agent) statusWarnings(ipv6Off string, table []string) []string {
	var cniInstall, istioChain string
	if a.cfg.CNI != nil && !a.handedOver.Load() {
		_, cniInstall = a.cniInstall.get()
		istioChain = a.istioChain.warning()
	}
	var out []string
	for _, w := range []string{
		cniInstall,               // pods that start now go uncaptured
		istioChain,               // the node's ambient pods go uncaptured
		a.memory.warning(),       // the kernel may kill the agent: every captured pod fails open
		a.nofile,                 // the agent may run out of descriptors under load
		a.selfUpstreamsWarning(), // misses go to fewer upstreams than given
		ipv6Off,                  // the node's: IPv6 nameservers are not captured
	} {
		if w != "" {
			out = append(out, w)
		}
	}
	out = append(out, table...)
	return append(out, a.istioRulesWarnings()...)
}
