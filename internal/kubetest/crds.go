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
	crd, err := readIstioCRD(serviceEntryCRD)
	if err != nil {
		return err
	}
	client, err := dynamic.NewForConfig(e.Config)
	if err != nil {
		return fmt.Errorf("dynamic client: %w", err)
	}
	crds := client.Resource(crdResource)
	if _, err := crds.Create(ctx, crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create CRD %s: %w", serviceEntryCRD, err)
	}

	ctx, cancel := context.WithTimeout(ctx, crdTimeout)
	defer cancel()
	err = wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		got, err := crds.Get(ctx, serviceEntryCRD, metav1.GetOptions{})
		if err != nil {
			return false, nil // transient; the deadline reports it
		}
		return crdEstablished(got), nil
	})
	if err != nil {
		return fmt.Errorf("CRD %s not Established within %v: %w", serviceEntryCRD, crdTimeout, err)
	}
	// Established means the handler is installed; also see one List succeed so
	// the first write of a test never races the handler.
	serviceEntries := client.Resource(schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "serviceentries"})
	err = wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		_, err := serviceEntries.List(ctx, metav1.ListOptions{Limit: 1})
		return err == nil, nil
	})
	if err != nil {
		return fmt.Errorf("ServiceEntries not served within %v of creating the CRD: %w", crdTimeout, err)
	}
	return nil
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

// readIstioCRD returns the CRD called name from istio.io/api's generated CRD
// file. The file is read from the module cache at test time, at the version
// the main module requires, rather than copied into the repo: a copy could
// drift from the types istio.io/client-go compiles into the tests.
func readIstioCRD(name string) (*unstructured.Unstructured, error) {
	dir, err := moduleDir(istioAPIModule)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, istioCRDFile)
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open Istio CRDs: %w", err)
	}
	defer f.Close()
	docs := yaml.NewYAMLToJSONDecoder(f)
	for {
		var obj map[string]any
		if err := docs.Decode(&obj); err != nil {
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("no CRD %s in %s", name, path)
			}
			return nil, fmt.Errorf("parse %s: %w", path, err)
		}
		crd := &unstructured.Unstructured{Object: obj}
		if crd.GetKind() == "CustomResourceDefinition" && crd.GetName() == name {
			return crd, nil
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
	cmd := exec.Command("go", "mod", "download", "-json", module)
	cmd.Dir = root
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
