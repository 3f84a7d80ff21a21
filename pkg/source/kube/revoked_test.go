package kube

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/pkg/model"
)

// errCut is what a cut watch stream's read fails with. client-go's stream
// watcher turns it into an error event (500), as it does any decoding
// error that is no EOF, and the reflector lists again.
var errCut = errors.New("test: watch stream cut")

// watchCutter ends, on demand, the open watch streams of the requests
// match accepts, with an error event: the relist an API server's error
// event, or a proxy that breaks a stream mid-way, brings.
type watchCutter struct {
	match func(*url.URL) bool

	mu      sync.Mutex
	streams map[*cutBody]bool
}

func newWatchCutter(match func(*url.URL) bool) *watchCutter {
	return &watchCutter{match: match, streams: make(map[*cutBody]bool)}
}

func (c *watchCutter) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		resp, err := rt.RoundTrip(r)
		if err != nil || resp.StatusCode != http.StatusOK || r.URL.Query().Get("watch") != "true" || !c.match(r.URL) {
			return resp, err
		}
		b := &cutBody{ReadCloser: resp.Body, c: c}
		c.mu.Lock()
		c.streams[b] = true
		c.mu.Unlock()
		resp.Body = b
		return resp, nil
	})
}

// open counts the open streams.
func (c *watchCutter) open() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.streams)
}

// cut ends every open stream.
func (c *watchCutter) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for b := range c.streams {
		b.cut.Store(true)
		b.ReadCloser.Close()
		delete(c.streams, b)
	}
}

type cutBody struct {
	io.ReadCloser
	c   *watchCutter
	cut atomic.Bool
}

func (b *cutBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if b.cut.Load() {
		return 0, errCut
	}
	return n, err
}

func (b *cutBody) Close() error {
	b.c.mu.Lock()
	delete(b.c.streams, b)
	b.c.mu.Unlock()
	return b.ReadCloser.Close()
}

// isServiceEntryWatch and isLockRequest tell the source's requests for
// ServiceEntries and for istiod's allocator lock.
func isServiceEntryWatch(u *url.URL) bool { return strings.HasSuffix(u.Path, "/serviceentries") }
func isLockRequest(u *url.URL) bool {
	return strings.HasSuffix(u.Path, "/configmaps") && strings.Contains(u.Query().Get("fieldSelector"), IstiodAllocatorLock)
}

// TestRevokedKeepsWhatWasRead: RBAC refusing ServiceEntries and istiod's
// allocator lock after the source read them (the binding deleted, a
// ClusterRole re-created by GitOps, the 403s of an API server whose RBAC
// cache is not filled yet) and the watches ending, so that the reflectors
// list again: the snapshots keep the ServiceEntry and that istiod
// allocates, Healthy() names both watches failing as forbidden, the metric
// and Errors() say forbidden; granted again, all is well. (Before: the
// refused list was taken for an empty one, the ServiceEntry left every
// snapshot, IstiodAllocates turned false, and the source stayed healthy;
// ztunnel, whose istiod keeps its cache, still routed the host every node
// then answered NXDOMAIN.)
func TestRevokedKeepsWhatWasRead(t *testing.T) {
	env := kubetest.Start(t)
	kube := env.Client()
	const ns, account = "ztdns-revoked", "ztdns"
	createNamespace(t, kube, ns)
	createNamespace(t, kube, DefaultIstioNamespace)
	createIstiodConfigMap(t, kube, IstiodAllocatorLock, nil)
	createServiceEntry(t, env, "mesh", "ext")
	revocable := func(r PolicyRule) bool {
		return slices.Contains(r.Resources, "serviceentries") || slices.Contains(r.ResourceNames, IstiodAllocatorLock)
	}
	cfg := grant(t, env, "ztdns-base", ns, account, slices.DeleteFunc(PolicyRules(), revocable))
	grant(t, env, "ztdns-revocable", ns, account, slices.DeleteFunc(PolicyRules(), func(r PolicyRule) bool { return !revocable(r) }))
	plain := rest.CopyConfig(cfg)
	cutter := newWatchCutter(isServiceEntryWatch)
	cfg.Wrap(cutter.wrap)
	// The lock, once seen, is not watched but listed every lockCheck:
	// the check after the revoke is refused.
	rec := runSource(t, cfg, WithNodeName("node-a"), withForbiddenRetry(500*time.Millisecond), withLockCheck(200*time.Millisecond))

	kept := func(s *model.Snapshot) error {
		if find(s.ServiceEntries, serviceEntryKey, "mesh", "ext") == nil {
			return fmt.Errorf("serviceentry mesh/ext missing")
		}
		if !s.IstiodAllocates {
			return fmt.Errorf("IstiodAllocates is false with %s present", IstiodAllocatorLock)
		}
		return nil
	}
	rec.waitFor(t, "the ServiceEntry and the lock", kept)
	rec.waitHealth(t, "healthy", func(err error) bool { return err == nil })
	waitUntil(t, "the ServiceEntry watch open", func() bool { return cutter.open() > 0 })
	_, before := rec.latest()

	if err := kube.RbacV1().ClusterRoleBindings().Delete(t.Context(), "ztdns-revocable", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRefused(t, plain)
	cutter.cut()
	failingRefused := func() bool {
		err := rec.src.Healthy()
		return err != nil && strings.Contains(err.Error(), "watch of serviceentries failing") &&
			strings.Contains(err.Error(), "watch of istiod-allocator failing") &&
			strings.Contains(err.Error(), "forbidden to list serviceentries.networking.istio.io (RBAC)") &&
			strings.Contains(err.Error(), "forbidden to list configmaps (RBAC)")
	}
	lost := func() error {
		for _, d := range rec.since(before) {
			if err := kept(d.snap); err != nil {
				return err
			}
		}
		return nil
	}
	// Either comes first: the reflectors' lists refused, or a snapshot
	// without what they read.
	waitUntil(t, "failing, or a snapshot without the ServiceEntry or the lock", func() bool { return failingRefused() || lost() != nil })
	if err := lost(); err != nil {
		t.Errorf("a snapshot after the revoke: %v", err)
	}
	if !failingRefused() {
		t.Errorf("Healthy() = %v, want the serviceentries and istiod-allocator watches failing, forbidden to list them", rec.src.Healthy())
	}
	wantUnavailable(t, rec.src, reasonForbidden)
	if !hasError(rec.src.Errors(), "serving those read before") {
		t.Errorf("Errors() = %v, want the ServiceEntries kept said", rec.src.Errors())
	}

	grant(t, env, "ztdns-granted", ns, account, slices.DeleteFunc(PolicyRules(), func(r PolicyRule) bool { return !revocable(r) }))
	rec.waitHealth(t, "healthy again, nothing refused", func(err error) bool { return err == nil && len(rec.src.Errors()) == 0 })
	if d, _ := rec.latest(); kept(d.snap) != nil {
		t.Errorf("the last snapshot once granted again: %v", kept(d.snap))
	}
	wantUnavailable(t, rec.src, "")
}

// waitRefused waits until the API server refuses cfg's ServiceAccount the
// list of ServiceEntries and of the lock: it applies a deleted binding
// after a moment.
func waitRefused(t *testing.T, cfg *rest.Config) {
	t.Helper()
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	istio, err := istioclient.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the revoke applied", func() bool {
		_, seErr := istio.NetworkingV1().ServiceEntries("").List(t.Context(), metav1.ListOptions{})
		_, lockErr := kube.CoreV1().ConfigMaps(DefaultIstioNamespace).List(t.Context(), metav1.ListOptions{
			FieldSelector: fields.OneTermEqualSelector("metadata.name", IstiodAllocatorLock).String()})
		return apierrors.IsForbidden(seErr) && apierrors.IsForbidden(lockErr)
	})
}

// waitUntil polls ok until it holds.
func waitUntil(tb testing.TB, what string, ok func() bool) {
	tb.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !ok() {
		if time.Now().After(deadline) {
			tb.Fatalf("not %s within %v", what, waitTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
