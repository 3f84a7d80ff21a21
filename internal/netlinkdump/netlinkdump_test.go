//go:build linux

package netlinkdump

import (
	"encoding/binary"
	"errors"
	"slices"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

const seq = 7

// msg is one netlink message of the given type, flags and payload, with
// sequence s, padded to NLMSG_ALIGNTO.
func msg(s uint32, typ, flags uint16, payload []byte) []byte {
	m := make([]byte, unix.NLMSG_HDRLEN, Align(unix.NLMSG_HDRLEN+len(payload)))
	binary.NativeEndian.PutUint32(m[0:], uint32(unix.NLMSG_HDRLEN+len(payload)))
	binary.NativeEndian.PutUint16(m[4:], typ)
	binary.NativeEndian.PutUint16(m[6:], flags)
	binary.NativeEndian.PutUint32(m[8:], s)
	m = append(m, payload...)
	return m[:cap(m)]
}

func errno(e syscall.Errno) []byte {
	return binary.NativeEndian.AppendUint32(nil, uint32(-int32(e)))
}

// kernel returns a recv that hands out datagrams, each the messages given
// concatenated, and fails the test when asked for more.
func kernel(t *testing.T, datagrams ...[][]byte) (recv func() ([]byte, error), calls *int) {
	t.Helper()
	calls = new(int)
	return func() ([]byte, error) {
		if *calls >= len(datagrams) {
			t.Fatalf("recv called %d times, past the answer", *calls+1)
		}
		*calls++
		return slices.Concat(datagrams[*calls-1]...), nil
	}, calls
}

type seen struct {
	typ, flags uint16
	data       string
}

func collect(out *[]seen) func(typ, flags uint16, data []byte) error {
	return func(typ, flags uint16, data []byte) error {
		*out = append(*out, seen{typ, flags, string(data)})
		return nil
	}
}

// The messages of the request's sequence are visited in order, over
// several datagrams; another sequence's (an earlier request's answer) and
// the final NLMSG_DONE are not.
func TestReadVisitsTheAnswer(t *testing.T) {
	recv, _ := kernel(t,
		[][]byte{msg(seq-1, 0x10, unix.NLM_F_MULTI, []byte("old")), msg(seq, 0x10, unix.NLM_F_MULTI, []byte("one")), msg(seq, 0x11, unix.NLM_F_MULTI, []byte("two!"))},
		[][]byte{msg(seq, 0x10, unix.NLM_F_MULTI, []byte("three")), msg(seq, unix.NLMSG_DONE, unix.NLM_F_MULTI, errno(0))},
	)
	var got []seen
	interrupted, err := Read(recv, seq, collect(&got))
	want := []seen{{0x10, unix.NLM_F_MULTI, "one"}, {0x11, unix.NLM_F_MULTI, "two!"}, {0x10, unix.NLM_F_MULTI, "three"}}
	if err != nil || interrupted || !slices.Equal(got, want) {
		t.Errorf("Read = %v, interrupted %v, %v; want %v, not interrupted", got, interrupted, err, want)
	}
}

// How the answer ends: NLMSG_DONE with or without a payload, or an
// NLMSG_ERROR acknowledgement, is the end of the listing; an errno in
// either is the dump's failure, not a shorter list.
func TestReadEnds(t *testing.T) {
	for _, tt := range []struct {
		name    string
		end     []byte
		wantErr error // nil: a clean end
		errText string
	}{
		{name: "done", end: msg(seq, unix.NLMSG_DONE, unix.NLM_F_MULTI, nil)},
		{name: "done with 0", end: msg(seq, unix.NLMSG_DONE, unix.NLM_F_MULTI, errno(0))},
		{name: "ack", end: msg(seq, unix.NLMSG_ERROR, 0, append(errno(0), make([]byte, unix.NLMSG_HDRLEN)...))},
		{name: "done with an error", end: msg(seq, unix.NLMSG_DONE, unix.NLM_F_MULTI, errno(unix.ENOBUFS)), wantErr: unix.ENOBUFS},
		{name: "error", end: msg(seq, unix.NLMSG_ERROR, 0, append(errno(unix.EPERM), make([]byte, unix.NLMSG_HDRLEN)...)), wantErr: unix.EPERM},
		{name: "short error", end: msg(seq, unix.NLMSG_ERROR, 0, []byte{1}), errText: "short netlink error message"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			recv, _ := kernel(t, [][]byte{msg(seq, 0x10, unix.NLM_F_MULTI, []byte("rule")), tt.end})
			var got []seen
			_, err := Read(recv, seq, collect(&got))
			switch {
			case tt.wantErr != nil && !errors.Is(err, tt.wantErr),
				tt.errText != "" && (err == nil || err.Error() != tt.errText),
				tt.wantErr == nil && tt.errText == "" && (err != nil || len(got) != 1):
				t.Errorf("Read = %v, %v; want %v%s", got, err, tt.wantErr, tt.errText)
			}
		})
	}
}

// One message flagged NLM_F_DUMP_INTR marks the whole answer interrupted.
func TestReadInterrupted(t *testing.T) {
	recv, _ := kernel(t, [][]byte{
		msg(seq, 0x10, unix.NLM_F_MULTI, []byte("a")),
		msg(seq, 0x10, unix.NLM_F_MULTI|unix.NLM_F_DUMP_INTR, []byte("b")),
		msg(seq, unix.NLMSG_DONE, unix.NLM_F_MULTI, errno(0)),
	})
	var got []seen
	if interrupted, err := Read(recv, seq, collect(&got)); err != nil || !interrupted || len(got) != 2 {
		t.Errorf("Read = %v, interrupted %v, %v; want both messages, interrupted", got, interrupted, err)
	}
}

// visit's error ends the reading at once: nothing more is received.
func TestReadStopsAtVisitError(t *testing.T) {
	recv, calls := kernel(t,
		[][]byte{msg(seq, 0x10, unix.NLM_F_MULTI, []byte("a")), msg(seq, 0x10, unix.NLM_F_MULTI, []byte("b"))},
		[][]byte{msg(seq, unix.NLMSG_DONE, unix.NLM_F_MULTI, errno(0))},
	)
	stop := errors.New("enough")
	visits := 0
	_, err := Read(recv, seq, func(uint16, uint16, []byte) error { visits++; return stop })
	if !errors.Is(err, stop) || visits != 1 || *calls != 1 {
		t.Errorf("Read = %v after %d visits and %d receives; want visit's error after 1 and 1", err, visits, *calls)
	}
	recvErr := errors.New("recv failed")
	if _, err := Read(func() ([]byte, error) { return nil, recvErr }, seq, collect(new([]seen))); !errors.Is(err, recvErr) {
		t.Errorf("Read with a failing recv = %v, want its error", err)
	}
}

// A message whose length runs past its datagram, or is shorter than a
// header, is malformed.
func TestReadMalformed(t *testing.T) {
	long := msg(seq, 0x10, unix.NLM_F_MULTI, []byte("data"))
	binary.NativeEndian.PutUint32(long, uint32(len(long)+4))
	short := msg(seq, 0x10, unix.NLM_F_MULTI, nil)
	binary.NativeEndian.PutUint32(short, unix.NLMSG_HDRLEN-1)
	for _, m := range [][]byte{long, short} {
		recv, _ := kernel(t, [][]byte{m})
		if _, err := Read(recv, seq, collect(new([]seen))); err == nil || err.Error() != "malformed netlink message" {
			t.Errorf("Read of a message of length %d in %d bytes = %v, want malformed", binary.NativeEndian.Uint32(m), len(m), err)
		}
	}
}

func TestRetryOnce(t *testing.T) {
	fail := errors.New("failed")
	for _, tt := range []struct {
		name      string
		results   []bool // interrupted, per attempt
		err       error  // the first attempt's
		wantCalls int
		wantErr   error
	}{
		{name: "clean", results: []bool{false}, wantCalls: 1},
		{name: "interrupted once", results: []bool{true, false}, wantCalls: 2},
		{name: "interrupted twice", results: []bool{true, true}, wantCalls: 2, wantErr: ErrInterrupted},
		{name: "error", results: []bool{false}, err: fail, wantCalls: 1, wantErr: fail},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var attempts []int
			err := RetryOnce(func(attempt int) (bool, error) {
				if len(attempts) >= len(tt.results) {
					t.Fatalf("attempt %d, past the %d expected", attempt, len(tt.results))
				}
				attempts = append(attempts, attempt)
				if attempt == 0 && tt.err != nil {
					return false, tt.err
				}
				return tt.results[attempt], nil
			})
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) || !slices.Equal(attempts, []int{0, 1}[:tt.wantCalls]) {
				t.Errorf("RetryOnce = %v after attempts %v; want %v after %d", err, attempts, tt.wantErr, tt.wantCalls)
			}
		})
	}
}

// attr is one route attribute of type typ and value v, padded.
func attr(typ uint16, v []byte) []byte {
	a := make([]byte, unix.SizeofRtAttr, Align(unix.SizeofRtAttr+len(v)))
	binary.NativeEndian.PutUint16(a[0:], uint16(unix.SizeofRtAttr+len(v)))
	binary.NativeEndian.PutUint16(a[2:], typ)
	a = append(a, v...)
	return a[:cap(a)]
}

// Attrs visits the attributes past the fixed header (padded), without
// the nested flag in their type, and stops at one whose length runs past
// the message or is shorter than its own header.
func TestAttrs(t *testing.T) {
	hdr := []byte{1, 2, 3} // padded to 4
	for _, tt := range []struct {
		name string
		tail []byte
	}{
		{"past the end", []byte{0xff, 0, 9, 0}},
		{"shorter than its header", []byte{2, 0, 9, 0}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			data := slices.Concat(hdr, []byte{0}, attr(1, []byte("one")), attr(2|unix.NLA_F_NESTED, []byte("nested")), tt.tail, attr(3, []byte("after")))
			var got []seen
			Attrs(data, len(hdr), func(typ uint16, v []byte) { got = append(got, seen{typ: typ, data: string(v)}) })
			if want := []seen{{typ: 1, data: "one"}, {typ: 2, data: "nested"}}; !slices.Equal(got, want) {
				t.Errorf("Attrs visited %v, want %v", got, want)
			}
		})
	}
}
