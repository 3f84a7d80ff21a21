package kubetest

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	istionetworkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// testNamespace is where the objects of these tests live.
const testNamespace = "kubetest"

// TestEnv writes the objects ztdns reads through a real API server, changes
// a ServiceEntry's status as istiod would, restarts the API server, and finds
// everything still there.
func TestEnv(t *testing.T) {
	env := Start(t)
	ctx := t.Context()
	kube := env.Client()
	istio := env.IstioClient()

	_, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: testNamespace, Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create Namespace: %v", err)
	}

	svc, err := kube.CoreV1().Services(testNamespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create Service: %v", err)
	}
	clusterIP, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil || !netip.MustParsePrefix(ServiceCIDRv4).Contains(clusterIP) {
		t.Fatalf("Service got ClusterIP %q, want an address in %s", svc.Spec.ClusterIP, ServiceCIDRv4)
	}

	ready := true
	_, err = kube.DiscoveryV1().EndpointSlices(testNamespace).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:   "web-abcde",
			Labels: map[string]string{discoveryv1.LabelServiceName: "web"},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{"203.0.113.10"},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create EndpointSlice: %v", err)
	}

	se := &istionetworkingv1.ServiceEntry{ObjectMeta: metav1.ObjectMeta{Name: "external"}}
	se.Spec.Hosts = []string{"api.example.com"}
	se.Spec.Resolution = networkingv1alpha3.ServiceEntry_DNS
	se.Spec.Ports = []*networkingv1alpha3.ServicePort{{Number: 443, Name: "https", Protocol: "TLS"}}
	se, err = istio.NetworkingV1().ServiceEntries(testNamespace).Create(ctx, se, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create ServiceEntry: %v", err)
	}

	// istiod writes the auto-allocated address through the status subresource.
	se.Status.Addresses = []*networkingv1alpha3.ServiceEntryAddress{{Value: "240.240.0.1", Host: "api.example.com"}}
	if _, err := istio.NetworkingV1().ServiceEntries(testNamespace).UpdateStatus(ctx, se, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update ServiceEntry status: %v", err)
	}

	check := func(t *testing.T) {
		t.Helper()
		gotSvc, err := kube.CoreV1().Services(testNamespace).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get Service: %v", err)
		}
		if gotSvc.Spec.ClusterIP != svc.Spec.ClusterIP {
			t.Errorf("Service ClusterIP = %s, want %s", gotSvc.Spec.ClusterIP, svc.Spec.ClusterIP)
		}
		endpointSlices, err := kube.DiscoveryV1().EndpointSlices(testNamespace).List(ctx, metav1.ListOptions{
			LabelSelector: discoveryv1.LabelServiceName + "=web",
		})
		if err != nil {
			t.Fatalf("list EndpointSlices: %v", err)
		}
		if len(endpointSlices.Items) != 1 || len(endpointSlices.Items[0].Endpoints) != 1 || endpointSlices.Items[0].Endpoints[0].Addresses[0] != "203.0.113.10" {
			t.Errorf("EndpointSlices for web = %+v, want one with endpoint 203.0.113.10", endpointSlices.Items)
		}
		gotSE, err := istio.NetworkingV1().ServiceEntries(testNamespace).Get(ctx, "external", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get ServiceEntry: %v", err)
		}
		if hosts := gotSE.Spec.GetHosts(); len(hosts) != 1 || hosts[0] != "api.example.com" {
			t.Errorf("ServiceEntry hosts = %v, want [api.example.com]", hosts)
		}
		if gotSE.Spec.GetResolution() != networkingv1alpha3.ServiceEntry_DNS {
			t.Errorf("ServiceEntry resolution = %v, want DNS", gotSE.Spec.GetResolution())
		}
		addrs := gotSE.Status.GetAddresses()
		if len(addrs) != 1 || addrs[0].GetValue() != "240.240.0.1" || addrs[0].GetHost() != "api.example.com" {
			t.Errorf("ServiceEntry status.addresses = %v, want [240.240.0.1 for api.example.com]", addrs)
		}
	}
	t.Run("before restart", check)

	env.Stop()
	if _, err := kube.CoreV1().Namespaces().Get(ctx, testNamespace, metav1.GetOptions{}); err == nil {
		t.Fatal("API server still answers after Stop")
	}
	env.Restart()
	t.Run("after restart", check)

	// The server takes writes again after the restart.
	if _, err := kube.CoreV1().Services(testNamespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "after-restart"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create Service after restart: %v", err)
	}
}

// TestCRDAppearsLater starts without the ServiceEntry CRD, sees
// ServiceEntries unknown to the server, installs the CRD and uses it.
func TestCRDAppearsLater(t *testing.T) {
	env := Start(t, WithoutCRDs())
	ctx := t.Context()
	istio := env.IstioClient()

	_, err := istio.NetworkingV1().ServiceEntries(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{})
	if !apierrors.IsNotFound(err) {
		t.Fatalf("list ServiceEntries without the CRD: err = %v, want NotFound", err)
	}

	env.InstallCRDs()
	se := &istionetworkingv1.ServiceEntry{ObjectMeta: metav1.ObjectMeta{Name: "late"}}
	se.Spec.Hosts = []string{"late.example.com"}
	se.Spec.Ports = []*networkingv1alpha3.ServicePort{{Number: 80, Name: "http", Protocol: "HTTP"}}
	if _, err := istio.NetworkingV1().ServiceEntries(metav1.NamespaceDefault).Create(ctx, se, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create ServiceEntry after installing the CRD: %v", err)
	}
}

// TestCRDValidation shows the installed CRD is Istio's real one: its schema
// rejects a ServiceEntry that istiod's own validation would reject.
func TestCRDValidation(t *testing.T) {
	env := Start(t)
	ctx := t.Context()

	se := &istionetworkingv1.ServiceEntry{ObjectMeta: metav1.ObjectMeta{Name: "no-hosts"}}
	se.Spec.Ports = []*networkingv1alpha3.ServicePort{{Number: 80, Name: "http", Protocol: "HTTP"}}
	_, err := env.IstioClient().NetworkingV1().ServiceEntries(metav1.NamespaceDefault).Create(ctx, se, metav1.CreateOptions{})
	if !apierrors.IsInvalid(err) {
		t.Fatalf("create ServiceEntry without hosts: err = %v, want Invalid", err)
	}
}

// TestKubeconfig checks the kubeconfig file reaches the server as the admin.
func TestKubeconfig(t *testing.T) {
	env := Start(t, WithoutCRDs())

	cfg, err := clientcmd.BuildConfigFromFlags("", env.Kubeconfig)
	if err != nil {
		t.Fatalf("load kubeconfig %s: %v", env.Kubeconfig, err)
	}
	if cfg.Host != env.Config.Host {
		t.Errorf("kubeconfig server = %s, want %s", cfg.Host, env.Config.Host)
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("client from kubeconfig: %v", err)
	}
	review, err := kube.AuthenticationV1().SelfSubjectReviews().Create(t.Context(), &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SelfSubjectReview through the kubeconfig: %v", err)
	}
	user := review.Status.UserInfo
	if user.Username != "ztdns-kubetest-admin" || !slices.Contains(user.Groups, "system:masters") {
		t.Errorf("kubeconfig user = %s in %v, want ztdns-kubetest-admin in system:masters", user.Username, user.Groups)
	}
}

// TestCleanupStopsServers checks that nothing is left running or on disk
// once a test that used an Env has finished.
func TestCleanupStopsServers(t *testing.T) {
	var pids []int
	var dir string
	t.Run("env", func(t *testing.T) {
		env := Start(t, WithoutCRDs())
		pids = []int{env.apiserver.cmd.Process.Pid, env.etcd.cmd.Process.Pid}
		dir = env.dir
	})
	for _, pid := range pids {
		if processAlive(pid) {
			t.Errorf("process %d still running after the test's cleanup", pid)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("data directory %s still there after cleanup (stat: %v)", dir, err)
	}
}

// helperEnvVar makes the test binary, run again by TestKilledTestLeavesNothing,
// start an Env, print the servers' pids and kill itself.
const helperEnvVar = "ZTDNS_KUBETEST_DIE_HELPER"

// TestKilledTestLeavesNothing kills a test binary that is running an Env with
// SIGKILL, so that no cleanup runs (as when go test's -timeout fires), and
// checks that etcd and kube-apiserver die with it.
func TestKilledTestLeavesNothing(t *testing.T) {
	if os.Getenv(helperEnvVar) == "1" {
		env := Start(t, WithoutCRDs())
		fmt.Println(env.apiserver.cmd.Process.Pid, env.etcd.cmd.Process.Pid)
		_ = os.Stdout.Sync()
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // not reached
	}

	helper := exec.Command(os.Args[0], "-test.run=^TestKilledTestLeavesNothing$", "-test.v")
	// The helper's TempDir is left behind by its death; put it in ours.
	helper.Env = append(os.Environ(), helperEnvVar+"=1", "TMPDIR="+t.TempDir())
	out, err := helper.Output()
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("helper test binary: err = %v, want death by SIGKILL; output:\n%s", err, out)
	}
	var apiserverPid, etcdPid int
	if _, err := fmt.Sscan(lastLine(out), &apiserverPid, &etcdPid); err != nil {
		t.Fatalf("helper test binary printed no pids (%v); output:\n%s", err, out)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range []int{apiserverPid, etcdPid} {
		for processAlive(pid) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if processAlive(pid) {
			t.Errorf("process %d outlived the killed test binary", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// processAlive reports whether pid is a running (not zombie) process.
func processAlive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name: "pid (comm) S ...".
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	return len(fields) > 0 && fields[0] != "Z" && fields[0] != "X"
}

// lastLine returns the last line of out that is not a test framework line.
func lastLine(out []byte) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		line := strings.TrimSpace(lines[i])
		if line != "" && !strings.HasPrefix(line, "=== ") && !strings.Contains(line, ".go:") {
			return line
		}
	}
	return ""
}

// TestBuildScriptCached checks that once the binaries are built, the build
// script is a no-op, so CI and every test can call it freely: it does not
// start the go command (a stand-in first on PATH records any call), logs
// nothing, and leaves the binaries and their stamps as they were.
func TestBuildScriptCached(t *testing.T) {
	dir := filepath.Dir(requireBinaries(t).apiserver)
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	fakeBin := t.TempDir()
	called := filepath.Join(t.TempDir(), "go-called")
	fakeGo := "#!/bin/sh\necho \"$@\" >>" + called + "\nexit 1\n"
	if err := os.WriteFile(filepath.Join(fakeBin, "go"), []byte(fakeGo), 0o755); err != nil {
		t.Fatal(err)
	}
	files := []string{"kube-apiserver", "etcd", ".kube-apiserver.inputs", ".etcd.inputs"}
	before := statAll(t, dir, files)

	cmd := exec.Command("bash", filepath.Join(root, buildScript))
	cmd.Env = append(os.Environ(), "PATH="+fakeBin+string(filepath.ListSeparator)+os.Getenv("PATH"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	began := time.Now()
	out, err := cmd.Output()
	t.Logf("%s took %v with the binaries cached", buildScript, time.Since(began))
	if err != nil {
		t.Fatalf("%s: %v\n%s", buildScript, err, stderr.String())
	}
	if got := strings.TrimSpace(string(out)); got != dir {
		t.Errorf("%s printed %q, want the binary directory %s", buildScript, got, dir)
	}
	if b, err := os.ReadFile(called); err == nil {
		t.Errorf("%s ran the go command with the binaries cached: go %s", buildScript, b)
	}
	if stderr.Len() > 0 {
		t.Errorf("%s logged with the binaries cached, want nothing:\n%s", buildScript, stderr.String())
	}
	after := statAll(t, dir, files)
	for _, f := range files {
		if b, a := before[f], after[f]; !os.SameFile(b, a) || !b.ModTime().Equal(a.ModTime()) || b.Size() != a.Size() {
			t.Errorf("%s/%s changed: %v %d bytes, was %v %d bytes", dir, f, a.ModTime(), a.Size(), b.ModTime(), b.Size())
		}
	}
	for _, bin := range []string{"kube-apiserver", "etcd"} {
		if after[bin].Mode()&0o111 == 0 {
			t.Errorf("%s/%s is not an executable", dir, bin)
		}
	}
}

// statAll stats each of names in dir.
func statAll(t *testing.T, dir string, names []string) map[string]os.FileInfo {
	t.Helper()
	infos := map[string]os.FileInfo{}
	for _, n := range names {
		fi, err := os.Stat(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		infos[n] = fi
	}
	return infos
}
