package agent

import (
	"context"
	"iter"

	"github.com/ztdns/ztdns/pkg/control"
)

// controlAPI is what the agent does for its control socket (pkg/control
// routes, decodes and validates the requests).
type controlAPI struct{ a *Agent }

var _ control.API = controlAPI{}

func (c controlAPI) Status() control.Status { return c.a.status() }

func (c controlAPI) Table(ctx context.Context, namespace string) iter.Seq[control.TableRow] {
	return c.a.server.Table().AllRows(ctx, namespace)
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
