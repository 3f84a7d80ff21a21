//go:build linux

package cni

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/netns"
)

// About is what the plugin prints on stderr when run without CNI_COMMAND.
const About = "CNI plugin ztdns: chained after the primary plugin, hands each pod to the ztdns node agent (DNS capture for Istio ambient)"

// PluginMain runs the binary as the CNI plugin: the runtime set CNI_COMMAND,
// the network config is on stdin, and the result or error goes to stdout. It
// exits the process on error, as skel does.
func PluginMain() {
	p := &plugin{stdout: os.Stdout, stderr: os.Stderr}
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    recovered("ADD", p.add),
		Del:    recovered("DEL", p.del),
		Check:  recovered("CHECK", p.check),
		Status: recovered("STATUS", p.status),
	}, version.All, About)
}

// plugin carries where the CNI result and the default log go, so tests can
// run the commands in-process.
type plugin struct {
	stdout io.Writer // the CNI result, and nothing else
	stderr io.Writer // the log, unless the config names a file
	// maxPending bounds the pending records of each kind; 0 is
	// MaxPendingRecords (tests set less).
	maxPending int
}

// recovered turns a panic in fn into a CNI error instead of a crash with a
// stack trace on stdout, where the runtime expects JSON.
func recovered(cmd string, fn func(*skel.CmdArgs) error) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) (err error) {
		defer func() {
			if r := recover(); r != nil {
				stack := debug.Stack()
				if len(stack) > 4096 {
					stack = stack[:4096]
				}
				err = types.NewError(types.ErrInternal, fmt.Sprintf("ztdns %s: internal error: %v", cmd, r), string(stack))
			}
		}()
		return fn(args)
	}
}

// add hands the pod to the agent, then passes prevResult through. Everything
// is validated before the agent is contacted, so the agent sees a complete
// request or none.
func (p *plugin) add(args *skel.CmdArgs) error {
	in, err := checkArgs(args)
	if err != nil {
		return err
	}
	conf, cookie := in.conf, in.cookie
	if in.noCookie != nil {
		// Under "allow" (checkArgs failed the ADD under "fail"): no agent
		// on this node can capture the pod, so none is asked.
		if err := printResult(p.stdout, conf); err != nil {
			return err
		}
		log, closeLog := p.logger(conf)
		defer closeLog()
		log.Warn(noCookieWhy+": the pod starts WITHOUT DNS capture (onAgentUnreachable: allow)",
			"cmd", "ADD", "container", args.ContainerID, "pod", in.pod.namespace+"/"+in.pod.name, "error", in.noCookie)
		return nil
	}
	req := control.CNIAddRequest{
		ContainerID:  args.ContainerID,
		Netns:        args.Netns,
		IfName:       args.IfName,
		PodNamespace: in.pod.namespace,
		PodName:      in.pod.name,
		PodUID:       in.pod.uid,
		IPs:          podIPs(in.prev),
		NetnsCookie:  cookie,
	}
	// The agent refuses what the control API does not allow: say so here,
	// with the runtime's own words.
	if err := req.Validate(); err != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "ztdns: the runtime's arguments are not usable", err.Error())
	}
	// Render the result before the agent acts on the pod, so a result
	// that cannot be printed fails the ADD with nothing marked.
	var result bytes.Buffer
	if err := printResult(&result, conf); err != nil {
		return err
	}

	log, closeLog := p.logger(conf)
	defer closeLog()
	log = log.With("cmd", "ADD", "container", req.ContainerID, "pod", req.PodNamespace+"/"+req.PodName)

	var resp control.CNIAddResponse
	err = p.call(conf, func(ctx context.Context, c *control.Client) (err error) {
		resp, err = c.CNIAdd(ctx, req)
		return err
	})
	switch {
	case err == nil:
		log.Info("pod handed to the agent", "captured", resp.Captured, "reason", resp.Reason, "cookie", cookie, "ips", req.IPs)
		// The agent now knows the container: a DEL recorded for an earlier
		// life of this ID must not be replayed over it.
		forgetPendingDelete(log, conf.PendingDir, req.ContainerID)
	case agentAway(err) && conf.OnAgentUnreachable == PolicyAllow:
		log.Warn("ztdns agent unreachable: the pod starts WITHOUT DNS capture until the agent is back and reconciles it (onAgentUnreachable: allow)",
			"socket", conf.SocketPath, "error", err)
		switch err := recordForAgent(conf.SocketPath, conf.PendingDir, pendingAddDir, req.ContainerID, req, p.maxPending); {
		case errors.Is(err, errNotInstalled):
			log.Info("not recording the ADD: no ztdns agent on this node to replay it", "marker", control.InstalledMarker(conf.SocketPath))
		case errors.Is(err, errPendingFull):
			log.Error("dropping the ADD instead of recording it; the agent still finds the pod from its pod source and adopts it",
				"pendingDir", conf.PendingDir, "error", err)
		case err != nil:
			log.Error("could not record the ADD for the agent; its reconcile still finds the pod from its pod source", "error", err)
		}
	case agentAway(err):
		log.Error("ztdns agent unreachable: failing the ADD (onAgentUnreachable: fail)", "socket", conf.SocketPath, "error", err)
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("ztdns agent unreachable at %s; the pod is refused until it answers (onAgentUnreachable: fail)", conf.SocketPath), err.Error())
	default:
		log.Error("the agent refused the pod", "error", err)
		return types.NewError(types.ErrInternal, "ztdns agent refused the pod", err.Error())
	}
	_, err = p.stdout.Write(result.Bytes())
	return err
}

// del tells the agent to unmark and forget the pod. It never fails: when
// the agent cannot take the DEL (unreachable, or failing: 5xx), it is
// recorded for the agent to replay
// (unless the agent's marker is missing, or too many are recorded: see
// MaxPendingRecords); and
// a config the plugin cannot use is logged, not returned, because the
// runtime runs DEL in reverse order and a failing ztdns would keep the
// primary plugin from releasing the pod's veth and address. (With such a
// config ADD failed before contacting the agent, so there is nothing to
// undo.)
func (p *plugin) del(args *skel.CmdArgs) error {
	conf, _, err := parseConfig(args.StdinData)
	if err != nil {
		slog.New(slog.NewTextHandler(p.stderr, nil)).Error("DEL with an unusable network config: nothing to tell the agent",
			"plugin", PluginType, "container", args.ContainerID, "error", err)
		return nil
	}
	log, closeLog := p.logger(conf)
	defer closeLog()
	log = log.With("cmd", "DEL", "container", args.ContainerID)

	// The pod is gone: an ADD the agent never saw must not be replayed.
	if err := ForgetPendingAdd(conf.PendingDir, args.ContainerID); err != nil {
		log.Warn("could not forget a pending ADD", "error", err)
	}
	// What the agent would refuse (400) is not sent, nor recorded: no
	// replay would ever be taken. A CNI_NETNS it would refuse (a relative
	// path) is left out instead: the DEL still finds the pod by its
	// container ID, or by its name.
	req := control.CNIDelRequest{ContainerID: args.ContainerID}
	if err := req.Validate(); err != nil {
		log.Warn("a DEL the agent would refuse: nothing to tell it", "error", err)
		return nil
	}
	if req.Netns = args.Netns; req.Validate() != nil {
		log.Debug("not passing CNI_NETNS on: the agent would refuse it", "netns", args.Netns)
		req.Netns = ""
	}
	// The pod's name finds a pod the agent adopted, which it knows by no
	// container ID; a DEL without it still releases every pod an ADD
	// announced.
	if pod, err := parsePodArgs(args.Args); err == nil {
		req.PodNamespace, req.PodName = pod.namespace, pod.name
		if err := req.Validate(); err != nil {
			log.Debug("not passing the pod's name on: the agent would refuse it", "error", err)
			req.PodNamespace, req.PodName = "", ""
		}
	}
	err = p.call(conf, func(ctx context.Context, c *control.Client) error { return c.CNIDel(ctx, req) })
	if err == nil {
		log.Debug("pod removed from the agent")
		// An earlier attempt of this DEL may have been recorded.
		forgetPendingDelete(log, conf.PendingDir, req.ContainerID)
		return nil
	}
	if !errors.Is(err, control.ErrUnreachable) && !agentFailed(err) {
		// The agent's verdict on the request (4xx): a replay would get the
		// same, and so would an earlier attempt's record.
		log.Error("the agent refused the DEL; not recording it", "socket", conf.SocketPath, "error", err)
		forgetPendingDelete(log, conf.PendingDir, req.ContainerID)
		return nil
	}
	// Not recording, or failing to, never fails the DEL: that would leave
	// the pod stuck in teardown for a stale mark on a namespace that is
	// going away. Once it is gone, the agent drops the pod's record and
	// mark when it next makes its decisions again (capture's dropDeadRecords), DEL
	// or none.
	switch rerr := recordForAgent(conf.SocketPath, conf.PendingDir, pendingDelDir, req.ContainerID, req, p.maxPending); {
	case rerr == nil:
		log.Warn("the agent could not take the DEL; recorded it for the agent to replay", "socket", conf.SocketPath, "error", err)
	case errors.Is(rerr, errNotInstalled):
		log.Debug("no ztdns agent on this node (its marker is gone): nothing to tell or record", "marker", control.InstalledMarker(conf.SocketPath))
	case errors.Is(rerr, errPendingFull):
		log.Error("the agent could not take the DEL, and too many are recorded already: dropping it; the agent drops the pod's record and mark once its network namespace is gone",
			"socket", conf.SocketPath, "pendingDir", conf.PendingDir, "error", err, "recordError", rerr)
	default:
		log.Error("the agent could not take the DEL, nor could it be recorded; the agent drops the stale mark once the network namespace is gone",
			"socket", conf.SocketPath, "error", err, "recordError", rerr)
	}
	return nil
}

// check verifies what the plugin itself relies on: a valid config, a
// prevResult, the pod's identity in CNI_ARGS and a network namespace it can
// read a cookie from (on a kernel that cannot read one, only under "fail").
// It does not ask the agent: a failed CHECK makes the
// runtime tear the pod down and recreate it, and an agent restart or a
// changed label is no reason to kill pods. Capture drift is the agent's
// reconcile's job.
func (p *plugin) check(args *skel.CmdArgs) error {
	_, err := checkArgs(args)
	return err
}

// checkedArgs are the runtime's arguments add and check rely on, checked
// (checkArgs).
type checkedArgs struct {
	conf   *netConf
	prev   *current.Result // never nil
	pod    podArgs
	cookie uint64 // CNI_NETNS's
	// noCookie is why no cookie could be read on this kernel (see
	// noCookieWhy), under onAgentUnreachable "allow": the pod starts
	// uncaptured. Nil otherwise.
	noCookie error
}

// noCookieWhy is what the plugin says when the kernel cannot read a
// network namespace's cookie: getsockopt(SO_NETNS_COOKIE) fails with
// ENOPROTOOPT before Linux 5.14. No agent can capture a pod there, and
// the agent does not install the plugin on such a node (its status says
// why); a plugin left in the chain (installed by hand, or before a kernel
// downgrade) must not keep every pod on the node from starting.
const noCookieWhy = "this kernel cannot read a network namespace's cookie (SO_NETNS_COOKIE, Linux 5.14+), which ztdns captures a pod by"

// checkArgs checks, in this order, a valid config, a prevResult (ztdns is
// chained after the primary plugin), the pod's identity in CNI_ARGS and a
// network namespace it can read a cookie from; the first that fails is the
// error the runtime shows. A kernel that cannot read any namespace's cookie
// fails it only under onAgentUnreachable "fail"; under "allow" the result
// says so (noCookie).
func checkArgs(args *skel.CmdArgs) (checkedArgs, error) {
	conf, prev, err := parseConfig(args.StdinData)
	if err != nil {
		return checkedArgs{}, err
	}
	if prev == nil {
		return checkedArgs{}, types.NewError(types.ErrInvalidNetworkConfig,
			"ztdns must be called as a chained plugin, after the primary network plugin: no prevResult", "")
	}
	pod, err := parsePodArgs(args.Args)
	if err != nil {
		return checkedArgs{}, err
	}
	cookie, err := netns.Cookie(args.Netns)
	switch {
	case errors.Is(err, syscall.ENOPROTOOPT) && conf.OnAgentUnreachable == PolicyAllow:
		return checkedArgs{conf: conf, prev: prev, pod: pod, noCookie: err}, nil
	case errors.Is(err, syscall.ENOPROTOOPT):
		return checkedArgs{}, types.NewError(types.ErrInternal,
			"ztdns: "+noCookieWhy+": the pod is refused (onAgentUnreachable: fail; allow starts it without DNS capture)", err.Error())
	case err != nil:
		return checkedArgs{}, types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("ztdns: CNI_NETNS %q is not a usable network namespace", args.Netns), err.Error())
	}
	return checkedArgs{conf: conf, prev: prev, pod: pod, cookie: cookie}, nil
}

// forgetPendingDelete drops the DEL recorded for container, if any,
// logging a failure to: neither ADD nor DEL fails for it.
func forgetPendingDelete(log *slog.Logger, dir, container string) {
	if err := ForgetPendingDelete(dir, container); err != nil {
		log.Warn("could not forget a pending DEL", "error", err)
	}
}

// status reports whether the plugin can take ADDs (CNI 1.1 STATUS): it can
// whenever its configuration is valid, whether or not the agent answers.
// A runtime turns a failed STATUS into NetworkReady=false, the kubelet then
// marks the node NotReady, and every running pod on it leaves its Services'
// endpoints: an agent restart or crash loop must not do that. Under "fail"
// the ADDs themselves fail while the agent is away, which holds new pods back.
func (p *plugin) status(args *skel.CmdArgs) error {
	_, _, err := parseConfig(args.StdinData)
	return err
}

// agentAway reports whether err means no agent could take the call: none
// answered, or the one that did had handed over to a successor (503), and
// so did the one asked again.
func agentAway(err error) bool {
	return errors.Is(err, control.ErrUnreachable) || handedOver(err)
}

// handedOver reports whether err is an agent's answer that it handed the
// node over to a successor before it acted on the request (503, see
// control.Unavailable): the socket is the successor's by then.
func handedOver(err error) bool {
	var ce *control.Error
	return errors.As(err, &ce) && ce.Code == http.StatusServiceUnavailable
}

// agentFailed reports whether the agent answered err with a failure of its
// own (5xx), which a later try may not meet.
func agentFailed(err error) bool {
	var ce *control.Error
	return errors.As(err, &ce) && ce.Code >= http.StatusInternalServerError
}

// call runs one call of the agent's control API, bounded by the config's
// timeout. Errors where no agent answered wrap control.ErrUnreachable; an
// answer with an error status is the agent's verdict (*control.Error). A
// call the agent did not act on is tried once more, after retryPause,
// within the same timeout: a connection cut or refused before the agent
// took the request (see connectionLost), as from an agent restarting, or
// one that had to close the connection (a slow or stalled caller's, to
// make room for others, or one it gave up as it handed over); or an
// answer that the agent handed over to its successor meanwhile (see
// handedOver), whose socket it is by then. Neither is yet an agent that
// cannot be reached.
func (p *plugin) call(conf *netConf, do func(context.Context, *control.Client) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), conf.timeout)
	defer cancel()
	c := control.NewClient(conf.SocketPath, conf.timeout)
	err := do(ctx, c)
	if !connectionLost(err) && !handedOver(err) {
		return err
	}
	t := time.NewTimer(retryPause)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return err
	case <-t.C:
	}
	return do(ctx, c)
}

// retryPause is how long the plugin waits before its one retry of a call
// the agent did not act on.
const retryPause = 100 * time.Millisecond

// connectionLost reports whether err is a connection the agent's socket
// refused (nobody listening, or its backlog full) or reset (closed with
// the request unread), or one the plugin could not finish writing to: in
// each case the agent did not take the request, so sending it again cannot
// do it twice. Not a connection that ended before any answer came (EOF):
// the agent may have taken the request by then, and it closes no
// connection for room once its request has arrived (nor a new one), so an
// EOF is no sign that it did not.
func connectionLost(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.EAGAIN)
}

// logger returns the plugin's log for conf and a function that closes it.
func (p *plugin) logger(conf *netConf) (*slog.Logger, func()) {
	opts := &slog.HandlerOptions{Level: conf.logLevel}
	if conf.LogFile == "" {
		return slog.New(slog.NewTextHandler(p.stderr, opts)).With("plugin", PluginType), func() {}
	}
	f, err := os.OpenFile(conf.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		log := slog.New(slog.NewTextHandler(p.stderr, opts)).With("plugin", PluginType)
		log.Warn("cannot open logFile, logging to stderr", "error", err)
		return log, func() {}
	}
	return slog.New(slog.NewTextHandler(f, opts)).With("plugin", PluginType), func() { f.Close() }
}

// printResult writes prevResult to w unchanged: parsed in the config's CNI
// version (the spec's rule, which version.ParsePrevResult applies) and
// printed back in it, as a chained plugin that changes nothing must.
//
// The library parses entries it cannot print back (an IP or a route without
// an address comes out as "<nil>"), so the output is parsed again before it
// is written: a prevResult the runtime could not read fails here, with the
// reason, rather than in the runtime.
func printResult(w io.Writer, conf *netConf) error {
	res, err := conf.PrevResult.GetAsVersion(conf.CNIVersion)
	if err != nil {
		return types.NewError(types.ErrIncompatibleCNIVersion, "ztdns: convert prevResult to "+conf.CNIVersion, err.Error())
	}
	var out bytes.Buffer
	if err := res.PrintTo(&out); err != nil {
		return err
	}
	if _, err := version.NewResult(conf.CNIVersion, out.Bytes()); err != nil {
		return types.NewError(types.ErrDecodingFailure, "ztdns: prevResult does not print as a valid result", err.Error())
	}
	_, err = w.Write(out.Bytes())
	return err
}
