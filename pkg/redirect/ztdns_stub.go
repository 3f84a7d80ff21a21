// Code generated from ztdns_bpfel.go by bigEndianStub (bigendian_test.go); DO NOT EDIT.
//go:build !(386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64 || wasm) && linux

package redirect

import (
	"io"
	"structs"

	"github.com/cilium/ebpf"
)

type ztdnsActiveConfig struct {
	_     structs.HostLayout
	Index uint32
}

type ztdnsAgentHeartbeat struct {
	_      structs.HostLayout
	MonoNs uint64
}

type ztdnsCapturePrefix struct {
	_      structs.HostLayout
	Addr   [16]uint8
	Family uint8
	Len    uint8
	Pad    [2]uint8
}

type ztdnsEndpoint struct {
	_      structs.HostLayout
	Addr   [16]uint8
	Port   uint16
	Family uint8
	Flags  uint8
}

type ztdnsNameserver struct {
	_          structs.HostLayout
	Server     ztdnsEndpoint
	Flags      uint32
	LastUsedNs uint64
}

type ztdnsNameserverKey struct {
	_           structs.HostLayout
	NetnsCookie uint64
	Slot        uint32
	Pad         uint32
}

type ztdnsNodeCounters struct {
	_                   structs.HostLayout
	Redirected          uint64
	Restored            uint64
	SkippedStale        uint64
	SkippedPaused       uint64
	SkippedNoResolver   uint64
	SkippedSlotsFull    uint64
	SkippedLocal        uint64
	NameserverLearned   uint64
	NameserverReplaced  uint64
	NameserverFailed    uint64
	SocketStorageFailed uint64
	SkippedNotListed    uint64
	SkippedSocketsFull  uint64
}

type ztdnsPodInfo struct {
	_            structs.HostLayout
	Flags        uint32
	Ipv4         [4]uint8
	Ipv6         [16]uint8
	Redirected   uint64
	Restored     uint64
	SkippedStale uint64
}

type ztdnsPodKey struct {
	_           structs.HostLayout
	NetnsCookie uint64
}

type ztdnsPodSocketCount struct {
	_    structs.HostLayout
	Held int64
}

type ztdnsRedirectConfig struct {
	_             structs.HostLayout
	Resolver4     [3]ztdnsEndpoint
	Resolver6     [3]ztdnsEndpoint
	StaleAfterNs  uint64
	CaptureOnly   [8]ztdnsCapturePrefix
	SocketsPerPod uint32
	Pad           uint32
}

type ztdnsSocketDestinations struct {
	_      structs.HostLayout
	SentTo [3]ztdnsEndpoint
}

// Names of all BPF objects in the ELF.
//
// Used for safe lookups in a Collection or CollectionSpec.
const (
	ztdnsMapConfig             = "config"
	ztdnsMapConfigIndex        = "config_index"
	ztdnsMapCounters           = "counters"
	ztdnsMapHeartbeat          = "heartbeat"
	ztdnsMapNameservers        = "nameservers"
	ztdnsMapPodSockets         = "pod_sockets"
	ztdnsMapPods               = "pods"
	ztdnsMapSockets            = "sockets"
	ztdnsProgZtdnsConnect4     = "ztdns_connect4"
	ztdnsProgZtdnsConnect6     = "ztdns_connect6"
	ztdnsProgZtdnsGetpeername4 = "ztdns_getpeername4"
	ztdnsProgZtdnsGetpeername6 = "ztdns_getpeername6"
	ztdnsProgZtdnsRecvmsg4     = "ztdns_recvmsg4"
	ztdnsProgZtdnsRecvmsg6     = "ztdns_recvmsg6"
	ztdnsProgZtdnsSendmsg4     = "ztdns_sendmsg4"
	ztdnsProgZtdnsSendmsg6     = "ztdns_sendmsg6"
	ztdnsProgZtdnsSockRelease  = "ztdns_sock_release"
)

// loadZtdns returns the embedded CollectionSpec for ztdns.
func loadZtdns() (*ebpf.CollectionSpec, error) {
	return nil, errBigEndian
}

// loadZtdnsObjects loads ztdns and converts it into a struct.
//
// The following types are suitable as obj argument:
//
//	*ztdnsObjects
//	*ztdnsPrograms
//	*ztdnsMaps
//
// See ebpf.CollectionSpec.LoadAndAssign documentation for details.
func loadZtdnsObjects(obj any, opts *ebpf.CollectionOptions) error {
	spec, err := loadZtdns()
	if err != nil {
		return err
	}

	return spec.LoadAndAssign(obj, opts)
}

// ztdnsSpecs contains maps and programs before they are loaded into the kernel.
//
// It can be passed ebpf.CollectionSpec.Assign.
type ztdnsSpecs struct {
	ztdnsProgramSpecs
	ztdnsMapSpecs
	ztdnsVariableSpecs
}

// ztdnsProgramSpecs contains programs before they are loaded into the kernel.
//
// It can be passed ebpf.CollectionSpec.Assign.
type ztdnsProgramSpecs struct {
	ZtdnsConnect4     *ebpf.ProgramSpec `ebpf:"ztdns_connect4"`
	ZtdnsConnect6     *ebpf.ProgramSpec `ebpf:"ztdns_connect6"`
	ZtdnsGetpeername4 *ebpf.ProgramSpec `ebpf:"ztdns_getpeername4"`
	ZtdnsGetpeername6 *ebpf.ProgramSpec `ebpf:"ztdns_getpeername6"`
	ZtdnsRecvmsg4     *ebpf.ProgramSpec `ebpf:"ztdns_recvmsg4"`
	ZtdnsRecvmsg6     *ebpf.ProgramSpec `ebpf:"ztdns_recvmsg6"`
	ZtdnsSendmsg4     *ebpf.ProgramSpec `ebpf:"ztdns_sendmsg4"`
	ZtdnsSendmsg6     *ebpf.ProgramSpec `ebpf:"ztdns_sendmsg6"`
	ZtdnsSockRelease  *ebpf.ProgramSpec `ebpf:"ztdns_sock_release"`
}

// ztdnsMapSpecs contains maps before they are loaded into the kernel.
//
// It can be passed ebpf.CollectionSpec.Assign.
type ztdnsMapSpecs struct {
	Config      *ebpf.MapSpec `ebpf:"config"`
	ConfigIndex *ebpf.MapSpec `ebpf:"config_index"`
	Counters    *ebpf.MapSpec `ebpf:"counters"`
	Heartbeat   *ebpf.MapSpec `ebpf:"heartbeat"`
	Nameservers *ebpf.MapSpec `ebpf:"nameservers"`
	PodSockets  *ebpf.MapSpec `ebpf:"pod_sockets"`
	Pods        *ebpf.MapSpec `ebpf:"pods"`
	Sockets     *ebpf.MapSpec `ebpf:"sockets"`
}

// ztdnsVariableSpecs contains global variables before they are loaded into the kernel.
//
// It can be passed ebpf.CollectionSpec.Assign.
type ztdnsVariableSpecs struct {
}

// ztdnsObjects contains all objects after they have been loaded into the kernel.
//
// It can be passed to loadZtdnsObjects or ebpf.CollectionSpec.LoadAndAssign.
type ztdnsObjects struct {
	ztdnsPrograms
	ztdnsMaps
	ztdnsVariables
}

func (o *ztdnsObjects) Close() error {
	return _ZtdnsClose(
		&o.ztdnsPrograms,
		&o.ztdnsMaps,
	)
}

// ztdnsMaps contains all maps after they have been loaded into the kernel.
//
// It can be passed to loadZtdnsObjects or ebpf.CollectionSpec.LoadAndAssign.
type ztdnsMaps struct {
	Config      *ebpf.Map `ebpf:"config"`
	ConfigIndex *ebpf.Map `ebpf:"config_index"`
	Counters    *ebpf.Map `ebpf:"counters"`
	Heartbeat   *ebpf.Map `ebpf:"heartbeat"`
	Nameservers *ebpf.Map `ebpf:"nameservers"`
	PodSockets  *ebpf.Map `ebpf:"pod_sockets"`
	Pods        *ebpf.Map `ebpf:"pods"`
	Sockets     *ebpf.Map `ebpf:"sockets"`
}

func (m *ztdnsMaps) Close() error {
	return _ZtdnsClose(
		m.Config,
		m.ConfigIndex,
		m.Counters,
		m.Heartbeat,
		m.Nameservers,
		m.PodSockets,
		m.Pods,
		m.Sockets,
	)
}

// ztdnsVariables contains all global variables after they have been loaded into the kernel.
//
// It can be passed to loadZtdnsObjects or ebpf.CollectionSpec.LoadAndAssign.
type ztdnsVariables struct {
}

// ztdnsPrograms contains all programs after they have been loaded into the kernel.
//
// It can be passed to loadZtdnsObjects or ebpf.CollectionSpec.LoadAndAssign.
type ztdnsPrograms struct {
	ZtdnsConnect4     *ebpf.Program `ebpf:"ztdns_connect4"`
	ZtdnsConnect6     *ebpf.Program `ebpf:"ztdns_connect6"`
	ZtdnsGetpeername4 *ebpf.Program `ebpf:"ztdns_getpeername4"`
	ZtdnsGetpeername6 *ebpf.Program `ebpf:"ztdns_getpeername6"`
	ZtdnsRecvmsg4     *ebpf.Program `ebpf:"ztdns_recvmsg4"`
	ZtdnsRecvmsg6     *ebpf.Program `ebpf:"ztdns_recvmsg6"`
	ZtdnsSendmsg4     *ebpf.Program `ebpf:"ztdns_sendmsg4"`
	ZtdnsSendmsg6     *ebpf.Program `ebpf:"ztdns_sendmsg6"`
	ZtdnsSockRelease  *ebpf.Program `ebpf:"ztdns_sock_release"`
}

func (p *ztdnsPrograms) Close() error {
	return _ZtdnsClose(
		p.ZtdnsConnect4,
		p.ZtdnsConnect6,
		p.ZtdnsGetpeername4,
		p.ZtdnsGetpeername6,
		p.ZtdnsRecvmsg4,
		p.ZtdnsRecvmsg6,
		p.ZtdnsSendmsg4,
		p.ZtdnsSendmsg6,
		p.ZtdnsSockRelease,
	)
}

func _ZtdnsClose(closers ...io.Closer) error {
	for _, closer := range closers {
		if err := closer.Close(); err != nil {
			return err
		}
	}
	return nil
}
