package configdir

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/clock"
	"github.com/ztdns/ztdns/pkg/model"
)

// TestManifestChangesLoggedOncePerInterval: a directory a tool rewrites
// over and over (100 changes, each served) logs one INFO line "manifests
// changed" for the first change and none for the 99 others within
// changesLogEvery; the first change after it logs one more, saying how
// many went unlogged. (Before: one INFO line per change, 101 here.)
func TestManifestChangesLoggedOncePerInterval(t *testing.T) {
	dir := t.TempDir()
	entry := func(i int) string {
		return fmt.Sprintf("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: db, namespace: default}\nspec:\n  hosts: [db.example]\n  addresses: [10.1.%d.%d]\n", i/200, i%200+1)
	}
	writeFiles(t, dir, map[string]string{"se.yaml": entry(0)})
	lb := &logBuffer{tb: t}
	log := slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelInfo}))
	clk := clock.NewFake(time.Now())
	c := startClocked(t, dir, clk, func(s *Source) { s.settle = 0 }, WithLogger(log))
	change := func(i int) {
		t.Helper()
		writeFiles(t, dir, map[string]string{"se.yaml": entry(i)})
		c.change(t)
		clk.Advance(DefaultDebounce)
		want := fmt.Sprintf("[10.1.%d.%d]", i/200, i%200+1)
		c.waitFor(t, want, func(s *model.Snapshot) bool {
			return len(s.ServiceEntries) == 1 && fmt.Sprint(s.ServiceEntries[0].Addresses) == want
		})
	}
	for i := 1; i <= 100; i++ {
		change(i)
	}
	if n := strings.Count(lb.String(), `msg="manifests changed"`); n != 1 {
		t.Errorf("%d INFO lines say the manifests changed after 100 changes within %v, want 1", n, changesLogEvery)
	}
	clk.Advance(changesLogEvery)
	change(101)
	if n := strings.Count(lb.String(), `msg="manifests changed"`); n != 2 {
		t.Errorf("%d INFO lines say the manifests changed after one more change %v later, want 2", n, changesLogEvery)
	}
	if !strings.Contains(lb.String(), "unloggedBefore=99") {
		t.Errorf("no line says 99 changes went unlogged:\n%s", lb.String())
	}
}
