package testenv

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
)

// HeaderDefines returns the value of each #define of path whose body is an
// integer expression (literals with C's U and L suffixes, other such
// defines, Go's operators), evaluated as Go constants.
func HeaderDefines(tb testing.TB, path string) map[string]int64 {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatalf("testenv: %v", err)
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
		tb.Fatalf("testenv: %v", err)
	}
	src.WriteString(")\n")
	fset := token.NewFileSet()
	file, err := parser.ParseFile(fset, path+".go", src.String(), 0)
	if err != nil {
		tb.Fatalf("the header's defines as Go: %v\n%s", err, src.String())
	}
	pkg, err := (&types.Config{}).Check("header", fset, []*ast.File{file}, nil)
	if err != nil {
		tb.Fatalf("the header's defines as Go: %v\n%s", err, src.String())
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
