//go:build linux

package control_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztdns/ztdns/bench/workload"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/resolver/table"
)

// bigTable is a table of about 200,000 names (make bench's Scale cluster
// and more), built once for the tests here.
var bigTable = sync.OnceValue(func() *table.Table {
	s := workload.Snapshot(workload.Config{Services: 120_000, Entries: 80_000, EndpointsPerService: 3, HeadlessEvery: 10})
	tbl, _ := table.NewBuilder(table.Options{Domain: workload.Domain}).Build(s)
	return tbl
})

// countedRows serves tbl's rows and counts those the server pulled; done
// is closed once it stopped pulling them.
type countedRows struct {
	made atomic.Int64
	done chan struct{}
}

func serveTable(t *testing.T, tbl *table.Table) (*server, *countedRows) {
	t.Helper()
	s := serve(t, control.Access{})
	c := &countedRows{done: make(chan struct{})}
	s.api.mu.Lock()
	s.api.rows = func(ctx context.Context, ns string) iter.Seq[control.TableRow] {
		return func(yield func(control.TableRow) bool) {
			defer close(c.done)
			for r := range tbl.AllRows(ctx, ns) {
				c.made.Add(1)
				if !yield(r) {
					return
				}
			}
		}
	}
	s.api.mu.Unlock()
	return s, c
}

// askTable sends GET /v1/table on a connection of its own and returns the
// answer's head; its body is read as the test goes.
func askTable(t *testing.T, socket string) (*http.Response, func()) {
	t.Helper()
	c := dial(t, socket)
	req, _ := http.NewRequest(http.MethodGet, "http://ztdns"+control.RouteTable.Path, nil)
	if err := req.Write(c); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("table: status %d", resp.StatusCode)
	}
	return resp, func() { c.Close() }
}

// liveHeap is the heap's live bytes after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// TestTableStreamedInBoundedMemory: the table of 200,000 names is
// answered as it is made. While its caller has read the first rows and
// waits, the agent holds a small part of the answer's size: not every row,
// nor the answer encoded whole. The answer read to its end is the table's
// every row, in order.
func TestTableStreamedInBoundedMemory(t *testing.T) {
	tbl := bigTable()
	s, made := serveTable(t, tbl)
	before := liveHeap()
	ok := control.Requests(control.RouteTable, "200")

	resp, _ := askTable(t, s.socket)
	head := make([]byte, 64<<10)
	if _, err := io.ReadFull(resp.Body, head); err != nil {
		t.Fatal(err)
	}
	during := liveHeap()
	held := during - min(before, during)
	rest, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	size := len(head) + len(rest)
	t.Logf("answer %d bytes, %d rows; the agent held %d bytes more while its caller waited", size, made.made.Load(), held)
	// The index of the rows is 16 bytes a name (32 an SRV name), the answer
	// about 150 a row: every row made, or the answer encoded, is several
	// times the answer's size.
	if held > uint64(size)/5 {
		t.Errorf("the agent held %d bytes more while answering %d: want a small part of the answer", held, size)
	}

	var rows []control.TableRow
	if err := json.Unmarshal(append(head, rest...), &rows); err != nil {
		t.Fatalf("the answer is not one JSON array: %v", err)
	}
	want := tbl.Rows("")
	if len(rows) != len(want) || len(rows) < 200_000 {
		t.Fatalf("%d rows answered, want the table's %d (200,000 or more)", len(rows), len(want))
	}
	for i := range rows {
		if rows[i].Name != want[i].Name || rows[i].Type != want[i].Type {
			t.Fatalf("row %d is %s %s, want %s %s", i, rows[i].Name, rows[i].Type, want[i].Name, want[i].Type)
		}
	}
	if got := control.Requests(control.RouteTable, "200") - ok; got != 1 {
		t.Errorf("ztdns_control_requests_total{route=table,code=200} moved by %v, want 1", got)
	}
}

// TestTableCallerGone: a caller that reads the first rows of the table
// and hangs up stops the answer: the agent makes few of the rows, and
// counts the request as aborted, not answered.
func TestTableCallerGone(t *testing.T) {
	tbl := bigTable()
	s, made := serveTable(t, tbl)
	total := 0
	for range tbl.AllRows(context.Background(), "") {
		total++
	}
	ok := control.Requests(control.RouteTable, "200")
	aborted := control.Requests(control.RouteTable, "aborted")

	resp, hangUp := askTable(t, s.socket)
	if _, err := io.ReadFull(resp.Body, make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	hangUp()
	select {
	case <-made.done:
	case <-time.After(time.Minute):
		t.Fatal("the agent still makes the rows of a caller gone for a minute")
	}
	t.Logf("the agent made %d of %d rows", made.made.Load(), total)
	if n := made.made.Load(); n > int64(total)/4 {
		t.Errorf("the agent made %d of %d rows for a caller that hung up after the first 64 KiB", n, total)
	}
	testenv.Eventually(t, 10*time.Second, "the request counted aborted", func() bool {
		return control.Requests(control.RouteTable, "aborted")-aborted == 1
	})
	if got := control.Requests(control.RouteTable, "200") - ok; got != 0 {
		t.Errorf("ztdns_control_requests_total{route=table,code=200} moved by %v for an answer cut short, want 0", got)
	}
}

// lookingCtx is a request's context that counts how often the table looks
// whether its caller is still there (Err): once a step of its work, each a
// bounded number of names looked at, sorted or merged (table.Table.AllRows).
// first is closed at the first look.
type lookingCtx struct {
	context.Context
	looks *atomic.Int64
	first chan struct{}
}

func newLookingCtx(ctx context.Context) lookingCtx {
	return lookingCtx{Context: ctx, looks: new(atomic.Int64), first: make(chan struct{})}
}

func (c lookingCtx) Err() error {
	if c.looks.Add(1) == 1 {
		close(c.first)
	}
	return c.Context.Err()
}

// TestTableCallerGoneWhileIndexed: a caller that asks for the table of
// 200,000 names and hangs up before its first byte, while the agent builds
// the sorted index of the rows (a second or more of a core), stops that
// work: the agent goes on for a few of the steps a whole index takes, not
// all of them, makes no row, and counts the request aborted.
func TestTableCallerGoneWhileIndexed(t *testing.T) {
	tbl := bigTable()
	whole := newLookingCtx(context.Background())
	for range tbl.AllRows(whole, "") {
		break // the index is built before the first row
	}
	steps := whole.looks.Load()

	s := serve(t, control.Access{})
	var made atomic.Int64
	looking := make(chan lookingCtx, 1)
	done := make(chan struct{})
	s.api.mu.Lock()
	s.api.rows = func(ctx context.Context, ns string) iter.Seq[control.TableRow] {
		return func(yield func(control.TableRow) bool) {
			defer close(done)
			lc := newLookingCtx(ctx)
			looking <- lc
			for r := range tbl.AllRows(lc, ns) {
				made.Add(1)
				if !yield(r) {
					return
				}
			}
		}
	}
	s.api.mu.Unlock()
	aborted := control.Requests(control.RouteTable, "aborted")

	c := dial(t, s.socket)
	req, _ := http.NewRequest(http.MethodGet, "http://ztdns"+control.RouteTable.Path, nil)
	if err := req.Write(c); err != nil {
		t.Fatal(err)
	}
	lc := <-looking
	select {
	case <-lc.first: // the index is being built
	case <-time.After(time.Minute):
		t.Fatal("the agent did not look at its caller in a minute of building the table's index")
	}
	c.Close()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("the agent still builds the table of a caller gone for a minute")
	}
	t.Logf("the agent went on for %d of the %d steps of the index; made %d rows", lc.looks.Load(), steps, made.Load())
	if n := lc.looks.Load(); n > steps/4 {
		t.Errorf("the agent went on for %d of the %d steps of the table's index for a caller that hung up at the first", n, steps)
	}
	if n := made.Load(); n != 0 {
		t.Errorf("the agent made %d rows for a caller that hung up before the first", n)
	}
	testenv.Eventually(t, 10*time.Second, "the request counted aborted", func() bool {
		return control.Requests(control.RouteTable, "aborted")-aborted == 1
	})
}

// TestTableOneAtATime: while one table answer is written, another caller
// waits its turn, a bounded time, then is told to ask again (429), and
// nothing of its table was made; once the first answer is written, the
// next caller is answered.
func TestTableOneAtATime(t *testing.T) {
	s := serve(t, control.Access{})
	gate := make(chan struct{})
	var made atomic.Int64
	s.api.mu.Lock()
	s.api.rows = func(context.Context, string) iter.Seq[control.TableRow] {
		return func(yield func(control.TableRow) bool) {
			for i := range 10 {
				if i == 5 {
					<-gate
				}
				made.Add(1)
				if !yield(control.TableRow{Name: fmt.Sprintf("svc-%d.ns.svc.cluster.local.", i), Type: "A", Values: []string{"10.96.0.1"}, Origin: "Service ns/svc"}) {
					return
				}
			}
		}
	}
	s.api.mu.Unlock()
	c := control.NewClient(s.socket, time.Minute)

	first := make(chan error, 1)
	go func() {
		rows, err := c.Table(context.Background(), "")
		if err == nil && len(rows) != 10 {
			err = fmt.Errorf("%d rows, want 10", len(rows))
		}
		first <- err
	}()
	testenv.Eventually(t, 10*time.Second, "the first table to be made", func() bool { return made.Load() == 5 })
	_, err := c.Table(context.Background(), "")
	var e *control.Error
	if !errors.As(err, &e) || e.Code != http.StatusTooManyRequests || !strings.Contains(e.Message, "try again") {
		t.Errorf("a table asked for while another is written: %v, want a 429 saying to try again", err)
	}
	if n := made.Load(); n != 5 {
		t.Errorf("%d rows made, want the first answer's 5: the second's made none", n)
	}
	close(gate)
	if err := <-first; err != nil {
		t.Fatalf("the first table: %v", err)
	}
	if rows, err := c.Table(context.Background(), ""); err != nil || len(rows) != 10 {
		t.Errorf("a table asked for once the first is written: %d rows, %v", len(rows), err)
	}
}
