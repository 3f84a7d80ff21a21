package configdir

import (
	"errors"
	"strings"
	"testing"
)

// FuzzParseManifest parses arbitrary files and checks the promised bounds:
// problems are *FileErrors with a line inside the file, at most
// maxProblemsPerFile of them, and a file with problems serves nothing.
// Aliases that expand a document past maxExpandedBytes are refused before
// they are expanded, so the fuzzer running out of memory is a failure too.
func FuzzParseManifest(f *testing.F) {
	for _, seed := range []string{
		goodNamespace,
		"apiVersion: v1\nkind: Service\nmetadata: {name: web, labels: &l {app: web}}\nspec: {clusterIP: 10.96.0.1, selector: *l}\n",
		"a: &x [\"" + strings.Repeat("x", 1000) + "\"]\nb: [*x, *x, *x, *x]\nc: &y [*x, *x, *x]\nd: [*y, *y, *y]\n",
		"metadata: &m {name: c, x: [*m]}\n",
		"apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n",
		"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: e}\naddressType: IPv4\nendpoints:\n- addresses: [\"1.2.3\"]\n",
		"---\n[\n---\nkind: Service\n---\n{a: 1, a: 2}\n",
	} {
		f.Add([]byte(seed))
	}
	p := parser{log: quietLogger(), limits: Limits{}.withDefaults()}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, errs, warnings := p.parseFile("f.yaml", data)
		if len(errs) > maxProblemsPerFile || len(warnings) > maxProblemsPerFile {
			t.Fatalf("%d problems, more than %d", len(errs), maxProblemsPerFile)
		}
		if len(errs) > 0 && m != nil {
			t.Fatalf("a file with problems serves %d objects", m.len())
		}
		lines := lineCount(data)
		for _, err := range append(errs, warnings...) {
			var fe *FileError
			if !errors.As(err, &fe) {
				t.Fatalf("problem %v is not a *FileError", err)
			}
			if fe.Line < 0 || fe.Line > lines {
				t.Fatalf("problem %v is on line %d of a file of %d lines", err, fe.Line, lines)
			}
		}
	})
}
