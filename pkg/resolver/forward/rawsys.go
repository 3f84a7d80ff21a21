package forward

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// The system calls of a UDP exchange, raw: none of them blocks (the
// socket is non-blocking, and its waits are the poller's), so none need
// tell the scheduler, and a call that does (syscall.Syscall, which
// golang.org/x/sys/unix's setsockopt, connect, read, write and close go
// through) wakes the runtime's sysmon thread whenever it sleeps
// (udpPoller).

// rawErr is errno as an error: nil for 0.
func rawErr(errno unix.Errno) error {
	if errno != 0 {
		return errno
	}
	return nil
}

func rawSetsockoptInt(fd, level, opt, value int) error {
	v := int32(value)
	_, _, errno := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&v)), 4, 0)
	return rawErr(errno)
}

// rawConnect connects fd to sa, a sockaddr_in or sockaddr_in6
// (putSockaddr).
func rawConnect(fd int, sa []byte) error {
	_, _, errno := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa[0])), uintptr(len(sa)))
	return rawErr(errno)
}

func rawWrite(fd int, b []byte) (int, error) {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	n, _, errno := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(p), uintptr(len(b)))
	return int(n), rawErr(errno)
}

func rawRead(fd int, b []byte) (int, error) {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	n, _, errno := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(p), uintptr(len(b)))
	return int(n), rawErr(errno)
}

func rawClose(fd int) {
	_, _, _ = unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}
