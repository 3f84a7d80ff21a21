package kube

import (
	"net/netip"
	"slices"
	"testing"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/ztdns/ztdns/pkg/model"
)

// TestLeaveOutIgnored decides, from the entries, namespaces and
// discoverySelectors in force, which ServiceEntries istiod of the source's
// revision ignores: an entry left out that carries status.addresses still
// tells that istiod allocates; the same decision hands out the same slice,
// so the table builder has nothing to do; without istiod nothing is left
// out.
func TestLeaveOutIgnored(t *testing.T) {
	vip := []model.HostAddress{{Host: "canary.example", Address: netip.MustParseAddr("240.240.0.7")}}
	all := []model.ServiceEntry{
		{Namespace: "lab", Name: "a"},
		{Namespace: "shop", Name: "canary", Revision: new("canary"), StatusAddresses: vip},
		{Namespace: "shop", Name: "empty-rev", Revision: new("")},
		{Namespace: "shop", Name: "ours", Revision: new("default")},
		{Namespace: "shop", Name: "plain"},
		{Namespace: "unknown", Name: "b"},
	}
	keys := func(ses []model.ServiceEntry) []string {
		var out []string
		for _, se := range ses {
			out = append(out, se.Key())
		}
		return out
	}
	newRun := func(istioNS string) *run {
		r := &run{src: &Source{istioNamespace: istioNS, istioRevision: DefaultIstioRevision, meshConfigMap: MeshConfigMap}}
		r.ignored.all = all
		r.last.Namespaces = []model.Namespace{{Name: "lab", Labels: map[string]string{"team": "lab"}}, {Name: "shop", Labels: map[string]string{"team": "shop"}}}
		return r
	}

	r := newRun(DefaultIstioNamespace)
	r.leaveOutIgnored()
	if got, want := keys(r.last.ServiceEntries), []string{"lab/a", "shop/ours", "shop/plain", "unknown/b"}; !slices.Equal(got, want) {
		t.Errorf("kept %q, want %q", got, want)
	}
	if !r.last.IstiodAllocates {
		t.Error("istiod allocates not told, though an entry left out carries status.addresses")
	}
	if len(r.last.IstiodIgnores) != 1 || !slices.Equal(r.last.IstiodIgnores[0].Keys, []string{"shop/canary", "shop/empty-rev"}) {
		t.Errorf("ignored %+v, want shop/canary and shop/empty-rev of another revision", r.last.IstiodIgnores)
	}

	// discoverySelectors: a namespace none selects, or one the source does
	// not know, is left out; an entry of another revision is counted once.
	r.selectors = []labels.Selector{labels.SelectorFromSet(labels.Set{"team": "shop"})}
	r.leaveOutIgnored()
	first := r.last.ServiceEntries
	if got, want := keys(first), []string{"shop/ours", "shop/plain"}; !slices.Equal(got, want) {
		t.Errorf("kept %q, want %q", got, want)
	}
	if len(r.last.IstiodIgnores) != 2 || !slices.Equal(r.last.IstiodIgnores[1].Keys, []string{"lab/a", "unknown/b"}) {
		t.Errorf("ignored %+v, want lab/a and unknown/b outside the selectors", r.last.IstiodIgnores)
	}
	// Its Services yield their names to ServiceEntries: the namespaces
	// known and not selected are told.
	unselected := r.last.IstiodUnselected
	if !slices.Equal(unselected, []string{"lab"}) {
		t.Errorf("unselected namespaces %q, want lab", unselected)
	}
	r.leaveOutIgnored()
	if !sameSlice(first, r.last.ServiceEntries) || !sameSlice(unselected, r.last.IstiodUnselected) {
		t.Error("the same decision made a new slice")
	}

	// No selectors, no entry of another revision: the store's own slice.
	r.selectors = nil
	r.ignored.all = slices.Clone(all[3:5])
	r.leaveOutIgnored()
	if !sameSlice(r.ignored.all, r.last.ServiceEntries) || r.last.IstiodIgnores != nil || r.last.IstiodAllocates || r.last.IstiodUnselected != nil {
		t.Errorf("nothing left out: kept %q, ignored %+v, istiod allocates %v; want the store's slice, none, false",
			keys(r.last.ServiceEntries), r.last.IstiodIgnores, r.last.IstiodAllocates)
	}

	// Without istiod, nothing is left out.
	r = newRun("")
	r.selectors = []labels.Selector{labels.SelectorFromSet(labels.Set{"team": "shop"})}
	r.leaveOutIgnored()
	if !sameSlice(all, r.last.ServiceEntries) || r.last.IstiodIgnores != nil || r.last.IstiodUnselected != nil {
		t.Errorf("without istiod: kept %q, ignored %+v; want every entry", keys(r.last.ServiceEntries), r.last.IstiodIgnores)
	}
}
