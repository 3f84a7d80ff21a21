package configdir

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/model"
)

// examplesDir is the repository's examples/, which the demo serves.
const examplesDir = "../../../examples"

// wantExamples is what examples/ must serve: the demo and the conformance
// suite rely on every one of these.
func wantExamples(optOut bool) model.Snapshot {
	http80 := []model.Port{{Name: "http", Protocol: "HTTP", Port: 80}}
	entries := []model.ServiceEntry{
		{Namespace: "default", Name: "external-auto", Hosts: []string{"auto.internal"},
			Resolution: model.ResolutionDNS, AutoAllocate: !optOut, Ports: http80},
		{Namespace: "default", Name: "external-address", Hosts: []string{"address.internal"},
			Addresses: addrs("198.51.100.1"), HasSpecAddresses: true, Resolution: model.ResolutionNone, AutoAllocate: true, Ports: http80},
		{Namespace: "default", Name: "external-svc-1", Hosts: []string{"tcp-echo.external-1.svc.cluster.local"},
			Resolution: model.ResolutionDNS, AutoAllocate: true,
			Ports: []model.Port{{Name: "external-svc-1", Protocol: "TCP", Port: 9000}}},
		{Namespace: "default", Name: "external-svc-2", Hosts: []string{"tcp-echo.external-2.svc.cluster.local"},
			Resolution: model.ResolutionDNS, AutoAllocate: true,
			Ports: []model.Port{{Name: "external-svc-2", Protocol: "TCP", Port: 9000}}},
	}
	tcp9000 := []model.Port{{Name: "tcp", Protocol: "TCP", Port: 9000}}
	return model.Snapshot{
		Namespaces: []model.Namespace{
			{Name: "default", Labels: map[string]string{model.LabelDataplaneMode: "ambient"}},
			{Name: "external-1"},
			{Name: "external-2"},
		},
		Services: []model.Service{
			{Namespace: "external-1", Name: "tcp-echo", ClusterIPs: addrs("10.96.1.10"), Ports: tcp9000},
			{Namespace: "external-2", Name: "tcp-echo", ClusterIPs: addrs("10.96.2.10"), Ports: tcp9000},
			{Namespace: "default", Name: "web", ClusterIPs: addrs("10.96.0.20", "2001:db8:96::20"),
				Ports: []model.Port{{Name: "http", Protocol: "TCP", Port: 80}}},
			{Namespace: "default", Name: "db", Headless: true,
				Ports: []model.Port{{Name: "postgres", Protocol: "TCP", Port: 5432}}},
			{Namespace: "default", Name: "docs", ExternalName: "docs.example.com"},
		},
		EndpointSlices: []model.EndpointSlice{{
			Namespace: "default", Name: "db-7xk2p", ServiceName: "db",
			Endpoints: []model.Endpoint{
				{Addresses: addrs("10.244.1.5"), Hostname: "db-0", Ready: true},
				{Addresses: addrs("10.244.2.6"), Hostname: "db-1", Ready: false},
			},
			Ports: []model.Port{{Name: "postgres", Protocol: "TCP", Port: 5432}},
		}},
		ServiceEntries: entries,
		Pods: []model.Pod{
			{Namespace: "default", Name: "curl", IPs: addrs("127.0.0.2")},
			{Namespace: "external-1", Name: "tcp-echo", IPs: addrs("127.0.0.3")},
		},
	}
}

func TestExamples(t *testing.T) {
	log, _ := testLogger(t)
	start := time.Now()
	got, errs := load(t, examplesDir, WithLogger(log))
	if len(errs) > 0 {
		t.Fatalf("examples/ has errors: %v", errs)
	}
	firstSeen(t, got, start)
	if want := wantExamples(false); !reflect.DeepEqual(*got, want) {
		t.Errorf("examples/ serves\n%+v\nwant\n%+v", *got, want)
	}
	// The ClusterIPs come from the service range the README promises.
	serviceRange := netip.MustParsePrefix("10.96.0.0/16")
	for _, s := range got.Services {
		for _, ip := range s.ClusterIPs {
			if ip.Is4() && !serviceRange.Contains(ip) {
				t.Errorf("service %s: ClusterIP %v outside %v", s.Key(), ip, serviceRange)
			}
		}
	}
}

// TestExamplesOptOut swaps in the opt-out ServiceEntry the way the demo does:
// same file name, so the directory never defines external-auto twice.
func TestExamplesOptOut(t *testing.T) {
	dir := t.TempDir()
	entries, err := os.ReadDir(examplesDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Type().IsRegular() {
			copyFile(t, filepath.Join(examplesDir, e.Name()), filepath.Join(dir, e.Name()))
		}
	}
	copyFile(t, filepath.Join(examplesDir, "optout", "external-auto.yaml"), filepath.Join(dir, "external-auto.yaml"))
	log, _ := testLogger(t)
	start := time.Now()
	got, errs := load(t, dir, WithLogger(log))
	if len(errs) > 0 {
		t.Fatalf("errors: %v", errs)
	}
	firstSeen(t, got, start)
	if want := wantExamples(true); !reflect.DeepEqual(*got, want) {
		t.Errorf("with the opt-out, examples/ serves\n%+v\nwant\n%+v", *got, want)
	}
}

func copyFile(tb testing.TB, from, to string) {
	tb.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		tb.Fatal(err)
	}
	writeFile(tb, to, string(data))
}
