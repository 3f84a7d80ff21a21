//go:build linux

package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/netns"
)

// fakeAgent stands in for the node agent at the API level: pkg/control's
// real server (listener, handler, decoding and validation) on a real unix
// socket, with an API that records what the plugin sends and answers as
// told.
type fakeAgent struct {
	socket string

	mu   sync.Mutex
	adds []control.CNIAddRequest
	dels []control.CNIDelRequest
	// reply answers an ADD; nil answers {Captured: true, Reason: "ambient"}.
	reply func(control.CNIAddRequest) (control.CNIAddResponse, error)
	// hung holds every answer back until the test ends, to play an agent
	// that never answers.
	hung bool
	// release is closed when the test ends: a hung agent's answers go then.
	release chan struct{}
	// delErr answers every DEL when set (a 500 unless it says otherwise).
	delErr error
	// resets is how many connections, the first ones, are closed once
	// their request has arrived, unread: their callers read a reset, as
	// from an agent that closed them to make room for others.
	resets int
}

func startFakeAgent(tb testing.TB, socket string, configure func(*fakeAgent)) *fakeAgent {
	tb.Helper()
	a := &fakeAgent{socket: socket, release: make(chan struct{})}
	if configure != nil {
		configure(a)
	}
	ln, err := control.Listen(socket, control.Access{})
	if err != nil {
		tb.Fatal(err)
	}
	if a.resets > 0 {
		ln = &resettingListener{Listener: ln, resets: a.resets}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- control.Serve(ctx, ln, control.NewHandler(a, nil)) }()
	tb.Cleanup(func() {
		close(a.release) // a hung agent's handlers return, so the server can shut down
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("fake agent: %v", err)
		}
	})
	return a
}

// resettingListener closes its first resets connections once something
// has arrived on them, without reading it: the kernel tells their callers
// ECONNRESET.
type resettingListener struct {
	net.Listener
	resets int
}

func (l *resettingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil || l.resets == 0 {
			return c, err
		}
		l.resets--
		if raw, err := c.(syscall.Conn).SyscallConn(); err == nil {
			var b [1]byte
			raw.Read(func(fd uintptr) bool { // wait until the request arrives; leave it unread
				_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
				return !errors.Is(err, unix.EAGAIN)
			})
		}
		c.Close()
	}
}

// hang holds an answer back until the test ends, if the agent is hung.
func (a *fakeAgent) hang() {
	if a.hung {
		<-a.release
	}
}

func (a *fakeAgent) CNIAdd(req control.CNIAddRequest) (control.CNIAddResponse, error) {
	a.hang()
	a.mu.Lock()
	a.adds = append(a.adds, req)
	reply := a.reply
	a.mu.Unlock()
	if reply != nil {
		return reply(req)
	}
	return control.CNIAddResponse{Captured: true, Reason: "ambient"}, nil
}

func (a *fakeAgent) CNIDel(req control.CNIDelRequest) error {
	a.hang()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.dels = append(a.dels, req)
	return a.delErr
}

// The plugin uses only the CNI routes.
func (a *fakeAgent) Status() control.Status { return control.Status{} }
func (a *fakeAgent) Table(context.Context, string) (iter.Seq[control.TableRow], error) {
	return slices.Values([]control.TableRow(nil)), nil
}
func (a *fakeAgent) Pods() ([]control.PodRow, error)         { return nil, nil }
func (a *fakeAgent) CaptureDel(control.CaptureRequest) error { return nil }
func (a *fakeAgent) CaptureAdd(control.CaptureRequest) (control.PodRow, error) {
	return control.PodRow{}, nil
}
func (a *fakeAgent) SetAccessLog(control.AccessLogRequest) (control.AccessLog, error) {
	return control.AccessLog{}, nil
}

func (a *fakeAgent) requests() ([]control.CNIAddRequest, []control.CNIDelRequest) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.adds), slices.Clone(a.dels)
}

// pluginEnv runs the plugin's commands in-process against a pod network
// namespace made for the test, with the agent's socket and the pending
// directory in a fresh directory.
type pluginEnv struct {
	netns   *testenv.Netns
	dir     string // holds the socket and the pending directory
	socket  string
	pending string
	stdout  bytes.Buffer
	stderr  bytes.Buffer
}

func newPluginEnv(tb testing.TB) *pluginEnv {
	tb.Helper()
	netns := testenv.NewNetns(tb, testenv.UniqueName("ztcni-"))
	// Not t.TempDir: a unix socket path must fit in 108 bytes.
	dir, err := os.MkdirTemp("", "ztcni-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	e := &pluginEnv{
		netns:   netns,
		dir:     dir,
		socket:  filepath.Join(dir, "ztdns.sock"),
		pending: filepath.Join(dir, "pending"),
	}
	// As the agent does at start: ztdns is installed, so the plugin records
	// what the agent misses.
	if err := control.MarkInstalled(e.socket); err != nil {
		tb.Fatal(err)
	}
	return e
}

// args returns the CmdArgs a runtime would pass for the pod, with the
// network config in version ver, prevResult from a bridge plugin, and
// fields added to the ztdns entry.
func (e *pluginEnv) args(tb testing.TB, ver string, fields map[string]any) *skel.CmdArgs {
	tb.Helper()
	f := map[string]any{"socketPath": e.socket, "timeout": "2s"}
	for k, v := range fields {
		f[k] = v
	}
	return &skel.CmdArgs{
		ContainerID: "c0ffee-" + strings.ReplaceAll(ver, ".", ""),
		Netns:       e.netns.Path(),
		IfName:      "eth0",
		Args:        "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=c0ffee;K8S_POD_UID=6f1c-uid",
		Path:        "/opt/cni/bin",
		StdinData:   netConfJSON(tb, ver, prevResultJSON(ver, e.netns.Path()), f),
	}
}

func (e *pluginEnv) plugin() *plugin { return &plugin{stdout: &e.stdout, stderr: &e.stderr} }

func (e *pluginEnv) cookie(tb testing.TB) uint64 {
	tb.Helper()
	c, err := netns.Cookie(e.netns.Path())
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// requireCNIError checks that err is a CNI error with code whose message
// contains want.
func requireCNIError(tb testing.TB, err error, code uint, want string) {
	tb.Helper()
	var cniErr *types.Error
	if !errors.As(err, &cniErr) {
		tb.Fatalf("error = %v (%T), want a CNI error with code %d", err, err, code)
	}
	if cniErr.Code != code || !strings.Contains(cniErr.Error(), want) {
		tb.Fatalf("error = code %d %q, want code %d containing %q", cniErr.Code, cniErr.Error(), code, want)
	}
}

// requirePrevResult checks that out is the prevResult in stdin, unchanged:
// both parse, in version ver, to the same result.
func requirePrevResult(tb testing.TB, ver string, stdin, out []byte) {
	tb.Helper()
	var conf struct {
		PrevResult json.RawMessage `json:"prevResult"`
	}
	if err := json.Unmarshal(stdin, &conf); err != nil {
		tb.Fatal(err)
	}
	want, err := version.NewResult(ver, conf.PrevResult)
	if err != nil {
		tb.Fatal(err)
	}
	got, err := version.NewResult(ver, out)
	if err != nil {
		tb.Fatalf("output is not a %s result: %v\n%s", ver, err, out)
	}
	wantJSON, _ := json.Marshal(want)
	gotJSON, _ := json.Marshal(got)
	if !bytes.Equal(gotJSON, wantJSON) {
		tb.Fatalf("result changed:\ngot  %s\nwant %s", gotJSON, wantJSON)
	}
}

func TestAddHandsThePodToTheAgent(t *testing.T) {
	t.Parallel()
	for _, ver := range specVersions {
		t.Run(ver, func(t *testing.T) {
			t.Parallel()
			e := newPluginEnv(t)
			agent := startFakeAgent(t, e.socket, nil)
			args := e.args(t, ver, nil)
			if err := e.plugin().add(args); err != nil {
				t.Fatalf("ADD: %v\nlog: %s", err, e.stderr.String())
			}
			requirePrevResult(t, ver, args.StdinData, e.stdout.Bytes())

			want := control.CNIAddRequest{
				ContainerID:  args.ContainerID,
				Netns:        e.netns.Path(),
				IfName:       "eth0",
				PodNamespace: "shop",
				PodName:      "web-0",
				PodUID:       "6f1c-uid",
				IPs:          []netip.Addr{netip.MustParseAddr("10.88.0.5"), netip.MustParseAddr("2001:db8:88::5")},
				NetnsCookie:  e.cookie(t),
			}
			adds, dels := agent.requests()
			if !reflect.DeepEqual(adds, []control.CNIAddRequest{want}) || len(dels) != 0 {
				t.Errorf("agent got adds %+v dels %+v, want one add %+v", adds, dels, want)
			}
			if !strings.Contains(e.stderr.String(), "captured=true reason=ambient") {
				t.Errorf("log does not record the decision: %s", e.stderr.String())
			}
		})
	}
}

// TestAddAfterTheLoopbackPlugin: a chain with the loopback plugin before
// ztdns hands it a prevResult listing 127.0.0.1/8 and ::1 on the pod's lo;
// the ADD passes them through but claims only the pod's own addresses,
// which is all the agent accepts. (Before, the ADD failed validation, even
// under "allow".)
func TestAddAfterTheLoopbackPlugin(t *testing.T) {
	t.Parallel()
	e := newPluginEnv(t)
	agent := startFakeAgent(t, e.socket, nil)
	prev := prevResultJSON("1.0.0", e.netns.Path())
	prev["interfaces"] = append(prev["interfaces"].([]any), map[string]any{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": e.netns.Path()})
	prev["ips"] = append(prev["ips"].([]any),
		map[string]any{"interface": 3, "address": "127.0.0.1/8"}, map[string]any{"interface": 3, "address": "::1/128"})
	args := e.args(t, "1.0.0", map[string]any{"onAgentUnreachable": "allow"})
	args.StdinData = netConfJSON(t, "1.0.0", prev, map[string]any{"socketPath": e.socket, "onAgentUnreachable": "allow"})
	if err := e.plugin().add(args); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	requirePrevResult(t, "1.0.0", args.StdinData, e.stdout.Bytes())
	want := []netip.Addr{netip.MustParseAddr("10.88.0.5"), netip.MustParseAddr("2001:db8:88::5")}
	if adds, _ := agent.requests(); len(adds) != 1 || !slices.Equal(adds[0].IPs, want) {
		t.Errorf("agent got %+v, want one ADD claiming %v", adds, want)
	}
}

func TestAddIsIdempotent(t *testing.T) {
	t.Parallel()
	e := newPluginEnv(t)
	agent := startFakeAgent(t, e.socket, nil)
	args := e.args(t, "1.0.0", nil)
	var outs []string
	for range 2 {
		e.stdout.Reset()
		if err := e.plugin().add(args); err != nil {
			t.Fatal(err)
		}
		outs = append(outs, e.stdout.String())
	}
	adds, _ := agent.requests()
	if len(adds) != 2 || !reflect.DeepEqual(adds[0], adds[1]) || outs[0] != outs[1] {
		t.Errorf("two ADDs differ: requests %+v, outputs %q", adds, outs)
	}
}

func TestAddPassesThroughWhenNotCaptured(t *testing.T) {
	t.Parallel()
	e := newPluginEnv(t)
	startFakeAgent(t, e.socket, func(a *fakeAgent) {
		a.reply = func(control.CNIAddRequest) (control.CNIAddResponse, error) {
			return control.CNIAddResponse{Captured: false, Reason: "not-ambient"}, nil
		}
	})
	args := e.args(t, "1.0.0", nil)
	if err := e.plugin().add(args); err != nil {
		t.Fatal(err)
	}
	requirePrevResult(t, "1.0.0", args.StdinData, e.stdout.Bytes())
}

func TestAddWhenTheAgentRefuses(t *testing.T) {
	t.Parallel()
	e := newPluginEnv(t)
	startFakeAgent(t, e.socket, func(a *fakeAgent) {
		a.reply = func(control.CNIAddRequest) (control.CNIAddResponse, error) {
			return control.CNIAddResponse{}, errors.New("pods map is full")
		}
	})
	// Even under "allow": an agent that answers has decided.
	err := e.plugin().add(e.args(t, "1.0.0", map[string]any{"onAgentUnreachable": "allow"}))
	requireCNIError(t, err, types.ErrInternal, "ztdns agent refused the pod; pods map is full")
	if e.stdout.Len() != 0 {
		t.Errorf("stdout = %q, want nothing", e.stdout.String())
	}
}

func TestAddWhenTheAgentIsUnreachable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		policy string
		// "none": no socket; "stale": a socket nobody serves; "hung": an
		// agent that answers only when the test ends; "handing-over": one
		// that answers 503, as an agent handing over to its successor does
		agent string
	}{
		{"fail, no socket", PolicyFail, "none"},
		{"fail, stale socket", PolicyFail, "stale"},
		{"fail, hung agent", PolicyFail, "hung"},
		{"allow, no socket", PolicyAllow, "none"},
		{"allow, stale socket", PolicyAllow, "stale"},
		{"allow, hung agent", PolicyAllow, "hung"},
		{"fail, agent handing over", PolicyFail, "handing-over"},
		{"allow, agent handing over", PolicyAllow, "handing-over"},
		{"default, no socket", "", "none"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newPluginEnv(t)
			switch tt.agent {
			case "stale":
				ln, err := control.Listen(e.socket, control.Access{})
				if err != nil {
					t.Fatal(err)
				}
				ln.(interface{ SetUnlinkOnClose(bool) }).SetUnlinkOnClose(false)
				ln.Close()
			case "hung":
				startFakeAgent(t, e.socket, func(a *fakeAgent) { a.hung = true })
			case "handing-over":
				startFakeAgent(t, e.socket, func(a *fakeAgent) {
					a.reply = func(control.CNIAddRequest) (control.CNIAddResponse, error) {
						return control.CNIAddResponse{}, control.Unavailable(errors.New("handed over"))
					}
				})
			}
			fields := map[string]any{"timeout": "200ms"}
			if tt.policy != "" {
				fields["onAgentUnreachable"] = tt.policy
			}
			args := e.args(t, "1.0.0", fields)
			// An ADD that ignored its timeout would wait for the hung
			// agent until the test ends, and the guard would fire: far
			// beyond 200ms, it fires for nothing else.
			const guard = 30 * time.Second
			added := make(chan error, 1) // buffered: such an ADD returns into it at cleanup
			start := time.Now()
			plugin := e.plugin()
			go func() { added <- plugin.add(args) }()
			var err error
			select {
			case err = <-added:
				t.Logf("ADD returned after %v", time.Since(start))
			case <-time.After(guard):
				t.Fatalf("ADD has not returned after %v with a 200ms timeout", guard)
			}

			if tt.policy == PolicyFail {
				requireCNIError(t, err, types.ErrTryAgainLater, "ztdns agent unreachable at "+e.socket)
				if e.stdout.Len() != 0 {
					t.Errorf("stdout = %q, want nothing", e.stdout.String())
				}
				if pending, _ := PendingAdds(e.pending); len(pending) != 0 {
					t.Errorf("a refused pod was recorded: %+v", pending)
				}
				return
			}
			if err != nil {
				t.Fatalf("ADD = %v, want the pod to start uncaptured", err)
			}
			requirePrevResult(t, "1.0.0", args.StdinData, e.stdout.Bytes())
			if !strings.Contains(e.stderr.String(), "level=WARN") || !strings.Contains(e.stderr.String(), "WITHOUT DNS capture") {
				t.Errorf("no loud warning in the log: %s", e.stderr.String())
			}
			pending, err := PendingAdds(e.pending)
			if err != nil || len(pending) != 1 || pending[0].ContainerID != args.ContainerID || pending[0].NetnsCookie != e.cookie(t) {
				t.Errorf("pending ADDs = %+v, %v; want the pod's request", pending, err)
			}
		})
	}
}

// TestAgentResetRetriedOnce: the agent's socket closes the plugin's first
// connection with its request unread (a reset, as when it closes one to
// make room for others). The plugin tries once more: the ADD (under
// "fail") and the DEL reach the agent, and nothing is taken for an agent
// away or recorded for a replay. A second reset in a row is an agent that
// cannot be reached.
func TestAgentResetRetriedOnce(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name      string
		resets    int
		delivered bool
	}{
		{"one reset", 1, true},
		{"two resets", 2, false},
	} {
		t.Run(tt.name+", ADD", func(t *testing.T) {
			t.Parallel()
			e := newPluginEnv(t)
			agent := startFakeAgent(t, e.socket, func(a *fakeAgent) { a.resets = tt.resets })
			args := e.args(t, "1.0.0", map[string]any{"onAgentUnreachable": PolicyFail})
			err := e.plugin().add(args)
			adds, _ := agent.requests()
			if !tt.delivered {
				requireCNIError(t, err, types.ErrTryAgainLater, "ztdns agent unreachable at "+e.socket)
				if len(adds) != 0 {
					t.Errorf("the agent got %+v, want nothing", adds)
				}
				return
			}
			if err != nil {
				t.Fatalf("ADD after a reset: %v", err)
			}
			requirePrevResult(t, "1.0.0", args.StdinData, e.stdout.Bytes())
			if len(adds) != 1 || adds[0].ContainerID != args.ContainerID {
				t.Errorf("the agent got %+v, want the pod's ADD once", adds)
			}
		})
		t.Run(tt.name+", DEL", func(t *testing.T) {
			t.Parallel()
			e := newPluginEnv(t)
			agent := startFakeAgent(t, e.socket, func(a *fakeAgent) { a.resets = tt.resets })
			args := e.args(t, "1.0.0", nil)
			if err := e.plugin().del(args); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			_, dels := agent.requests()
			pending, err := PendingDeletes(e.pending)
			if err != nil {
				t.Fatal(err)
			}
			if !tt.delivered {
				if len(dels) != 0 || len(pending) != 1 {
					t.Errorf("the agent got %+v, pending %+v; want nothing, and the DEL recorded", dels, pending)
				}
				return
			}
			if len(dels) != 1 || dels[0].ContainerID != args.ContainerID || len(pending) != 0 {
				t.Errorf("the agent got %+v, pending %+v; want the pod's DEL once, nothing recorded", dels, pending)
			}
			if log := e.stderr.String(); strings.Contains(log, "could not take") {
				t.Errorf("the plugin took the agent for away:\n%s", log)
			}
		})
	}
}

// TestAddBadInput: every input error is a CNI error with its code, the
// agent hears nothing, and nothing is printed as a result.
func TestAddBadInput(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		modify func(e *pluginEnv, a *skel.CmdArgs)
		code   uint
		want   string
	}{
		{"malformed config", func(_ *pluginEnv, a *skel.CmdArgs) { a.StdinData = []byte(`{"cniVersion":`) }, types.ErrDecodingFailure, "parse network config"},
		{"bad policy", func(e *pluginEnv, a *skel.CmdArgs) {
			a.StdinData = netConfJSON(t, "1.0.0", prevResultJSON("1.0.0", ""), map[string]any{"socketPath": e.socket, "onAgentUnreachable": "maybe"})
		}, types.ErrInvalidNetworkConfig, `onAgentUnreachable "maybe"`},
		{"no prevResult", func(e *pluginEnv, a *skel.CmdArgs) {
			a.StdinData = netConfJSON(t, "1.0.0", nil, map[string]any{"socketPath": e.socket})
		}, types.ErrInvalidNetworkConfig, "must be called as a chained plugin"},
		{"no CNI_ARGS", func(_ *pluginEnv, a *skel.CmdArgs) { a.Args = "" }, types.ErrInvalidEnvironmentVariables, "lacks [K8S_POD_NAMESPACE K8S_POD_NAME]"},
		{"no pod name", func(_ *pluginEnv, a *skel.CmdArgs) { a.Args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop" }, types.ErrInvalidEnvironmentVariables, "lacks [K8S_POD_NAME]"},
		{"netns does not exist", func(e *pluginEnv, a *skel.CmdArgs) { a.Netns = filepath.Join(e.dir, "no-such-netns") }, types.ErrInvalidNetNS, "is not a usable network namespace"},
		{"netns is a plain file", func(e *pluginEnv, a *skel.CmdArgs) {
			a.Netns = filepath.Join(e.dir, "plain")
			os.WriteFile(a.Netns, nil, 0o600)
		}, types.ErrInvalidNetNS, "is not a usable network namespace"},
		{"netns empty", func(_ *pluginEnv, a *skel.CmdArgs) { a.Netns = "" }, types.ErrInvalidNetNS, `CNI_NETNS ""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newPluginEnv(t)
			agent := startFakeAgent(t, e.socket, nil)
			args := e.args(t, "1.0.0", nil)
			tt.modify(e, args)
			err := e.plugin().add(args)
			requireCNIError(t, err, tt.code, tt.want)
			if adds, dels := agent.requests(); len(adds)+len(dels) != 0 {
				t.Errorf("the agent was contacted: %+v %+v", adds, dels)
			}
			if e.stdout.Len() != 0 {
				t.Errorf("stdout = %q, want nothing", e.stdout.String())
			}
		})
	}
}

func TestDel(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		agent       string // "up", "down", "failing" (500), "handing-over" (503) or "refusing" (400)
		netns       string // "pod": CNI_NETNS is the pod's; "": not passed; else this path
		wantPending bool
		cniArgs     string // replaces the pod's CNI_ARGS when set
	}{
		{"agent up", "up", "pod", false, ""},
		{"agent up, netns gone", "up", "", false, ""},
		{"agent down", "down", "pod", true, ""},
		{"agent down, netns gone", "down", "", true, ""},
		{"agent failing", "failing", "pod", true, ""},
		{"agent handing over", "handing-over", "pod", true, ""},
		// A verdict on the request: a replay would get the same, every
		// 30 s for ever.
		{"agent refusing", "refusing", "pod", false, ""},
		// Left out, not refused: the agent finds the pod without it.
		{"a relative netns", "up", "netns/pod", false, ""},
		{"no pod in CNI_ARGS", "up", "pod", false, "IgnoreUnknown=1"},
		{"a pod name the agent would refuse", "up", "pod", false, "K8S_POD_NAMESPACE=Shop;K8S_POD_NAME=web-0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newPluginEnv(t)
			var agent *fakeAgent
			if tt.agent != "down" {
				agent = startFakeAgent(t, e.socket, func(a *fakeAgent) {
					switch tt.agent {
					case "failing":
						a.delErr = errors.New("map update failed")
					case "handing-over":
						a.delErr = control.Unavailable(errors.New("handed over"))
					case "refusing":
						a.delErr = control.Invalid(errors.New("no such thing"))
					}
				})
			}
			args := e.args(t, "1.0.0", nil)
			if tt.netns != "pod" {
				args.Netns = tt.netns
			}
			// The pod's name finds a pod the agent adopted: it knows no
			// container ID of it.
			want := control.CNIDelRequest{ContainerID: args.ContainerID, Netns: args.Netns, PodNamespace: "shop", PodName: "web-0"}
			if !filepath.IsAbs(want.Netns) {
				want.Netns = ""
			}
			if tt.cniArgs != "" {
				args.Args = tt.cniArgs
				want.PodNamespace, want.PodName = "", ""
			}
			// An ADD the agent never saw: a DEL makes replaying it pointless.
			if err := recordPending(e.pending, pendingAddDir, args.ContainerID, control.CNIAddRequest{ContainerID: args.ContainerID}, 0); err != nil {
				t.Fatal(err)
			}
			// An earlier attempt of this DEL that the agent missed: a DEL the
			// agent takes makes replaying it pointless.
			if err := recordPending(e.pending, pendingDelDir, args.ContainerID, control.CNIDelRequest{ContainerID: args.ContainerID}, 0); err != nil {
				t.Fatal(err)
			}

			for range 2 { // DEL is idempotent
				if err := e.plugin().del(args); err != nil {
					t.Fatalf("DEL = %v", err)
				}
			}
			if e.stdout.Len() != 0 {
				t.Errorf("stdout = %q, want nothing", e.stdout.String())
			}
			if agent != nil {
				// Each DEL answered "handed over" is sent once more: the
				// socket is the successor's by then (TestHandedOverCallSentAgain).
				times := 2
				if tt.agent == "handing-over" {
					times = 4
				}
				if _, dels := agent.requests(); !reflect.DeepEqual(dels, slices.Repeat([]control.CNIDelRequest{want}, times)) {
					t.Errorf("agent got %+v, want %+v %d times", dels, want, times)
				}
			}
			pending, err := PendingDeletes(e.pending)
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantPending && !reflect.DeepEqual(pending, []control.CNIDelRequest{want}) || !tt.wantPending && len(pending) != 0 {
				t.Errorf("pending DELs = %+v, want %+v recorded: %t", pending, want, tt.wantPending)
			}
			if adds, _ := PendingAdds(e.pending); len(adds) != 0 {
				t.Errorf("pending ADD survived the DEL: %+v", adds)
			}
		})
	}
}

// TestNoAgentNoRecord: with the agent's directory gone (/var/run emptied
// by a reboot, and no agent started since), DEL and ADD under "allow"
// succeed and record
// nothing: no file per pod grows on the node's tmpfs for an agent that
// will never come, and the directory is not made again.
func TestNoAgentNoRecord(t *testing.T) {
	t.Parallel()
	e := newPluginEnv(t)
	gone := filepath.Join(e.dir, "gone")
	e.socket, e.pending = filepath.Join(gone, "ztdns.sock"), filepath.Join(gone, "pending")
	args := e.args(t, "1.0.0", map[string]any{"timeout": "200ms"})
	if err := e.plugin().add(args); err != nil {
		t.Fatalf("ADD = %v, want the pod to start", err)
	}
	for range 2 {
		if err := e.plugin().del(args); err != nil {
			t.Fatalf("DEL = %v", err)
		}
	}
	if _, err := os.Stat(gone); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the agent's directory was made: %v", err)
	}
	if strings.Contains(e.stderr.String(), "level=ERROR") {
		t.Errorf("errors logged for a node without ztdns:\n%s", e.stderr.String())
	}
}

// TestDelPastThePendingCap: with the most DELs recorded already (an agent
// crash-looping for long; MaxPendingRecords, less here), DEL still
// succeeds, records nothing and says what was dropped.
func TestDelPastThePendingCap(t *testing.T) {
	t.Parallel()
	const limit = 8
	e := newPluginEnv(t)
	for i := range limit {
		mustWrite(t, filepath.Join(e.pending, pendingDelDir, fmt.Sprintf("old%05d.json", i)), "{}")
	}
	args := e.args(t, "1.0.0", map[string]any{"timeout": "200ms"})
	p := e.plugin()
	p.maxPending = limit
	if err := p.del(args); err != nil {
		t.Fatalf("DEL = %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.pending, pendingDelDir, args.ContainerID+".json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("DEL recorded past the cap: %v", err)
	}
	if log := e.stderr.String(); !strings.Contains(log, "level=ERROR") || !strings.Contains(log, "dropping it") {
		t.Errorf("no error about the dropped DEL:\n%s", log)
	}
}

func TestDelWithAnUnusableConfig(t *testing.T) {
	t.Parallel()
	e := newPluginEnv(t)
	agent := startFakeAgent(t, e.socket, nil)
	args := e.args(t, "1.0.0", map[string]any{"onAgentUnreachable": "sometimes"})
	if err := e.plugin().del(args); err != nil {
		t.Errorf("DEL = %v, want success so the primary plugin's DEL runs", err)
	}
	if !strings.Contains(e.stderr.String(), `onAgentUnreachable \"sometimes\"`) {
		t.Errorf("the config error is not logged: %s", e.stderr.String())
	}
	if adds, dels := agent.requests(); len(adds)+len(dels) != 0 {
		t.Errorf("the agent was contacted: %+v %+v", adds, dels)
	}
}

func TestAddForgetsAStalePendingDelete(t *testing.T) {
	t.Parallel()
	e := newPluginEnv(t)
	startFakeAgent(t, e.socket, nil)
	args := e.args(t, "1.0.0", nil)
	if err := recordPending(e.pending, pendingDelDir, args.ContainerID, control.CNIDelRequest{ContainerID: args.ContainerID}, 0); err != nil {
		t.Fatal(err)
	}
	if err := e.plugin().add(args); err != nil {
		t.Fatal(err)
	}
	if pending, _ := PendingDeletes(e.pending); len(pending) != 0 {
		t.Errorf("pending DEL would unmark the live pod: %+v", pending)
	}
}

func TestCheck(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		modify func(e *pluginEnv, a *skel.CmdArgs)
		code   uint // 0: success
		want   string
	}{
		{"healthy", func(*pluginEnv, *skel.CmdArgs) {}, 0, ""},
		{"no prevResult", func(e *pluginEnv, a *skel.CmdArgs) {
			a.StdinData = netConfJSON(t, "1.0.0", nil, map[string]any{"socketPath": e.socket})
		}, types.ErrInvalidNetworkConfig, "must be called as a chained plugin"},
		{"netns gone", func(e *pluginEnv, a *skel.CmdArgs) { a.Netns = filepath.Join(e.dir, "gone") }, types.ErrInvalidNetNS, "not a usable network namespace"},
		{"no CNI_ARGS", func(_ *pluginEnv, a *skel.CmdArgs) { a.Args = "" }, types.ErrInvalidEnvironmentVariables, "lacks"},
		{"bad config", func(_ *pluginEnv, a *skel.CmdArgs) { a.StdinData = []byte("{") }, types.ErrDecodingFailure, "parse network config"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newPluginEnv(t)
			agent := startFakeAgent(t, e.socket, nil)
			args := e.args(t, "1.0.0", nil)
			tt.modify(e, args)
			err := e.plugin().check(args)
			if tt.code == 0 {
				if err != nil {
					t.Fatalf("CHECK = %v", err)
				}
			} else {
				requireCNIError(t, err, tt.code, tt.want)
			}
			if adds, dels := agent.requests(); len(adds)+len(dels) != 0 {
				t.Errorf("CHECK contacted the agent: %+v %+v", adds, dels)
			}
		})
	}
}

// TestStatus: STATUS says ready whatever the policy and whether or not the
// agent answers (a failed STATUS would turn the node NotReady), and fails only
// on a configuration the plugin cannot use.
func TestStatus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		policy string
		agent  bool
		code   uint // 0: ready
	}{
		{"allow, agent down", PolicyAllow, false, 0},
		{"allow, agent up", PolicyAllow, true, 0},
		{"fail, agent up", PolicyFail, true, 0},
		{"fail, agent down", PolicyFail, false, 0},
		{"invalid policy", "sometimes", true, types.ErrInvalidNetworkConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newPluginEnv(t)
			if tt.agent {
				startFakeAgent(t, e.socket, nil)
			}
			args := e.args(t, "1.1.0", map[string]any{"onAgentUnreachable": tt.policy})
			err := e.plugin().status(args)
			if tt.code == 0 {
				if err != nil {
					t.Errorf("STATUS = %v, want ready", err)
				}
				return
			}
			requireCNIError(t, err, tt.code, `onAgentUnreachable "sometimes"`)
		})
	}
}

func TestLogFile(t *testing.T) {
	t.Parallel()
	e := newPluginEnv(t)
	startFakeAgent(t, e.socket, nil)
	logFile := filepath.Join(e.dir, "cni.log")
	args := e.args(t, "1.0.0", map[string]any{"logFile": logFile, "logLevel": "debug"})
	if err := e.plugin().add(args); err != nil {
		t.Fatal(err)
	}
	if err := e.plugin().del(args); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"cmd=ADD", "pod=shop/web-0", "cmd=DEL", "pod removed from the agent"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("log file lacks %q:\n%s", want, data)
		}
	}
	if e.stderr.Len() != 0 {
		t.Errorf("stderr = %q, want the log in the file only", e.stderr.String())
	}
}

func TestRecoveredTurnsAPanicIntoACNIError(t *testing.T) {
	t.Parallel()
	fn := recovered("ADD", func(*skel.CmdArgs) error { panic("boom") })
	err := fn(&skel.CmdArgs{})
	requireCNIError(t, err, types.ErrInternal, "ztdns ADD: internal error: boom")
	if !strings.Contains(err.(*types.Error).Details, "plugin_test.go") {
		t.Errorf("details lack the stack: %q", err.(*types.Error).Details)
	}
}
