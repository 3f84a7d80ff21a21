package kube

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"

	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/pkg/model"
)

// lockTraffic counts the source's requests for istiod's allocator lock,
// and the bytes its answers carried (a watch's events).
type lockTraffic struct {
	mu             sync.Mutex
	lists, watches int
	bytes          int64
}

func (l *lockTraffic) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if !isLockRequest(r.URL) {
			return rt.RoundTrip(r)
		}
		l.mu.Lock()
		if r.URL.Query().Get("watch") == "true" {
			l.watches++
		} else {
			l.lists++
		}
		l.mu.Unlock()
		resp, err := rt.RoundTrip(r)
		if err == nil {
			resp.Body = &countedBody{ReadCloser: resp.Body, l: l}
		}
		return resp, err
	})
}

// counts returns the lists, the watches, and the bytes of the answers read
// so far.
func (l *lockTraffic) counts() (lists, watches int, bytes int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lists, l.watches, l.bytes
}

type countedBody struct {
	io.ReadCloser
	l *lockTraffic
}

func (b *countedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.l.mu.Lock()
	b.l.bytes += int64(n)
	b.l.mu.Unlock()
	return n, err
}

func istiodAllocates(want bool) func(*model.Snapshot) error {
	return func(s *model.Snapshot) error {
		if s.IstiodAllocates != want {
			return fmt.Errorf("IstiodAllocates is %v", s.IstiodAllocates)
		}
		return nil
	}
}

// TestLockNotWatchedOnceSeen runs a real istiod, which renews its VIP
// allocator lock every 7.5 s: once the source has seen the lock, three
// renewals bring it no request and no byte about the lock; the check of
// its existence is minutes away. (Before: the source watched the lock,
// and every renewal was a watch event to every node's agent, some 670 a
// second at 5,000 nodes.)
func TestLockNotWatchedOnceSeen(t *testing.T) {
	env := kubetest.Start(t)
	env.StartIstiod()
	kube := env.Client()
	byName := fields.OneTermEqualSelector("metadata.name", IstiodAllocatorLock).String()
	// Follow istiod's renewals from before the source starts: it takes
	// the lock once it leads.
	renewals, err := kube.CoreV1().ConfigMaps(DefaultIstioNamespace).Watch(t.Context(), metav1.ListOptions{FieldSelector: byName})
	if err != nil {
		t.Fatal(err)
	}
	defer renewals.Stop()
	waitRenewals := func(n int) {
		t.Helper()
		deadline := time.After(waitTimeout)
		for seen := 0; seen < n; {
			select {
			case ev, ok := <-renewals.ResultChan():
				if !ok {
					t.Fatal("the test's watch of the lock ended")
				}
				if ev.Type == watch.Modified {
					seen++
				}
			case <-deadline:
				t.Fatalf("%d of %d renewals of istiod's lock within %v", seen, n, waitTimeout)
			}
		}
	}

	var traffic lockTraffic
	cfg := rest.CopyConfig(env.Config)
	cfg.Wrap(traffic.wrap)
	rec := runSource(t, cfg)
	rec.waitFor(t, "istiod's lock seen", istiodAllocates(true))
	// From the next renewal on, nothing more about the lock.
	waitRenewals(1)
	lists, watches, bytes := traffic.counts()
	waitRenewals(3)
	l, w, b := traffic.counts()
	if l != lists || w != watches || b != bytes {
		t.Errorf("over three renewals of istiod's lock the source made %d lists and %d watches of it and read %d bytes about it, want none",
			l-lists, w-watches, b-bytes)
	}
	if d, _ := rec.latest(); !d.snap.IstiodAllocates {
		t.Error("IstiodAllocates turned false")
	}
	if err := rec.src.Healthy(); err != nil {
		t.Errorf("Healthy() = %v", err)
	}
}

// TestLockGoneNoticed: the lock, once seen, is checked every lockCheck
// (by a list); deleted, a check finds it gone, and the source watches for
// it again, so that it is seen back when re-created.
func TestLockGoneNoticed(t *testing.T) {
	env := kubetest.Start(t)
	kube := env.Client()
	createNamespace(t, kube, DefaultIstioNamespace)
	createIstiodConfigMap(t, kube, IstiodAllocatorLock, nil)
	var traffic lockTraffic
	cfg := rest.CopyConfig(env.Config)
	cfg.Wrap(traffic.wrap)
	rec := runSource(t, cfg, withLockCheck(100*time.Millisecond))
	rec.waitFor(t, "the lock seen", istiodAllocates(true))
	lists, _, _ := traffic.counts()
	waitUntil(t, "the lock checked", func() bool { l, _, _ := traffic.counts(); return l >= lists+2 })

	_, watches, _ := traffic.counts()
	if err := kube.CoreV1().ConfigMaps(DefaultIstioNamespace).Delete(context.Background(), IstiodAllocatorLock, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "the lock gone", istiodAllocates(false))
	waitUntil(t, "the lock watched again", func() bool { _, w, _ := traffic.counts(); return w > watches })
	createIstiodConfigMap(t, kube, IstiodAllocatorLock, nil)
	rec.waitFor(t, "the lock back", istiodAllocates(true))
	if err := rec.src.Healthy(); err != nil {
		t.Errorf("Healthy() = %v", err)
	}
}
