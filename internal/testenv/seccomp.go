//go:build linux

package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// WithoutNetnsCookie returns a wrapper command line that runs the command
// after it as on a kernel before Linux 5.14, which has no SO_NETNS_COOKIE:
// every getsockopt(SOL_SOCKET, SO_NETNS_COOKIE) fails with ENOPROTOOPT, the
// error such a kernel returns, and nothing else changes. The test binary
// (its TestMain calls RunHelper first) installs a seccomp filter that says
// so and execs the command, which keeps the filter, as do its children.
// The test binary of the calling package must therefore be the one that
// calls RunHelper.
func WithoutNetnsCookie(tb testing.TB) []string {
	tb.Helper()
	if _, err := seccompArch(); err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	return []string{"env", helperEnv + "=without-netns-cookie", os.Args[0]}
}

// withoutNetnsCookie is the wrapper WithoutNetnsCookie names: it denies
// SO_NETNS_COOKIE and execs its arguments.
func withoutNetnsCookie(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "without-netns-cookie: no command")
		return 2
	}
	os.Unsetenv(helperEnv)
	bin, err := exec.LookPath(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, "without-netns-cookie:", err)
		return 2
	}
	// The filter is per thread: install it on the thread that execs (and,
	// TSYNC, on every other, for good measure).
	runtime.LockOSThread()
	if err := denyNetnsCookie(); err != nil {
		fmt.Fprintln(os.Stderr, "without-netns-cookie:", err)
		return 2
	}
	err = syscall.Exec(bin, args, os.Environ())
	fmt.Fprintln(os.Stderr, "without-netns-cookie: exec:", err)
	return 2
}

// seccompArch is the AUDIT_ARCH value seccomp reports for this binary's
// system calls.
func seccompArch() (uint32, error) {
	switch runtime.GOARCH {
	case "amd64":
		return unix.AUDIT_ARCH_X86_64, nil
	case "arm64":
		return unix.AUDIT_ARCH_AARCH64, nil
	}
	return 0, fmt.Errorf("no seccomp filter for GOARCH %s", runtime.GOARCH)
}

// denyNetnsCookie installs a seccomp filter under which
// getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, …) fails with ENOPROTOOPT.
func denyNetnsCookie() error {
	arch, err := seccompArch()
	if err != nil {
		return err
	}
	// struct seccomp_data: nr at 0, arch at 4, args[i] at 16+8i (the low
	// half first: both arches are little-endian).
	const (
		ld    = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq   = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		ret   = unix.BPF_RET | unix.BPF_K
		nr    = 0
		archk = 4
		arg1  = 16 + 8*1
		arg2  = 16 + 8*2
	)
	filter := []unix.SockFilter{
		{Code: ld, K: archk},
		{Code: jeq, K: arch, Jf: 6},
		{Code: ld, K: nr},
		{Code: jeq, K: unix.SYS_GETSOCKOPT, Jf: 4},
		{Code: ld, K: arg1},
		{Code: jeq, K: unix.SOL_SOCKET, Jf: 2},
		{Code: ld, K: arg2},
		{Code: jeq, K: unix.SO_NETNS_COOKIE, Jt: 1},
		{Code: ret, K: unix.SECCOMP_RET_ALLOW},
		{Code: ret, K: unix.SECCOMP_RET_ERRNO | uint32(unix.ENOPROTOOPT)},
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	// Root (CAP_SYS_ADMIN) may install a filter without no_new_privs,
	// which would change what its command may do.
	if os.Geteuid() != 0 {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("PR_SET_NO_NEW_PRIVS: %w", err)
		}
	}
	if _, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC,
		uintptr(unsafe.Pointer(&prog))); errno != 0 {
		return fmt.Errorf("seccomp: %w", errno)
	}
	return nil
}
