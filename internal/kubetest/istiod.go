package kubetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
)

const (
	// istiodScript builds and caches pilot-discovery.
	istiodScript = "scripts/build-istiod.sh"
	// istiodWrapper is the module that pins the istio.io/istio snapshot.
	istiodWrapper = "scripts/kube-testenv/istiod"
	// istiodBuildBudget is the test time a cold build needs (4-5 minutes on
	// 2 cores), with a margin.
	istiodBuildBudget = 10 * time.Minute
	// IstioNamespace is where istiod runs, as in a default installation.
	IstioNamespace = "istio-system"
	// istioCRDsInIstio is Istio's CRD bundle inside istio.io/istio.
	istioCRDsInIstio = "manifests/charts/base/files/crd-all.gen.yaml"
)

// Istiod is a real istiod (pilot-discovery) running outside any cluster
// against the Env's API server: loopback addresses only, no CA, no webhooks,
// Kubernetes as its only registry, and IP auto-allocation on, so it writes
// ServiceEntry status.addresses as in a cluster.
type Istiod struct {
	// HTTP is its debug and readiness endpoint, e.g. http://127.0.0.1:PORT.
	HTTP string

	env     *Env
	bin     string
	dir     string
	args    []string
	environ []string

	mu   sync.Mutex
	proc *process // nil while stopped
}

// IstiodOption changes how StartIstiod runs istiod.
type IstiodOption func(*Istiod)

// WithAmbient runs istiod with ambient mode on (PILOT_ENABLE_AMBIENT), so
// that it builds what it sends ztunnel, which Ambientz returns.
func WithAmbient() IstiodOption {
	return func(i *Istiod) { i.environ = append(i.environ, "PILOT_ENABLE_AMBIENT=true") }
}

// WithMeshConfig adds yaml, fields of Istio's MeshConfig
// ("discoverySelectors:\n- matchLabels: {mesh: \"on\"}\n"), to the mesh
// config istiod reads (a file), and writes them where an agent reads
// them: the `istio` ConfigMap of istio-system, key `mesh`, as the Istio
// chart does.
func WithMeshConfig(yaml string) IstiodOption {
	return func(i *Istiod) {
		f, err := os.OpenFile(filepath.Join(i.dir, "mesh.yaml"), os.O_APPEND|os.O_WRONLY, 0)
		if err == nil {
			_, err = f.WriteString(yaml)
			err = errors.Join(err, f.Close())
		}
		if err == nil {
			cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio", Namespace: IstioNamespace}, Data: map[string]string{"mesh": yaml}}
			_, err = i.env.Client().CoreV1().ConfigMaps(IstioNamespace).Create(context.Background(), cm, metav1.CreateOptions{})
		}
		if err != nil {
			i.env.tb.Fatalf("kubetest: istiod mesh config: %v", err)
		}
	}
}

// StartIstiod installs every Istio CRD (from the istio.io/istio snapshot
// istiod is built from) and the istio-system namespace, runs istiod, and
// waits until it is ready (about 2 s). It is killed when the test ends.
//
// The binary comes from scripts/build-istiod.sh (built when missing and the
// test's deadline allows; otherwise the test fails under CI=true and is
// skipped outside CI).
func (e *Env) StartIstiod(opts ...IstiodOption) *Istiod {
	e.tb.Helper()
	dir, err := cachedBuild(e.tb, istiodScript, "istiod (pilot-discovery)", "4-5 minutes", istiodBuildBudget)
	requireBuilt(e.tb, err)
	if err := e.installIstio(context.Background()); err != nil {
		e.tb.Fatalf("kubetest: %v", err)
	}
	i := &Istiod{env: e, bin: filepath.Join(dir, "pilot-discovery"), dir: e.tb.TempDir()}
	if err := i.configure(); err != nil {
		e.tb.Fatalf("kubetest: istiod: %v", err)
	}
	for _, o := range opts {
		o(i)
	}
	e.tb.Cleanup(func() {
		i.mu.Lock()
		defer i.mu.Unlock()
		if i.proc == nil {
			return
		}
		if e.tb.Failed() {
			e.tb.Logf("kubetest: last lines of the istiod log:\n%s", i.proc.logTail(logTailLines))
		}
		if err := i.proc.kill(); err != nil {
			e.tb.Errorf("kubetest: cleanup: %v", err)
		}
	})
	i.Start()
	return i
}

// configure picks the ports and writes the mesh config.
func (i *Istiod) configure() error {
	ports, err := freePorts(5)
	if err != nil {
		return err
	}
	addr := func(p int) string { return "127.0.0.1:" + strconv.Itoa(p) }
	mesh := fmt.Sprintf("defaultConfig:\n  discoveryAddress: %s\n", addr(ports[2]))
	if err := os.WriteFile(filepath.Join(i.dir, "mesh.yaml"), []byte(mesh), 0o644); err != nil {
		return err
	}
	i.HTTP = "http://" + addr(ports[0])
	i.args = []string{"discovery",
		"--kubeconfig", i.env.Kubeconfig,
		"--meshConfig", filepath.Join(i.dir, "mesh.yaml"),
		"--networksConfig", filepath.Join(i.dir, "none"),
		"--registries", "Kubernetes",
		"--domain", "cluster.local",
		// Every listener on loopback: without these istiod listens on
		// every interface.
		"--httpAddr", addr(ports[0]),
		"--httpsAddr", addr(ports[1]),
		"--grpcAddr", addr(ports[2]),
		"--secureGRPCAddr", "",
		"--monitoringAddr", addr(ports[3]),
		"--ctrlz_port", strconv.Itoa(ports[4]),
		"--ctrlz_address", "127.0.0.1",
		"--shutdownDuration", "1s",
	}
	i.environ = append(os.Environ(),
		"POD_NAMESPACE="+IstioNamespace,
		"POD_NAME=istiod-test",
		"REVISION=default", // as the Istio chart sets it: objects of other revisions are ignored
		"PILOT_ENABLE_IP_AUTOALLOCATE=true",
		"ENABLE_CA_SERVER=false",
		"INJECTION_WEBHOOK_CONFIG_NAME=",
		"VALIDATION_WEBHOOK_CONFIG_NAME=",
	)
	return nil
}

// Start starts istiod (again, after Stop, on the same ports) and waits until
// /ready answers.
func (i *Istiod) Start() {
	i.env.tb.Helper()
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.proc != nil {
		i.env.tb.Fatal("kubetest: istiod is already running")
	}
	began := time.Now()
	p, err := startProcess("istiod", i.bin, i.args, filepath.Join(i.dir, "istiod.log"), func(c *exec.Cmd) {
		c.Env, c.Dir = i.environ, i.dir
	})
	if err != nil {
		i.env.tb.Fatalf("kubetest: %v", err)
	}
	i.proc = p
	err = waitReady(p, func(ctx context.Context) bool { return httpOK(ctx, i.HTTP+"/ready") })
	if err != nil {
		i.env.tb.Fatalf("kubetest: istiod: %v", err)
	}
	i.env.tb.Logf("kubetest: istiod ready at %s in %v", i.HTTP, time.Since(began).Round(time.Millisecond))
}

// Stop stops istiod with SIGTERM, as a rollout does; it releases its leader
// locks and the status it wrote stays.
func (i *Istiod) Stop() {
	i.env.tb.Helper()
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.proc == nil {
		return
	}
	err := i.proc.stop()
	i.proc = nil
	if err != nil {
		i.env.tb.Fatalf("kubetest: stop istiod: %v", err)
	}
}

// RegistryService is one service of istiod's /debug/registryz.
type RegistryService struct {
	Hostname   string `json:"hostname"`
	Attributes struct {
		Namespace string `json:"Namespace"`
		// ObjectName is the name of the ServiceEntry (or Service).
		ObjectName string `json:"ObjectName"`
	} `json:"Attributes"`
	AutoAllocatedIPv4Address string `json:"autoAllocatedIPv4Address"`
	AutoAllocatedIPv6Address string `json:"autoAllocatedIPv6Address"`
}

// Registry returns istiod's service registry (/debug/registryz).
func (i *Istiod) Registry(ctx context.Context) ([]RegistryService, error) {
	body, err := i.debug(ctx, "/debug/registryz")
	if err != nil {
		return nil, err
	}
	var out []RegistryService
	if err := json.Unmarshal(body, &out); err != nil {
		return nil, fmt.Errorf("registryz: %w", err)
	}
	return out, nil
}

// AmbientService is one service istiod sends ztunnel, as /debug/ambientz
// lists it.
type AmbientService struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	Hostname  string `json:"hostname"`
	// Addresses are its VIPs (a ServiceEntry's spec.addresses or allocated
	// ones, a Service's ClusterIPs).
	Addresses []netip.Addr `json:"-"`
	// Canonical marks the one ztunnel takes for the hostname in namespaces
	// without their own.
	Canonical bool `json:"canonical"`
}

// Ambientz returns the services istiod sends ztunnel (/debug/ambientz; it
// lists them only with WithAmbient).
func (i *Istiod) Ambientz(ctx context.Context) ([]AmbientService, error) {
	body, err := i.debug(ctx, "/debug/ambientz")
	if err != nil {
		return nil, err
	}
	var out struct {
		Services []struct {
			AmbientService
			// Each address's bytes are the text of the IP (ambientz
			// rewrites them so), base64 in JSON.
			Addresses []struct {
				Address []byte `json:"address"`
			} `json:"addresses"`
		} `json:"services"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return nil, fmt.Errorf("ambientz: %w", err)
	}
	services := make([]AmbientService, 0, len(out.Services))
	for _, s := range out.Services {
		for _, a := range s.Addresses {
			ip, err := netip.ParseAddr(string(a.Address))
			if err != nil {
				var ok bool
				if ip, ok = netip.AddrFromSlice(a.Address); !ok {
					return nil, fmt.Errorf("ambientz: service %s/%s: address %q", s.Namespace, s.Name, a.Address)
				}
			}
			s.AmbientService.Addresses = append(s.AmbientService.Addresses, ip.Unmap())
		}
		services = append(services, s.AmbientService)
	}
	return services, nil
}

// debug GETs one of istiod's debug endpoints.
func (i *Istiod) debug(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, i.HTTP+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s: %s", path, resp.Status, body)
	}
	return body, nil
}

// installIstio creates the istio-system namespace and every CRD of the
// istio.io/istio snapshot istiod is built from.
func (e *Env) installIstio(ctx context.Context) error {
	_, err := e.Client().CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: IstioNamespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", IstioNamespace, err)
	}
	root, err := repoRoot()
	if err != nil {
		return err
	}
	dir, err := moduleDirIn(filepath.Join(root, istiodWrapper), "istio.io/istio")
	if err != nil {
		return err
	}
	crds, err := readCRDs(filepath.Join(dir, istioCRDsInIstio), func(*unstructured.Unstructured) bool { return true })
	if err != nil {
		return err
	}
	client, err := dynamic.NewForConfig(e.Config)
	if err != nil {
		return fmt.Errorf("dynamic client: %w", err)
	}
	for _, crd := range crds {
		if err := createCRD(ctx, client, crd); err != nil {
			return err
		}
	}
	return nil
}
