// The name table built from each snapshot of the source (apply), and what a
// build tells the operator: its log lines, its warnings, and where the
// default exportTo comes from.

package agent

import (
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/resolver/vip"
)

// apply takes a snapshot from the source: a new table for the resolver and
// the source's pods for the registry.
func (a *Agent) apply(s *model.Snapshot) {
	start := time.Now()
	a.followKubeDNSTTL(s)
	a.knowClusterDNS(s)
	tbl, warnings := a.builder.Build(s)
	a.server.SetTable(tbl)
	a.pods.SetSourcePods(s.Pods)
	if a.dataplane != nil && !a.handedOver.Load() { // else the successor's to do
		a.dataplane.controller.SetNamespaces(s.Namespaces)
		a.dataplane.controller.Redecide() // labels and annotations may have changed
	}
	took := time.Since(start)
	metricTableBuild.Observe(took.Seconds())
	metricTableNames.Set(float64(tbl.Len()))
	metricTableWarnings.Set(float64(len(warnings)))
	for reason, n := range tbl.HostsWithoutVIP() {
		metricTableHostsWithoutVIP.WithLabelValues(reason).Set(float64(n))
	}
	metricTableAllocatedIPv4VIPs.Set(float64(tbl.AllocatedIPv4VIPs()))
	overNamespaces, overObjects := a.builder.OverBudget()
	metricTableNamespacesOverBudget.Set(float64(overNamespaces))
	metricTableObjectsOverBudget.Set(float64(overObjects))
	// A directory of broken objects must not make the agent keep (or log)
	// an unbounded list: the first ones say what is wrong.
	kept := warnings[:min(len(warnings), control.MaxStoredWarnings)]
	msgs := make([]string, 0, len(kept))
	for _, w := range kept {
		msgs = append(msgs, w.Error())
	}
	omitted := len(warnings) - len(kept)
	a.noteMeshExportTo(s)
	a.mu.Lock()
	lastMsgs, lastOmitted := a.warnings, a.warningsOmitted
	a.warnings, a.warningsOmitted = msgs, omitted
	a.exportToFrom = exportToStatus(a.builder.DefaultExportTo(), a.cfg.DefaultExportTo != nil, s.DefaultExportToFrom())
	switch a.builder.VIPsFrom() {
	case vip.FromStatus:
		a.vipsFrom = "istiod's status.addresses"
	case vip.FromNowhere:
		a.vipsFrom = "none, hosts without spec.addresses forwarded"
	default:
		a.vipsFrom = "ztdns's allocator"
	}
	a.mu.Unlock()
	a.logWarnings(lastMsgs, lastOmitted, msgs, omitted, warnings)
	a.logTableUpdate("names", tbl.Len(), "services", len(s.Services), "serviceEntries", len(s.ServiceEntries),
		"pods", len(s.Pods), "took", took)
	if !a.ready.Swap(true) {
		close(a.firstTable)
		// The first build replaces a lot of transient parsing garbage; hand
		// it back to the OS now rather than whenever the scavenger gets to it.
		debug.FreeOSMemory()
	}
}

// tableLogEvery is the least time between two INFO lines of routine table
// updates (tableUpdates).
const tableLogEvery = time.Minute

// logTableUpdate logs a table build at INFO, the first at once, the later
// ones, which follow every change anywhere in the cluster (up to 20 a
// second from Kubernetes, on every node), at most once per tableLogEvery,
// saying how many went unlogged since the last (unloggedBefore); those
// are logged at DEBUG. What warns is logged apart, each time
// (logWarnings).
func (a *Agent) logTableUpdate(args ...any) {
	a.tableUpdates.InfoElseDebug(a.log, "name table updated", args...)
}

// logWarnings logs how the table's warnings changed since the last build
// (last and lastOmitted, as kept then): each one listed now that was not
// listed then, the count of those not listed when it changes, and how many
// listed then are gone. A build repeats every warning that still holds,
// and a snapshot follows any change in the cluster: logging them all on
// every build would let whoever may write one bad ServiceEntry fill every
// node's log. ztdns status lists those kept, ztdns_table_warnings counts
// them all.
func (a *Agent) logWarnings(last []string, lastOmitted int, kept []string, omitted int, all []error) {
	listed := make(map[string]bool, len(last))
	for _, m := range last {
		listed[m] = true
	}
	for _, m := range kept {
		if !listed[m] {
			// Not every warning leaves something out ("every namespace
			// sees it"): the warning says what it did.
			a.log.Warn("name table warning", "err", m)
		}
	}
	if omitted > 0 && omitted != lastOmitted {
		a.log.Warn("more name table warnings; not listing them", "more", omitted)
	}
	if len(last) == 0 {
		return
	}
	// Those listed then and gone now; one still there but no longer among
	// the first kept is not cleared.
	for _, m := range kept {
		delete(listed, m)
	}
	for _, w := range all[len(kept):] {
		if len(listed) == 0 {
			break
		}
		delete(listed, w.Error())
	}
	if cleared := len(listed); cleared > 0 {
		a.log.Info("table warnings cleared", "cleared", cleared, "remaining", len(all))
	}
}

// exportToStatus says what the default exportTo of ServiceEntries is
// (exportTo, nil for every namespace) and where it comes from: the flag
// when given, else the mesh config named meshFrom, else Istio's default.
func exportToStatus(exportTo []string, flag bool, meshFrom string) string {
	value := `"*"`
	if exportTo != nil {
		value = strconv.Quote(strings.Join(exportTo, ","))
	}
	switch {
	case flag:
		return value + " (--default-service-export-to)"
	case meshFrom != "":
		return value + " (mesh config " + meshFrom + ")"
	}
	return value + " (Istio's default)"
}

// noteMeshExportTo says once that --default-service-export-to overrides
// Istio's mesh config, the first time the source delivers a snapshot whose
// mesh config differs: the two then scope ServiceEntries apart, istiod by
// the mesh config, ztdns by the flag. A mesh config that is absent or gives
// no defaultServiceExportTo is Istio's default "*" to istiod, and differs
// from any other flag value.
func (a *Agent) noteMeshExportTo(s *model.Snapshot) {
	if a.meshIgnored || a.cfg.DefaultExportTo == nil || s.MeshConfig == "" {
		return
	}
	mesh := s.DefaultExportTo
	if mesh == nil {
		mesh = []string{"*"} // Istio's default, as istiod has it
	}
	if slices.Equal(a.cfg.DefaultExportTo, mesh) {
		return
	}
	a.meshIgnored = true
	a.log.Warn("--default-service-export-to differs from Istio's mesh config and wins: istiod scopes ServiceEntries without exportTo by the mesh config "+
		`(Istio's default "*" when it gives none), ztdns by the flag; `+
		"leave the flag out (chart: resolver.defaultServiceExportTo empty) to follow the mesh config",
		"flag", a.cfg.DefaultExportTo, "meshConfig", s.MeshConfig, "defaultServiceExportTo", mesh)
}
