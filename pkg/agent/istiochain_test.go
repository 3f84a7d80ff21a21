package agent

import (
	"bytes"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/cni"
)

// TestIstioChainCountsALossAfterTheGrace: the installer's first look at the
// node's CNI chain is told to the capture decision at once, as is
// istio-cni coming back; istio-cni gone only once it has stayed gone for
// the grace, so a primary plugin writing its configuration again, which
// drops istio-cni's entry until istio-cni's installer puts it back, does not
// release the pods istio-cni enrolled. Status warns while it is gone.
func TestIstioChainCountsALossAfterTheGrace(t *testing.T) {
	t.Parallel()
	with, without := cni.Chain{File: "/etc/cni/net.d/10-a.conflist", IstioCNI: true}, cni.Chain{File: "/etc/cni/net.d/10-a.conflist"}
	newChain := func(grace time.Duration) (*istioChain, func() []bool) {
		var mu sync.Mutex
		var told []bool
		s := &istioChain{}
		s.start(func(missing bool) {
			mu.Lock()
			defer mu.Unlock()
			told = append(told, missing)
		}, slog.New(slog.DiscardHandler), grace)
		return s, func() []bool { mu.Lock(); defer mu.Unlock(); return slices.Clone(told) }
	}

	t.Run("a loss that ends within the grace", func(t *testing.T) {
		t.Parallel()
		s, told := newChain(time.Hour)
		s.observe(with)
		s.observe(without) // a primary plugin's rewrite
		s.observe(without)
		s.observe(with) // istio-cni's installer puts its entry back
		if got := told(); !slices.Equal(got, []bool{false}) {
			t.Errorf("told %v, want [false]: only the first look", got)
		}
		if w := s.warning(); w != "" {
			t.Errorf("status warns %q", w)
		}
	})
	t.Run("missing at the first look, then installed", func(t *testing.T) {
		t.Parallel()
		s, told := newChain(time.Hour)
		s.observe(without)
		if w := s.warning(); !strings.Contains(w, "istio-cni is not in the node's CNI chain ("+without.File+")") {
			t.Errorf("status warning %q", w)
		}
		s.observe(with)
		if got := told(); !slices.Equal(got, []bool{true, false}) {
			t.Errorf("told %v, want [true false]", got)
		}
		if w := s.warning(); w != "" {
			t.Errorf("status still warns %q", w)
		}
	})
	t.Run("a loss that lasts", func(t *testing.T) {
		t.Parallel()
		s, told := newChain(time.Millisecond)
		s.observe(with)
		s.observe(without)
		deadline := time.Now().Add(10 * time.Second)
		for !slices.Equal(told(), []bool{false, true}) {
			if time.Now().After(deadline) {
				t.Fatalf("told %v, want [false true]", told())
			}
			time.Sleep(time.Millisecond)
		}
		if w := s.warning(); w == "" {
			t.Errorf("status does not warn")
		}
	})
}

// TestIstioExcludesCompared: the namespaces istio-cni's chain entry
// excludes are compared with --exclude-namespaces. A list cut at
// cni.MaxIstioExcludeNamespaces differs even when what was read equals
// --exclude-namespaces (istio-cni excludes more than was read). istio-cni's
// entry gone after a difference (a primary plugin rewriting the file drops
// it) ends the warning without saying the lists agree.
func TestIstioExcludesCompared(t *testing.T) {
	t.Parallel()
	const file = "/etc/cni/net.d/10-a.conflist"
	newExcludes := func(own ...string) (*istioExcludes, *bytes.Buffer) {
		var log bytes.Buffer
		e := &istioExcludes{}
		e.start(own, slog.New(slog.NewTextHandler(&log, nil)))
		return e, &log
	}
	chain := func(cut bool, names ...string) cni.Chain {
		return cni.Chain{File: file, IstioCNI: true, IstioExcludeNamespaces: names, IstioExcludeNamespacesKnown: true, IstioExcludeNamespacesCut: cut}
	}

	t.Run("a cut list", func(t *testing.T) {
		t.Parallel()
		e, _ := newExcludes("kube-system")
		e.observe(chain(true, "kube-system"))
		if !e.differs() {
			t.Errorf("a list cut after kube-system compared equal to --exclude-namespaces [kube-system]")
		}
		if w := e.warning(); !strings.Contains(w, "excludes the namespaces [kube-system …]") {
			t.Errorf("status warning %q does not show the list as cut", w)
		}
	})
	t.Run("the entry gone after a difference", func(t *testing.T) {
		t.Parallel()
		e, log := newExcludes("kube-system")
		e.observe(chain(false, "kube-system", "monitoring"))
		if !e.differs() {
			t.Fatal("lists [kube-system monitoring] and [kube-system] compared equal")
		}
		e.observe(cni.Chain{File: file})
		if e.differs() || e.warning() != "" {
			t.Errorf("still differs (%v) or warns (%q) with istio-cni's entry gone", e.differs(), e.warning())
		}
		if strings.Contains(log.String(), "again") {
			t.Errorf("istio-cni's entry gone was logged as the lists agreeing:\n%s", log)
		}
		if !strings.Contains(log.String(), "nothing to compare --exclude-namespaces with") {
			t.Errorf("istio-cni's entry gone not logged:\n%s", log)
		}
	})
}
