// Orphaned records: those whose pod has been unknown to the source for
// unknownToSourceGrace and whose network namespace lives on with no
// process in it. The controller forgets them (dropOrphanedRecords), as
// does an agent without capture, which keeps records but no controller.

package capture

import (
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/ztdns/ztdns/pkg/podcache"
)

// unknownToSourceGrace is how long the pod of a record whose network
// namespace lives may be unknown to the source before the record is
// forgotten, if no process holds the namespace: longer than a watch lags
// behind the runtime (an ADD comes before the pod is delivered).
const unknownToSourceGrace = 5 * time.Minute

// UnknownSince keeps since when the pod of each record has been unknown to
// the source (unknownToSource), so that an orphaned record, unknown for
// unknownToSourceGrace with its network namespace living on with no
// process in it, can be forgotten: a sandbox whose DEL never came (the
// runtime crashed, or was restarted without it) and whose namespace stayed
// mounted (/var/run/netns/cni-…) would otherwise keep its record, and its
// claim on an IP, until the node reboots, or, without capture, until the
// agent restarts. The controller keeps one (dropOrphanedRecords), as does
// an agent without capture. Only where the source watches every pod of
// the node: other sources name only the pods someone wrote down. Not safe
// for concurrent use.
type UnknownSince struct {
	since map[string]unknownAt
}

// UnknownRecord is a record whose pod has been unknown to the source since
// Since.
type UnknownRecord struct {
	Key        string
	Attachment podcache.Attachment
	Since      time.Time
}

// Due returns, sorted by key, the records of atts whose pod has been
// unknown to the source (pods) for unknownToSourceGrace by now, and keeps
// since when the others' have been: a record whose pod is back, or that
// records another network namespace, starts again. Records made by hand
// have no pod.
func (l *UnknownSince) Due(pods *podcache.Cache, atts map[string]podcache.Attachment, now time.Time) []UnknownRecord {
	unknown := map[string]unknownAt{}
	var due []UnknownRecord
	for key, a := range atts {
		if a.ContainerID == "" || !unknownToSource(pods, a) {
			continue
		}
		r, ok := l.since[key]
		if !ok || r.cookie != a.NetnsCookie {
			r = unknownAt{cookie: a.NetnsCookie, since: now}
		}
		unknown[key] = r
		if now.Sub(r.since) >= unknownToSourceGrace {
			due = append(due, UnknownRecord{Key: key, Attachment: a, Since: r.since})
		}
	}
	l.since = unknown
	slices.SortFunc(due, func(a, b UnknownRecord) int { return strings.Compare(a.Key, b.Key) })
	return due
}

// Orphaned returns the records of due that are orphaned, their network
// namespace held by no process, by one scan of the node's processes: none is
// among those it found (by cookie) or, of the recorded namespaces it did not
// look into (ids: their NsIDs by cookie, nil for a scan that looked into
// every one), among those it listed by NsID. A scan that could not open
// every process's namespace proves nothing: it returns none.
func Orphaned(log *slog.Logger, scan ScanResult, ids map[uint64]NsID, due []UnknownRecord) []UnknownRecord {
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
	var out []UnknownRecord
	for _, r := range due {
		// A recorded namespace that lives (its record is still there,
		// not dead) is the only one with its NsID.
		if id, ok := ids[r.Attachment.NetnsCookie]; held[r.Attachment.NetnsCookie] || ok && heldID[id] {
			continue
		}
		out = append(out, r)
	}
	return out
}

// LogOrphanForgotten logs that r's orphaned record was forgotten (at now):
// its pod is unknown to the source and no process is in its network
// namespace; err is the unmark's, if any.
func LogOrphanForgotten(log *slog.Logger, r UnknownRecord, now time.Time, err error) {
	a := r.Attachment
	args := []any{"pod", a.Namespace + "/" + a.Name, "container", a.ContainerID, "netns", a.NetnsPath,
		"lostFor", now.Sub(r.Since).Round(time.Second)}
	if err != nil {
		args = append(args, "err", err)
	}
	log.Info("pod is gone from the source and no process is in its network namespace; forgetting it", args...)
}

// unknownToSource reports whether the pod an attachment records is unknown
// to the source (pods): it no longer has it, or has another pod under its
// name.
func unknownToSource(pods *podcache.Cache, a podcache.Attachment) bool {
	p := pods.Get(a.Namespace, a.Name)
	if p == nil || p.Spec == nil {
		return true
	}
	return a.UID != "" && p.Spec.UID != "" && a.UID != p.Spec.UID
}

// unknownAt is since when the pod of a record of the network namespace
// with that cookie has been unknown to the source.
type unknownAt struct {
	cookie uint64
	since  time.Time
}
