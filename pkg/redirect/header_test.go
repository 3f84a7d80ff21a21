//go:build linux

package redirect

import (
	"bufio"
	"fmt"
	"go/ast"
	"go/constant"
	"go/parser"
	"go/token"
	"go/types"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The Go values that repeat a constant of bpf/ztdns.h are the header's:
// bpf2go generates the structs, not the #defines. Reads the header; needs
// no kernel.
func TestConstantsMatchTheHeader(t *testing.T) {
	defines := headerDefines(t, "../../bpf/ztdns.h")
	for _, c := range []struct {
		define string
		goName string
		value  int64
	}{
		{"ZTDNS_SLOTS", "Slots", Slots},
		{"ZTDNS_MAX_CAPTURE_PREFIXES", "MaxCaptureNameservers", MaxCaptureNameservers},
		{"ZTDNS_AF_INET", "afInet", afInet},
		{"ZTDNS_AF_INET6", "afInet6", afInet6},
		{"ZTDNS_POD_PAUSED", "PodPaused", int64(PodPaused)},
		{"ZTDNS_NS_UNCONFIRMED", "nsUnconfirmed", nsUnconfirmed},
		{"ZTDNS_SLOT_IDLE_NS", "SlotIdle", int64(SlotIdle / time.Nanosecond)},
		{"ZTDNS_SLOT_UNCONFIRMED_IDLE_NS", "SlotUnconfirmedIdle", int64(SlotUnconfirmedIdle / time.Nanosecond)},
	} {
		v, ok := defines[c.define]
		switch {
		case !ok:
			t.Errorf("bpf/ztdns.h defines no %s (%s repeats it)", c.define, c.goName)
		case v != c.value:
			t.Errorf("%s is %d, bpf/ztdns.h's %s %d", c.goName, c.value, c.define, v)
		}
	}
}

// headerDefines returns the value of each #define of path whose body is an
// integer expression (literals with C's U and L suffixes, other such
// defines, Go's operators), evaluated as Go constants.
func headerDefines(t *testing.T, path string) map[string]int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	define := regexp.MustCompile(`^#define\s+([A-Z_][A-Z0-9_]*)\s+(.+?)\s*(?:/\*.*|//.*)?$`)
	suffix := regexp.MustCompile(`\b(0x[0-9a-fA-F]+|[0-9]+)[uUlL]+\b`)
	var src strings.Builder
	src.WriteString("package header\nconst (\n")
	var names []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		m := define.FindStringSubmatch(s.Text())
		if m == nil {
			continue
		}
		expr := suffix.ReplaceAllString(m[2], "$1")
		if _, err := parser.ParseExpr(expr); err != nil {
			continue // not an expression Go reads (a string, a macro call)
		}
		fmt.Fprintf(&src, "\t%s = %s\n", m[1], expr)
		names = append(names, m[1])
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	src.WriteString(")\n")
	fset := token.NewFileSet()
	file, err := parser.ParseFile(fset, path+".go", src.String(), 0)
	if err != nil {
		t.Fatalf("the header's defines as Go: %v\n%s", err, src.String())
	}
	pkg, err := (&types.Config{}).Check("header", fset, []*ast.File{file}, nil)
	if err != nil {
		t.Fatalf("the header's defines as Go: %v\n%s", err, src.String())
	}
	out := map[string]int64{}
	for _, name := range names {
		c, ok := pkg.Scope().Lookup(name).(*types.Const)
		if !ok {
			continue
		}
		if v, exact := constant.Int64Val(c.Val()); exact {
			out[name] = v
		}
	}
	return out
}
