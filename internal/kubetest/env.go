// Package kubetest runs a real Kubernetes API server (kube-apiserver on etcd)
// on loopback for integration tests, with Istio's ServiceEntry CRD installed.
//
// The binaries come from scripts/build-kube.sh, which builds them once from
// the Go module proxy into a cache outside the repo; Start runs it when they
// are missing (a cold build takes about 12 minutes, so CI builds them before
// the tests). Each Env has its own etcd, certificates and data directory in
// the test's temporary directory, and everything is stopped and removed when
// the test ends, also when it fails.
//
// There is no controller manager, scheduler or kubelet: what the API server
// does by itself works (validation, defaulting, ClusterIP allocation, watches,
// CRDs, status subresources), and what a controller would do does not — no
// EndpointSlices are made for Services, no ServiceAccounts appear, and a
// deleted Namespace stays Terminating. Tests write EndpointSlices and
// ServiceEntry status themselves, as the controllers would.
package kubetest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

const (
	// ServiceCIDRv4 and ServiceCIDRv6 are the API server's Service ranges;
	// Services are IPv4 unless they ask for another ipFamilyPolicy. Nothing is
	// ever sent to these addresses: they only appear in DNS answers.
	ServiceCIDRv4 = "10.96.0.0/16"
	ServiceCIDRv6 = "2001:db8:96::/112"

	// readyTimeout bounds a start of etcd or the API server; a cold start of
	// kube-apiserver on a busy 2-core machine takes several seconds.
	readyTimeout = 90 * time.Second
	// logTailLines is how much of a server's log a failure message carries.
	logTailLines = 40
)

// Env is one running API server and its etcd.
//
// Its methods report errors by failing the test that called Start
// (t.Fatal), so call them from that test's goroutine, not from a subtest.
type Env struct {
	// Kubeconfig is the path of a kubeconfig file for the admin user (in
	// system:masters), for code under test that takes --kubeconfig.
	Kubeconfig string
	// Config is the same admin identity as a rest.Config, with client-side
	// rate limiting off so tests can write thousands of objects quickly.
	Config *rest.Config
	// EtcdURL is etcd's client URL (plain HTTP on loopback), for tests that
	// must write stored objects the API server would be slow to create.
	EtcdURL string

	tb            testing.TB
	dir           string
	apiserverBin  string
	apiserverArgs []string

	mu        sync.Mutex // guards apiserver
	apiserver *process   // nil while stopped
	etcd      *process
}

// Option changes what Start sets up.
type Option func(*options)

type options struct {
	withoutCRDs  bool
	serviceCIDRs string
}

// WithoutCRDs starts the API server without Istio's ServiceEntry CRD, for
// tests where the CRD appears later (Env.InstallCRDs).
func WithoutCRDs() Option {
	return func(o *options) { o.withoutCRDs = true }
}

// WithServiceCIDRs gives the API server other Service ranges than
// ServiceCIDRv4 and ServiceCIDRv6: larger ones for a cluster of more than
// 65,000 Services (IPv4 up to a /12, IPv6 up to a /108).
func WithServiceCIDRs(v4, v6 string) Option {
	return func(o *options) { o.serviceCIDRs = v4 + "," + v6 }
}

// Start runs etcd and kube-apiserver on free loopback ports, waits until the
// API server is ready and, unless WithoutCRDs is given, the ServiceEntry CRD
// is Established. It fails the test if they do not come up, and stops both
// and removes their data when the test ends.
//
// Missing binaries are built first (about 12 minutes) when the test's
// deadline leaves time for it; when they cannot be had (no time, or the
// build fails) the test fails under CI=true and is skipped outside CI, with
// the reason.
func Start(tb testing.TB, opts ...Option) *Env {
	tb.Helper()
	o := options{serviceCIDRs: ServiceCIDRv4 + "," + ServiceCIDRv6}
	for _, opt := range opts {
		opt(&o)
	}
	began := time.Now()

	bins := requireBinaries(tb)
	e := &Env{tb: tb, dir: tb.TempDir(), apiserverBin: bins.apiserver}
	// Cleanups run last in, first out: registered after TempDir's, this one
	// kills the servers before their directory is removed.
	tb.Cleanup(e.cleanup)

	if err := e.start(bins, o); err != nil {
		tb.Fatalf("kubetest: %v", err)
	}
	if !o.withoutCRDs {
		e.InstallCRDs()
	}
	tb.Logf("kubetest: API server ready at %s in %v", e.Config.Host, time.Since(began).Round(time.Millisecond))
	return e
}

// start prepares the certificates and flags, and starts both servers.
func (e *Env) start(bins binaries, o options) error {
	certDir := filepath.Join(e.dir, "pki")
	etcdDir := filepath.Join(e.dir, "etcd")
	for _, d := range []string{certDir, etcdDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	keys, err := writePKI(certDir)
	if err != nil {
		return fmt.Errorf("generate certificates: %w", err)
	}
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	etcdClientURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	e.EtcdURL = etcdClientURL
	etcdPeerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	apiserverPort := ports[2]

	e.etcd, err = startProcess("etcd", bins.etcd, []string{
		"--name=kubetest",
		"--data-dir=" + etcdDir,
		"--listen-client-urls=" + etcdClientURL,
		"--advertise-client-urls=" + etcdClientURL,
		"--listen-peer-urls=" + etcdPeerURL,
		"--initial-advertise-peer-urls=" + etcdPeerURL,
		"--initial-cluster=kubetest=" + etcdPeerURL,
		// Durability across a machine crash is no concern of a test's etcd,
		// and fsync is most of its write latency.
		"--unsafe-no-fsync",
		"--log-level=warn",
	}, filepath.Join(e.dir, "etcd.log"))
	if err != nil {
		return err
	}
	if err := waitEtcd(e.etcd, etcdClientURL); err != nil {
		return err
	}

	e.apiserverArgs = []string{
		"--etcd-servers=" + etcdClientURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(apiserverPort),
		"--tls-cert-file=" + keys.servingCert,
		"--tls-private-key-file=" + keys.servingKey,
		"--client-ca-file=" + keys.caFile,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + keys.saKey,
		"--service-account-signing-key-file=" + keys.saKey,
		"--service-cluster-ip-range=" + o.serviceCIDRs,
		// RBAC, so tests can check the agent's own read-only role by
		// impersonating its ServiceAccount; the admin is in system:masters.
		"--authorization-mode=RBAC",
		// No kubelet runs here, so the "kubernetes" Service gets no endpoints
		// from this server, and nothing else competes for them.
		"--endpoint-reconciler-type=none",
		// No controller manager creates the "default" ServiceAccount, which
		// this admission plugin would require of every Pod.
		"--disable-admission-plugins=ServiceAccount",
		"--allow-privileged=true",
	}

	e.Config = &rest.Config{
		Host: "https://127.0.0.1:" + strconv.Itoa(apiserverPort),
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   keys.caPEM,
			CertData: keys.adminCertPEM,
			KeyData:  keys.adminKeyPEM,
		},
		QPS: -1, // negative turns client-go's rate limiter off
	}
	e.Kubeconfig = filepath.Join(e.dir, "kubeconfig")
	if err := writeKubeconfig(e.Kubeconfig, e.Config); err != nil {
		return err
	}
	return e.startAPIServer()
}

// startAPIServer starts kube-apiserver with the Env's flags and waits until
// it is ready.
func (e *Env) startAPIServer() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.apiserver != nil {
		return errors.New("API server is already running")
	}
	p, err := startProcess("kube-apiserver", e.apiserverBin, e.apiserverArgs, filepath.Join(e.dir, "kube-apiserver.log"))
	if err != nil {
		return err
	}
	e.apiserver = p
	return e.waitAPIServer(p)
}

// Stop stops the API server and leaves etcd running with its data, as when
// the control plane goes away under a running agent.
func (e *Env) Stop() {
	e.tb.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.apiserver == nil {
		return
	}
	err := e.apiserver.stop()
	e.apiserver = nil
	if err != nil {
		e.tb.Fatalf("kubetest: stop API server: %v", err)
	}
}

// Restart stops the API server if it is running and starts it again on the
// same address with the same data and credentials, so clients reconnect by
// themselves. It returns once the server is ready.
func (e *Env) Restart() {
	e.tb.Helper()
	e.Stop()
	began := time.Now()
	if err := e.startAPIServer(); err != nil {
		e.tb.Fatalf("kubetest: restart API server: %v", err)
	}
	e.tb.Logf("kubetest: API server restarted in %v", time.Since(began).Round(time.Millisecond))
}

// Client returns a new Kubernetes clientset for the admin user.
func (e *Env) Client() kubernetes.Interface {
	e.tb.Helper()
	c, err := kubernetes.NewForConfig(e.Config)
	if err != nil {
		e.tb.Fatalf("kubetest: Kubernetes client: %v", err)
	}
	return c
}

// IstioClient returns a new Istio clientset (networking.istio.io and the
// other Istio APIs) for the admin user.
func (e *Env) IstioClient() istioclient.Interface {
	e.tb.Helper()
	c, err := istioclient.NewForConfig(e.Config)
	if err != nil {
		e.tb.Fatalf("kubetest: Istio client: %v", err)
	}
	return c
}

// cleanup kills both servers; on a failed test it first logs the end of
// their logs, which are about to be removed with the temporary directory.
func (e *Env) cleanup() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.tb.Failed() {
		for _, p := range []*process{e.apiserver, e.etcd} {
			if p != nil {
				e.tb.Logf("kubetest: last lines of the %s log:\n%s", p.name, p.logTail(logTailLines))
			}
		}
	}
	var errs []error
	if e.apiserver != nil {
		errs = append(errs, e.apiserver.kill())
		e.apiserver = nil
	}
	if e.etcd != nil {
		errs = append(errs, e.etcd.kill())
	}
	if err := errors.Join(errs...); err != nil {
		e.tb.Errorf("kubetest: cleanup: %v", err)
	}
}

// waitEtcd waits until etcd reports itself healthy.
func waitEtcd(p *process, clientURL string) error {
	return waitReady(p, func(ctx context.Context) bool { return httpOK(ctx, clientURL+"/health") })
}

// httpOK reports whether a GET of url answers 200 within a second.
func httpOK(ctx context.Context, url string) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// waitAPIServer waits until /readyz passes and the "default" Namespace, which
// the server creates just after it turns ready, exists.
func (e *Env) waitAPIServer(p *process) error {
	client, err := kubernetes.NewForConfig(e.Config)
	if err != nil {
		return fmt.Errorf("Kubernetes client: %w", err)
	}
	return waitReady(p, func(ctx context.Context) bool {
		if err := client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).Error(); err != nil {
			return false
		}
		_, err := client.CoreV1().Namespaces().Get(ctx, metav1.NamespaceDefault, metav1.GetOptions{})
		return err == nil
	})
}

// waitReady polls ready until it succeeds, the process exits, or
// readyTimeout passes; errors carry the end of the process's log.
func waitReady(p *process, ready func(context.Context) bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		if p.exited() {
			return false, fmt.Errorf("%s exited: %v", p.name, p.waitErr)
		}
		return ready(ctx), nil
	})
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%s not ready within %v", p.name, readyTimeout)
		}
		return fmt.Errorf("%w; last lines of its log:\n%s", err, p.logTail(logTailLines))
	}
	return nil
}

// freePorts returns n distinct TCP ports that were free on 127.0.0.1 a moment
// ago. The listeners stay open until all n are picked, so no port repeats.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// writeKubeconfig writes a kubeconfig for cfg's server and client certificate.
func writeKubeconfig(path string, cfg *rest.Config) error {
	const name = "kubetest"
	kubeconfig := clientcmdapi.Config{
		Clusters: map[string]*clientcmdapi.Cluster{name: {
			Server:                   cfg.Host,
			CertificateAuthorityData: cfg.CAData,
		}},
		AuthInfos: map[string]*clientcmdapi.AuthInfo{name: {
			ClientCertificateData: cfg.CertData,
			ClientKeyData:         cfg.KeyData,
		}},
		Contexts:       map[string]*clientcmdapi.Context{name: {Cluster: name, AuthInfo: name}},
		CurrentContext: name,
	}
	if err := clientcmd.WriteToFile(kubeconfig, path); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	return nil
}
