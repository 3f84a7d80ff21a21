package cni

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/pkg/version"
)

// FuzzPluginInput feeds the plugin what a runtime hands it, the network
// config on stdin and CNI_ARGS, and checks that parsing either fails with a
// CNI error or yields a usable config: absolute paths, a known policy, a
// bounded timeout, pod IPs that are valid, unique and sorted, and a
// prevResult that prints as a result of the config's version.
func FuzzPluginInput(f *testing.F) {
	for _, ver := range specVersions {
		f.Add(netConfJSON(f, ver, prevResultJSON(ver, "/var/run/netns/pod"), map[string]any{"timeout": "2s"}),
			"IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID=6f1c")
	}
	f.Add(netConfJSON(f, "1.0.0", nil, map[string]any{"onAgentUnreachable": "fail", "logLevel": "debug"}), "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b")
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","type":"ztdns","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.1/8","interface":-1}]}}`), "IgnoreUnknown=0;X=1")
	f.Fuzz(func(t *testing.T, stdin []byte, cniArgs string) {
		if pod, err := parsePodArgs(cniArgs); err == nil && (pod.namespace == "" || pod.name == "") {
			t.Fatalf("CNI_ARGS %q parsed without namespace or name: %+v", cniArgs, pod)
		}
		conf, prev, err := parseConfig(stdin)
		if err != nil {
			return
		}
		if !filepath.IsAbs(conf.SocketPath) || !filepath.IsAbs(conf.PendingDir) || (conf.LogFile != "" && !filepath.IsAbs(conf.LogFile)) {
			t.Fatalf("relative path in %+v", conf.Config)
		}
		if conf.OnAgentUnreachable != PolicyAllow && conf.OnAgentUnreachable != PolicyFail {
			t.Fatalf("policy %q", conf.OnAgentUnreachable)
		}
		if conf.timeout <= 0 || conf.timeout > maxTimeout {
			t.Fatalf("timeout %v", conf.timeout)
		}
		if prev == nil {
			return
		}
		ips := podIPs(prev)
		for i, ip := range ips {
			if !ip.IsValid() || ip.Is4In6() || ip.IsLinkLocalUnicast() || ip.IsLoopback() || ip.IsMulticast() || ip.IsUnspecified() ||
				(i > 0 && ips[i-1].Compare(ip) >= 0) {
				t.Fatalf("pod IPs %v are not valid, unmapped, pod addresses, unique and sorted", ips)
			}
		}
		var out bytes.Buffer
		if err := printResult(&out, conf); err != nil {
			return
		}
		if _, err := version.NewResult(conf.CNIVersion, out.Bytes()); err != nil {
			t.Fatalf("printed prevResult does not parse as a %s result: %v\n%s", conf.CNIVersion, err, out.Bytes())
		}
	})
}
