package table

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/ztdns/ztdns/pkg/model"
)

// DefaultMaxNamesPerNamespace is the names one namespace's objects may
// make in the table (Options.MaxNamesPerNamespace): a namespace of
// thousands of Services with their ports, headless endpoints and
// ServiceEntries fits (a namespace past it loses names: a Service's are
// still answered by the nameserver they are forwarded to, a ServiceEntry's
// are not); one whose ServiceEntries list a million hosts does not, and a
// namespace at it costs every node about 21 MB (some 210 B a name).
const DefaultMaxNamesPerNamespace = 100_000

// maxListedOverBudget bounds the objects a namespace's budget warning
// names, and a warning of objects the source left out (leftOutWarning);
// they count the rest.
const maxListedOverBudget = 10

// nsBudget keeps each namespace's objects within a budget of names
// (Options.MaxNamesPerNamespace), so that no tenant can make every node's
// table outgrow the agent's memory. What an object costs is read from the
// snapshot (serviceCost, endpointsCost, serviceEntryCost), before any
// entry is made: the objects left out are never built, and cost a build a
// look at their sizes.
//
// A namespace over its budget keeps its objects oldest first (creation
// time, then name, then kind), each one that still fits; the others, the
// newest, are left out whole, with a warning naming the namespace. Every
// node sees the same objects, so every node serves the same ones.
//
// What it decided is kept with the snapshot's slices it was decided for:
// a build whose slices are the last one's costs nothing here, and gets
// the same slices as the last (Builder's shortcut for a kind that did not
// change still holds).
type nsBudget struct {
	max int // 0: no budget
	// The snapshot slices last decided for, and what was decided.
	servicesFrom []model.Service
	slicesFrom   []model.EndpointSlice
	sesFrom      []model.ServiceEntry
	// The slices the builder gets: the snapshot's without the objects left
	// out (the snapshot's own when none is).
	services []model.Service
	slices   []model.EndpointSlice
	ses      []model.ServiceEntry
	// leftOutStatus: a ServiceEntry left out carries status.addresses,
	// the sign that istiod allocates (istiodAllocates).
	leftOutStatus bool
	warnings      []objWarning
	// namespaces over budget, and the objects they left out.
	namespaces, objects int
	// endpoints is what a headless Service's endpoints cost, by Service;
	// svcTotal and seTotal the names of each namespace's Services and
	// ServiceEntries: kept for the next decision.
	endpoints         map[objKey]int
	svcTotal, seTotal map[string]int
}

// servicesTotal adds up the names of each namespace's Services (into
// total, emptied first), their endpoints' as endpoints says (remade).
func servicesTotal(s *model.Snapshot, endpoints map[objKey]int, total map[string]int) (map[objKey]int, map[string]int) {
	clear(endpoints)
	for i := range s.EndpointSlices {
		es := &s.EndpointSlices[i]
		if c := endpointsCost(es); c > 0 {
			if endpoints == nil {
				endpoints = map[objKey]int{}
			}
			endpoints[objKey{es.Namespace, es.ServiceName}] += c
		}
	}
	total = reuseMap(total)
	runs := namespaceRuns{total: total}
	for i := range s.Services {
		svc := &s.Services[i]
		runs.add(svc.Namespace, serviceCost(svc, endpoints))
	}
	runs.end()
	return endpoints, total
}

// reuseMap empties m, made when nil.
func reuseMap(m map[string]int) map[string]int {
	if m == nil {
		return map[string]int{}
	}
	clear(m)
	return m
}

// namespaceRuns adds up costs by namespace into total, one map update per
// run of objects of one namespace.
type namespaceRuns struct {
	total map[string]int
	ns    string
	n     int
}

func (r *namespaceRuns) add(ns string, cost int) {
	if ns != r.ns {
		r.end()
		r.ns = ns
	}
	r.n += cost
}

// end adds the run so far.
func (r *namespaceRuns) end() {
	if r.n > 0 {
		r.total[r.ns] += r.n
	}
	r.n = 0
}

// apply returns s with the objects over their namespace's budget left
// out: s itself when none is.
func (nb *nsBudget) apply(s *model.Snapshot) *model.Snapshot {
	if nb.max <= 0 {
		return s
	}
	if !sameSlice(s.Services, nb.servicesFrom) || !sameSlice(s.EndpointSlices, nb.slicesFrom) ||
		!sameSlice(s.ServiceEntries, nb.sesFrom) {
		nb.decide(s)
	}
	if nb.objects == 0 {
		return s
	}
	out := *s
	out.Services, out.EndpointSlices, out.ServiceEntries = nb.services, nb.slices, nb.ses
	out.IstiodAllocates = s.IstiodAllocates || nb.leftOutStatus
	return &out
}

// budgeted is an object of a namespace over its budget.
type budgeted struct {
	kind    uint8
	i       int // in its kind's snapshot slice
	created time.Time
	name    string
	cost    int
}

// decide finds the objects over their namespace's budget in s. It looks
// at each object of a kind that changed once; each kind's names by
// namespace are kept for the next decision, so a kind that did not change
// costs a look at each namespace (a source's objects come grouped by
// namespace: one map update per run of them).
func (nb *nsBudget) decide(s *model.Snapshot) {
	// Before the first decision the slices are nil: a kind the snapshot
	// has none of is kept, with no names.
	servicesKept := sameSlice(s.Services, nb.servicesFrom) && sameSlice(s.EndpointSlices, nb.slicesFrom)
	sesKept := sameSlice(s.ServiceEntries, nb.sesFrom)
	endpoints, svcTotal, seTotal := nb.endpoints, nb.svcTotal, nb.seTotal
	*nb = nsBudget{max: nb.max, servicesFrom: s.Services, slicesFrom: s.EndpointSlices, sesFrom: s.ServiceEntries,
		services: s.Services, slices: s.EndpointSlices, ses: s.ServiceEntries, endpoints: endpoints, svcTotal: svcTotal, seTotal: seTotal}
	if !servicesKept {
		nb.endpoints, nb.svcTotal = servicesTotal(s, nb.endpoints, nb.svcTotal)
	}
	if !sesKept {
		nb.seTotal = reuseMap(nb.seTotal)
		runs := namespaceRuns{total: nb.seTotal}
		for i := range s.ServiceEntries {
			se := &s.ServiceEntries[i]
			runs.add(se.Namespace, serviceEntryCost(se))
		}
		runs.end()
	}
	endpoints = nb.endpoints
	total := func(ns string) int { return nb.svcTotal[ns] + nb.seTotal[ns] }
	var over map[string][]budgeted
	for _, m := range [2]map[string]int{nb.svcTotal, nb.seTotal} {
		for ns := range m {
			if total(ns) > nb.max {
				if over == nil {
					over = map[string][]budgeted{}
				}
				over[ns] = nil
			}
		}
	}
	if over == nil {
		return
	}
	for i := range s.Services {
		svc := &s.Services[i]
		if list, ok := over[svc.Namespace]; ok {
			over[svc.Namespace] = append(list, budgeted{kind: kindService, i: i, created: svc.Created, name: svc.Name,
				cost: serviceCost(svc, endpoints)})
		}
	}
	for i := range s.ServiceEntries {
		se := &s.ServiceEntries[i]
		if list, ok := over[se.Namespace]; ok {
			over[se.Namespace] = append(list, budgeted{kind: kindServiceEntry, i: i, created: se.Created, name: se.Name,
				cost: serviceEntryCost(se)})
		}
	}
	leftOut := [2]map[int]bool{kindService: {}, kindServiceEntry: {}}
	for _, ns := range slices.Sorted(maps.Keys(over)) {
		list := over[ns]
		slices.SortFunc(list, func(a, b budgeted) int {
			return cmp.Or(a.created.Compare(b.created), strings.Compare(a.name, b.name), cmp.Compare(a.kind, b.kind), cmp.Compare(a.i, b.i))
		})
		used := 0
		var out []budgeted
		for _, o := range list {
			if used+o.cost <= nb.max {
				used += o.cost
				continue
			}
			out = append(out, o)
			leftOut[o.kind][o.i] = true
		}
		nb.namespaces++
		nb.objects += len(out)
		nb.warnings = append(nb.warnings, objWarning{key: objKey{ns: ns}, err: budgetWarning(ns, total(ns), nb.max, used, out)})
	}
	if len(leftOut[kindService]) > 0 {
		nb.services = make([]model.Service, 0, len(s.Services)-len(leftOut[kindService]))
		var headless map[objKey]bool // left out, whose slices go with them
		for i := range s.Services {
			svc := &s.Services[i]
			switch {
			case !leftOut[kindService][i]:
				nb.services = append(nb.services, *svc)
			case svc.Headless:
				if headless == nil {
					headless = map[objKey]bool{}
				}
				headless[objKey{svc.Namespace, svc.Name}] = true
			}
		}
		if headless != nil {
			nb.slices = make([]model.EndpointSlice, 0, len(s.EndpointSlices))
			for i := range s.EndpointSlices {
				if es := &s.EndpointSlices[i]; !headless[objKey{es.Namespace, es.ServiceName}] {
					nb.slices = append(nb.slices, *es)
				}
			}
		}
	}
	if len(leftOut[kindServiceEntry]) > 0 {
		nb.ses = make([]model.ServiceEntry, 0, len(s.ServiceEntries)-len(leftOut[kindServiceEntry]))
		for i := range s.ServiceEntries {
			se := &s.ServiceEntries[i]
			if !leftOut[kindServiceEntry][i] {
				nb.ses = append(nb.ses, *se)
			} else if len(se.StatusAddresses) > 0 {
				nb.leftOutStatus = true
			}
		}
	}
}

// budgetWarning says which objects of namespace ns were left out (list,
// oldest first), its objects making total names, used of them kept.
func budgetWarning(ns string, total, budget, used int, list []budgeted) error {
	var b strings.Builder
	for j, o := range list {
		if j == maxListedOverBudget {
			fmt.Fprintf(&b, " and %d more", len(list)-j)
			break
		}
		if j > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %s (%d names)", kinds[o.kind], o.name, o.cost)
	}
	return fmt.Errorf("namespace %s: its objects make %d names, over the budget of %d per namespace (--max-names-per-namespace); the oldest that fit are served (%d names), the others left out: %s",
		ns, total, budget, used, b.String())
}

// leftOutWarning says which objects the source left out, and why: one
// warning for them all, naming the first few.
func leftOutWarning(lo model.LeftOut) error {
	named := lo.Keys[:min(len(lo.Keys), maxListedOverBudget)]
	list := strings.Join(named, ", ")
	if n := len(lo.Keys) - len(named); n > 0 {
		list += fmt.Sprintf(" and %d more", n)
	}
	kind := lo.Kind
	if len(lo.Keys) > 1 {
		kind = plural(kind)
	}
	return fmt.Errorf("%d %s left out, their names forwarded: %s: %s", len(lo.Keys), kind, lo.Why, list)
}

// plural is the plural of a kind's name: ServiceEntry, ServiceEntries.
func plural(kind string) string {
	if k, ok := strings.CutSuffix(kind, "y"); ok {
		return k + "ies"
	}
	return kind + "s"
}

// serviceCost is the names a Service makes in the table (an upper bound):
// its own name, and for a ClusterIP Service one per address (its reverse
// name) and per port (an SRV record); a headless one's endpoints, as
// endpointsCost, are in endpoints.
func serviceCost(svc *model.Service, endpoints map[objKey]int) int {
	switch {
	case svc.ExternalName != "":
		return 1
	case svc.Headless:
		return 1 + endpoints[objKey{svc.Namespace, svc.Name}]
	}
	return 1 + len(svc.ClusterIPs) + len(svc.Ports)
}

// endpointsCost is the names an EndpointSlice makes for its headless
// Service (an upper bound): two per endpoint address (an endpoint name,
// the address's reverse name) and one more per named port (an SRV
// record). Ready or not: a pod becoming ready does not push an object of
// its namespace out.
func endpointsCost(es *model.EndpointSlice) int {
	per := 2
	for _, p := range es.Ports {
		if p.Name != "" {
			per++
		}
	}
	n := 0
	for _, ep := range es.Endpoints {
		n += len(ep.Addresses)
	}
	return n * per
}

// serviceEntryCost is the names a ServiceEntry makes in the table (an
// upper bound): one per host, and one per address of spec.addresses (its
// hosts share them) and of status.addresses.
func serviceEntryCost(se *model.ServiceEntry) int {
	return len(se.Hosts) + len(se.Addresses) + len(se.StatusAddresses)
}
