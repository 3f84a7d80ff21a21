//go:build linux

package redirect

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/cpu"
	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/rootowned"
)

// hook is one cgroup attach point and the program ztdns runs there.
type hook struct {
	name    string // pin name under <bpffs>/links, and the C function name
	typ     ebpf.ProgramType
	attach  ebpf.AttachType
	program func(*ztdnsPrograms) *ebpf.Program
}

// hooks lists every attach point, in attach order: sock_release first, so
// that every socket the redirecting hooks count against its pod's share is
// taken off again when it closes (struct pod_socket_count in bpf/ztdns.h);
// then the restoring hooks, so that no redirected query's reply arrives
// before its source can be set back. They are detached in the reverse order
// (detachOrder).
var hooks = []hook{
	{ztdnsProgZtdnsSockRelease, ebpf.CGroupSock, ebpf.AttachCgroupInetSockRelease, func(p *ztdnsPrograms) *ebpf.Program { return p.ZtdnsSockRelease }},
	{ztdnsProgZtdnsRecvmsg4, ebpf.CGroupSockAddr, ebpf.AttachCGroupUDP4Recvmsg, func(p *ztdnsPrograms) *ebpf.Program { return p.ZtdnsRecvmsg4 }},
	{ztdnsProgZtdnsRecvmsg6, ebpf.CGroupSockAddr, ebpf.AttachCGroupUDP6Recvmsg, func(p *ztdnsPrograms) *ebpf.Program { return p.ZtdnsRecvmsg6 }},
	{ztdnsProgZtdnsGetpeername4, ebpf.CGroupSockAddr, ebpf.AttachCgroupInet4GetPeername, func(p *ztdnsPrograms) *ebpf.Program { return p.ZtdnsGetpeername4 }},
	{ztdnsProgZtdnsGetpeername6, ebpf.CGroupSockAddr, ebpf.AttachCgroupInet6GetPeername, func(p *ztdnsPrograms) *ebpf.Program { return p.ZtdnsGetpeername6 }},
	{ztdnsProgZtdnsConnect4, ebpf.CGroupSockAddr, ebpf.AttachCGroupInet4Connect, func(p *ztdnsPrograms) *ebpf.Program { return p.ZtdnsConnect4 }},
	{ztdnsProgZtdnsConnect6, ebpf.CGroupSockAddr, ebpf.AttachCGroupInet6Connect, func(p *ztdnsPrograms) *ebpf.Program { return p.ZtdnsConnect6 }},
	{ztdnsProgZtdnsSendmsg4, ebpf.CGroupSockAddr, ebpf.AttachCGroupUDP4Sendmsg, func(p *ztdnsPrograms) *ebpf.Program { return p.ZtdnsSendmsg4 }},
	{ztdnsProgZtdnsSendmsg6, ebpf.CGroupSockAddr, ebpf.AttachCGroupUDP6Sendmsg, func(p *ztdnsPrograms) *ebpf.Program { return p.ZtdnsSendmsg6 }},
}

// Cgroup2Mounts returns the mount points of cgroup2 filesystems listed in
// /proc/mounts, in the order mounted. On hybrid systems that is
// /sys/fs/cgroup/unified, on unified ones /sys/fs/cgroup.
func Cgroup2Mounts() ([]string, error) {
	f, err := os.Open("/proc/mounts")
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	return parseCgroup2Mounts(f)
}

func parseCgroup2Mounts(r io.Reader) ([]string, error) {
	var mounts []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		// device mountpoint fstype options dump pass
		fields := strings.Fields(sc.Text())
		if len(fields) >= 3 && fields[2] == "cgroup2" {
			mounts = append(mounts, unescapeMountPath(fields[1]))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	return mounts, nil
}

// unescapeMountPath undoes the octal escapes /proc/mounts uses for space,
// tab, newline and backslash.
func unescapeMountPath(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// checkCgroup makes sure path is a directory of a cgroup v2 hierarchy; the
// sock_addr hooks exist only there.
func checkCgroup(path string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return fmt.Errorf("cgroup %s is not usable: %w", path, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("%s is not a cgroup v2 directory (mounted cgroup2: see /proc/mounts)", path)
	}
	return nil
}

// ensureBPFFS makes pinDir a directory on a bpf filesystem. When the
// nearest existing ancestor of pinDir is not on bpffs (these machines boot
// with /sys/fs/bpf empty), it mounts bpffs at pinDir's parent, the way
// Cilium's agent mounts /sys/fs/bpf; without mount, it fails instead.
//
// pinDir and its links directory must be root's and writable by nobody
// else, and so must every directory on the way to them (a sticky one, like
// a bpffs mounted with its default mode 1777, may be writable by all):
// whoever could write there could remove or swap root's pins (the
// heartbeat: capture fails open; the links: CheckAttachment finds them
// gone) or plant what Load then trips on. They are checked as the control
// socket's directory is (internal/rootowned), and created 0700 when
// missing. So is anything at the path of a pin that is not one.
func ensureBPFFS(log *slog.Logger, pinDir string, mount bool) error {
	if err := rootowned.CheckNoDotDot(pinDir); err != nil {
		return fmt.Errorf("bpffs pin directory: %w", err)
	}
	existing := pinDir
	for {
		if _, err := os.Stat(existing); err == nil {
			break
		}
		parent := filepath.Dir(existing)
		if parent == existing {
			break
		}
		existing = parent
	}

	var st unix.Statfs_t
	if err := unix.Statfs(existing, &st); err != nil {
		return fmt.Errorf("bpffs: statfs %s: %w", existing, err)
	}
	if st.Type != unix.BPF_FS_MAGIC && !mount {
		return fmt.Errorf("no bpf filesystem at %s, and this agent may not mount one (--mount-bpffs=false): mount bpffs on the node "+
			"(systemd does at boot; the Helm chart's bpf.mountFS=true does from a privileged init container)", existing)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		root := filepath.Dir(pinDir)
		// Checked before anything is mounted there.
		if _, _, err := rootowned.Resolve(root, 0o755); err != nil {
			return fmt.Errorf("bpffs mount point %s: %w", root, pinDirAdvice(err))
		}
		mounted, err := MountBPFFS(root)
		if err != nil {
			return fmt.Errorf("no bpf filesystem at %s and mounting one failed: %w", root, err)
		}
		if mounted {
			log.Info("mounted bpffs", "path", root)
		}
	}
	for _, dir := range []string{pinDir, filepath.Join(pinDir, linksDir)} {
		if _, _, err := rootowned.Dir(dir, 0o700); err != nil {
			return fmt.Errorf("bpffs pin directory %s: %w", dir, pinDirAdvice(err))
		}
	}
	return checkPinKinds(pinDir)
}

// pinDirAdvice adds to a refusal of rootowned's what the operator can do.
func pinDirAdvice(err error) error {
	return fmt.Errorf("%w; refusing to pin capture's maps and links under it: remove it if another user made it "+
		"(the agent makes what is missing, root's and 0700), make it root's and writable by root alone, or give --bpffs another directory", err)
}

// checkPinKinds refuses anything at the path of one of ztdns's pins that is
// not a pinned object (which bpffs shows as a regular file): a directory,
// a symbolic link. Opened as a map or link, the kernel refuses it with
// "permission denied", which tells nothing.
func checkPinKinds(pinDir string) error {
	var paths []string
	for _, name := range mapNames {
		paths = append(paths, pinPath(pinDir, name))
	}
	for _, h := range hooks {
		paths = append(paths, linkPinPath(pinDir, h.name), movingPinPath(pinDir, h.name))
	}
	for _, p := range paths {
		fi, err := os.Lstat(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("bpffs: %w", err)
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("bpffs: %s is %s where ztdns pins a map or link of its own: remove it (it is not one of ztdns's), or give --bpffs another directory",
				p, fileKind(fi.Mode()))
		}
	}
	return nil
}

// fileKind names what a file of mode is, for an error.
func fileKind(mode os.FileMode) string {
	switch {
	case mode.IsDir():
		return "a directory"
	case mode&os.ModeSymlink != 0:
		return "a symbolic link"
	default:
		return "a " + mode.Type().String() + " file"
	}
}

// MountBPFFS mounts a bpf filesystem at dir, as `mount -t bpf bpf DIR`
// (and Cilium's agent at /sys/fs/bpf) do, unless dir is on one already. It
// reports whether it mounted one. Its root is mode 0700, as systemd mounts
// /sys/fs/bpf, not bpffs's default 1777: in a root anyone can write in,
// another user could make the directory the agent is to pin in first.
func MountBPFFS(dir string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", dir, err)
	}
	if st.Type == unix.BPF_FS_MAGIC {
		return false, nil
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return false, fmt.Errorf("mount -t bpf -o mode=0700 bpf %s: %w", dir, err)
	}
	return true, nil
}

// MinKernel is the oldest Linux release capture runs on: the newest of the
// features checkKernel probes, SO_NETNS_COOKIE, came in 5.14.
const MinKernel = "5.14"

// checkKernel probes, before anything is loaded or made, every kernel
// feature capture needs, so that a missing one is reported by name instead
// of as a verifier log, or as a failure after the resolver's interface and
// the links are in place. Each error names MinKernel, not the release that
// brought the feature: an operator upgrading to that one would meet the
// next missing feature.
func checkKernel() error {
	// Not a kernel feature, but as missing: the programs are compiled
	// little-endian only (gen.go), and other architectures build with
	// ztdns_stub.go, whose loadZtdns fails so. Known at build time: the
	// object is not parsed for it.
	if cpu.IsBigEndian {
		return errBigEndian
	}
	// First: the agent and the CNI plugin read every pod's cookie with it
	// (pkg/netns), and the newest feature of all.
	if err := CheckNetnsCookie(); err != nil {
		return err
	}
	if err := features.HaveProgramType(ebpf.CGroupSockAddr); err != nil { // 4.17
		return lacks("cgroup sock_addr programs", err)
	}
	for _, h := range hooks { // 4.17 (connect) to 5.9 (sock_release)
		if err := probeAttachType(h.typ, h.attach); err != nil {
			return lacks("the cgroup/"+strings.TrimPrefix(h.name, "ztdns_")+" hook", err)
		}
	}
	if err := features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnGetNetnsCookie); err != nil { // 5.7
		return lacks("bpf_get_netns_cookie in cgroup sock_addr programs", err)
	}
	if err := features.HaveMapType(ebpf.SkStorage); err != nil { // 5.2
		return lacks("socket storage maps", err)
	}
	if err := features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnSkStorageGet); err != nil {
		return lacks("bpf_sk_storage_get in cgroup sock_addr programs", err)
	}
	// sock_release takes a closed socket off its pod's count.
	if err := features.HaveProgramHelper(ebpf.CGroupSock, asm.FnSkStorageGet); err != nil {
		return lacks("bpf_sk_storage_get in cgroup sock programs", err)
	}
	if err := features.HaveProgramHelper(ebpf.CGroupSock, asm.FnGetNetnsCookie); err != nil { // 5.7
		return lacks("bpf_get_netns_cookie in cgroup sock programs", err)
	}
	return nil
}

// errBigEndian is loadZtdns's error on an architecture the programs are
// not compiled for (ztdns_stub.go).
var errBigEndian = fmt.Errorf("capture needs a little-endian architecture (amd64, arm64, ppc64le, …), not %s: run the agent with --capture=false here", runtime.GOARCH)

// lacks is checkKernel's error for a feature this kernel does not have.
func lacks(what string, err error) error {
	return fmt.Errorf("capture needs Linux %s+ (this kernel lacks %s): %w", MinKernel, what, err)
}

// CheckNetnsCookie checks that this kernel can read a network namespace's
// cookie, by reading the calling thread's: getsockopt(SO_NETNS_COOKIE)
// fails with ENOPROTOOPT (in the error) before Linux 5.14. Capture and the
// CNI plugin know every pod by it.
func CheckNetnsCookie() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("reading a network namespace's cookie: socket: %w", err)
	}
	defer unix.Close(fd)
	if _, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE); err != nil {
		return lacks("SO_NETNS_COOKIE, to read a network namespace's cookie", err)
	}
	return nil
}

// probeAttachType loads the smallest valid program of type typ for one
// attach type: the kernel rejects an expected_attach_type it does not know
// with EINVAL.
func probeAttachType(typ ebpf.ProgramType, at ebpf.AttachType) error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:       "ztdns_probe",
		Type:       typ,
		AttachType: at,
		License:    "Dual BSD/GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 1),
			asm.Return(),
		},
	})
	if errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("%w: %w", ebpf.ErrNotSupported, err)
	}
	if err != nil {
		return err
	}
	return prog.Close()
}
