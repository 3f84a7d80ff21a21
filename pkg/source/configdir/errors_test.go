package configdir

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/resolver/table"
)

// goodNamespace is a valid first document, so that every error below sits
// in a later document and its line proves the document offset is applied.
const goodNamespace = `apiVersion: v1
kind: Namespace
metadata: {name: fine}
---
`

func TestErrorsNamePathAndLine(t *testing.T) {
	tests := []struct {
		name string
		yaml string // written to bad.yaml after goodNamespace (4 lines)
		want []string
	}{
		{
			name: "YAML syntax error",
			yaml: `apiVersion: v1
kind: Service
metadata: {name: [x}
`,
			want: []string{`bad.yaml:7: invalid YAML: did not find expected ',' or ']'`},
		},
		{
			name: "repeated key",
			yaml: `apiVersion: v1
kind: Service
metadata:
  name: x
  name: y
`,
			want: []string{`bad.yaml:9: invalid YAML: key "name" already set in map`},
		},
		{
			name: "document that is a list",
			yaml: `# a comment first
- apiVersion: v1
  kind: Service
`,
			want: []string{`bad.yaml:6: document is not an object but a list`},
		},
		{
			name: "document that is a string",
			yaml: `just text
`,
			want: []string{`bad.yaml:5: document is not an object but a string`},
		},
		{
			name: "missing kind",
			yaml: `apiVersion: v1
metadata: {name: x}
`,
			want: []string{`bad.yaml:5: missing kind`},
		},
		{
			name: "missing apiVersion",
			yaml: `kind: Service
metadata: {name: x}
`,
			want: []string{`bad.yaml:5: Service: missing apiVersion`},
		},
		{
			name: "name that YAML 1.1 reads as a boolean, as kubectl does",
			yaml: `apiVersion: v1
kind: Namespace
metadata: {name: y}
`,
			want: []string{`bad.yaml:5: reading apiVersion, kind and metadata: json: cannot unmarshal bool into Go struct field .metadata.name of type string`},
		},
		{
			name: "YAML error in the first line of a later document",
			yaml: `apiVersion: v1: x
`,
			want: []string{`bad.yaml:5: invalid YAML: mapping values are not allowed in this context`},
		},
		{
			name: "bad indentation",
			yaml: `apiVersion: v1
kind: Service
metadata:
  name: x
 namespace: y
`,
			want: []string{`bad.yaml:9: invalid YAML: did not find expected key`},
		},
		{
			name: "unterminated string",
			yaml: `apiVersion: v1
kind: Service
metadata:
  name: "x
`,
			want: []string{`bad.yaml:8: invalid YAML: found unexpected end of stream`},
		},
		{
			name: "missing metadata.name",
			yaml: `apiVersion: v1
kind: Pod
metadata: {namespace: x}
`,
			want: []string{`bad.yaml:5: Pod: missing metadata.name`},
		},
		{
			name: "unknown version of a known kind",
			yaml: `apiVersion: networking.istio.io/v2
kind: ServiceEntry
metadata: {name: x}
---
apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata: {name: z}
`,
			want: []string{
				`bad.yaml:5: ServiceEntry: unsupported apiVersion "networking.istio.io/v2" (want networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3)`,
				`bad.yaml:9: EndpointSlice: unsupported apiVersion "discovery.k8s.io/v1beta1" (want discovery.k8s.io/v1)`,
			},
		},
		{
			name: "invalid ServiceEntry address",
			yaml: `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: x
spec:
  hosts:
  - x.example
  addresses:
  - 1.2.3
`,
			want: []string{`bad.yaml:13: serviceentry default/x: address "1.2.3" is not an IP address or CIDR`},
		},
		{
			name: "two invalid ServiceEntry addresses, each on its line, none in status",
			yaml: `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: x, namespace: shop}
spec:
  hosts: [x.example]
  addresses:
  - 198.51.100.1
  - 198.51.100.300
  - 2001:db8::/999
status:
  addresses:
  - {host: x.example, value: nope}
`,
			want: []string{
				`bad.yaml:12: serviceentry shop/x: address "198.51.100.300" is not an IP address or CIDR`,
				`bad.yaml:13: serviceentry shop/x: address "2001:db8::/999" is not an IP address or CIDR`,
				// status.addresses has no schema: a bad value there is
				// skipped (TestBadStatusAddressesAreSkipped), no problem.
			},
		},
		{
			name: "ServiceEntry without hosts",
			yaml: `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: x}
spec:
  addresses: [198.51.100.1]
`,
			want: []string{`bad.yaml:5: serviceentry default/x: spec.hosts is empty`},
		},
		{
			name: "invalid ServiceEntry resolution",
			yaml: `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: x}
spec:
  hosts: [x.example]
  resolution: SOMETIMES
`,
			want: []string{`bad.yaml:5: serviceentry default/x: unknown value "\"SOMETIMES\"" for enum istio.networking.v1alpha3.ServiceEntry.Resolution`},
		},
		{
			name: "invalid Service clusterIP",
			yaml: `apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIPs:
  - 10.96.0.1
  - 10.96.0.256
`,
			want: []string{`bad.yaml:11: service default/web: clusterIP "10.96.0.256" is not an IP address`},
		},
		{
			// Before, at the object's first line, by Go's names:
			// "serviceEntryManifest.spec of type []json.RawMessage".
			name: "ServiceEntry field of the wrong type",
			yaml: `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: x}
spec:
  hosts: [x.example]
  addresses: 198.51.100.13
  resolution: STATIC
`,
			want: []string{`bad.yaml:10: serviceentry default/x: spec.addresses: want a list, got a string`},
		},
		{
			// Before: "ServicePort.spec.ports.port of type int32", at line 5.
			name: "Service port of the wrong type, in the second item",
			yaml: `apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.20
  ports:
  - port: 81
  - port: "80"
`,
			want: []string{`bad.yaml:12: service default/web: spec.ports[1].port: want a number, got a string`},
		},
		{
			name: "Service field of the wrong type",
			yaml: `apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: 80
`,
			// Named as written, on its line; before, at the object's first
			// line, by Go's names (ServiceSpec.spec.ports of type
			// []v1.ServicePort).
			want: []string{`bad.yaml:9: service default/web: spec.ports: want a list, got a number`},
		},
		{
			name: "invalid Pod IP",
			yaml: `apiVersion: v1
kind: Pod
metadata: {name: curl}
status:
  podIPs:
  - ip: 127.0.0.300
`,
			want: []string{`bad.yaml:10: pod default/curl: podIP "127.0.0.300" is not an IP address`},
		},
		{
			name: "invalid EndpointSlice address",
			yaml: `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1}
addressType: IPv4
endpoints:
- addresses: [10.0.0.1]
- addresses: [10.0.0.x]
`,
			want: []string{`bad.yaml:11: endpointslice default/db-1: address "10.0.0.x" is not an IP address`},
		},
		{
			name: "bad item in a List",
			yaml: `apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: a}
- apiVersion: v1
  kind: Service
  metadata: {name: s}
  spec: {clusterIP: 10.96.0.999}
- 42
`,
			want: []string{
				`bad.yaml:14: service default/s: clusterIP "10.96.0.999" is not an IP address`,
				`bad.yaml:15: List item 2 is not an object but a number`,
			},
		},
		{
			name: "same object twice in one file",
			yaml: `apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: None}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {clusterIP: None}
`,
			want: []string{`bad.yaml:10: service default/web is defined twice (first at line 5)`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { checkBrokenFile(t, tc.yaml, tc.want) })
	}
}

// checkBrokenFile loads bad.yaml, goodNamespace then yaml, and checks that
// it reports the problems want (paths relative to its directory) and,
// broken from the start, serves nothing, not even its good first document.
func checkBrokenFile(t *testing.T, yaml string, want []string) {
	t.Helper()
	dir, got, errs := loadFiles(t, map[string]string{"bad.yaml": goodNamespace + yaml})
	var paths []string
	for _, w := range want {
		paths = append(paths, filepath.Join(dir, w))
	}
	wantErrors(t, errs, paths)
	if n := names(got); len(n) > 0 {
		t.Errorf("broken file served %q", n)
	}
}

// TestServiceWithoutClusterIP: an API server never serves a Service of a
// type other than ExternalName without a clusterIP (it allocates one, or
// keeps None). Written so in a manifest it is reported and left out; served,
// its name answered nothing and, as a Service, it hid a ServiceEntry naming
// the same host.
func TestServiceWithoutClusterIP(t *testing.T) {
	const entry = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cart, namespace: mesh}
spec:
  hosts: [cart.shop.svc.cluster.local]
  addresses: [198.51.100.10]
  ports: [{name: http, number: 80, protocol: HTTP}]
  resolution: STATIC
`
	for _, typ := range []string{"", "ClusterIP", "NodePort", "LoadBalancer"} {
		t.Run("type "+cmp.Or(typ, "unset"), func(t *testing.T) {
			spec := "ports: [{name: http, port: 80}]"
			if typ != "" {
				spec = "type: " + typ + ", " + spec
			}
			dir, got, errs := loadFiles(t, map[string]string{
				"entry.yaml": entry,
				"svc.yaml":   goodNamespace + "apiVersion: v1\nkind: Service\nmetadata: {name: cart, namespace: shop}\nspec: {" + spec + "}\n",
			})
			want := []string{filepath.Join(dir, "svc.yaml:5: service shop/cart: type "+cmp.Or(typ, "ClusterIP")+
				" without spec.clusterIP: give the address its name answers with, or clusterIP: None for a headless Service")}
			wantErrors(t, errs, want)
			// What `ztdns table --namespace shop` shows: the ServiceEntry's
			// address, not a Service's empty answer.
			tbl, buildErrs := table.Build(got, table.Options{Domain: table.DefaultDomain, TTL: table.DefaultTTL})
			if len(buildErrs) > 0 {
				t.Fatalf("build: %v", buildErrs)
			}
			var rows []table.Row
			for _, r := range tbl.Rows("shop") {
				if r.Name == "cart.shop.svc.cluster.local." && r.Type == "A" {
					rows = append(rows, r)
				}
			}
			wantRows := []table.Row{{Name: "cart.shop.svc.cluster.local.", Type: "A", Values: []string{"198.51.100.10"},
				Origin: "ServiceEntry mesh/cart", AddrSource: "spec"}}
			if !reflect.DeepEqual(rows, wantRows) {
				t.Errorf("A rows of cart.shop.svc.cluster.local. from shop: %+v, want %+v", rows, wantRows)
			}
		})
	}
}

func TestFileLevelErrors(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string)
		want  string
	}{
		{
			name: "file larger than the limit",
			setup: func(t *testing.T, dir string) {
				f, err := os.Create(filepath.Join(dir, "big.yaml"))
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				if err := f.Truncate(DefaultMaxFileBytes + 1); err != nil { // sparse: costs no disk
					t.Fatal(err)
				}
			},
			want: "big.yaml: file is 8388609 bytes, more than the limit of 8388608 (--config-max-file-bytes)",
		},
		{
			name: "directory with a manifest's name",
			setup: func(t *testing.T, dir string) {
				if err := os.Mkdir(filepath.Join(dir, "big.yaml"), 0o755); err != nil {
					t.Fatal(err)
				}
			},
			want: "big.yaml: not a regular file (d---------): skipped",
		},
		{
			// Opening a FIFO blocks until a writer comes: the source must
			// skip it without opening it, and keep serving the rest.
			name: "FIFO with a manifest's name",
			setup: func(t *testing.T, dir string) {
				if err := syscall.Mkfifo(filepath.Join(dir, "big.yaml"), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			want: "big.yaml: not a regular file (p---------): skipped",
		},
		{
			name: "dangling symlink",
			setup: func(t *testing.T, dir string) {
				if err := os.Symlink("nowhere.yaml", filepath.Join(dir, "big.yaml")); err != nil {
					t.Fatal(err)
				}
			},
			want: "big.yaml: dangling symlink: stat DIR/big.yaml: no such file or directory",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.setup(t, dir)
			writeFiles(t, dir, map[string]string{"good.yaml": goodNamespace})
			log, _ := testLogger(t)
			got, errs := load(t, dir, WithLogger(log))
			want := []string{filepath.Join(dir, strings.ReplaceAll(tc.want, "DIR", dir))}
			wantErrors(t, errs, want)
			if n, w := names(got), []string{"namespace fine"}; !reflect.DeepEqual(n, w) {
				t.Errorf("objects %q, want %q (other files still apply)", n, w)
			}
		})
	}
}

// TestObjectLimits: a file over the objects-per-file limit, as documents or
// as List items, is not served and says why; a file that would take the
// directory over its total is not served, and the files before it are.
func TestObjectLimits(t *testing.T) {
	ns := func(i int) string {
		return fmt.Sprintf("apiVersion: v1\nkind: Namespace\nmetadata: {name: ns-%d}\n", i)
	}
	docs := func(from, n int) string {
		var b strings.Builder
		for i := range n {
			b.WriteString(ns(from+i) + "---\n")
		}
		return b.String()
	}
	list := func(from, n int) string {
		var b strings.Builder
		b.WriteString("apiVersion: v1\nkind: List\nitems:\n")
		for i := range n {
			fmt.Fprintf(&b, "- {apiVersion: v1, kind: Namespace, metadata: {name: l-%d}}\n", from+i)
		}
		return b.String()
	}
	limits := WithLimits(Limits{ObjectsPerFile: 5, Objects: 8})
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"a.yaml": docs(0, 5),  // at the per-file limit: served
		"b.yaml": docs(10, 6), // one over
		"c.yaml": list(0, 6),  // one over, in a List
		"d.yaml": docs(20, 3), // 5 + 3 = 8: served
		"e.yaml": docs(30, 1), // 9 > 8: not served
	})
	log, _ := testLogger(t)
	got, errs := load(t, dir, WithLogger(log), limits)
	want := []string{
		filepath.Join(dir, "b.yaml") + ":20: more than 5 objects in one file (--config-max-objects-per-file): split it",
		filepath.Join(dir, "c.yaml") + ":1: more than 5 objects in one file (--config-max-objects-per-file): split it",
		filepath.Join(dir, "e.yaml") + ": serving its 1 objects would make 9 in the directory, more than the limit of 8 (--config-max-objects)",
	}
	wantErrors(t, errs, want)
	if n := len(got.Namespaces); n != 8 {
		t.Errorf("served %d namespaces (%q), want the 8 of a.yaml and d.yaml", n, names(got))
	}
}

// TestEveryDocumentCounts: documents of kinds ztdns ignores, and
// documents that are no object, count against --config-max-objects-per-file
// like the objects it reads: each costs a parse.
func TestEveryDocumentCounts(t *testing.T) {
	deploy := func(i int) string {
		return fmt.Sprintf("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d-%d}\n---\n", i)
	}
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"ignored.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n" + deploy(0) + deploy(1) + deploy(2),
		"list.yaml":    "apiVersion: v1\nkind: List\nitems:\n" + strings.Repeat("- {apiVersion: v1, kind: ConfigMap, metadata: {name: c}}\n", 4),
		"nulls.yaml":   strings.Repeat("--- ~\n", 4),
		"fine.yaml":    "apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n---\n" + deploy(0) + deploy(1) + "---\n# nothing\n",
	})
	log, _ := testLogger(t)
	got, errs := load(t, dir, WithLogger(log), WithLimits(Limits{ObjectsPerFile: 3}))
	want := []string{
		filepath.Join(dir, "ignored.yaml") + ":12: more than 3 objects in one file (--config-max-objects-per-file): split it",
		filepath.Join(dir, "list.yaml") + ":1: more than 3 objects in one file (--config-max-objects-per-file): split it",
		filepath.Join(dir, "nulls.yaml") + ":4: more than 3 objects in one file (--config-max-objects-per-file): split it",
	}
	wantErrors(t, errs, want)
	if g, w := names(got), []string{"namespace b"}; !reflect.DeepEqual(g, w) {
		t.Errorf("objects %q, want %q", g, w)
	}
}

// TestLargeDocumentRefused: a document over maxDocumentBytes (a big kind:
// List) is refused before it is converted; the same objects as separate
// documents are served.
func TestLargeDocumentRefused(t *testing.T) {
	var list, docs strings.Builder
	list.WriteString("apiVersion: v1\nkind: List\nitems:\n")
	for i := 0; list.Len() <= maxDocumentBytes; i++ {
		fmt.Fprintf(&list, "- {apiVersion: v1, kind: Namespace, metadata: {name: list-%d}, spec: {finalizers: [kubernetes]}}\n", i)
		fmt.Fprintf(&docs, "apiVersion: v1\nkind: Namespace\nmetadata: {name: doc-%d}\n---\n", i)
	}
	dir, got, errs := loadFiles(t, map[string]string{"list.yaml": list.String(), "docs.yaml": docs.String()})
	want := []string{fmt.Sprintf("%s:1: a document of %d bytes, more than %d: write its objects as separate documents (---)",
		filepath.Join(dir, "list.yaml"), list.Len(), maxDocumentBytes)}
	wantErrors(t, errs, want)
	if len(got.Namespaces) == 0 || !strings.HasPrefix(got.Namespaces[0].Name, "doc-") {
		t.Errorf("the separate documents were not served: %d namespaces", len(got.Namespaces))
	}
}

// TestProblemsAreBounded: a file with thousands of broken objects keeps
// maxProblemsPerFile problems, the last of which counts the rest, and the
// directory keeps at most maxProblems.
func TestProblemsAreBounded(t *testing.T) {
	broken := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "apiVersion: v1\nkind: Service\nmetadata: {name: s%d}\nspec: {clusterIP: not-an-ip}\n---\n", i)
		}
		return b.String()
	}
	files := map[string]string{}
	for i := range 10 {
		files[fmt.Sprintf("f%d.yaml", i)] = broken(1000)
	}
	log, _ := testLogger(t)
	dir := t.TempDir()
	writeFiles(t, dir, files)
	_, errs := load(t, dir, WithLogger(log))
	if len(errs) != maxProblems {
		t.Fatalf("%d problems kept, want %d", len(errs), maxProblems)
	}
	// 10 files of 20 problems each (the last counting 981 more): 99 kept,
	// the first of each file, then the others in order: all of f0 to f3's,
	// 14 of f4's, and the first of f5 to f9's. Left out: 5 of f4's and its
	// line counting 981 more, 18 of each of f5 to f9's and theirs, 5,981
	// problems in all (10,000 less f0 to f3's 4,000 and the 19 listed).
	// (Before, the 101 lines left out were counted, not the problems.)
	if last, want := errs[len(errs)-1].Error(), dir+": 5981 more problems not listed, in f4.yaml, f5.yaml, f6.yaml, f7.yaml, f8.yaml, f9.yaml"; last != want {
		t.Errorf("the last problem kept is %q, want %q", last, want)
	}
	for _, err := range errs {
		if _, ok := err.(*FileError); !ok {
			t.Errorf("problem %q is a %T, want a *FileError as Errors promises", err, err)
		}
	}
	perFile := map[string]int{}
	for _, err := range errs {
		var fe *FileError
		if errors.As(err, &fe) {
			perFile[fe.Path]++
		}
	}
	for path, n := range perFile {
		if n > maxProblemsPerFile {
			t.Errorf("%s: %d problems kept, want at most %d", path, n, maxProblemsPerFile)
		}
	}
	if first := errs[maxProblemsPerFile-1].Error(); !strings.HasSuffix(first, "981 more problems not listed") {
		t.Errorf("the first file's last problem is %q, want a count of its other 981", first)
	}
}

func TestDuplicateAcrossFiles(t *testing.T) {
	svc := func(ip string) string {
		return "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: " + ip + "}\n"
	}
	dir, got, errs := loadFiles(t, map[string]string{
		"a.yaml": svc("10.96.0.1"),
		"b.yaml": goodNamespace + svc("10.96.0.2"),
	})
	want := []string{filepath.Join(dir, "b.yaml") + ":5: service default/web is already defined at " + filepath.Join(dir, "a.yaml") + ":1"}
	wantErrors(t, errs, want)
	if n, w := names(got), []string{"service default/web"}; !reflect.DeepEqual(n, w) || got.Services[0].ClusterIPs[0].String() != "10.96.0.1" {
		t.Errorf("objects %q (%+v), want %q from a.yaml", n, got.Services, w)
	}
}

func TestMissingDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "absent")
	err := New(dir).Run(t.Context(), func(*model.Snapshot) { t.Error("delivered a snapshot for a missing directory") })
	if err == nil || !strings.Contains(err.Error(), "no such file or directory") {
		t.Errorf("Run = %v, want an error about the missing directory", err)
	}
	file := filepath.Join(t.TempDir(), "file")
	writeFiles(t, filepath.Dir(file), map[string]string{"file": ""})
	if err := New(file).Run(t.Context(), func(*model.Snapshot) {}); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("Run on a file = %v, want a 'not a directory' error", err)
	}
}

// label1123 and subdomain1123 are the API server's words for a name that is
// not a lowercase DNS-1123 label or subdomain (k8s.io/apimachinery).
const (
	label1123     = `a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`
	subdomain1123 = `a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')`
)

// TestValuesTheAPIServerRefuses: a manifest value the API server (or
// Istio's validation) refuses is a problem of the file, on its line. Before,
// ports outside 1-65535 were served wrapped around (a Service port 70000
// answered SRV with 4464, -1 with 65535), names in upper case were listed
// by `ztdns table` but never answered (queries match in lower case), an
// address kept its IPv6 zone, and a ServiceEntry host that is no DNS name
// was dropped from the table with a warning that named no file, while an
// empty host or "." refused the file as "empty host".
func TestValuesTheAPIServerRefuses(t *testing.T) {
	tests := []struct {
		name string
		yaml string // written to bad.yaml after goodNamespace (4 lines)
		want []string
	}{
		{
			name: "Service ports",
			yaml: `apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.1
  ports:
  - {name: a, port: 70000}
  - {name: b, port: 0}
  - {name: c, port: -1}
  - {name: d, port: 65535}
`,
			want: []string{
				`bad.yaml:11: service default/web: port "70000" must be between 1 and 65535, inclusive`,
				`bad.yaml:12: service default/web: port "0" must be between 1 and 65535, inclusive`,
				`bad.yaml:13: service default/web: port "-1" must be between 1 and 65535, inclusive`,
			},
		},
		{
			name: "ServiceEntry ports",
			yaml: `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [ext.example]
  ports:
  - {name: a, number: 70000, protocol: TCP}
  - {name: b, number: 0, protocol: TCP}
`,
			want: []string{
				`bad.yaml:11: serviceentry default/ext: number "70000" must be between 1 and 65535, inclusive`,
				`bad.yaml:12: serviceentry default/ext: number "0" must be between 1 and 65535, inclusive`,
			},
		},
		{
			name: "negative ServiceEntry port",
			yaml: `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [ext.example]
  ports:
  - {name: a, number: -1, protocol: TCP}
`,
			// Istio's type has no room for it: refused where it is decoded.
			want: []string{`bad.yaml:11: serviceentry default/ext: spec.ports[0].number: want a whole number from 0 to 4294967295, got -1`},
		},
		{
			name: "EndpointSlice port",
			yaml: `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
endpoints:
- addresses: [10.0.0.1]
ports:
- {name: pg, port: 70000}
`,
			want: []string{`bad.yaml:12: endpointslice default/db-1: port "70000" must be between 1 and 65535, inclusive`},
		},
		{
			name: "names in upper case",
			yaml: `apiVersion: v1
kind: Service
metadata: {name: UpperSvc}
spec: {clusterIP: 10.96.0.1}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: UpperNS
spec: {clusterIP: 10.96.0.2}
---
apiVersion: v1
kind: Namespace
metadata: {name: UpperNS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: Ext}
spec: {hosts: [ext.example]}
`,
			want: []string{
				`bad.yaml:7: service default/UpperSvc: metadata.name "UpperSvc" is not valid: ` + label1123,
				`bad.yaml:14: service UpperNS/web: metadata.namespace "UpperNS" is not valid: ` + label1123,
				`bad.yaml:19: namespace UpperNS: metadata.name "UpperNS" is not valid: ` + label1123,
				`bad.yaml:23: serviceentry default/Ext: metadata.name "Ext" is not valid: ` + subdomain1123,
			},
		},
		{
			name: "addresses with a zone",
			yaml: `apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIPs:
  - fe80::1%eth0
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1}
addressType: IPv6
endpoints:
- addresses: ["fe80::2%eth0"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [ext.example]
  addresses: ["fe80::3%eth0"]
`,
			want: []string{
				`bad.yaml:10: service default/web: clusterIP "fe80::1%eth0" is not an IP address: an IPv6 zone (%eth0) is not allowed`,
				`bad.yaml:17: endpointslice default/db-1: address "fe80::2%eth0" is not an IP address: an IPv6 zone (%eth0) is not allowed`,
				`bad.yaml:24: serviceentry default/ext: address "fe80::3%eth0" is not an IP address or CIDR: an IPv6 zone (%eth0) is not allowed`,
			},
		},
		{
			name: "ServiceEntry hosts",
			yaml: `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts:
  - ok.example
  - "*.wild.example"
  - ""
  - "."
  - "*"
  - a..b
  - foo.*.x
  - _x.example
  - 198.51.100.1
`,
			// The empty host and "." come last: the reduction refuses them
			// in every mode, after the manifest's own checks.
			want: []string{
				`bad.yaml:14: serviceentry default/ext: host "*" is not a valid DNS name: it would be every name`,
				`bad.yaml:15: serviceentry default/ext: host "a..b" is not a valid DNS name: labels are 1 to 63 letters, digits or '-' (not first or last), and only the first may be a wildcard (*, *name)`,
				`bad.yaml:16: serviceentry default/ext: host "foo.*.x" is not a valid DNS name: labels are 1 to 63 letters, digits or '-' (not first or last), and only the first may be a wildcard (*, *name)`,
				`bad.yaml:17: serviceentry default/ext: host "_x.example" is not a valid DNS name: labels are 1 to 63 letters, digits or '-' (not first or last), and only the first may be a wildcard (*, *name)`,
				`bad.yaml:18: serviceentry default/ext: host "198.51.100.1" is not a valid DNS name: its last label is all digits (an address is written in spec.addresses)`,
				`bad.yaml:5: serviceentry default/ext: empty host`,
				`bad.yaml:13: serviceentry default/ext: host "." is not a valid DNS name: it is the root, no host`,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { checkBrokenFile(t, tc.yaml, tc.want) })
	}
}

// TestValuesTheAPIServerAccepts: the checks above refuse no more than the
// API server and Istio do: a Service name with a leading digit (a DNS-1123
// label, since Kubernetes 1.37), hosts in upper case (served in lower
// case), a trailing dot, a partial wildcard (Istio warns of it; the table
// leaves it out), "*." (Istio's CRD and webhook refuse only "*"; the table
// leaves it out, as in Kubernetes mode), port 65535.
func TestValuesTheAPIServerAccepts(t *testing.T) {
	_, got, errs := loadFiles(t, map[string]string{"ok.yaml": `apiVersion: v1
kind: Service
metadata: {name: 1web, namespace: shop-2}
spec:
  clusterIP: 10.96.0.1
  ports: [{name: top, port: 65535}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext.v2, namespace: shop-2}
spec:
  hosts: [API.Example.com., "*.wild.example", "*foo.example", short, "*."]
  ports: [{name: top, number: 65535, protocol: TCP}]
`})
	wantErrors(t, errs, nil)
	if n := names(got); !slices.Equal(n, []string{"service shop-2/1web", "serviceentry shop-2/ext.v2"}) {
		t.Errorf("served %q", n)
	}
	if len(got.Services) == 1 && !slices.Equal(got.Services[0].Ports, []model.Port{{Name: "top", Protocol: "TCP", Port: 65535}}) {
		t.Errorf("ports %+v", got.Services[0].Ports)
	}
	// The table leaves out "*foo.example" and "*." (named as written, as a
	// watch reads it), each with a warning.
	_, warnings := table.Build(got, table.Options{Domain: table.DefaultDomain, TTL: table.DefaultTTL})
	var hosts []string
	for _, w := range warnings {
		for _, h := range []string{"*foo.example", "*."} {
			if strings.HasSuffix(w.Error(), ": host "+strconv.Quote(h)+" is not a valid DNS name") {
				hosts = append(hosts, h)
			}
		}
	}
	if slices.Sort(hosts); !slices.Equal(hosts, []string{"*.", "*foo.example"}) {
		t.Errorf("table warnings %v, want one for each of \"*foo.example\" and \"*.\"", warnings)
	}
}

// TestErrorsQuoteWhatTheyCannotShow: a file's name or a kind that holds a
// line break, a control character or a terminal escape is quoted (%q) in
// the error that names it, which `ztdns status` prints: a file named
// "evil\n\x1b[1AReady:\tyes.yaml" cannot put a line of its own there.
// Names that need no quoting stay as they are ("ok.yaml:8").
func TestErrorsQuoteWhatTheyCannotShow(t *testing.T) {
	evil := "evil\n\x1b[2K\x1b[1AReady:\tyes-FAKE.yaml"
	dir, _, errs := loadFiles(t, map[string]string{
		evil:        "kind: Service\nmetadata: [\n",
		"kind.yaml": goodNamespace + "kind: \"\\e[2K\\nReady: yes-FAKE\"\nmetadata: {name: x}\n",
		"ok.yaml":   goodNamespace + "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {clusterIP: 10.96.0.256, ports: [{port: 80}]}\n",
	})
	wantErrors(t, errs, []string{
		strconv.Quote(filepath.Join(dir, evil)) + `:2: invalid YAML: did not find expected node content`,
		filepath.Join(dir, "kind.yaml") + `:5: "\x1b[2K\nReady: yes-FAKE": missing apiVersion`,
		filepath.Join(dir, "ok.yaml") + `:8: service shop/web: clusterIP "10.96.0.256" is not an IP address`,
	})
}
