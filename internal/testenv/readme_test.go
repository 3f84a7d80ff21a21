package testenv

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/ztdns/ztdns"

// TestREADMEListsPackagesNeedingRoot: README.md's list of the packages
// whose tests need root is the packages whose tests call RequireRoot, or a
// helper of internal/ that does, however indirectly (NewNetns, NewNode,
// NewCPUCgroup, …). (Before: cmd/ztdns, with RequireRoot and NewCPUCgroup,
// and pkg/resolver/forward, with NewNetns and NewNode, were missing.)
func TestREADMEListsPackagesNeedingRoot(t *testing.T) {
	root := filepath.Join("..", "..")
	helpers, methods := rootHelpers(t, root)
	if !helpers["testenv.NewNetns"] || !helpers["testenv.NewCPUCgroup"] {
		t.Fatalf("found the root-needing helpers %v, without NewNetns or NewCPUCgroup", slices.Sorted(maps.Keys(helpers)))
	}
	var derived []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "bin") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		dir, _ := filepath.Rel(root, filepath.Dir(path))
		if slices.Contains(derived, dir) {
			return nil
		}
		f := parseFile(t, path)
		pkg := "internal/" + f.Name.Name // its own helpers, called unqualified
		if callsAny(f, importsOf(f), pkg, helpers, methods) {
			derived = append(derived, dir)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(derived)

	listed := readmeRootList(t, filepath.Join(root, "README.md"))
	if !slices.Equal(listed, derived) {
		t.Errorf("README.md lists as needing root:\n  %v\nthe packages whose tests call a root-needing helper of internal/ are:\n  %v", listed, derived)
	}
}

// rootHelpers returns the functions and methods of the packages under
// internal/ that call RequireRoot, or call one that does, as "pkg.Name",
// and the names of all their methods, as "pkg.Name". A method is known by
// its name alone: a call x.Name() in its package, or a test's, is taken
// for it.
func rootHelpers(t *testing.T, root string) (helpers, methods map[string]bool) {
	t.Helper()
	type fn struct {
		key     string // pkg.Name
		pkg     string // internal/pkg
		imports map[string]string
		body    *ast.BlockStmt
	}
	var fns []fn
	methods = map[string]bool{}
	dirs, err := filepath.Glob(filepath.Join(root, "internal", "*"))
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range dirs {
		files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
		for _, path := range files {
			if strings.HasSuffix(path, "_test.go") {
				continue
			}
			f := parseFile(t, path)
			imports := importsOf(f)
			for _, d := range f.Decls {
				fd, ok := d.(*ast.FuncDecl)
				if !ok {
					continue
				}
				key := f.Name.Name + "." + fd.Name.Name
				if fd.Recv != nil {
					methods[key] = true
				}
				if fd.Body != nil {
					fns = append(fns, fn{key, "internal/" + f.Name.Name, imports, fd.Body})
				}
			}
		}
	}
	helpers = map[string]bool{"testenv.RequireRoot": true}
	for changed := true; changed; {
		changed = false
		for _, f := range fns {
			if !helpers[f.key] && calls(f.body, f.imports, f.pkg, helpers, methods) {
				helpers[f.key], changed = true, true
			}
		}
	}
	return helpers, methods
}

// callsAny says whether a test file calls one of helpers (calls).
func callsAny(f *ast.File, imports map[string]string, pkg string, helpers, methods map[string]bool) bool {
	for _, d := range f.Decls {
		if fd, ok := d.(*ast.FuncDecl); ok && fd.Body != nil && calls(fd.Body, imports, pkg, helpers, methods) {
			return true
		}
	}
	return false
}

// calls says whether body, in package pkg ("internal/NAME" for the
// packages under internal/), calls one of helpers: Name() of its own
// package, p.Name() of an imported package under internal/, or x.Name()
// for a method (one of methods, "pkg.Name") of its own package or of one
// it imports.
func calls(body *ast.BlockStmt, imports map[string]string, pkg string, helpers, methods map[string]bool) bool {
	own := strings.TrimPrefix(pkg, "internal/")
	found := false
	ast.Inspect(body, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok || found {
			return !found
		}
		switch fun := call.Fun.(type) {
		case *ast.Ident:
			found = helpers[own+"."+fun.Name]
		case *ast.SelectorExpr:
			if x, ok := fun.X.(*ast.Ident); ok {
				if path, imported := imports[x.Name]; imported {
					found = helpers[filepath.Base(path)+"."+fun.Sel.Name] && strings.HasPrefix(path, module+"/internal/")
					return !found
				}
			}
			// A method: of the package's own types, or an imported
			// helper package's.
			if key := own + "." + fun.Sel.Name; helpers[key] && methods[key] {
				found = true
				break
			}
			for _, path := range imports {
				if key := filepath.Base(path) + "." + fun.Sel.Name; strings.HasPrefix(path, module+"/internal/") && helpers[key] && methods[key] {
					found = true
				}
			}
		}
		return !found
	})
	return found
}

// importsOf maps a file's names of its imports to their paths.
func importsOf(f *ast.File) map[string]string {
	imports := map[string]string{}
	for _, imp := range f.Imports {
		path, _ := strconv.Unquote(imp.Path.Value)
		name := filepath.Base(path)
		if imp.Name != nil {
			name = imp.Name.Name
		}
		imports[name] = path
	}
	return imports
}

func parseFile(t *testing.T, path string) *ast.File {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// readmeRootList returns the packages README.md says need root: the code
// spans of its sentence "Tests of these packages need root (...): `a`,
// ... and `z`."
func readmeRootList(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, text, ok := strings.Cut(string(b), "Tests of these packages need root (")
	if !ok {
		t.Fatal("README.md has no sentence \"Tests of these packages need root (...)\"")
	}
	_, text, _ = strings.Cut(text, "):")
	if end := strings.Index(text, "`."); end >= 0 {
		text = text[:end+1]
	}
	var listed []string
	for _, m := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(text, -1) {
		listed = append(listed, m[1])
	}
	slices.Sort(listed)
	return listed
}
