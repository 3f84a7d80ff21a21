// Config: what `ztdns agent` is told on its command line.

package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztdns/ztdns/pkg/accesslog"
	"github.com/ztdns/ztdns/pkg/handoff"
	"github.com/ztdns/ztdns/pkg/redirect"
	"github.com/ztdns/ztdns/pkg/resolver"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
	"github.com/ztdns/ztdns/pkg/resolver/table"
	"github.com/ztdns/ztdns/pkg/resolver/vip"
	"github.com/ztdns/ztdns/pkg/source"
)

// Config is everything `ztdns agent` is told on its command line.
type Config struct {
	// Source of Services, ServiceEntries, Namespaces and Pods.
	Source source.Source
	// Listen are the resolver's addresses (UDP and TCP on each).
	Listen []netip.AddrPort
	// Upstreams get the misses when the pod's own nameserver is not known.
	Upstreams     []netip.AddrPort
	ClusterDomain string
	// TTL is that of local answers. 0: the one kube-dns gives, as the
	// source reads it from kube-dns's Corefile (model.Snapshot.KubeDNSTTL),
	// followed as it changes; table.DefaultTTL without one.
	TTL time.Duration
	// ServiceEntryTTL is that of a ServiceEntry host's answers: Istio's
	// DNS proxies' (table.DefaultServiceEntryTTL) when 0.
	ServiceEntryTTL time.Duration
	// ForwardTimeout bounds one forwarded query.
	ForwardTimeout time.Duration
	// CacheSize bounds the cache of upstream answers (entries): 0 means the
	// default, a negative size disables the cache.
	CacheSize int
	Autopath  bool
	// VIPSource says where auto-allocated VIPs come from (default auto).
	VIPSource vip.Source
	// DefaultExportTo is the exportTo of a ServiceEntry that gives none
	// (--default-service-export-to, as Istio's MeshConfig
	// defaultServiceExportTo). Nil: the source's (Istio's mesh config, as
	// the Kubernetes source reads it), else every namespace. When both are
	// given this one wins, and the agent says once that the mesh config's
	// differs.
	DefaultExportTo []string
	// MaxNamesPerNamespace bounds the names one namespace's objects make
	// in the table (table.Options): 0 means the default, a negative one
	// no bound.
	MaxNamesPerNamespace int
	// NodeSearch are the node's search domains (autopath only).
	NodeSearch []string
	// MetricsAddr serves /metrics, /healthz and /readyz; empty disables.
	MetricsAddr string
	// Socket is the control socket's path.
	Socket string
	// SocketGroup is a gid whose members may connect to the control socket
	// and read (status, table, pods); 0: root only.
	SocketGroup int
	// Capture turns on DNS capture with eBPF; nil only serves on Listen.
	Capture *CaptureConfig
	// DNSCaptureDefault is the node-wide switch for ambient pods
	// (values.cni.ambient.dnsCapture): with it off, only pods annotated
	// ztdns.io/dns-capture: "true" are captured.
	DNSCaptureDefault bool
	// ExcludeNamespaces are never captured, whatever their labels say:
	// istio-cni's excludeNamespaces, whose pods Istio never enrolls
	// (--exclude-namespaces; empty excludes none).
	ExcludeNamespaces []string
	// IgnoreEnrollment captures a pod the labels put in the ambient
	// mesh whether or not istio-cni enrolled it (--require-istio-enrollment
	// =false), for clusters where no istio-cni runs. Otherwise, with a
	// source that watches the node's pods, such a pod is released after
	// capture.EnrollmentGrace while it lacks ambient.istio.io/redirection
	// "enabled" or "pending" (ambient.ReasonNotEnrolled). A source of
	// manifests never requires it.
	IgnoreEnrollment bool
	// NodeName scopes the pods this agent adopts from /proc; empty in
	// standalone mode.
	NodeName string
	// PodUID is the UID of the agent's pod (the chart's POD_UID, from the
	// downward API): what a hand-over knows the agent by. A container
	// restarted in the same pod keeps it and a new pod has another, so an
	// agent can refuse to hand its sockets back to the pod it took them
	// from (see package handoff). Empty outside Kubernetes: an identity of this
	// process, so a restarted agent is not refused.
	PodUID string
	// Generation is the pod-template-generation label of the agent's pod
	// (the chart's POD_TEMPLATE_GENERATION, from the downward API): the
	// DaemonSet controller raises it with every change of the pod
	// template, a `helm rollback` included. An agent refuses to hand over
	// to one of a lower generation: an older release's pod, its container
	// restarted (see package handoff). 0 outside Kubernetes: no order, as
	// before.
	Generation uint64
	// MemoryLimit is the agent's container's memory limit in bytes, from
	// the downward API (the chart's MEMORY_LIMIT, resourceFieldRef
	// limits.memory): the agent's memory limit when none can be read from
	// its cgroup (cgroup.go), which a resize in place does not change. 0:
	// none.
	MemoryLimit int64
	// ProcRoot is the node's proc filesystem (default /proc): where the
	// agent finds running pods' network namespaces and the node's own
	// (PID 1's). In a pod without hostPID, the node's /proc mounted
	// read-only, e.g. at /host/proc.
	ProcRoot string
	// CNI installs the chained plugin into the node's CNI configuration.
	CNI *CNIConfig
	// SocketsPerAddr is how many SO_REUSEPORT UDP sockets each address gets
	// (default: 1, see DefaultSocketsPerAddr; at most MaxSocketsPerAddr).
	SocketsPerAddr int
	Logger         *slog.Logger
	// Registry receives the metrics (default: a fresh registry).
	Registry *prometheus.Registry

	// Bounds on what pods may take of the resolver; README "Limits and
	// protections".

	// CacheBytes bounds the bytes the cache of upstream answers holds (0:
	// the default).
	CacheBytes int64
	// Limits bound each source of queries: a pod, or an address that is no
	// known pod. A zero field takes the default, a negative one disables it
	// (resolver.Options.Limits).
	Limits quota.Limits
	// MaxForwarding bounds forwarded queries in flight from all sources,
	// TCPMaxConns open TCP connections, TCPIdleTimeout how long one may be
	// idle (shorter under pressure); 0 takes the default.
	MaxForwarding  int
	TCPMaxConns    int
	TCPIdleTimeout time.Duration
	// InflightBytes bounds the bytes of upstream replies held at once, read
	// or waiting to be written (0: the default); PodInflightBytes those one
	// source holds (0: resolver.DefaultPodInflightBytes, a sixteenth of
	// InflightBytes and room for two of the largest replies; negative: no
	// bound of its own, only its fair share). Either bound below
	// resolver.MinInflightBytes (resolver.MinPodInflightBytes) would refuse
	// every reply of the largest size: Run refuses it, and a negative
	// InflightBytes (no bound at all).
	InflightBytes    int64
	PodInflightBytes int64

	// AccessLog gets one line per sampled query while on (`ztdns log
	// on|off`); nil: an access log to stderr, off.
	AccessLog *accesslog.Log
	// MaxNamespaceSeries and MaxUpstreamSeries bound the namespaces and the
	// upstreams with metrics series of their own (0: the defaults).
	MaxNamespaceSeries int
	MaxUpstreamSeries  int

	// handoffTimeouts bound the waits of a hand-over (zero: the defaults;
	// tests shorten them).
	handoffTimeouts handoff.Timeouts
}

// watchesPods says whether the source watches the node's pods (a
// source.PodWatcher): only then does capture require enrollment, follow
// istio-cni's chain, or drop records of pods the source no longer knows.
func (c Config) watchesPods() bool {
	_, ok := c.Source.(source.PodWatcher)
	return ok
}

// check refuses a Config the agent cannot run with, before anything is set
// up.
func (c Config) check() error {
	if c.Source == nil {
		return errors.New("no source: give --config-dir or --kubeconfig")
	}
	if len(c.Listen) == 0 {
		return errors.New("no --listen address")
	}
	if n := c.InflightBytes; n != 0 && n < resolver.MinInflightBytes { // negative too: it would be no bound at all
		return fmt.Errorf("InflightBytes %d: want 0 (the default) or at least %d, one reply of the largest size",
			n, resolver.MinInflightBytes)
	}
	if err := handoff.ValidPodUID(c.PodUID); err != nil {
		return err
	}
	if n := c.PodInflightBytes; n > 0 && n < resolver.MinPodInflightBytes {
		return fmt.Errorf("PodInflightBytes %d: want 0 (the default), negative (no bound of its own) or at least %d, one reply of the largest size",
			n, resolver.MinPodInflightBytes)
	}
	// Load checks it too, but only after the resolver's interface is set up.
	if c.Capture != nil {
		if err := redirect.ValidateCaptureNameservers(c.Capture.Nameservers); err != nil {
			return fmt.Errorf("capture nameservers: %w", err)
		}
	}
	return nil
}

// withDefaults is c with a default in each field left unset, and
// SocketsPerAddr at most MaxSocketsPerAddr.
func (c Config) withDefaults() (Config, error) {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.ClusterDomain == "" {
		c.ClusterDomain = table.DefaultDomain
	}
	if c.TTL <= 0 {
		c.TTL = table.DefaultTTL * time.Second
	}
	if c.ServiceEntryTTL <= 0 {
		c.ServiceEntryTTL = table.DefaultServiceEntryTTL * time.Second
	}
	if c.SocketsPerAddr <= 0 {
		c.SocketsPerAddr = DefaultSocketsPerAddr
	}
	c.SocketsPerAddr = min(c.SocketsPerAddr, MaxSocketsPerAddr)
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
	if c.VIPSource == "" {
		c.VIPSource = vip.SourceAuto
	}
	if c.ProcRoot == "" {
		c.ProcRoot = "/proc"
	}
	if c.AccessLog == nil {
		var err error
		if c.AccessLog, err = accesslog.New(os.Stderr, "stderr", "text", 0); err != nil {
			return c, err
		}
	}
	return c, nil
}
