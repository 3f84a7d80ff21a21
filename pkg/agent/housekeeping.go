// Housekeeping: what a serving agent looks at again every
// housekeepingInterval because no event tells it: CNI events recorded while
// no agent answered, dead and orphaned records, the addresses of namespaces
// captured by hand, lost marks.

package agent

import (
	"context"
	"time"

	"github.com/ztdns/ztdns/pkg/capture"
	"github.com/ztdns/ztdns/pkg/podcache"
)

// housekeepingInterval is how often a serving agent looks again at what no
// event tells it: CNI events recorded while no agent answered, records
// whose network namespace died without a DEL (capture's Redecide, or
// dropDeadRecords without capture), the addresses of namespaces captured by hand
// (readdressByHand), marks the pods map lost or no record holds
// (RepairMarks), and nameserver slots an unmark left behind.
var housekeepingInterval = 30 * time.Second

// keepHouse runs the looks of housekeepingInterval until ctx ends or the
// agent hands over to a successor (which then does them).
func (a *Agent) keepHouse(ctx context.Context) {
	a.replayPending() // what was recorded until the control socket listened
	t := time.NewTicker(housekeepingInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if a.handedOver.Load() {
			return
		}
		a.housekeep()
	}
}

// housekeep is one of keepHouse's looks.
func (a *Agent) housekeep() {
	a.replayPending()
	if a.dataplane == nil {
		a.dropDeadRecords()
		return
	}
	a.dataplane.controller.Redecide()
	a.readdressByHand()
	a.dataplane.controller.RepairMarks()
	a.dataplane.controller.SweepNameservers()
}

// dropDeadRecords forgets, without capture (whose Redecide does it), the
// ADDs' records whose network namespace is dead (capture.NetnsDead): a
// lost DEL would leave the record claiming its IP, and the pod given that
// IP next would be answered as the dead pod (its namespace's names) for as
// long as the agent runs. Then the orphaned records, whose pod is unknown
// to the source and whose namespace lives on with no process in it
// (dropOrphanedRecords). The namespaces are looked at
// outside cniMu, so no ADD waits for them; a record an event replaced
// meanwhile is left.
func (a *Agent) dropDeadRecords() {
	ns := capture.ProcNamespaces{Root: a.cfg.ProcRoot}
	for key, att := range a.pods.Attachments() {
		if !capture.NetnsDead(ns, att) {
			continue
		}
		if a.forgetRecord(key, att) {
			a.log.Info("pod's network namespace is gone; forgetting it", "pod", att.Namespace+"/"+att.Name, "container", att.ContainerID, "netns", att.NetnsPath)
		}
	}
	a.dropOrphanedRecords(ns)
}

// dropOrphanedRecords forgets, without capture, the orphaned records,
// whose pod has been unknown to the source for 5 minutes and whose network
// namespace lives on with no process in it, as capture's Redecide does
// (capture.UnknownSince, capture.Orphaned): a
// sandbox whose DEL never came and whose namespace stayed mounted would
// otherwise keep its record, and its claim on an IP, until the agent
// restarts. Only where the source watches the node's pods; the node's
// processes are scanned only when a record is due.
func (a *Agent) dropOrphanedRecords(ns capture.ProcNamespaces) {
	if !a.cfg.watchesPods() || a.cfg.NodeName == "" {
		return
	}
	now := time.Now()
	if a.now != nil {
		now = a.now()
	}
	due := a.unknownSince.Due(a.pods, a.pods.Attachments(), now)
	if len(due) == 0 {
		return
	}
	scan, err := ns.Scan(nil)
	if err != nil {
		a.log.Error("scanning the node's processes for the network namespaces of pods the source lost failed", "err", err)
		return
	}
	for _, r := range capture.Orphaned(a.log, scan, nil, due) {
		if a.forgetRecord(r.Key, r.Attachment) {
			capture.LogOrphanForgotten(a.log, r, now, nil)
		}
	}
}

// forgetRecord forgets, without capture, the record with that key if it
// still records att's network namespace, and reports whether it did.
func (a *Agent) forgetRecord(key string, att podcache.Attachment) bool {
	a.cniMu.Lock()
	defer a.cniMu.Unlock()
	cur, ok := a.pods.Attachment(key)
	if !ok || cur.NetnsCookie != att.NetnsCookie || cur.NetnsPath != att.NetnsPath {
		return false
	}
	a.pods.Detach(key)
	return true
}
