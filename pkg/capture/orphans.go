package capture

import (
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/ztdns/ztdns/pkg/podcache"
)

// sourceLostGrace is how long the source may go without the pod of a
// record whose network namespace lives before the record is forgotten,
// if no process holds the namespace: longer than a watch lags behind the
// runtime (an ADD comes before the pod is delivered).
const sourceLostGrace = 5 * time.Minute

// LostRecords keeps since when the source has lost the pod of each record
// (sourceLost), so that a record lost for sourceLostGrace whose network
// namespace lives on with no process in it can be forgotten: a sandbox
// whose DEL never came (the runtime crashed, or was restarted without it)
// and whose namespace stayed mounted (/var/run/netns/cni-…) would
// otherwise keep its record, and its claim on an IP, until the node
// reboots, or, without capture, until the agent restarts. The controller
// keeps one (dropLost), as does an agent without capture, which keeps
// records but no controller. Only where the source watches every pod of
// the node: other sources name only the pods someone wrote down. Not safe
// for concurrent use.
type LostRecords struct {
	since map[string]lostRecord
}

// LostRecord is a record whose pod the source has lost since Since.
type LostRecord struct {
	Key        string
	Attachment podcache.Attachment
	Since      time.Time
}

// Due returns, sorted by key, the records of atts whose pod the source
// (pods) has lost for sourceLostGrace by now, and keeps since when the
// others' are lost: a record whose pod is back, or that records another
// network namespace, starts again. Records made by hand have no pod.
func (l *LostRecords) Due(pods *podcache.Cache, atts map[string]podcache.Attachment, now time.Time) []LostRecord {
	lost := map[string]lostRecord{}
	var due []LostRecord
	for key, a := range atts {
		if a.ContainerID == "" || !sourceLost(pods, a) {
			continue
		}
		r, ok := l.since[key]
		if !ok || r.cookie != a.NetnsCookie {
			r = lostRecord{cookie: a.NetnsCookie, since: now}
		}
		lost[key] = r
		if now.Sub(r.since) >= sourceLostGrace {
			due = append(due, LostRecord{Key: key, Attachment: a, Since: r.since})
		}
	}
	l.since = lost
	slices.SortFunc(due, func(a, b LostRecord) int { return strings.Compare(a.Key, b.Key) })
	return due
}

// Unheld returns the records of due whose network namespace no process
// holds, by one scan of the node's processes: none is among those it
// found (by cookie) or, of the recorded namespaces it did not look into
// (ids: their NsIDs by cookie, nil for a scan that looked into every
// one), among those it listed by NsID. A scan that could not open every
// process's namespace proves nothing: it returns none.
func Unheld(log *slog.Logger, scan ScanResult, ids map[uint64]NsID, due []LostRecord) []LostRecord {
	if scan.Denied > 0 {
		log.Debug("not forgetting pods the source lost: the network namespaces of some processes cannot be opened", "processes", scan.Denied)
		return nil
	}
	held := map[uint64]bool{}
	for _, n := range scan.Found {
		held[n.Cookie] = true
	}
	heldID := map[NsID]bool{}
	for _, n := range scan.Known {
		heldID[n.ID] = true
	}
	var out []LostRecord
	for _, r := range due {
		// A recorded namespace that lives (its record is still there,
		// not gone) is the only one with its NsID.
		if id, ok := ids[r.Attachment.NetnsCookie]; held[r.Attachment.NetnsCookie] || ok && heldID[id] {
			continue
		}
		out = append(out, r)
	}
	return out
}

// LogLostForgotten logs that r's record was forgotten (at now) because
// the source lost its pod and no process is in its network namespace; err
// is the unmark's, if any.
func LogLostForgotten(log *slog.Logger, r LostRecord, now time.Time, err error) {
	a := r.Attachment
	args := []any{"pod", a.Namespace + "/" + a.Name, "container", a.ContainerID, "netns", a.NetnsPath,
		"lostFor", now.Sub(r.Since).Round(time.Second)}
	if err != nil {
		args = append(args, "err", err)
	}
	log.Info("pod is gone from the source and no process is in its network namespace; forgetting it", args...)
}

// sourceLost reports whether the source (pods) no longer has the pod an
// attachment records, or has another pod under its name.
func sourceLost(pods *podcache.Cache, a podcache.Attachment) bool {
	p := pods.Get(a.Namespace, a.Name)
	if p == nil || p.Spec == nil {
		return true
	}
	return a.UID != "" && p.Spec.UID != "" && a.UID != p.Spec.UID
}

// lostRecord is since when the source has lost the pod of a record of the
// network namespace with that cookie.
type lostRecord struct {
	cookie uint64
	since  time.Time
}
