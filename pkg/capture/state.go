// The record of attachments on disk, which tells a restarted agent whose
// marks are in the pods map (Restore, save), and keeping the marks in line
// with the records (MarkRecorded, RepairMarks).

package capture

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/ztdns/ztdns/pkg/podcache"
)

// StateFile is the name of the record of attachments in Config.StateDir.
const StateFile = "attachments.json"

// record is one attachment as the record on disk keeps it: with the boot
// its netns cookie belongs to. Cookies count from 1 again at every boot, so
// a record that outlived a reboot (a --state-dir on disk) would otherwise
// name, by chance, namespaces of this boot: those of pods that started as
// early as the recorded ones did. An older agent's record has no boot ID and
// is taken for this boot's; an older agent reading this one ignores it.
//
// AddedWithoutIstioCNI says a CNI ADD announced the sandbox while istio-cni
// was missing from the node's CNI chain (Controller.addedWithoutIstioCNI):
// a restarted agent must not take it for one istio-cni set up. An older
// agent ignores the field.
type record struct {
	podcache.Attachment
	BootID               string `json:"bootID,omitempty"`
	AddedWithoutIstioCNI bool   `json:"addedWithoutIstioCNI,omitempty"`
}

// stateRetryEvery is how often a record that could not be written is tried
// again.
const stateRetryEvery = 5 * time.Second

// Restore reads the attachments a previous agent recorded, drops those
// whose network namespace is dead (netnsDead; an adopted record follows
// another process of its namespace: follow), and makes the pods map agree:
// marks nobody recorded are removed, recorded captured pods whose mark is
// missing get it back. Redecide does nothing until it has run.
func (c *Controller) Restore() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	defer c.restored.Store(true)
	if c.fenced.Load() {
		return ErrFenced
	}
	saved, err := c.load()
	if err != nil {
		c.log.Warn("ignoring unreadable capture state; marks are rebuilt from the source and the runtime", "err", err)
		c.keepAside()
	}
	var live liveNetns
	recorded := map[uint64]bool{}
	// istio-cni in the chain at the first look: whatever left it before is
	// over (see SetNoIstioCNI).
	istioCNIBack := c.chainTold.Load() && !c.noIstioCNI.Load()
	for _, r := range c.thisBoot(saved) {
		a := r.Attachment
		recorded[a.NetnsCookie] = true
		if c.netnsDead(a) {
			moved, keep := c.follow(a.Key(), a, &live)
			if !keep {
				c.log.Info("pod's network namespace is gone; forgetting it", "pod", a.Namespace+"/"+a.Name, "netns", a.NetnsPath)
				continue
			}
			if moved.NetnsPath != a.NetnsPath {
				c.logFollowing(moved)
			}
			a = moved
		}
		c.pods.Attach(a)
		if r.AddedWithoutIstioCNI && announcedByADD(a) && !istioCNIBack {
			c.graceMu.Lock()
			c.addedWithoutIstioCNI[a.Key()] = true
			c.graceMu.Unlock()
		}
	}
	err = c.reconcileLocked(recorded)
	c.saveOrRetry()
	return err
}

// MarkRecorded marks, without looking at their network namespaces, the
// pods captured in the record a previous agent left, and returns how many:
// for a pods map that holds no mark yet (one an upgrade replaced), before
// the programs that read it are attached, so that no captured pod goes
// uncaptured until Restore. A mark whose namespace is gone is harmless (a
// netns cookie is not reused within a boot, and a record of another boot
// marks nothing) until Restore, which checks every record, removes it. It
// changes no record, in memory or on disk; an unreadable
// record marks nothing (Restore keeps it aside).
func (c *Controller) MarkRecorded() (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fenced.Load() {
		return 0, ErrFenced
	}
	recorded, err := c.load()
	if err != nil {
		return 0, err
	}
	var saved []podcache.Attachment
	for _, r := range c.thisBoot(recorded) {
		saved = append(saved, r.Attachment)
	}
	slices.SortFunc(saved, func(a, b podcache.Attachment) int { return podcache.OldestFirst(&a, &b) })
	var errs []error
	marked := 0
	for _, a := range capturedByNetns(saved) {
		if err := c.setMark(a); err != nil {
			errs = append(errs, err)
		} else {
			marked++
		}
	}
	return marked, errors.Join(errs...)
}

// capturedByNetns returns the captured records by netns cookie: of two for
// one network namespace (a re-ADD before the old sandbox's DEL), the
// newest, which gives the mark its IPs. atts are oldest first.
func capturedByNetns(atts []podcache.Attachment) map[uint64]podcache.Attachment {
	want := map[uint64]podcache.Attachment{}
	for _, a := range atts {
		if a.Captured {
			want[a.NetnsCookie] = a
		}
	}
	return want
}

// keepAside renames an unreadable record before a new one replaces it: it
// may hold what nothing else can rebuild (pods captured by hand).
func (c *Controller) keepAside() {
	aside := c.statePath() + ".corrupt-" + c.cfg.Now().UTC().Format("20060102T150405Z")
	if err := os.Rename(c.statePath(), aside); err != nil {
		c.log.Error("cannot keep the unreadable record of captured pods aside; it is overwritten", "path", c.statePath(), "err", err)
		return
	}
	c.log.Warn("kept the unreadable record of captured pods aside", "path", aside)
}

// reconcileLocked makes the pods map match the attachments. recorded are
// the netns cookies of the record read (its namespaces gone included): a
// mark of none of them nor of an attachment is one whose record was lost.
// Callers hold mu.
func (c *Controller) reconcileLocked(recorded map[uint64]bool) error {
	stale, missing, err := c.markDriftLocked()
	if err != nil {
		return err
	}
	for _, a := range c.pods.Attachments() {
		recorded[a.NetnsCookie] = true
	}
	var errs []error
	unrecorded := 0
	for _, cookie := range stale {
		if recorded[cookie] {
			c.log.Info("removing a stale mark", "netnsCookie", cookie)
		} else {
			unrecorded++
		}
		errs = append(errs, c.removeStaleMark(cookie))
	}
	if unrecorded > 0 {
		// Once, not a line a mark: a state directory removed while the
		// agent was stopped (a systemd RuntimeDirectory) loses them all.
		c.log.Warn("removing marks no record of captured pods holds: the record in the state directory was lost since they were made (the directory removed or emptied while the agent was stopped?); "+
			"pods of the source and the runtime are marked again as they are found, network namespaces captured by hand are not: capture add them again, and keep --state-dir where it survives the agent's stops",
			"marks", unrecorded, "stateDir", c.cfg.StateDir)
	}
	for _, a := range missing {
		c.log.Info("restoring a missing mark", "pod", a.Namespace+"/"+a.Name, "netnsCookie", a.NetnsCookie)
		errs = append(errs, c.restoreMissingMark(a))
	}
	// Once the marks are right: the learned nameservers of what is no
	// longer marked go too.
	errs = append(errs, c.sweepLocked())
	return errors.Join(errs...)
}

// markDriftLocked compares the pods map with the attachments: stale are
// the marks of network namespaces no attachment captures, missing the
// captured attachments (the newest of each namespace) whose namespace has
// no mark, by cookie. Callers hold mu, under which an attachment is stored
// in the same step as its mark (applyLocked): a CNI ADD's mark is never
// seen without its record.
func (c *Controller) markDriftLocked() (stale []uint64, missing []podcache.Attachment, err error) {
	marked, err := c.marker.Pods()
	if err != nil {
		return nil, nil, err
	}
	want := capturedByNetns(c.pods.AttachmentsOldestFirst())
	have := make(map[uint64]bool, len(marked))
	for _, m := range marked {
		have[m.NetnsCookie] = true
		if _, ok := want[m.NetnsCookie]; !ok {
			stale = append(stale, m.NetnsCookie)
		}
	}
	slices.Sort(stale)
	for _, cookie := range slices.Sorted(maps.Keys(want)) {
		if !have[cookie] {
			missing = append(missing, want[cookie])
		}
	}
	return stale, missing, nil
}

// removeStaleMark and restoreMissingMark repair one mark, counting it in
// ztdns_capture_mark_repairs_total. Callers hold mu.
func (c *Controller) removeStaleMark(cookie uint64) error {
	if err := c.marker.Unmark(cookie); err != nil {
		return err
	}
	metricStaleMarksRemoved.Inc()
	return nil
}

func (c *Controller) restoreMissingMark(a podcache.Attachment) error {
	if err := c.setMark(a); err != nil {
		return err
	}
	metricMarksRestored.Inc()
	return nil
}

// repairsLogged bounds the pods or cookies a line of RepairMarks names.
const repairsLogged = 10

// RepairMarks makes the pods map match the attachments while the agent
// runs, as Restore does when it starts: a captured pod whose mark is gone
// (deleted from the map by hand, say) is marked again, and a mark no
// attachment captures (one whose unmark failed when its record was
// forgotten or replaced) is removed: it would hold a slot of the pods map,
// count as a marked pod, and keep its namespace's nameservers from
// SweepNameservers, which the agent runs after it. Each repair is counted
// in ztdns_capture_mark_repairs_total; a pass that repaired something logs
// one line of each kind. It holds mu, as applyLocked does from a mark to
// its record, so a mark an ADD in flight makes is never taken for stale.
// It does nothing before Restore (which reconciles itself, and before
// which no attachment is in memory) and once fenced.
func (c *Controller) RepairMarks() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fenced.Load() || !c.restored.Load() {
		return
	}
	stale, missing, err := c.markDriftLocked()
	if err != nil {
		c.log.Warn("cannot read the pods map to check the marks of captured pods", "err", err)
		return
	}
	var errs []error
	var removed []uint64
	for _, cookie := range stale {
		if err := c.removeStaleMark(cookie); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, cookie)
	}
	var restored []string
	for _, a := range missing {
		if err := c.restoreMissingMark(a); err != nil {
			errs = append(errs, err)
			continue
		}
		restored = append(restored, a.Namespace+"/"+a.Name)
	}
	if len(removed) > 0 {
		c.log.Info("removed marks no captured pod's record holds", "marks", len(removed), "netnsCookies", removed[:min(len(removed), repairsLogged)])
	}
	if len(restored) > 0 {
		c.log.Warn("marked captured pods again whose mark was gone from the pods map (something else removed it)",
			"pods", len(restored), "names", restored[:min(len(restored), repairsLogged)])
	}
	// A failure that lasts (a full pods map) is logged when it starts
	// and when it changes, not at every pass.
	if len(errs) != c.repairFailures {
		c.repairFailures = len(errs)
		if len(errs) > 0 {
			c.log.Warn("could not repair every mark of captured pods; tried again at each housekeeping", "failed", len(errs), "err", errs[0])
		}
	}
}

// saveOrRetry writes the record of attachments. A write that fails never
// fails the pod it was written for (the mark is what captures it, and a
// restarted agent rebuilds lost records from the source and the runtime):
// it is logged, counted in ztdns_state_write_failures_total, shown by
// `ztdns status` (Unsaved), and tried again every stateRetryEvery until it
// works. Callers hold mu and have checked that the controller is not
// fenced (a fenced controller writes nothing; Fence also closes it, which
// ends the retries).
func (c *Controller) saveOrRetry() {
	err := c.save()
	if err == nil {
		if c.retry != nil {
			c.retry.Stop()
			c.retry = nil
			c.saveErr.Store(nil)
			c.log.Info("the record of captured pods is written again", "path", c.statePath())
		}
		return
	}
	metricStateWriteFailures.Inc()
	if c.retry == nil {
		c.log.Error("cannot write the record of captured pods; pods are captured all the same, and the write is retried",
			"path", c.statePath(), "every", stateRetryEvery, "err", err)
	} else {
		c.log.Debug("the record of captured pods still cannot be written", "err", err)
	}
	c.saveErr.Store(&err)
	if c.closed {
		return
	}
	if c.retry == nil {
		c.retry = time.AfterFunc(stateRetryEvery, c.retrySave)
	} else {
		c.retry.Reset(stateRetryEvery)
	}
}

func (c *Controller) retrySave() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.retry != nil && !c.closed {
		c.saveOrRetry()
	}
}

// Unsaved returns why the record on disk is not current, or nil.
func (c *Controller) Unsaved() error {
	if p := c.saveErr.Load(); p != nil {
		return *p
	}
	return nil
}

func (c *Controller) statePath() string { return filepath.Join(c.cfg.StateDir, StateFile) }

func (c *Controller) load() ([]record, error) {
	b, err := os.ReadFile(c.statePath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []record
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("%s: %w", c.statePath(), err)
	}
	return out, nil
}

// thisBoot returns the records of this boot (or of an agent that recorded
// no boot), and logs those it leaves out.
func (c *Controller) thisBoot(saved []record) []record {
	out := make([]record, 0, len(saved))
	for _, r := range saved {
		if r.BootID != "" && c.cfg.BootID != "" && r.BootID != c.cfg.BootID {
			c.log.Info("pod was recorded before the node restarted; forgetting it", "pod", r.Namespace+"/"+r.Name, "netns", r.NetnsPath)
			continue
		}
		out = append(out, r)
	}
	return out
}

// save writes the attachments atomically, as a JSON array sorted by key,
// before the change it records is answered: a successor that reads it
// (Restore, MarkRecorded) must find every pod marked. Only the records that
// changed since the last write are encoded again (encoded keeps the
// others'), and without indentation: on a node of a thousand pods a CNI
// ADD or DEL writes about 200 KB, rather than encoding 280 KB. Callers
// hold mu.
func (c *Controller) save() error {
	if c.encoded == nil {
		c.encoded = map[string]*encodedRecord{}
	}
	c.saves++
	var added []string
	var err error
	c.pods.RangeAttachments(func(key string, a podcache.Attachment) {
		e := c.encoded[key]
		if err != nil {
			return
		}
		// Read without graceMu: its writers hold mu, as save's callers do.
		late := c.addedWithoutIstioCNI[key]
		if e != nil && e.a.Equal(&a) && e.late == late {
			e.save = c.saves
			return
		}
		j, jerr := json.Marshal(record{Attachment: a, BootID: c.cfg.BootID, AddedWithoutIstioCNI: late})
		if err = jerr; err != nil {
			return
		}
		if e == nil {
			added = append(added, key)
		}
		a.IPs = slices.Clone(a.IPs)
		c.encoded[key] = &encodedRecord{a: a, late: late, json: j, save: c.saves}
	})
	if err != nil {
		// Records encoded before the failure are in encoded but not in
		// keys: the next save encodes every record again.
		c.encoded, c.keys = nil, nil
		return err
	}
	// keys stays sorted: the forgotten go, the new ones go in their place.
	// encoded holds keys and added, and nothing else.
	if slices.ContainsFunc(c.keys, func(k string) bool { return c.encoded[k].save != c.saves }) {
		maps.DeleteFunc(c.encoded, func(_ string, e *encodedRecord) bool { return e.save != c.saves })
		c.keys = slices.DeleteFunc(c.keys, func(k string) bool { return c.encoded[k] == nil })
	}
	// A forgotten record's sandbox is forgotten there too.
	c.graceMu.Lock()
	maps.DeleteFunc(c.addedWithoutIstioCNI, func(k string, _ bool) bool { return c.encoded[k] == nil })
	c.graceMu.Unlock()
	for _, key := range added {
		i, _ := slices.BinarySearch(c.keys, key)
		c.keys = slices.Insert(c.keys, i, key)
	}
	b := make([]byte, 0, c.savedSize+512)
	b = append(b, '[')
	for i, key := range c.keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, c.encoded[key].json...)
	}
	b = append(b, ']')
	c.savedSize = len(b)
	if err := os.MkdirAll(c.cfg.StateDir, 0o750); err != nil {
		return err
	}
	tmp := c.statePath() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, c.statePath())
}

// encodedRecord is a record as save last encoded it.
type encodedRecord struct {
	a    podcache.Attachment
	late bool // AddedWithoutIstioCNI
	json []byte
	save uint64 // the last save that found the record
}
