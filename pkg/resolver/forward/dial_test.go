//go:build linux

package forward

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/testenv"
)

// missSyscalls bounds the system calls a forwarded query the cache does
// not hold makes on the thread that forwards it: its socket's (socket,
// setsockopt, connect, its addition to the Forwarder's epoll set, close:
// udpPoller), the query's write, the wait (the set drained before and
// after it: epoll_pwait twice, the thread's sleep and wake-up), the
// reply's reads (its size, the datagram), with room for a signal's
// return or a random number now and then. README's "Forwarded names"
// counts the agent's per query.
const missSyscalls = 12

// TestMissSystemCalls counts the system calls of forwarded queries that
// miss the cache, each a name asked once, with a kernel counter of the
// thread that forwards them (the exchange runs on the caller's goroutine,
// locked to it): what the agent's CPU per forwarded query is made of
// besides the work itself: 9.1-11.1 a query. Before: 11.5, with the
// socket an os.File in the netpoller (an fcntl, an epoll_ctl to add it
// and one to remove it); before that 19, of which 8 were
// net.FileConn's, which made a net.UDPConn of the socket by duplicating
// it (fcntl), asking the kernel what the duplicate was (fcntl, getsockopt,
// getsockname, getpeername), registering it with the netpoller, and
// taking the first one out of it and closing it; and 1 unix.Recvfrom's,
// which asks the socket its protocol (getsockopt) to make the address it
// returns, for the size of the reply; and 1 a read tried before the
// query could have been answered, then the wait (the wait now starts
// before the query leaves, and the first read is the reply's).
func TestMissSystemCalls(t *testing.T) {
	testenv.RequireRoot(t)
	up := startUpstream(t, answerA(300, "198.51.100.1"))
	f := newForwarder(t, WithCacheSize(0))
	runtime.LockOSThread() // the counter is this thread's
	defer runtime.UnlockOSThread()
	count := threadSyscalls(t)
	ask := func(name string) {
		if m := forward(t, f, query(t, name, dns.TypeA), false, up.addr); firstA(m) != "198.51.100.1" {
			t.Fatalf("%s: answer %v", name, m)
		}
	}
	ask("warm.example.")
	const n = 200
	before := count()
	for i := range n {
		ask(fmt.Sprintf("n%d.example.", i))
	}
	per := float64(count()-before) / n
	t.Logf("%.2f system calls per forwarded query on its thread", per)
	if per > missSyscalls {
		t.Errorf("%.2f system calls per forwarded query that missed the cache, want at most %d", per, missSyscalls)
	}
	if got := up.queries.Load(); got != n+1 {
		t.Errorf("upstream got %d queries, want %d", got, n+1)
	}
}

// threadSyscalls opens a kernel counter of the system calls the calling
// thread makes from now on (the raw_syscalls:sys_enter tracepoint), closed
// when the test ends, and returns what reads it. The caller keeps its
// goroutine on the thread (runtime.LockOSThread).
func threadSyscalls(t *testing.T) func() uint64 {
	t.Helper()
	raw, err := os.ReadFile("/sys/kernel/tracing/events/raw_syscalls/sys_enter/id")
	if err != nil {
		testenv.Unavailable(t, "needs tracefs: %v", err)
	}
	id, err := strconv.ParseUint(strings.TrimSpace(string(raw)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	attr := unix.PerfEventAttr{
		Type:   unix.PERF_TYPE_TRACEPOINT,
		Size:   uint32(unsafe.Sizeof(unix.PerfEventAttr{})),
		Config: id,
	}
	fd, err := unix.PerfEventOpen(&attr, 0, -1, -1, unix.PERF_FLAG_FD_CLOEXEC) // this thread, any CPU
	if err != nil {
		t.Fatalf("perf_event_open raw_syscalls:sys_enter: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return func() uint64 {
		var b [8]byte
		if _, err := unix.Read(fd, b[:]); err != nil {
			t.Fatalf("read the system call counter: %v", err)
		}
		return binary.NativeEndian.Uint64(b[:])
	}
}
