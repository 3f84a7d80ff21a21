package control

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/containernetworking/cni/pkg/utils"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
	"github.com/ztdns/ztdns/pkg/resolver/table"
	"github.com/ztdns/ztdns/pkg/version"
)

// Status is what `ztdns status` prints (GET RouteStatus).
type Status struct {
	Ready    bool   `json:"ready"`
	NotReady string `json:"notReady,omitempty"`
	// SourceFailing is set while the agent is ready but its source fails
	// (an API server it cannot reach): it serves its last table, and
	// /readyz says the same in its body.
	SourceFailing string   `json:"sourceFailing,omitempty"`
	Names         int      `json:"names"`
	Pods          int      `json:"pods"`
	Listen        []string `json:"listen"`
	Capture       bool     `json:"capture"`
	// FailingOpen is set while the capture programs let marked pods'
	// queries go to their own nameservers, around the resolver, because
	// the agent's heartbeat is stale (starting, stopping, or stuck).
	FailingOpen bool `json:"failingOpen"`
	// ResolverStalled says why the agent holds its heartbeat back, while
	// it does: the resolver reads no more queries on some of its
	// sockets, and captured pods fail open until it reads again.
	ResolverStalled string `json:"resolverStalled,omitempty"`
	// CaptureProblems says what is not as the agent attached and pinned
	// it: a program's link detached from the cgroup (its queries go
	// around the resolver, though pods stay marked) or running another
	// program, a pin gone or holding something else. The agent puts back
	// what it can within seconds (ztdns_capture_repairs_total counts it).
	CaptureProblems []string `json:"captureProblems,omitempty"`
	// CaptureCgroup is the cgroup the capture programs attach to, and why
	// that one (the pods', the cgroup2 root, or --cgroup's).
	CaptureCgroup string `json:"captureCgroup,omitempty"`
	// CaptureNameservers are the only nameservers captured
	// (--capture-nameservers); empty: every destination.
	CaptureNameservers []string `json:"captureNameservers,omitempty"`
	// FallbackUpstreams are where a miss goes when the asking pod's own
	// nameserver is not known (--upstream, or the node's resolv.conf): a
	// host-network client's, one sent straight to the listen address. A
	// captured pod's misses go to the nameserver it addressed
	// (AskedUpstreams).
	FallbackUpstreams []string `json:"fallbackUpstreams"`
	// AskedUpstreams are the nameservers the agent asked within the last
	// 10 minutes, most recently asked first, with how those exchanges
	// ended: at most --metrics-max-upstreams besides the fallbacks and
	// the capture list's addresses, and "other" for the rest together.
	AskedUpstreams []AskedUpstream `json:"askedUpstreams,omitempty"`
	// VIPs says where ServiceEntry VIPs come from now (--vip-source).
	VIPs string `json:"vips,omitempty"`
	// DefaultExportTo is the exportTo of ServiceEntries that give none,
	// and where it comes from: --default-service-export-to, Istio's mesh
	// config (namespace/ConfigMap), or Istio's default, e.g. `"." (mesh
	// config istio-system/istio)`.
	DefaultExportTo string `json:"defaultExportTo,omitempty"`
	// HostsWithoutVIP counts, by reason (table.NoVIPReasons, those above
	// 0), the ServiceEntry hosts that istiod's rules give a VIP but the
	// table has none for, as ztdns_table_hosts_without_vip.
	HostsWithoutVIP map[string]int `json:"hostsWithoutVIP,omitempty"`
	// Warnings are, most pressing first: the CNI plugin not installed, a
	// memory limit below the agent's bound, an open-file limit below the
	// descriptors the agent's bounds may take, upstreams left out because
	// they are the agent's own addresses, IPv6 resolver addresses left out
	// on a node that refuses IPv6; then objects left out of the name table
	// (at most MaxStoredWarnings of them; WarningsOmitted counts the rest),
	// and captured pods that istio-cni's DNS rules claim too.
	Warnings        []string `json:"warnings,omitempty"`
	WarningsOmitted int      `json:"warningsOmitted,omitempty"`
	// SourceErrors are inputs the source could not read; their previous
	// good state is still served.
	SourceErrors []string `json:"sourceErrors,omitempty"`
	// SourceWarnings are inputs served other than as written: a
	// manifest's field ztdns does not know, ignored (a misspelt one
	// changes the answer), a value skipped.
	SourceWarnings []string `json:"sourceWarnings,omitempty"`
	// StateUnsaved is set while the record of captured pods could not be
	// written: the agent keeps retrying, and a restart now would rebuild
	// its marks from the source and the runtime instead.
	StateUnsaved string `json:"stateUnsaved,omitempty"`
	// Build is the agent's version: what `ztdns version` and the
	// ztdns_build_info metric of the same binary say.
	Build version.Info `json:"build"`
	// AccessLog is the access log's state (`ztdns log`).
	AccessLog AccessLog `json:"accessLog"`
}

// AskedUpstream is a nameserver the agent asked recently (Status).
type AskedUpstream struct {
	// Address is the nameserver's, or "other" for those past
	// --metrics-max-upstreams together.
	Address string `json:"address"`
	// Idle is how long since it was last asked.
	Idle string `json:"idle"`
	// Results counts its exchanges by how they ended, as the result label
	// of ztdns_forward_upstream_queries_total (ok, servfail, timeout,
	// error, …), since it was first asked after 10 minutes unasked or
	// since the agent started.
	Results map[string]uint64 `json:"results"`
}

// AccessLog is the state of the agent's access log: one line per sampled
// query (PUT RouteAccessLog answers it too).
type AccessLog struct {
	On bool `json:"on"`
	// Sample is the rate while on: one query in Sample gets a line.
	Sample int `json:"sample,omitempty"`
	// Destination is where the lines go: "stderr" or a file's path, fixed
	// at the agent's start (--access-log).
	Destination string `json:"destination"`
	// Dropped counts lines dropped because the destination could not keep
	// up (the queries were answered all the same).
	Dropped uint64 `json:"dropped,omitempty"`
}

// AccessLogRequest turns the access log on or off (PUT RouteAccessLog).
type AccessLogRequest struct {
	On bool `json:"on"`
	// Sample is the rate once on: one query in Sample; 0 keeps the rate
	// the log had (1 if it never had one).
	Sample int `json:"sample,omitempty"`
}

// MaxAccessLogSample bounds AccessLogRequest.Sample.
const MaxAccessLogSample = 1_000_000

// Validate checks the sample rate.
func (r *AccessLogRequest) Validate() error {
	if r.Sample < 0 || r.Sample > MaxAccessLogSample {
		return fmt.Errorf("sample %d: want 1 to %d (one query in N), or 0 to keep the current rate", r.Sample, MaxAccessLogSample)
	}
	return nil
}

// MaxStoredWarnings bounds the table warnings an agent keeps for Status; a
// directory of broken objects cannot make it hold an unbounded list.
const MaxStoredWarnings = 100

// PodNameserver is a nameserver the capture programs learned for a pod:
// what it addressed through slot Slot (0 to 2; the slot's queries go to
// the resolver's slot address Slot, 169.254.20.53 + Slot by default), and
// how long ago the slot was last used (after 30 s idle it may be given to
// another destination; after 2 s when Unconfirmed), as a duration ("2.5s").
type PodNameserver struct {
	Slot    int    `json:"slot"`
	Address string `json:"address"`
	Idle    string `json:"idle"`
	// Unconfirmed: only UDP connects and getpeername went through the
	// slot (ZTDNS_NS_UNCONFIRMED in bpf/ztdns.h).
	Unconfirmed bool `json:"unconfirmed,omitempty"`
}

// TableRow is one name of `ztdns table` (GET RouteTable).
type TableRow = table.Row

// PodRow is one pod as `ztdns pods` shows it (GET RoutePods).
type PodRow struct {
	Namespace   string   `json:"namespace"`
	Name        string   `json:"name"`
	ContainerID string   `json:"containerID,omitempty"`
	NetnsCookie uint64   `json:"netnsCookie"`
	NetnsPath   string   `json:"netnsPath,omitempty"`
	IPs         []string `json:"ips"`
	// Captured is the decision; Marked says whether the pods map holds it.
	Captured   bool   `json:"captured"`
	Reason     string `json:"reason,omitempty"`
	Marked     bool   `json:"marked"`
	Redirected uint64 `json:"redirected"`
	Restored   uint64 `json:"restored"`
	// SkippedStale counts the pod's queries the programs let go to its own
	// nameservers because the agent's heartbeat was stale (fail open).
	SkippedStale uint64 `json:"skippedStale"`
	// Sockets is how many of the pod's open sockets hold a record of what
	// they addressed, at most --capture-sockets-per-pod: a query on any
	// other is left alone (skipped_sockets_full).
	Sockets int64 `json:"sockets"`
	// Nameservers are the pod's learned slots, in slot order; a free slot
	// is left out.
	Nameservers []PodNameserver `json:"nameservers,omitempty"`
	// IstioDNSRules names the backends (nftables, iptables-nft,
	// iptables-legacy) holding istio-cni's DNS capture rules in a captured
	// pod: Istio's DNS capture is on for it too (ztdns still answers it).
	// "unknown" is added when some of the pod's rules could not be read.
	IstioDNSRules string `json:"istioDNSRules,omitempty"`
	// Resolver is what the pod holds of the resolver and was refused by its
	// per-pod limits.
	Resolver quota.Usage `json:"resolver"`
}

// CaptureRequest marks (POST RouteCapture) or unmarks (DELETE RouteCapture)
// a network namespace: how a VM, a test or an operator captures a namespace
// without a CNI plugin. The agent opens Netns itself; what it finds there
// (cookie, addresses) is what it records.
type CaptureRequest struct {
	// Netns is the network namespace's path, e.g. /run/netns/pod1.
	Netns string `json:"netns"`
	// Namespace and Name say who the pod is (for namespace views and
	// `ztdns pods`); Namespace defaults to "default", Name to the netns path.
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
}

// CNIAddRequest is what the CNI plugin knows about a pod on ADD (POST
// RouteCNIAdd). The plugin validates every field before it sends it, and the
// agent validates it again (Validate) and then checks it against the
// network namespace it opens itself: the cookie and the IPs are claims.
//
// The fields carry no JSON tags: pending records (pkg/cni) written by an
// older plugin must keep decoding.
type CNIAddRequest struct {
	// ContainerID is CNI_CONTAINERID, the pod sandbox's ID: the key the
	// registry files the pod under, so a later DEL finds it even after the
	// network namespace is gone.
	ContainerID string
	// Netns is CNI_NETNS, the path of the pod's network namespace (e.g.
	// /var/run/netns/cni-…), which exists for the pod's whole life.
	Netns string
	// IfName is CNI_IFNAME, the pod's interface the primary plugin set up.
	IfName string
	// PodNamespace, PodName and PodUID come from CNI_ARGS (K8S_POD_NAMESPACE,
	// K8S_POD_NAME, K8S_POD_UID). Namespace and name are always set; the UID
	// is empty when the runtime does not pass it.
	PodNamespace string
	PodName      string
	PodUID       string
	// IPs are the pod's addresses from the primary plugin's result (those on
	// interfaces inside the pod, or on no named interface), IPv4 first;
	// at most MaxPodIPs. Empty when the primary plugin assigned none.
	IPs []netip.Addr
	// NetnsCookie is the cookie of the network namespace at Netns, read
	// inside it (SO_NETNS_COOKIE): the key of the BPF `pods` map.
	NetnsCookie uint64
}

// CNIAddResponse is the agent's answer to a CNIAddRequest.
type CNIAddResponse struct {
	// Captured is true when the pod's DNS is now redirected.
	Captured bool
	// Reason is the decision's reason (pkg/ambient's Reason… strings), or
	// what went wrong when the agent chose not to capture.
	Reason string
}

// CNIDelRequest is what the plugin knows about a pod on DEL (POST
// RouteCNIDel).
type CNIDelRequest struct {
	// ContainerID is CNI_CONTAINERID, the key the pod was added under.
	ContainerID string
	// Netns is CNI_NETNS; empty when the runtime has already removed the
	// namespace (the spec allows it), and then the ContainerID alone
	// identifies the pod.
	Netns string
	// PodNamespace and PodName come from CNI_ARGS (K8S_POD_NAMESPACE,
	// K8S_POD_NAME); both empty when the runtime did not pass them (or an
	// older plugin recorded the DEL). They find a pod the agent adopted
	// (found running, announced by no ADD), whose container ID it never
	// heard.
	PodNamespace string
	PodName      string
}

// Bounds of the fields of a request. A field past its bound makes the
// request invalid: nothing a well-behaved runtime sends comes near them.
const (
	// MaxPodIPs bounds the addresses of one pod (a pod with several
	// interfaces has a few per family).
	MaxPodIPs = 16
	// maxContainerID bounds CNI_CONTAINERID (runtimes use 64 hex digits).
	maxContainerID = 256
	// maxPath bounds a network namespace's path (PATH_MAX).
	maxPath = 4096
	// maxUID bounds a pod UID (a UUID is 36 bytes).
	maxUID = 128
	// maxName bounds a pod name given by hand (it defaults to the netns
	// path).
	maxName = maxPath
)

// Validate reports the first field of r that no CNI runtime would send.
func (r *CNIAddRequest) Validate() error {
	if err := validContainerID(r.ContainerID); err != nil {
		return err
	}
	if err := validNetnsPath(r.Netns); err != nil {
		return err
	}
	if r.IfName != "" {
		if err := utils.ValidateInterfaceName(r.IfName); err != nil {
			return fmt.Errorf("interface name %q: %s", r.IfName, err.Msg)
		}
	}
	if err := validNamespace(r.PodNamespace); err != nil {
		return err
	}
	if msgs := validation.IsDNS1123Subdomain(r.PodName); len(msgs) > 0 {
		return fmt.Errorf("pod name %q: %s", clip(r.PodName), msgs[0])
	}
	if len(r.PodUID) > maxUID || !printable(r.PodUID) {
		return fmt.Errorf("pod UID %q is not a UID", clip(r.PodUID))
	}
	if err := validIPs(r.IPs); err != nil {
		return err
	}
	if r.NetnsCookie == 0 {
		return errors.New("no network namespace cookie")
	}
	return nil
}

// Validate reports the first field of r that no CNI runtime would send.
func (r *CNIDelRequest) Validate() error {
	if err := validContainerID(r.ContainerID); err != nil {
		return err
	}
	if r.Netns != "" {
		if err := validNetnsPath(r.Netns); err != nil {
			return err
		}
	}
	if r.PodNamespace == "" && r.PodName == "" {
		return nil
	}
	if err := validNamespace(r.PodNamespace); err != nil {
		return err
	}
	if msgs := validation.IsDNS1123Subdomain(r.PodName); len(msgs) > 0 {
		return fmt.Errorf("pod name %q: %s", clip(r.PodName), msgs[0])
	}
	return nil
}

// Validate checks a capture request; Namespace and Name may be empty (the
// agent fills in their defaults).
func (r *CaptureRequest) Validate() error {
	if err := validNetnsPath(r.Netns); err != nil {
		return err
	}
	if r.Namespace != "" {
		if err := validNamespace(r.Namespace); err != nil {
			return err
		}
	}
	if len(r.Name) > maxName || !printable(r.Name) {
		return fmt.Errorf("name %q: at most %d printable characters", clip(r.Name), maxName)
	}
	return nil
}

func validContainerID(id string) error {
	if len(id) > maxContainerID {
		return fmt.Errorf("container ID of %d bytes, more than %d", len(id), maxContainerID)
	}
	if err := utils.ValidateContainerID(id); err != nil {
		return fmt.Errorf("container ID %q: %s", clip(id), err.Msg)
	}
	return nil
}

func validNetnsPath(p string) error {
	switch {
	case p == "":
		return errors.New("netns is required")
	case len(p) > maxPath:
		return fmt.Errorf("netns path of %d bytes, more than %d", len(p), maxPath)
	case !filepath.IsAbs(p):
		return fmt.Errorf("netns %q is not an absolute path", clip(p))
	case !printable(p):
		return fmt.Errorf("netns %q: want printable UTF-8 characters", clip(p))
	}
	return nil
}

func validNamespace(ns string) error {
	if msgs := validation.IsDNS1123Label(ns); len(msgs) > 0 {
		return fmt.Errorf("namespace %q: %s", clip(ns), msgs[0])
	}
	return nil
}

// validIPs holds each address to model.PodAddr, the one rule of what
// a pod's own address is (KeepPodAddrs drops the others first).
func validIPs(ips []netip.Addr) error {
	if len(ips) > MaxPodIPs {
		return fmt.Errorf("%d IPs, more than %d", len(ips), MaxPodIPs)
	}
	for _, ip := range ips {
		if !model.PodAddr(ip) || ip.Is4In6() {
			return fmt.Errorf("IP %q is not a pod address", ip)
		}
	}
	return nil
}

// KeepPodAddrs drops from r.IPs what is no pod's own address
// (model.PodAddr: loopback, link-local, multicast, unspecified), which a
// plugin may list (an older one, or an ADD it recorded): any pod may have
// the same, and a namespace's addresses as the agent reads them leave them
// out. An IPv4-mapped address (::ffff:a.b.c.d) is kept as the IPv4 address
// it is, which marks and lookups are keyed by; each address once.
func (r *CNIAddRequest) KeepPodAddrs() {
	if len(r.IPs) > MaxPodIPs {
		return // Validate refuses it
	}
	var ips []netip.Addr
	for _, ip := range r.IPs {
		if ip = ip.Unmap(); model.PodAddr(ip) && !slices.Contains(ips, ip) {
			ips = append(ips, ip)
		}
	}
	r.IPs = ips
}

// printable reports whether s is UTF-8 of printable characters: what the
// agent shows (`ztdns pods`) as it is. An octet that is not UTF-8 would
// decode to U+FFFD, which is printable, yet reach a terminal raw, and
// become U+FFFD in JSON: on the way to the agent, a name or path other
// than the one given.
func printable(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) })
}

// clip shortens a value quoted in an error message.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
