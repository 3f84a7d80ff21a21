//go:build linux

package bench

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ztdns/ztdns/bench/workload"
	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/internal/testenv"
)

// loadWorkers write objects in parallel: the API server, not the client,
// is the bottleneck.
const loadWorkers = 32

// startCluster starts a real API server (internal/kubetest) and creates the
// objects of c in it, as a user would apply them.
func startCluster(tb testing.TB, c workload.Config, opts ...kubetest.Option) *kubetest.Env {
	tb.Helper()
	env := kubetest.Start(tb, opts...)
	loadObjects(tb, env, workload.APIObjects(workload.Snapshot(c)))
	return env
}

// loadObjects creates o in the API server: Namespaces first, then the rest
// with loadWorkers in parallel. Built-in kinds go as protobuf, as
// controllers write them.
func loadObjects(tb testing.TB, env *kubetest.Env, o *workload.Objects) {
	tb.Helper()
	cfg := rest.CopyConfig(env.Config)
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	istio := env.IstioClient()
	began := time.Now()
	ctx := tb.Context()
	for _, ns := range o.Namespaces {
		if _, err := kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			tb.Fatalf("create namespace %s: %v", ns.Name, err)
		}
	}
	var jobs []func(context.Context) error
	var stored []*corev1.Service
	for _, s := range o.Services {
		if s.Spec.ClusterIP != corev1.ClusterIPNone {
			stored = append(stored, s)
			continue
		}
		jobs = append(jobs, func(ctx context.Context) error {
			_, err := kube.CoreV1().Services(s.Namespace).Create(ctx, s, metav1.CreateOptions{})
			return err
		})
	}
	for batch := range slices.Chunk(stored, etcdBatch/3) {
		jobs = append(jobs, func(ctx context.Context) error { return storeServices(ctx, env, batch) })
	}
	for _, es := range o.EndpointSlices {
		jobs = append(jobs, func(ctx context.Context) error {
			_, err := kube.DiscoveryV1().EndpointSlices(es.Namespace).Create(ctx, es, metav1.CreateOptions{})
			return err
		})
	}
	for _, se := range o.ServiceEntries {
		jobs = append(jobs, func(ctx context.Context) error {
			_, err := istio.NetworkingV1().ServiceEntries(se.Namespace).Create(ctx, se, metav1.CreateOptions{})
			return err
		})
	}
	if err := parallel(ctx, loadWorkers, jobs); err != nil {
		tb.Fatalf("load the cluster: %v", err)
	}
	tb.Logf("created %d Namespaces, %d Services, %d EndpointSlices and %d ServiceEntries in %v",
		len(o.Namespaces), len(o.Services), len(o.EndpointSlices), len(o.ServiceEntries), time.Since(began).Round(time.Millisecond))
}

// etcdBatch is how many keys one etcd transaction writes (etcd takes up
// to 128 operations in one).
const etcdBatch = 120

// storeServices writes Services with ClusterIPs, and the IPAddress objects
// that record their addresses, straight into the API server's etcd, as the
// API server itself stores them (it reads JSON as well as protobuf, and
// defaults on reading). Through the API, each such create costs the API
// server's IP allocator time in proportion to the Services already there
// (it counts every allocated address twice per allocation), which makes
// 100,000 of them take hours on two cores; what the API server then serves
// and watches is the same.
func storeServices(ctx context.Context, env *kubetest.Env, services []*corev1.Service) error {
	var puts []map[string]any
	put := func(key string, obj any) error {
		b, err := json.Marshal(obj)
		if err != nil {
			return err
		}
		puts = append(puts, map[string]any{"request_put": map[string]any{
			"key": base64.StdEncoding.EncodeToString([]byte("/registry/" + key)), "value": base64.StdEncoding.EncodeToString(b)}})
		return nil
	}
	now := metav1.Now()
	for _, s := range services {
		s = s.DeepCopy()
		s.UID, s.CreationTimestamp = uuid.NewUUID(), now
		if err := put("services/specs/"+s.Namespace+"/"+s.Name, s); err != nil {
			return err
		}
		for i, ip := range s.Spec.ClusterIPs {
			addr := &networkingv1.IPAddress{
				TypeMeta: metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "IPAddress"},
				ObjectMeta: metav1.ObjectMeta{Name: ip, UID: uuid.NewUUID(), CreationTimestamp: now, Labels: map[string]string{
					networkingv1.LabelIPAddressFamily: string(s.Spec.IPFamilies[i]),
					networkingv1.LabelManagedBy:       "ipallocator.k8s.io",
				}},
				Spec: networkingv1.IPAddressSpec{ParentRef: &networkingv1.ParentReference{Resource: "services", Namespace: s.Namespace, Name: s.Name}},
			}
			if err := put("ipaddresses/"+ip, addr); err != nil {
				return err
			}
		}
	}
	body, err := json.Marshal(map[string]any{"success": puts})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, env.EtcdURL+"/v3/kv/txn", bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	defer resp.Body.Close()
	reply, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !bytes.Contains(reply, []byte(`"succeeded":true`)) {
		return fmt.Errorf("etcd txn: %s: %s", resp.Status, reply)
	}
	return nil
}

// parallel runs jobs with workers goroutines and returns the first error.
func parallel(ctx context.Context, workers int, jobs []func(context.Context) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(len(jobs)) || ctx.Err() != nil {
					return
				}
				if err := jobs[i](ctx); err != nil {
					cancel(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}

// throughForwarder writes a copy of env's kubeconfig whose server is f
// (the API server's certificate names 127.0.0.1, so TLS holds through a
// forwarder on loopback).
func throughForwarder(tb testing.TB, env *kubetest.Env, f *testenv.Forwarder) string {
	tb.Helper()
	cfg, err := clientcmd.LoadFromFile(env.Kubeconfig)
	if err != nil {
		tb.Fatal(err)
	}
	for _, c := range cfg.Clusters {
		c.Server = "https://" + f.Addr
	}
	path := filepath.Join(tb.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		tb.Fatal(err)
	}
	return path
}
