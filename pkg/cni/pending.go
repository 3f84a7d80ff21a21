package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/utils"

	"github.com/ztdns/ztdns/internal/regularfile"
	"github.com/ztdns/ztdns/pkg/control"
)

// The pending directory holds the events the agent missed, one file per
// container, written by the plugin and replayed by the agent when it starts:
//
//	<PendingDir>/del/<containerID>.json   a control.CNIDelRequest: unmark and forget the pod
//	<PendingDir>/add/<containerID>.json   a control.CNIAddRequest the agent never saw
//	                                      (onAgentUnreachable "allow")
//
// A file is written to a temporary name and renamed, so a reader sees whole
// requests only. A DEL removes the container's pending ADD, and a successful
// ADD its pending DEL, so replaying never resurrects a deleted pod nor
// deletes a live one.
//
// Nothing is recorded unless the agent's marker is in its socket directory
// (control.MarkInstalled): the agent writes it at every start, and the
// uninstall removes it (`ztdns remove-state`, the chart's cleanup: the
// plugin stays behind for the pods created under ztdns, whose DELs run it
// with the configuration cached at their ADD), as does a reboot, which
// empties /var/run, until the agent starts. No agent would replay such a
// record, and one that starts later has nothing to undo: its record of
// captured pods lived in that directory too. And at most MaxPendingRecords
// of each kind are kept, so that an agent that crash-loops does not let the
// directory, on tmpfs, grow by a file per pod for as long as it does.
const (
	pendingDelDir = "del"
	pendingAddDir = "add"
)

// MaxPendingRecords bounds the records of each kind in a pending directory
// (about: concurrent plugins may each take the last place). Past it the
// plugin logs and drops the event, at a small cost. A dropped DEL leaves the
// pod's record and mark to the agent, which forgets every record whose
// network namespace is gone on its own (capture's dropDeadRecords: at once for a
// pod its source no longer has, else at the first redecision, on a snapshot
// or housekeeping's every 30 s, once 30 s have passed since the last full
// look: within about a minute). A dropped ADD leaves an
// uncaptured pod that the agent finds from its source and adopts.
const MaxPendingRecords = 4096

var (
	// errNotInstalled: the agent's marker is not in its socket directory,
	// so no agent will replay a record.
	errNotInstalled = errors.New("the ztdns agent's marker is missing: ztdns is not installed on this node, and no agent will replay the event")
	// errPendingFull: the most records of the kind are there already.
	errPendingFull = errors.New("too many events of this kind are recorded already")
)

// PendingDeletes returns the DELs recorded in dir (a plugin's PendingDir)
// while the agent was unreachable, in container ID order. The agent unmarks
// and forgets each, then calls ForgetPendingDelete. A missing dir has none.
// A record that cannot be read still yields its container ID, from the
// file name, which is all a DEL needs.
func PendingDeletes(dir string) ([]control.CNIDelRequest, error) {
	var out []control.CNIDelRequest
	err := readPending(dir, pendingDelDir, func(id string, data []byte) error {
		req := control.CNIDelRequest{ContainerID: id}
		var rec control.CNIDelRequest
		if json.Unmarshal(data, &rec) == nil && rec.ContainerID == id {
			req = rec
		}
		out = append(out, req)
		return nil
	})
	return out, err
}

// ForgetPendingDelete removes the recorded DEL of containerID; forgetting
// one that is not recorded is not an error.
func ForgetPendingDelete(dir, containerID string) error {
	return forgetPending(dir, pendingDelDir, containerID)
}

// PendingAdds returns the ADDs recorded in dir while the agent was
// unreachable (the pods started uncaptured under onAgentUnreachable
// "allow"), in container ID order. The agent decides each as if it had
// arrived over the socket, once it has checked the netns still exists and
// still has the recorded cookie, then calls ForgetPendingAdd. Records that
// cannot be decoded are reported in the error and left out; the others are
// returned with it.
func PendingAdds(dir string) ([]control.CNIAddRequest, error) {
	var out []control.CNIAddRequest
	err := readPending(dir, pendingAddDir, func(id string, data []byte) error {
		var req control.CNIAddRequest
		if err := json.Unmarshal(data, &req); err != nil {
			return err
		}
		if req.ContainerID != id {
			return fmt.Errorf("records container %q", req.ContainerID)
		}
		out = append(out, req)
		return nil
	})
	return out, err
}

// ForgetPendingAdd removes the recorded ADD of containerID; forgetting one
// that is not recorded is not an error.
func ForgetPendingAdd(dir, containerID string) error {
	return forgetPending(dir, pendingAddDir, containerID)
}

// HasPendingAdd reports whether the ADD of containerID is still recorded in
// dir: the plugin forgets it when the pod's DEL comes.
func HasPendingAdd(dir, containerID string) bool {
	path, err := pendingPath(dir, pendingAddDir, containerID)
	if err != nil {
		return false
	}
	_, err = os.Stat(path)
	return err == nil
}

// recordForAgent writes v as the pending event of kind for containerID in
// dir, for the agent whose control socket is socketPath, keeping at most
// limit records of the kind (0: MaxPendingRecords). It records nothing and
// returns errNotInstalled when the agent's marker is not beside the socket.
func recordForAgent(socketPath, dir, kind, containerID string, v any, limit int) error {
	if _, err := os.Stat(control.InstalledMarker(socketPath)); errors.Is(err, os.ErrNotExist) {
		return errNotInstalled
	}
	return recordPending(dir, kind, containerID, v, limit)
}

// recordPending writes v as the pending event of kind for
// containerID. It returns errPendingFull, and writes nothing, when limit
// (0: MaxPendingRecords) other events of the kind are recorded; the
// container's own is replaced.
func recordPending(dir, kind, containerID string, v any, limit int) error {
	if limit <= 0 {
		limit = MaxPendingRecords
	}
	path, err := pendingPath(dir, kind, containerID)
	if err != nil {
		return err
	}
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := os.Stat(path); err != nil && pendingCount(filepath.Dir(path)) >= limit {
		return errPendingFull
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return fmt.Errorf("record pending %s: %w", kind, err)
	}
	if err := writeFileAtomic(path, append(data, '\n'), 0o640); err != nil {
		return fmt.Errorf("record pending %s: %w", kind, err)
	}
	return nil
}

// pendingCount returns how many records a kind's directory holds; a
// directory it cannot read holds none.
func pendingCount(kindDir string) int {
	entries, err := os.ReadDir(kindDir)
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".json") {
			n++
		}
	}
	return n
}

func forgetPending(dir, kind, containerID string) error {
	path, err := pendingPath(dir, kind, containerID)
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("forget pending %s: %w", kind, err)
	}
	return nil
}

// pendingPath refuses container IDs that are not valid CNI container IDs:
// they become file names.
func pendingPath(dir, kind, containerID string) (string, error) {
	if err := utils.ValidateContainerID(containerID); err != nil {
		return "", fmt.Errorf("pending %s: container ID %q: %w", kind, containerID, err)
	}
	return filepath.Join(dir, kind, containerID+".json"), nil
}

// readPending calls fn for each record of kind, in file name order, and
// joins the errors of the records it could not read. It removes the
// temporary files a plugin killed while recording left (removeStaleTemp).
func readPending(dir, kind string, fn func(containerID string, data []byte) error) error {
	removeStaleTemp(filepath.Join(dir, kind), ".*.json.*.tmp")
	entries, err := os.ReadDir(filepath.Join(dir, kind))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pending %s: %w", kind, err)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
	var errs []error
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || e.IsDir() || utils.ValidateContainerID(id) != nil {
			continue // a temporary file, or not ours
		}
		path := filepath.Join(dir, kind, e.Name())
		data, err := readPendingRecord(path)
		if errors.Is(err, os.ErrNotExist) {
			continue // forgotten meanwhile
		}
		if refused := (*refusedFileError)(nil); errors.As(err, &refused) {
			errs = append(errs, fmt.Errorf("pending %s: %w", kind, err)) // it names the path
			continue
		}
		if err == nil {
			err = fn(id, data)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("pending %s %s: %w", kind, path, err))
		}
	}
	return errors.Join(errs...)
}

// maxPendingRecordBytes bounds a pending record: the plugin writes the
// request it would have sent, and the agent takes none larger over its
// socket (the newline the plugin adds aside).
const maxPendingRecordBytes = control.MaxRequestBytes + 1

// readPendingRecord reads the record at path (see asRefused). The plugin
// writes each as a regular file, so a symbolic link is none of its
// records, and is not followed.
func readPendingRecord(path string) ([]byte, error) {
	return asRefused(regularfile.ReadNoFollow(path, maxPendingRecordBytes))
}

// writeFileAtomic writes data to path through a temporary file in the same
// directory, so readers see the old content or the new, never a part. The
// temporary name starts with a dot and ends in ".tmp": neither the pending
// readers nor a container runtime loading a CNI conf dir pick it up, and
// the replay and Install remove one a killed writer left (removeStaleTemp).
//
// Its errors name path, not the temporary file (templess).
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	if err := writeThroughTemp(path, data, perm); err != nil {
		return fmt.Errorf("write %s: %w", path, templess(err))
	}
	return nil
}

func writeThroughTemp(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // fails harmlessly once renamed
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// templess returns the error under an *os.PathError or *os.LinkError,
// whose path is a temporary file's random name, so that the caller names
// the file it stood for: a failure that recurs (a bin or conf dir missing,
// a full or read-only file system) reads the same at every look, and
// KeepInstalled logs it once. errors.Is still finds the errno's kind
// (fs.ErrNotExist, fs.ErrPermission).
func templess(err error) error {
	var pe *os.PathError
	var le *os.LinkError
	switch {
	case errors.As(err, &pe):
		return pe.Err
	case errors.As(err, &le):
		return le.Err
	}
	return err
}

// staleTempAge is how old a temporary file of writeFileAtomic's (or
// installBinary's) must be to be taken for one whose writer was killed
// between creating and renaming it: a live writer renames within
// milliseconds.
const staleTempAge = time.Minute

// removeStaleTemp removes the regular files in dir whose names match
// pattern (filepath.Match) and that were last modified over staleTempAge
// ago. Nothing else removes them: they would stay for good.
func removeStaleTemp(dir, pattern string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if ok, _ := filepath.Match(pattern, e.Name()); !ok || !e.Type().IsRegular() {
			continue
		}
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > staleTempAge {
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}
