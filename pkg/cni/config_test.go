package cni

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/ztdns/ztdns/pkg/control"
)

// specVersions are the CNI versions whose results the plugin must pass
// through; 0.3.1 and 0.4.0 results spell IP versions out, 1.x ones do not.
var specVersions = []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// prevResultJSON is what a bridge plugin returns for a dual-stack pod, in
// the given CNI version: the bridge and the host-side veth, then the pod's
// eth0 in its sandbox, which holds the pod's addresses.
func prevResultJSON(ver, sandbox string) map[string]any {
	ip := func(family, addr, gw string) map[string]any {
		m := map[string]any{"interface": 2, "address": addr, "gateway": gw}
		if strings.HasPrefix(ver, "0.") {
			m["version"] = family
		}
		return m
	}
	return map[string]any{
		"cniVersion": ver,
		"interfaces": []any{
			map[string]any{"name": "cni0", "mac": "0a:58:0a:58:00:01"},
			map[string]any{"name": "veth1234", "mac": "0a:58:0a:58:00:02"},
			map[string]any{"name": "eth0", "mac": "0a:58:0a:58:00:05", "sandbox": sandbox},
		},
		"ips": []any{
			ip("6", "2001:db8:88::5/64", "2001:db8:88::1"),
			ip("4", "10.88.0.5/16", "10.88.0.1"),
		},
		"routes": []any{map[string]any{"dst": "0.0.0.0/0"}},
		"dns":    map[string]any{},
	}
}

// netConfJSON is a network config for the ztdns entry of a conflist, as a
// runtime hands it to the plugin: name and cniVersion injected, prevResult
// from the plugin before, and fields overriding the ztdns ones.
func netConfJSON(tb testing.TB, ver string, prev map[string]any, fields map[string]any) []byte {
	tb.Helper()
	m := map[string]any{"cniVersion": ver, "name": "k8s-pod-network", "type": "ztdns"}
	if prev != nil {
		m["prevResult"] = prev
	}
	for k, v := range fields {
		m[k] = v
	}
	data, err := json.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

func TestParseConfigDefaults(t *testing.T) {
	t.Parallel()
	conf, prev, err := parseConfig(netConfJSON(t, "1.0.0", nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	if prev != nil {
		t.Errorf("prevResult = %v, want none", prev)
	}
	want := Config{
		SocketPath:         control.DefaultSocket,
		OnAgentUnreachable: DefaultOnAgentUnreachable,
		PendingDir:         "/var/run/ztdns/pending",
	}
	if conf.Config != want || conf.timeout != DefaultTimeout || conf.logLevel != slog.LevelInfo {
		t.Errorf("conf = %+v timeout %s level %s, want %+v %s INFO", conf.Config, conf.timeout, conf.logLevel, want, DefaultTimeout)
	}
	if DefaultOnAgentUnreachable != PolicyAllow {
		t.Errorf("the default policy is %q; the README and the doc comment say %q", DefaultOnAgentUnreachable, PolicyAllow)
	}
}

func TestParseConfigFields(t *testing.T) {
	t.Parallel()
	conf, _, err := parseConfig(netConfJSON(t, "1.0.0", nil, map[string]any{
		"socketPath":         "/run/z/agent.sock",
		"onAgentUnreachable": "fail",
		"timeout":            "750ms",
		"pendingDir":         "/var/lib/ztdns/pending",
		"logFile":            "/var/log/ztdns-cni.log",
		"logLevel":           "DEBUG",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if conf.SocketPath != "/run/z/agent.sock" || conf.OnAgentUnreachable != PolicyFail || conf.timeout != 750*time.Millisecond ||
		conf.PendingDir != "/var/lib/ztdns/pending" || conf.LogFile != "/var/log/ztdns-cni.log" || conf.logLevel != slog.LevelDebug {
		t.Errorf("conf = %+v timeout %s level %s", conf.Config, conf.timeout, conf.logLevel)
	}

	// The pending directory follows a moved socket.
	conf, _, err = parseConfig(netConfJSON(t, "1.0.0", nil, map[string]any{"socketPath": "/run/z/agent.sock"}))
	if err != nil || conf.PendingDir != "/run/z/pending" {
		t.Errorf("pendingDir = %q, %v; want /run/z/pending", conf.PendingDir, err)
	}
}

func TestParseConfigPrevResult(t *testing.T) {
	t.Parallel()
	for _, ver := range specVersions {
		t.Run(ver, func(t *testing.T) {
			t.Parallel()
			_, prev, err := parseConfig(netConfJSON(t, ver, prevResultJSON(ver, "/var/run/netns/pod"), nil))
			if err != nil {
				t.Fatal(err)
			}
			want := []netip.Addr{netip.MustParseAddr("10.88.0.5"), netip.MustParseAddr("2001:db8:88::5")}
			if got := podIPs(prev); !slices.Equal(got, want) {
				t.Errorf("pod IPs = %v, want %v", got, want)
			}
		})
	}
}

func TestParseConfigErrors(t *testing.T) {
	t.Parallel()
	valid := func(fields map[string]any) []byte { return netConfJSON(t, "1.0.0", nil, fields) }
	tests := []struct {
		name  string
		stdin []byte
		code  uint
		want  string
	}{
		{"not JSON", []byte(`{"cniVersion": "1.0.0", "name": `), types.ErrDecodingFailure, "parse network config"},
		{"field of the wrong type", valid(map[string]any{"socketPath": 5}), types.ErrDecodingFailure, "parse network config"},
		{"prevResult not an object", valid(map[string]any{"prevResult": "x"}), types.ErrDecodingFailure, "parse network config"},
		{"prevResult of an unknown version", valid(map[string]any{"prevResult": map[string]any{"cniVersion": "9.9.9"}}), types.ErrDecodingFailure, "parse prevResult"},
		{"prevResult with a bad address", valid(map[string]any{"prevResult": map[string]any{"cniVersion": "1.0.0", "ips": []any{map[string]any{"address": "nope"}}}}), types.ErrDecodingFailure, "parse prevResult"},
		{"unknown policy", valid(map[string]any{"onAgentUnreachable": "retry"}), types.ErrInvalidNetworkConfig, `onAgentUnreachable "retry": want "allow" or "fail"`},
		{"policy in capitals", valid(map[string]any{"onAgentUnreachable": "FAIL"}), types.ErrInvalidNetworkConfig, `onAgentUnreachable "FAIL"`},
		{"timeout without unit", valid(map[string]any{"timeout": "5"}), types.ErrInvalidNetworkConfig, `timeout "5": want a duration`},
		{"timeout zero", valid(map[string]any{"timeout": "0s"}), types.ErrInvalidNetworkConfig, `timeout "0s": want more than 0`},
		{"timeout negative", valid(map[string]any{"timeout": "-1s"}), types.ErrInvalidNetworkConfig, `timeout "-1s"`},
		{"timeout too long", valid(map[string]any{"timeout": "2m"}), types.ErrInvalidNetworkConfig, "at most 1m0s"},
		{"relative socket", valid(map[string]any{"socketPath": "ztdns.sock"}), types.ErrInvalidNetworkConfig, `socketPath "ztdns.sock" is not an absolute path`},
		{"relative pending dir", valid(map[string]any{"pendingDir": "pending"}), types.ErrInvalidNetworkConfig, `pendingDir "pending" is not an absolute path`},
		{"relative log file", valid(map[string]any{"logFile": "cni.log"}), types.ErrInvalidNetworkConfig, `logFile "cni.log" is not an absolute path`},
		{"unknown log level", valid(map[string]any{"logLevel": "verbose"}), types.ErrInvalidNetworkConfig, `logLevel "verbose"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, _, err := parseConfig(tt.stdin)
			var cniErr *types.Error
			if !errors.As(err, &cniErr) {
				t.Fatalf("parseConfig = %v, want a CNI error", err)
			}
			if cniErr.Code != tt.code || !strings.Contains(cniErr.Error(), tt.want) {
				t.Errorf("parseConfig = code %d %q, want code %d containing %q", cniErr.Code, cniErr.Error(), tt.code, tt.want)
			}
		})
	}
}

func TestConfigEntry(t *testing.T) {
	t.Parallel()
	entry, err := Config{SocketPath: "/run/z.sock", Timeout: "2s"}.Entry()
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"type":"ztdns","socketPath":"/run/z.sock","timeout":"2s"}`; string(entry) != want {
		t.Errorf("Entry = %s, want %s", entry, want)
	}
	// The entry, once a runtime adds name, version and prevResult, is a
	// config the plugin accepts.
	var m map[string]any
	if err := json.Unmarshal(entry, &m); err != nil {
		t.Fatal(err)
	}
	if _, _, err := parseConfig(netConfJSON(t, "1.0.0", nil, m)); err != nil {
		t.Errorf("parseConfig(Entry) = %v", err)
	}
}

// TestConfigValidate: Validate refuses what the plugin refuses in its
// entry, and accepts what it accepts.
func TestConfigValidate(t *testing.T) {
	t.Parallel()
	for _, c := range []Config{{}, {SocketPath: "/run/z.sock", OnAgentUnreachable: PolicyFail}} {
		if err := c.Validate(); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
	for _, c := range []Config{{OnAgentUnreachable: "Fail"}, {SocketPath: "run/z.sock"}, {Timeout: "2m"}} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v: accepted", c)
		}
	}
}

func TestPodIPs(t *testing.T) {
	t.Parallel()
	idx := func(i int) *int { return &i }
	ipc := func(iface *int, cidr string) *current.IPConfig {
		ip, n, err := net.ParseCIDR(cidr)
		if err != nil {
			t.Fatal(err)
		}
		n.IP = ip
		return &current.IPConfig{Interface: iface, Address: *n}
	}
	res := &current.Result{
		Interfaces: []*current.Interface{{Name: "cni0"}, {Name: "veth"}, {Name: "eth0", Sandbox: "/var/run/netns/p"}},
		IPs: []*current.IPConfig{
			ipc(idx(2), "2001:db8::5/64"),
			ipc(idx(0), "10.88.0.1/16"), // the bridge's gateway address, on the host
			ipc(idx(2), "10.88.0.5/16"),
			ipc(nil, "10.99.0.7/32"),      // on no named interface: the pod's
			ipc(idx(7), "10.77.0.7/32"),   // an index out of range: kept, it may be the pod's
			ipc(idx(2), "10.88.0.5/16"),   // reported twice
			ipc(idx(2), "169.254.1.5/16"), // link-local: not the pod's own
			ipc(idx(2), "fe80::5/64"),
			ipc(nil, "::ffff:169.254.1.6/128"),
			// The loopback plugin's, earlier in the chain, and what no pod
			// owns either.
			ipc(idx(2), "127.0.0.1/8"),
			ipc(idx(2), "::1/128"),
			ipc(nil, "::ffff:127.0.0.1/104"),
			ipc(nil, "0.0.0.0/0"),
			ipc(nil, "::/0"),
			ipc(nil, "224.0.0.251/32"),
			ipc(nil, "ff02::fb/128"),
		},
	}
	want := []netip.Addr{
		netip.MustParseAddr("10.77.0.7"), netip.MustParseAddr("10.88.0.5"),
		netip.MustParseAddr("10.99.0.7"), netip.MustParseAddr("2001:db8::5"),
	}
	if got := podIPs(res); !slices.Equal(got, want) {
		t.Errorf("podIPs = %v, want %v", got, want)
	}
	if got := podIPs(&current.Result{}); len(got) != 0 {
		t.Errorf("podIPs(no IPs) = %v", got)
	}
}
