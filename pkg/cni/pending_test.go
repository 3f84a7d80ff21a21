package cni

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/ztdns/ztdns/pkg/control"
)

func TestPendingDeletes(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "pending")
	if got, err := PendingDeletes(dir); err != nil || len(got) != 0 {
		t.Fatalf("PendingDeletes(missing dir) = %v, %v; want none", got, err)
	}
	for _, r := range []control.CNIDelRequest{{ContainerID: "bbb", Netns: "/var/run/netns/b"}, {ContainerID: "aaa"}} {
		if err := recordPending(dir, pendingDelDir, r.ContainerID, r); err != nil {
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
	if err := recordPending(dir, pendingAddDir, req.ContainerID, req); err != nil {
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

func TestPendingRefusesBadContainerIDs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, id := range []string{"", "../escape", "a/b", ".hidden"} {
		if err := recordPending(dir, pendingDelDir, id, control.CNIDelRequest{ContainerID: id}); err == nil {
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
