package cni

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/control"
)

func TestPendingDeletes(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "pending")
	if got, err := PendingDeletes(dir); err != nil || len(got) != 0 {
		t.Fatalf("PendingDeletes(missing dir) = %v, %v; want none", got, err)
	}
	for _, r := range []control.CNIDelRequest{{ContainerID: "bbb", Netns: "/var/run/netns/b"}, {ContainerID: "aaa"}} {
		if err := recordPending(dir, pendingDelDir, r.ContainerID, r, 0); err != nil {
			t.Fatal(err)
		}
	}
	// Records the plugin did not finish or that are not records.
	mustWrite(t, filepath.Join(dir, "del", ".ccc.json.123.tmp"), `{"Contai`)
	mustWrite(t, filepath.Join(dir, "del", "notes.txt"), "x")
	// A damaged record still yields its container.
	mustWrite(t, filepath.Join(dir, "del", "ddd.json"), `{"Contai`)

	got, err := PendingDeletes(dir)
	want := []control.CNIDelRequest{{ContainerID: "aaa"}, {ContainerID: "bbb", Netns: "/var/run/netns/b"}, {ContainerID: "ddd"}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("PendingDeletes = %+v, %v; want %+v", got, err, want)
	}
	for _, id := range []string{"aaa", "ddd", "aaa", "never-recorded"} {
		if err := ForgetPendingDelete(dir, id); err != nil {
			t.Errorf("ForgetPendingDelete(%s) = %v", id, err)
		}
	}
	got, err = PendingDeletes(dir)
	if want := want[1:2]; err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("after forgetting: %+v, %v; want %+v", got, err, want)
	}
	info, err := os.Stat(filepath.Join(dir, "del"))
	if err != nil || info.Mode().Perm() != 0o750 {
		t.Errorf("pending dir mode = %v, %v; want 0750", info.Mode(), err)
	}
}

func TestPendingAdds(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	req := control.CNIAddRequest{
		ContainerID: "c1", Netns: "/var/run/netns/c1", IfName: "eth0",
		PodNamespace: "shop", PodName: "web", PodUID: "u1",
		IPs:         []netip.Addr{netip.MustParseAddr("10.88.0.5"), netip.MustParseAddr("2001:db8::5")},
		NetnsCookie: 4097,
	}
	if err := recordPending(dir, pendingAddDir, req.ContainerID, req, 0); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(dir, "add", "c2.json"), `not json`)
	mustWrite(t, filepath.Join(dir, "add", "c3.json"), `{"ContainerID": "other"}`)

	got, err := PendingAdds(dir)
	if !reflect.DeepEqual(got, []control.CNIAddRequest{req}) {
		t.Errorf("PendingAdds = %+v, want %+v", got, req)
	}
	if err == nil || !strings.Contains(err.Error(), "c2.json") || !strings.Contains(err.Error(), `records container "other"`) {
		t.Errorf("PendingAdds error = %v, want both bad records named", err)
	}
	if err := ForgetPendingAdd(dir, "c1"); err != nil {
		t.Fatal(err)
	}
	if got, _ := PendingAdds(dir); len(got) != 0 {
		t.Errorf("after forgetting: %+v", got)
	}
}

// TestPendingRecordsAreCapped: past the limit of a kind (MaxPendingRecords
// in the plugin; less here), a new record is refused and nothing is
// written; the container's own record is still replaced, and the other
// kind has room of its own.
func TestPendingRecordsAreCapped(t *testing.T) {
	t.Parallel()
	const limit = 8
	dir := t.TempDir()
	id := func(i int) string { return fmt.Sprintf("c%05d", i) }
	record := func(i int, req control.CNIDelRequest) error {
		return recordPending(dir, pendingDelDir, id(i), req, limit)
	}
	for i := range limit {
		if err := record(i, control.CNIDelRequest{ContainerID: id(i)}); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
	}
	if err := record(limit, control.CNIDelRequest{ContainerID: id(limit)}); !errors.Is(err, errPendingFull) {
		t.Errorf("record past the cap = %v, want errPendingFull", err)
	}
	again := control.CNIDelRequest{ContainerID: id(7), Netns: "/var/run/netns/seven"}
	if err := record(7, again); err != nil {
		t.Errorf("re-recording a recorded container = %v, want it replaced", err)
	}
	if err := recordPending(dir, pendingAddDir, id(0), control.CNIAddRequest{ContainerID: id(0)}, limit); err != nil {
		t.Errorf("an ADD with the DELs full = %v, want recorded", err)
	}
	dels, err := PendingDeletes(dir)
	if err != nil || len(dels) != limit {
		t.Fatalf("PendingDeletes = %d, %v; want %d", len(dels), err, limit)
	}
	if dels[7] != again {
		t.Errorf("record of %s = %+v, want %+v", id(7), dels[7], again)
	}
	// Once the agent has replayed and forgotten some, there is room again.
	if err := ForgetPendingDelete(dir, id(0)); err != nil {
		t.Fatal(err)
	}
	if err := record(limit, control.CNIDelRequest{ContainerID: id(limit)}); err != nil {
		t.Errorf("record after one was forgotten = %v", err)
	}
}

// TestNothingRecordedWithoutTheAgentsMarker: without the agent's marker
// (ztdns uninstalled, whether its directory is gone or left empty by the
// cleanup's remove-state), nothing is recorded and no directory is made
// again; with it (an agent that is restarting), the event is recorded.
func TestNothingRecordedWithoutTheAgentsMarker(t *testing.T) {
	t.Parallel()
	agentDir := filepath.Join(t.TempDir(), "ztdns")
	socket, pending := filepath.Join(agentDir, "ztdns.sock"), filepath.Join(agentDir, "pending")
	record := func() error {
		return recordForAgent(socket, pending, pendingDelDir, "c0ffee", control.CNIDelRequest{ContainerID: "c0ffee"}, 0)
	}
	if err := record(); !errors.Is(err, errNotInstalled) {
		t.Errorf("recordForAgent without the agent's directory = %v, want errNotInstalled", err)
	}
	if _, err := os.Stat(agentDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the agent's directory was made: %v", err)
	}
	// The directory alone (the cleanup pod's hostPath volume makes it).
	if err := os.Mkdir(agentDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := record(); !errors.Is(err, errNotInstalled) {
		t.Errorf("recordForAgent with an empty directory = %v, want errNotInstalled", err)
	}
	if _, err := os.Stat(pending); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the pending directory was made: %v", err)
	}
	if err := control.MarkInstalled(socket); err != nil {
		t.Fatal(err)
	}
	if err := record(); err != nil {
		t.Fatal(err)
	}
	if dels, err := PendingDeletes(pending); err != nil || len(dels) != 1 {
		t.Errorf("PendingDeletes = %+v, %v; want the DEL", dels, err)
	}
}

func TestPendingRefusesBadContainerIDs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, id := range []string{"", "../escape", "a/b", ".hidden"} {
		if err := recordPending(dir, pendingDelDir, id, control.CNIDelRequest{ContainerID: id}, 0); err == nil {
			t.Errorf("recordPending(%q) succeeded", id)
		}
		if err := ForgetPendingDelete(dir, id); err == nil {
			t.Errorf("ForgetPendingDelete(%q) succeeded", id)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("files written: %v", entries)
	}
}

func mustWrite(tb testing.TB, path, content string) {
	tb.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o640); err != nil {
		tb.Fatal(err)
	}
}

// mustWriteAged writes a file last modified age ago.
func mustWriteAged(tb testing.TB, path string, age time.Duration) {
	tb.Helper()
	mustWrite(tb, path, "{")
	then := time.Now().Add(-age)
	if err := os.Chtimes(path, then, then); err != nil {
		tb.Fatal(err)
	}
}

// requireFiles checks which of paths exist.
func requireFiles(tb testing.TB, exist map[string]bool) {
	tb.Helper()
	for path, want := range exist {
		_, err := os.Stat(path)
		if got := err == nil; got != want {
			tb.Errorf("%s exists: %t (%v), want %t", path, got, err, want)
		}
	}
}

// TestReplayRemovesStaleTempFiles: a plugin killed between writing a
// record's temporary file and renaming it leaves the file; reading the
// records (the agent's replay) removes it once it is over a minute old,
// and leaves a fresh one (a plugin writing now) and files not of that
// pattern. (Before, they stayed for good.)
func TestReplayRemovesStaleTempFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	staleDel := filepath.Join(dir, "del", ".c1.json.123.tmp")
	staleAdd := filepath.Join(dir, "add", ".c2.json.456.tmp")
	fresh := filepath.Join(dir, "del", ".c3.json.789.tmp")
	other := filepath.Join(dir, "del", ".notes.tmp")
	mustWriteAged(t, staleDel, 2*time.Minute)
	mustWriteAged(t, staleAdd, 2*time.Minute)
	mustWriteAged(t, fresh, 0)
	mustWriteAged(t, other, 2*time.Minute)
	if got, err := PendingDeletes(dir); err != nil || len(got) != 0 {
		t.Errorf("PendingDeletes = %+v, %v; want none", got, err)
	}
	if got, err := PendingAdds(dir); err != nil || len(got) != 0 {
		t.Errorf("PendingAdds = %+v, %v; want none", got, err)
	}
	requireFiles(t, map[string]bool{staleDel: false, staleAdd: false, fresh: true, other: true})
}
