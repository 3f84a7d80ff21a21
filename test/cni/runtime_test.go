//go:build linux

// Package cnie2e drives the ztdns CNI plugin the way a container runtime
// does: libcni executing a conflist of the real reference plugins (bridge
// with host-local IPAM) with the real ztdns binary chained after them, on
// network namespaces the test creates. Everything runs inside a "node"
// network namespace of its own, for the bridge plugin turns on IP
// forwarding where it runs. Most tests also run the real `ztdns agent`
// there, with capture on a test cgroup, and ask real DNS clients inside the
// pods who answers them.
//
// Run as root: CI=true go test ./test/cni/ (without root or a needed tool
// the tests skip, or fail under CI=true).
package cnie2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/cni"
	"github.com/ztdns/ztdns/pkg/control"
)

// Pod addresses the bridge's host-local IPAM hands out. They exist only in
// namespaces the test creates.
var (
	podSubnet4 = netip.MustParsePrefix("10.252.0.0/24")
	podSubnet6 = netip.MustParsePrefix("2001:db8:252::/64")
)

// RuntimeOptions shape a Runtime.
type RuntimeOptions struct {
	// Plugin is the ztdns entry installed into the conflist. SocketPath,
	// PendingDir and LogFile default to the Runtime's.
	Plugin cni.Config
	// CNIVersion of the conflist (default 1.0.0; STATUS needs 1.1.0).
	CNIVersion string
	// IPv6 adds an IPv6 range to host-local, for dual-stack pods.
	IPv6 bool
	// Node is the node namespace to use; nil creates one.
	Node *testenv.Node
}

// Runtime is a container runtime's CNI side on a test node: a CNI bin dir
// with the reference plugins and ztdns (installed by cni.Install), a conf
// dir whose primary conflist is bridge + host-local with ztdns installed
// after them (by cni.Install, as the agent does), and libcni to run it.
type Runtime struct {
	Node *testenv.Node
	// Dir holds everything below; short, so the socket path fits.
	Dir        string
	BinDir     string // CNI_PATH
	ConfDir    string // the CNI conf dir
	ConfFile   string // the primary conflist, ztdns installed
	Socket     string // the agent's control socket the plugin talks to, in a directory of its own as /var/run/ztdns
	PendingDir string // where the plugin records what the agent missed: pending beside Socket, its default
	LogFile    string // the plugin's log
	Bridge     string // the bridge device in the node namespace
	Gateway4   netip.Addr
	Gateway6   netip.Addr // invalid without IPv6

	list *libcni.NetworkConfigList
	cni  *libcni.CNIConfig
}

// NewRuntime sets up a runtime on a node namespace.
func NewRuntime(tb testing.TB, opts RuntimeOptions) *Runtime {
	tb.Helper()
	testenv.RequireRoot(tb)
	plugins := pluginsDir(tb)
	ztdns := ztdnsBinary(tb)
	if opts.CNIVersion == "" {
		opts.CNIVersion = "1.0.0"
	}
	if opts.Node == nil {
		opts.Node = testenv.NewNode(tb)
	}

	// Not t.TempDir: a unix socket path must fit in 108 bytes.
	dir := testenv.MkdirTemp(tb, "ztcni-")
	r := &Runtime{
		Node:       opts.Node,
		Dir:        dir,
		BinDir:     filepath.Join(dir, "bin"),
		ConfDir:    filepath.Join(dir, "net.d"),
		Socket:     filepath.Join(dir, "run", "ztdns.sock"),
		PendingDir: filepath.Join(dir, "run", "pending"),
		LogFile:    filepath.Join(dir, "cni.log"),
		Bridge:     testenv.UniqueName("ztbr"),
		Gateway4:   podSubnet4.Addr().Next(),
	}
	for _, d := range []string{r.BinDir, r.ConfDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	for _, p := range referencePlugins {
		if err := os.Symlink(filepath.Join(plugins, p), filepath.Join(r.BinDir, p)); err != nil {
			tb.Fatal(err)
		}
	}

	ranges := []any{[]any{map[string]any{"subnet": podSubnet4.String(), "gateway": r.Gateway4.String()}}}
	routes := []any{map[string]any{"dst": "0.0.0.0/0"}}
	if opts.IPv6 {
		r.Gateway6 = podSubnet6.Addr().Next()
		ranges = append(ranges, []any{map[string]any{"subnet": podSubnet6.String(), "gateway": r.Gateway6.String()}})
		routes = append(routes, map[string]any{"dst": "::/0"})
	}
	primary := map[string]any{
		"cniVersion": opts.CNIVersion,
		"name":       "ztdns-test-net",
		"plugins": []any{map[string]any{
			"type":      "bridge",
			"bridge":    r.Bridge,
			"isGateway": true,
			"ipMasq":    false, // no iptables: nothing leaves the node namespace anyway
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  ranges,
				"routes":  routes,
				"dataDir": filepath.Join(dir, "ipam"),
			},
		}},
	}
	data, err := json.MarshalIndent(primary, "", "  ")
	if err != nil {
		tb.Fatal(err)
	}
	r.ConfFile = filepath.Join(r.ConfDir, "10-ztdns-test.conflist")
	if err := os.WriteFile(r.ConfFile, append(data, '\n'), 0o644); err != nil {
		tb.Fatal(err)
	}

	if opts.Plugin.SocketPath == "" {
		opts.Plugin.SocketPath = r.Socket
	}
	if opts.Plugin.PendingDir == "" {
		opts.Plugin.PendingDir = r.PendingDir
	}
	if opts.Plugin.LogFile == "" {
		opts.Plugin.LogFile = r.LogFile
	}
	entry, err := opts.Plugin.Entry()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cni.Install(cni.InstallConfig{BinDir: r.BinDir, ConfDir: r.ConfDir, Binary: ztdns, PluginConf: entry}); err != nil {
		tb.Fatalf("cni.Install: %v", err)
	}
	if r.list, err = libcni.ConfListFromFile(r.ConfFile); err != nil {
		tb.Fatalf("the installed conflist does not load: %v", err)
	}
	r.cni = libcni.NewCNIConfigWithCacheDir([]string{r.BinDir}, filepath.Join(dir, "cache"), pluginExec)
	return r
}

// MarkAgentInstalled leaves the socket's directory as an agent that started
// and stopped leaves it (control.MarkInstalled): ztdns is installed, its
// agent down, so the plugin records what the agent misses.
func (r *Runtime) MarkAgentInstalled(tb testing.TB) {
	tb.Helper()
	if err := os.MkdirAll(filepath.Dir(r.Socket), 0o700); err != nil {
		tb.Fatal(err)
	}
	if err := control.MarkInstalled(r.Socket); err != nil {
		tb.Fatal(err)
	}
}

// PodOptions describe a pod the runtime creates.
type PodOptions struct {
	// Namespace and Name go into CNI_ARGS (default "default" and a unique
	// name); UID too (default a unique one).
	Namespace, Name, UID string
	// Nameservers and ResolvOptions make the pod's resolv.conf
	// (/etc/netns/NAME/resolv.conf, seen by commands run with
	// testenv.Netns.Command); written even when empty, so no client in
	// the pod ever sees the machine's own.
	Nameservers   []string
	ResolvOptions []string
	// OmitK8sArgs leaves the K8S_POD_* keys out of CNI_ARGS, as a
	// non-Kubernetes runtime would.
	OmitK8sArgs bool
}

// Pod is a pod sandbox: a network namespace made by the test, and the
// identity the runtime passes to the plugins.
type Pod struct {
	*testenv.Netns
	Namespace, Name, UID string
	ContainerID          string

	rt      *libcni.RuntimeConf
	delOnce sync.Once
}

// NewPod creates the pod's network namespace (removed at cleanup) and its
// resolv.conf. It does not run ADD.
func (r *Runtime) NewPod(tb testing.TB, opts PodOptions) *Pod {
	tb.Helper()
	name := testenv.UniqueName("ztcni-")
	testenv.WriteResolvConf(tb, name, testenv.PodConfig{Nameservers: opts.Nameservers, Options: opts.ResolvOptions})
	p := &Pod{
		Netns:       testenv.NewNetns(tb, name),
		Namespace:   opts.Namespace,
		Name:        opts.Name,
		UID:         opts.UID,
		ContainerID: containerID(tb),
	}
	if p.Namespace == "" {
		p.Namespace = "default"
	}
	if p.Name == "" {
		p.Name = name
	}
	if p.UID == "" {
		p.UID = testenv.UniqueName("uid-")
	}
	args := [][2]string{{"IgnoreUnknown", "1"}}
	if !opts.OmitK8sArgs {
		args = append(args,
			[2]string{"K8S_POD_NAMESPACE", p.Namespace},
			[2]string{"K8S_POD_NAME", p.Name},
			[2]string{"K8S_POD_INFRA_CONTAINER_ID", p.ContainerID},
			[2]string{"K8S_POD_UID", p.UID})
	}
	p.rt = &libcni.RuntimeConf{ContainerID: p.ContainerID, NetNS: p.Path(), IfName: "eth0", Args: args}
	return p
}

// Add runs the conflist's ADD for the pod, as a runtime creating the pod
// sandbox. Whatever the outcome, the pod's DEL runs at cleanup (a runtime
// also cleans up after a failed ADD). The error is the failing plugin's,
// usually a *types.Error.
func (r *Runtime) Add(tb testing.TB, p *Pod) (*current.Result, error) {
	tb.Helper()
	tb.Cleanup(func() {
		p.delOnce.Do(func() {
			if err := r.del(p); err != nil {
				tb.Errorf("cleanup: DEL of %s: %v", p.Name, err)
			}
		})
	})
	var res types.Result
	err := r.inNode(func(ctx context.Context) error {
		var err error
		res, err = r.cni.AddNetworkList(ctx, r.list, p.rt)
		return err
	})
	if err != nil {
		return nil, err
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		tb.Fatalf("ADD result: %v", err)
	}
	return cur, nil
}

// Del runs the conflist's DEL for the pod, as a runtime removing the pod
// sandbox. It may run more than once (DEL is idempotent).
func (r *Runtime) Del(tb testing.TB, p *Pod) error {
	tb.Helper()
	return r.del(p)
}

func (r *Runtime) del(p *Pod) error {
	return r.inNode(func(ctx context.Context) error { return r.cni.DelNetworkList(ctx, r.list, p.rt) })
}

// Log returns what the plugin has logged so far.
func (r *Runtime) Log(tb testing.TB) string {
	tb.Helper()
	data, err := os.ReadFile(r.LogFile)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		tb.Fatal(err)
	}
	return string(data)
}

// Check runs the conflist's CHECK for the pod (CNI 0.4.0 and later).
func (r *Runtime) Check(tb testing.TB, p *Pod) error {
	tb.Helper()
	return r.inNode(func(ctx context.Context) error { return r.cni.CheckNetworkList(ctx, r.list, p.rt) })
}

// Status runs the conflist's STATUS (CNI 1.1.0).
func (r *Runtime) Status(tb testing.TB) error {
	tb.Helper()
	return r.inNode(func(ctx context.Context) error { return r.cni.GetStatusNetworkList(ctx, r.list) })
}

// inNode runs fn on an OS thread in the node namespace: the plugins libcni
// executes from it are created there.
func (r *Runtime) inNode(fn func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return r.Node.Do(func() error { return fn(ctx) })
}

// containerID returns 64 random hex digits, like containerd's sandbox IDs.
func containerID(tb testing.TB) string {
	tb.Helper()
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		tb.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}
