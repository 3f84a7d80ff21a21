package ratelog

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestLineAfterAQuietSpell: within Every of a line, events are counted,
// not logged; the first line after says how many went unlogged, and one
// with none unlogged says nothing of it.
func TestLineAfterAQuietSpell(t *testing.T) {
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := Limiter{Now: func() time.Time { return clock }}
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}}))
	at := func(d time.Duration, event string) {
		clock = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(d)
		r.Log(log, slog.LevelWarn, "refused", "event", event)
	}
	at(0, "first")
	at(time.Second, "a")
	at(Every-time.Nanosecond, "b")
	at(Every, "after two")
	at(Every+time.Second, "c")
	at(3*Every, "after one")
	at(5*Every, "after none")

	want := []string{
		"level=WARN msg=refused event=first",
		"level=WARN msg=refused event=\"after two\" unloggedBefore=2",
		"level=WARN msg=refused event=\"after one\" unloggedBefore=1",
		"level=WARN msg=refused event=\"after none\"",
	}
	if got := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("logged:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestLevelLeftOut: at a level the logger leaves out, nothing is logged or
// counted, and the first line at one it writes is not held back.
func TestLevelLeftOut(t *testing.T) {
	var r Limiter
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	for range 3 {
		r.Log(log, slog.LevelDebug, "failed")
	}
	r.Log(log, slog.LevelWarn, "refused")
	if got := buf.String(); strings.Count(got, "\n") != 1 || !strings.Contains(got, "msg=refused") || strings.Contains(got, "unlogged") {
		t.Errorf("logged %q, want one line, refused, with nothing unlogged", got)
	}
}

// TestInfoElseDebug: of events within the Interval, the first is logged at
// INFO, the others at DEBUG; the first after it at INFO again, saying how
// many INFO held back.
func TestInfoElseDebug(t *testing.T) {
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := Limiter{Interval: time.Minute, Now: func() time.Time { return clock }}
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug, ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}}))
	for i := range 3 {
		r.InfoElseDebug(log, "updated", "n", i)
	}
	clock = clock.Add(time.Minute)
	r.InfoElseDebug(log, "updated", "n", 3)
	want := []string{
		"level=INFO msg=updated n=0",
		"level=DEBUG msg=updated n=1",
		"level=DEBUG msg=updated n=2",
		"level=INFO msg=updated n=3 unloggedBefore=2",
	}
	if got := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("logged:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
