package regularfile

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

const limit = 64

// Each case plants a file at path and checks what Read and ReadNoFollow
// return for it. A FIFO or /dev/zero read whole would hang the test (a
// FIFO's open and read block until a writer comes; /dev/zero never ends):
// the refusal is what ends it.
func TestRead(t *testing.T) {
	content := strings.Repeat("x", limit)
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, path string)
		// check checks the result of Read (follow) or ReadNoFollow.
		check func(t *testing.T, path string, follow bool, data []byte, err error)
	}{
		{
			name:  "regular file at the limit",
			plant: func(t *testing.T, path string) { write(t, path, content) },
			check: func(t *testing.T, _ string, _ bool, data []byte, err error) {
				if err != nil || string(data) != content {
					t.Errorf("= %q, %v; want its %d bytes", data, err, limit)
				}
			},
		},
		{
			name:  "regular file past the limit",
			plant: func(t *testing.T, path string) { write(t, path, content+"y") },
			check: func(t *testing.T, path string, _ bool, data []byte, err error) {
				want := &TooLargeError{Path: path, Size: limit + 1, Limit: limit}
				if e := (*TooLargeError)(nil); !errors.As(err, &e) || *e != *want || data != nil {
					t.Errorf("= %q, %v; want %v", data, err, want)
				}
			},
		},
		{
			name: "FIFO",
			plant: func(t *testing.T, path string) {
				if err := syscall.Mkfifo(path, 0o640); err != nil {
					t.Fatal(err)
				}
			},
			check: wantNotRegular("a FIFO", fs.ModeNamedPipe|0o640),
		},
		{
			name: "socket",
			plant: func(t *testing.T, path string) {
				ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
				if err != nil {
					t.Fatal(err)
				}
				ln.SetUnlinkOnClose(false)
				t.Cleanup(func() { ln.Close() })
				if err := os.Chmod(path, 0o600); err != nil {
					t.Fatal(err)
				}
			},
			check: wantNotRegular("a socket", fs.ModeSocket|0o600),
		},
		{
			name: "directory",
			plant: func(t *testing.T, path string) {
				if err := os.Mkdir(path, 0o700); err != nil {
					t.Fatal(err)
				}
			},
			check: wantNotRegular("a directory", fs.ModeDir|0o700),
		},
		{
			name: "symbolic link to /dev/zero",
			plant: func(t *testing.T, path string) {
				if err := os.Symlink("/dev/zero", path); err != nil {
					t.Fatal(err)
				}
			},
			check: func(t *testing.T, path string, follow bool, data []byte, err error) {
				if !follow {
					wantSymlink(t, path, data, err)
					return
				}
				fi, serr := os.Stat("/dev/zero")
				if serr != nil {
					t.Fatal(serr)
				}
				wantNotRegular("a character device", fi.Mode())(t, path, follow, data, err)
			},
		},
		{
			name: "symbolic link to a regular file",
			plant: func(t *testing.T, path string) {
				target := filepath.Join(t.TempDir(), "target")
				write(t, target, content)
				if err := os.Symlink(target, path); err != nil {
					t.Fatal(err)
				}
			},
			check: func(t *testing.T, path string, follow bool, data []byte, err error) {
				if !follow {
					wantSymlink(t, path, data, err)
				} else if err != nil || string(data) != content {
					t.Errorf("= %q, %v; want the target's %d bytes", data, err, limit)
				}
			},
		},
		{
			name:  "missing",
			plant: func(*testing.T, string) {},
			check: func(t *testing.T, _ string, _ bool, data []byte, err error) {
				if !errors.Is(err, fs.ErrNotExist) || data != nil {
					t.Errorf("= %q, %v; want %v", data, err, fs.ErrNotExist)
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "f")
			tc.plant(t, path)
			t.Run("follow", func(t *testing.T) {
				data, err := Read(path, limit)
				tc.check(t, path, true, data, err)
			})
			t.Run("no follow", func(t *testing.T) {
				data, err := ReadNoFollow(path, limit)
				tc.check(t, path, false, data, err)
			})
		})
	}
}

func wantNotRegular(kind string, mode fs.FileMode) func(*testing.T, string, bool, []byte, error) {
	return func(t *testing.T, path string, _ bool, data []byte, err error) {
		t.Helper()
		e := (*NotRegularError)(nil)
		if !errors.As(err, &e) || e.Path != path || e.Mode != mode || e.Kind() != kind || data != nil {
			t.Errorf("= %q, %v; want %s (mode %s) refused", data, err, kind, mode)
		}
		if want := path + ": " + kind + ", not a regular file"; err == nil || err.Error() != want {
			t.Errorf("error %v, want %q", err, want)
		}
	}
}

func wantSymlink(t *testing.T, path string, data []byte, err error) {
	t.Helper()
	if e := (*SymlinkError)(nil); !errors.As(err, &e) || e.Path != path || data != nil {
		t.Errorf("= %q, %v; want the link refused", data, err)
	}
}

// TestReadGrown: a file whose size at the look is within the limit, but
// that yields more when read, is refused as grown; read whole it would have
// been used, however large. A file of /proc is one: its size is 0, and its
// content is made as it is read.
func TestReadGrown(t *testing.T) {
	t.Parallel()
	const path = "/proc/self/status"
	if fi, err := os.Stat(path); err != nil || !fi.Mode().IsRegular() || fi.Size() != 0 {
		t.Fatalf("%s: %v, %v; want a regular file of size 0", path, fi, err)
	}
	for name, read := range map[string]func(string, int64) ([]byte, error){"follow": Read, "no follow": ReadNoFollow} {
		data, err := read(path, limit)
		want := &TooLargeError{Path: path, Limit: limit, Grew: true}
		if e := (*TooLargeError)(nil); !errors.As(err, &e) || *e != *want || data != nil {
			t.Errorf("%s: = %q, %v; want %v", name, data, err, want)
		}
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
