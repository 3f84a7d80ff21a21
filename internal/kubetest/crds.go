package kubetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
)

const (
	// istioAPIModule ships the generated CRDs of every Istio API. It is the
	// module istio.io/client-go's types come from, so the schema installed is
	// the one the typed client was generated against.
	istioAPIModule = "istio.io/api"
	// istioCRDFile is the generated file inside istioAPIModule; istio.io/istio's
	// manifests/charts/base/files/crd-all.gen.yaml is a copy of it.
	istioCRDFile = "kubernetes/customresourcedefinitions.gen.yaml"
	// serviceEntryCRD is the one Istio CRD ztdns watches.
	serviceEntryCRD = "serviceentries.networking.istio.io"
	// crdTimeout bounds the wait for a new CRD to be Established and served.
	crdTimeout = 30 * time.Second
)

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// InstallCRDs creates Istio's ServiceEntry CRD, exactly as istio.io/api
// generates it, and waits until the API server is serving ServiceEntries.
// Start does this unless given WithoutCRDs; a test of "the CRD appears while
// the agent runs" starts without and calls this later.
//
// For two seconds after the CRD turns Established the API server holds every
// create of a ServiceEntry for two seconds (apiextensions' guard for HA
// servers that have not seen the CRD yet), so the first create right after
// this call takes that long; later ones do not.
func (e *Env) InstallCRDs() {
	e.tb.Helper()
	if err := e.installCRDs(context.Background()); err != nil {
		e.tb.Fatalf("kubetest: install Istio CRDs: %v", err)
	}
}

func (e *Env) installCRDs(ctx context.Context) error {
	dir, err := moduleDir(istioAPIModule)
	if err != nil {
		return err
	}
	crds, err := readCRDs(filepath.Join(dir, istioCRDFile), func(crd *unstructured.Unstructured) bool { return crd.GetName() == serviceEntryCRD })
	if err != nil {
		return err
	}
	if len(crds) == 0 {
		return fmt.Errorf("no CRD %s in %s", serviceEntryCRD, istioCRDFile)
	}
	client, err := dynamic.NewForConfig(e.Config)
	if err != nil {
		return fmt.Errorf("dynamic client: %w", err)
	}
	return createCRD(ctx, client, crds[0])
}

// createCRD creates crd (an existing one is fine) and waits until it is
// Established and its resource is served.
func createCRD(ctx context.Context, client dynamic.Interface, crd *unstructured.Unstructured) error {
	crds := client.Resource(crdResource)
	name := crd.GetName()
	if _, err := crds.Create(ctx, crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create CRD %s: %w", name, err)
	}

	ctx, cancel := context.WithTimeout(ctx, crdTimeout)
	defer cancel()
	var served schema.GroupVersionResource
	err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		got, err := crds.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil // transient; the deadline reports it
		}
		served = servedResource(got)
		return crdEstablished(got), nil
	})
	if err != nil {
		return fmt.Errorf("CRD %s not Established within %v: %w", name, crdTimeout, err)
	}
	// Established means the handler is installed; also see one List succeed so
	// the first write of a test never races the handler.
	err = wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		_, err := client.Resource(served).List(ctx, metav1.ListOptions{Limit: 1})
		return err == nil, nil
	})
	if err != nil {
		return fmt.Errorf("%s not served within %v of creating the CRD: %w", served.Resource, crdTimeout, err)
	}
	return nil
}

// servedResource is the resource of a CRD at its storage version.
func servedResource(crd *unstructured.Unstructured) schema.GroupVersionResource {
	group, _, _ := unstructured.NestedString(crd.Object, "spec", "group")
	plural, _, _ := unstructured.NestedString(crd.Object, "spec", "names", "plural")
	versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
	gvr := schema.GroupVersionResource{Group: group, Resource: plural}
	for _, v := range versions {
		if m, ok := v.(map[string]any); ok && m["storage"] == true {
			gvr.Version, _ = m["name"].(string)
		}
	}
	return gvr
}

// crdEstablished reports whether a CRD's Established condition is True.
func crdEstablished(crd *unstructured.Unstructured) bool {
	conditions, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
	for _, c := range conditions {
		cond, ok := c.(map[string]any)
		if ok && cond["type"] == "Established" && cond["status"] == "True" {
			return true
		}
	}
	return false
}

// readCRDs returns the CustomResourceDefinitions in the YAML file at path
// that keep accepts.
func readCRDs(path string, keep func(*unstructured.Unstructured) bool) ([]*unstructured.Unstructured, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open Istio CRDs: %w", err)
	}
	defer f.Close()
	docs := yaml.NewYAMLToJSONDecoder(f)
	var out []*unstructured.Unstructured
	for {
		var obj map[string]any
		if err := docs.Decode(&obj); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, fmt.Errorf("parse %s: %w", path, err)
		}
		crd := &unstructured.Unstructured{Object: obj}
		if crd.GetKind() == "CustomResourceDefinition" && keep(crd) {
			out = append(out, crd)
		}
	}
}

// moduleDir returns where module, at the version the main module requires,
// is unpacked in the module cache. `go mod download` fetches it first if it
// is missing; it is already there whenever the tests compiled against it.
func moduleDir(module string) (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	return moduleDirIn(root, module)
}

// moduleDirIn is moduleDir for the module whose go.mod is in dir (the main
// module, or a wrapper module under scripts/kube-testenv).
func moduleDirIn(dir, module string) (string, error) {
	cmd := exec.Command("go", "mod", "download", "-json", module)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off")
	out, err := cmd.Output()
	if err != nil {
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			return "", fmt.Errorf("go mod download %s: %w: %s%s", module, err, out, exitErr.Stderr)
		}
		return "", fmt.Errorf("go mod download %s: %w", module, err)
	}
	var info struct{ Dir, Error string }
	if err := json.Unmarshal(out, &info); err != nil {
		return "", fmt.Errorf("go mod download %s: %w", module, err)
	}
	if info.Error != "" || info.Dir == "" {
		return "", fmt.Errorf("go mod download %s: no directory: %s", module, info.Error)
	}
	return info.Dir, nil
}
