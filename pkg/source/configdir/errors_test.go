package configdir

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/ztdns/ztdns/pkg/model"
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
			name: "two invalid ServiceEntry addresses, each on its line",
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
				`bad.yaml:16: serviceentry shop/x: status address "nope" is not an IP address`,
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
			name: "Service field of the wrong type",
			yaml: `apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: 80
`,
			want: []string{`bad.yaml:5: service default/web: json: cannot unmarshal number into Go struct field ServiceSpec.spec.ports of type []v1.ServicePort`},
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
---
apiVersion: v1
kind: Service
metadata: {name: web}
`,
			want: []string{`bad.yaml:9: service default/web is defined twice (first at line 5)`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir, got, errs := loadFiles(t, map[string]string{"bad.yaml": goodNamespace + tc.yaml})
			var want []string
			for _, w := range tc.want {
				want = append(want, filepath.Join(dir, w))
			}
			if g := errorStrings(errs); !reflect.DeepEqual(g, want) {
				t.Errorf("errors\n%s\nwant\n%s", strings.Join(g, "\n"), strings.Join(want, "\n"))
			}
			// A file broken from the start contributes nothing, not even its
			// good first document.
			if n := names(got); len(n) > 0 {
				t.Errorf("broken file served %q", n)
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
				if err := f.Truncate(MaxFileSize + 1); err != nil { // sparse: costs no disk
					t.Fatal(err)
				}
			},
			want: "big.yaml: file is 67108865 bytes, more than the limit of 67108864",
		},
		{
			name: "directory with a manifest's name",
			setup: func(t *testing.T, dir string) {
				if err := os.Mkdir(filepath.Join(dir, "big.yaml"), 0o755); err != nil {
					t.Fatal(err)
				}
			},
			want: "big.yaml: not a regular file (d---------)",
		},
		{
			name: "dangling symlink",
			setup: func(t *testing.T, dir string) {
				if err := os.Symlink("nowhere.yaml", filepath.Join(dir, "big.yaml")); err != nil {
					t.Fatal(err)
				}
			},
			want: "big.yaml: dangling symlink: open DIR/big.yaml: no such file or directory",
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
			if g := errorStrings(errs); !reflect.DeepEqual(g, want) {
				t.Errorf("errors %q, want %q", g, want)
			}
			if n, w := names(got), []string{"namespace fine"}; !reflect.DeepEqual(n, w) {
				t.Errorf("objects %q, want %q (other files still apply)", n, w)
			}
		})
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
	if g := errorStrings(errs); !reflect.DeepEqual(g, want) {
		t.Errorf("errors %q, want %q", g, want)
	}
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
