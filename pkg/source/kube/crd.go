package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const (
	// serviceEntryGroupVersion and serviceEntryResource are the ServiceEntry
	// API ztdns watches. Istio serves networking.istio.io/v1 since 1.22; the
	// older versions carry the same spec and status.
	serviceEntryGroupVersion = "networking.istio.io/v1"
	serviceEntryResource     = "serviceentries"
	// discoveryTimeout bounds one question to the discovery API.
	discoveryTimeout = 10 * time.Second
	// discoveryRetry is how soon a discovery question that failed (as
	// opposed to one answered "not served") is asked again before the first
	// snapshot, which waits for the answer.
	discoveryRetry = time.Second
)

// serviceEntriesServed asks the API server whether it serves ServiceEntries
// (networking.istio.io/v1), which it does from the moment Istio's CRD is
// established until the CRD is deleted. An error means no answer (the API
// server is unreachable, say), not "absent".
func (r *run) serviceEntriesServed(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, discoveryTimeout)
	defer cancel()
	raw, err := r.clients.core.Get().AbsPath("/apis/" + serviceEntryGroupVersion).Do(ctx).Raw()
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("discovery of %s: %w", serviceEntryGroupVersion, err)
	}
	var list metav1.APIResourceList
	if err := json.Unmarshal(raw, &list); err != nil {
		return false, fmt.Errorf("discovery of %s: %w", serviceEntryGroupVersion, err)
	}
	for _, res := range list.APIResources {
		if res.Name == serviceEntryResource {
			return true, nil
		}
	}
	return false, nil
}

// awaitDiscovery asks whether ServiceEntries are served until the API server
// answers. It reports false for ok when ctx ends first.
func (r *run) awaitDiscovery(ctx context.Context) (served, ok bool) {
	for {
		served, err := r.serviceEntriesServed(ctx)
		r.health.observe(ctx, "discovery", err)
		if err == nil {
			return served, true
		}
		select {
		case <-ctx.Done():
			return false, false
		case <-time.After(discoveryRetry):
		}
	}
}

// followServiceEntryAPI sends on changes every change in whether
// ServiceEntries are served, starting from served. While they are not, it
// asks discovery every pollInterval; once they are, it stops polling and asks
// again only when the ServiceEntry watch reports the resource missing (on
// recheck), which is what happens when the CRD is deleted.
func (r *run) followServiceEntryAPI(ctx context.Context, served bool, pollInterval time.Duration, recheck <-chan struct{}, changes chan<- bool) {
	poll := time.NewTimer(pollInterval)
	defer poll.Stop()
	for {
		if served {
			select {
			case <-ctx.Done():
				return
			case <-recheck:
			}
		} else {
			poll.Reset(pollInterval)
			select {
			case <-ctx.Done():
				return
			case <-poll.C:
			}
		}
		now, err := r.serviceEntriesServed(ctx)
		if err != nil {
			r.log.Debug("ServiceEntry API discovery failed; asking again later", "error", err)
			continue
		}
		if now == served {
			continue
		}
		served = now
		select {
		case changes <- served:
		case <-ctx.Done():
			return
		}
	}
}
