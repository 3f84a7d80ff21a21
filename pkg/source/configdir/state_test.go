package configdir

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// TestBlockedFileDeletedDuringScan: a blocked file that could be served now
// but is deleted after the scan listed it is dropped, with what it served;
// the scan does not try it again and again.
func TestBlockedFileDeletedDuringScan(t *testing.T) {
	dir := t.TempDir()
	b, c := filepath.Join(dir, "b.yaml"), filepath.Join(dir, "c.yaml")
	writeFiles(t, dir, map[string]string{"b.yaml": namespaceYAML("shared"), "c.yaml": namespaceYAML("cns")})
	st := newState(dir, parser{log: quietLogger()})
	scan := func() bool {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		changed, err := st.scan(ctx)
		if err != nil {
			t.Fatalf("scan: %v", err)
		}
		return changed
	}
	scan()
	// c.yaml claims what b.yaml serves: blocked, it keeps serving cns.
	writeFile(t, c, namespaceYAML("shared"))
	scan()
	if f := st.files["c.yaml"]; f == nil || !f.blocked {
		t.Fatal("c.yaml is not blocked")
	}
	// b.yaml lets go of it, so c.yaml is tried again; it is deleted just
	// before.
	writeFile(t, b, namespaceYAML("other"))
	st.beforeRetry = func(name string) {
		if name == "c.yaml" {
			_ = os.Remove(c)
		}
	}
	if !scan() {
		t.Error("scan reports no change, but c.yaml's cns is gone")
	}
	if _, ok := st.files["c.yaml"]; ok || !reflect.DeepEqual(st.names, []string{"b.yaml"}) {
		t.Errorf("files %v, want only b.yaml", st.names)
	}
	if n := names(st.snapshot()); !reflect.DeepEqual(n, []string{"namespace other"}) {
		t.Errorf("served %q, want only b.yaml's", n)
	}
	if errs := st.errors(); len(errs) != 0 {
		t.Errorf("problems %v, want none", errs)
	}
}
