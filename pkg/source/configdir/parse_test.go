package configdir

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/model"
)

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func TestKindsAndVersions(t *testing.T) {
	created := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	serviceEntry := func(apiVersion string) string {
		return `apiVersion: ` + apiVersion + `
kind: ServiceEntry
metadata:
  name: ext
  namespace: shop
  creationTimestamp: "2026-03-04T05:06:07Z"
  labels:
    networking.istio.io/enable-autoallocate-ip: "false"
spec:
  hosts: [API.Example.com., "*.wild.example"]
  addresses: [198.51.100.7, "2001:db8::7", 203.0.113.0/24]
  exportTo: [".", other]
  resolution: STATIC
  ports:
  - {name: https, number: 443, protocol: https}
status:
  addresses:
  - {host: api.example.com, value: 240.240.0.9}
`
	}
	wantServiceEntry := model.ServiceEntry{
		Namespace: "shop", Name: "ext", Created: created,
		Hosts:            []string{"*.wild.example", "API.Example.com."},
		Folded:           1, // written otherwise than asked: last, as written
		Addresses:        addrs("198.51.100.7", "2001:db8::7"),
		CIDRs:            []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")},
		HasSpecAddresses: true,
		StatusAddresses:  []model.HostAddress{{Host: "api.example.com", Address: netip.MustParseAddr("240.240.0.9")}},
		Resolution:       model.ResolutionStatic,
		ExportTo:         []string{".", "other"},
		AutoAllocate:     false,
		Ports:            []model.Port{{Name: "https", Protocol: "HTTPS", Port: 443}},
	}
	tests := []struct {
		name string
		yaml string
		want model.Snapshot
	}{
		{
			name: "v1 Namespace keeps every label",
			yaml: `apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient, team: a}
`,
			want: model.Snapshot{Namespaces: []model.Namespace{{Name: "shop", Labels: map[string]string{"istio.io/dataplane-mode": "ambient", "team": "a"}}}},
		},
		{
			name: "v1 Service dual-stack with named ports",
			yaml: `apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "2001:db8::10"]
  ipFamilies: [IPv4, IPv6]
  ports:
  - {name: http, port: 80}
  - {name: dns, port: 53, protocol: UDP}
`,
			want: model.Snapshot{Services: []model.Service{{
				Namespace: "shop", Name: "web", ClusterIPs: addrs("10.96.0.10", "2001:db8::10"),
				Ports: []model.Port{{Name: "http", Protocol: "TCP", Port: 80}, {Name: "dns", Protocol: "UDP", Port: 53}},
			}}},
		},
		{
			name: "v1 headless Service without namespace lands in default",
			yaml: `apiVersion: v1
kind: Service
metadata: {name: db}
spec: {clusterIP: None, publishNotReadyAddresses: true}
`,
			want: model.Snapshot{Services: []model.Service{{Namespace: "default", Name: "db", Headless: true, PublishNotReady: true}}},
		},
		{
			name: "v1 ExternalName Service",
			yaml: `apiVersion: v1
kind: Service
metadata: {name: docs, namespace: shop}
spec: {type: ExternalName, externalName: Docs.Example.COM.}
`,
			want: model.Snapshot{Services: []model.Service{{Namespace: "shop", Name: "docs", ExternalName: "docs.example.com"}}},
		},
		{
			name: "discovery.k8s.io/v1 EndpointSlice",
			yaml: `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-abc
  namespace: shop
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
endpoints:
- addresses: [10.244.0.5]
  hostname: DB-0
- addresses: [10.244.0.6]
  conditions: {ready: false}
ports:
- {name: pg, port: 5432}
`,
			want: model.Snapshot{EndpointSlices: []model.EndpointSlice{{
				Namespace: "shop", Name: "db-abc", ServiceName: "db",
				Endpoints: []model.Endpoint{
					{Addresses: addrs("10.244.0.5"), Hostname: "db-0", Ready: true},
					{Addresses: addrs("10.244.0.6"), Ready: false},
				},
				Ports: []model.Port{{Name: "pg", Protocol: "TCP", Port: 5432}},
			}}},
		},
		{
			name: "v1 Pod",
			yaml: `apiVersion: v1
kind: Pod
metadata:
  name: curl
  namespace: shop
  uid: 0d5c6c1e-1111-2222-3333-444455556666
  labels: {istio.io/dataplane-mode: ambient, app: curl}
  annotations: {ambient.istio.io/dns-capture: "false", other: x}
spec:
  nodeName: node-1
  dnsPolicy: None
  dnsConfig:
    nameservers: [203.0.113.53]
    searches: [corp.example]
  containers:
  - {name: curl, image: curl}
  - {name: istio-proxy, image: proxy}
status:
  podIP: 127.0.0.2
  podIPs: [{ip: 127.0.0.2}, {ip: "2001:db8::2"}]
`,
			want: model.Snapshot{Pods: []model.Pod{{
				Namespace: "shop", Name: "curl", UID: "0d5c6c1e-1111-2222-3333-444455556666", NodeName: "node-1",
				IPs:            addrs("127.0.0.2", "2001:db8::2"),
				Labels:         map[string]string{"istio.io/dataplane-mode": "ambient"},
				Annotations:    map[string]string{"ambient.istio.io/dns-capture": "false"},
				HasSidecar:     true,
				DNSPolicy:      "None",
				DNSSearches:    []string{"corp.example"},
				DNSNameservers: addrs("203.0.113.53"),
			}}},
		},
		{
			name: "networking.istio.io/v1 ServiceEntry",
			yaml: serviceEntry("networking.istio.io/v1"),
			want: model.Snapshot{ServiceEntries: []model.ServiceEntry{wantServiceEntry}},
		},
		{
			name: "networking.istio.io/v1beta1 ServiceEntry",
			yaml: serviceEntry("networking.istio.io/v1beta1"),
			want: model.Snapshot{ServiceEntries: []model.ServiceEntry{wantServiceEntry}},
		},
		{
			name: "networking.istio.io/v1alpha3 ServiceEntry",
			yaml: serviceEntry("networking.istio.io/v1alpha3"),
			want: model.Snapshot{ServiceEntries: []model.ServiceEntry{wantServiceEntry}},
		},
		{
			name: "ServiceEntry with resolution DNS and no addresses",
			yaml: `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external-auto}
spec:
  hosts: [auto.internal]
  resolution: DNS
`,
			want: model.Snapshot{ServiceEntries: []model.ServiceEntry{{
				Namespace: "default", Name: "external-auto", Hosts: []string{"auto.internal"},
				Resolution: model.ResolutionDNS, AutoAllocate: true,
			}}},
		},
		{
			name: "other kinds and other API groups are ignored",
			yaml: `apiVersion: apps/v1
kind: Deployment
metadata: {name: curl}
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: hello}
`,
			want: model.Snapshot{},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			_, got, errs := loadFiles(t, map[string]string{"m.yaml": tc.yaml})
			if len(errs) > 0 {
				t.Fatalf("errors: %v", errs)
			}
			firstSeen(t, got, start)
			// metav1.Time decodes into the local zone; compare instants.
			for i, se := range got.ServiceEntries {
				if i < len(tc.want.ServiceEntries) && se.Created.Equal(tc.want.ServiceEntries[i].Created) {
					got.ServiceEntries[i].Created = tc.want.ServiceEntries[i].Created
				}
			}
			if !reflect.DeepEqual(*got, tc.want) {
				t.Errorf("snapshot\n got %+v\nwant %+v", *got, tc.want)
			}
		})
	}
}

func TestMultiDocumentAndList(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{
			name: "documents, empty documents and comments",
			yaml: `---
# leading marker and a comment
apiVersion: v1
kind: Namespace
metadata: {name: a}
---
---
# only a comment
--- # a marker with a comment
apiVersion: v1
kind: Service
metadata: {name: s, namespace: a}
spec: {clusterIP: 10.96.0.1}
...
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: a}
`,
			want: []string{"namespace a", "service a/s", "pod a/p"},
		},
		{
			name: "CRLF line ends",
			yaml: "apiVersion: v1\r\nkind: Namespace\r\nmetadata: {name: a}\r\n---\r\napiVersion: v1\r\nkind: Namespace\r\nmetadata: {name: b}\r\n",
			want: []string{"namespace a", "namespace b"},
		},
		{
			name: "a block scalar holding a dashed line is not split",
			yaml: `apiVersion: v1
kind: Pod
metadata:
  name: p
  annotations:
    note: |
      ---- not a marker
      --- neither, it is indented
`,
			want: []string{"pod default/p"},
		},
		{
			name: "List with items of several kinds",
			yaml: `apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: s, namespace: a}
  spec: {clusterIP: 10.96.0.1}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: d}
- apiVersion: networking.istio.io/v1beta1
  kind: ServiceEntry
  metadata: {name: se, namespace: a}
  spec: {hosts: [x.example], addresses: [198.51.100.1]}
- apiVersion: v1
  kind: List
  items:
  - apiVersion: v1
    kind: Namespace
    metadata: {name: nested}
`,
			want: []string{"namespace nested", "service a/s", "serviceentry a/se"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, got, errs := loadFiles(t, map[string]string{"m.yaml": tc.yaml})
			if len(errs) > 0 {
				t.Fatalf("errors: %v", errs)
			}
			if g := names(got); !reflect.DeepEqual(g, tc.want) {
				t.Errorf("objects %q, want %q", g, tc.want)
			}
		})
	}
}

func TestWhichFilesAreRead(t *testing.T) {
	ns := func(name string) string {
		return "apiVersion: v1\nkind: Namespace\nmetadata: {name: " + name + "}\n"
	}
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"a.yaml":          ns("from-yaml"),
		"b.yml":           ns("from-yml"),
		".hidden.yaml":    ns("hidden"),
		".a.yaml.swp":     ns("vim-swap"),
		"a.yaml~":         ns("backup"),
		"#a.yaml#":        ns("emacs-autosave"),
		"notes.txt":       ns("text"),
		"a.json":          `{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "json"}}`,
		"4913":            ns("vim-probe"),
		"a.yaml.kate-swp": ns("kate"),
	})
	writeFiles(t, dir+"/nested", map[string]string{"c.yaml": ns("nested")})
	log, _ := testLogger(t)
	got, errs := load(t, dir, WithLogger(log))
	if len(errs) > 0 {
		t.Fatalf("errors: %v", errs)
	}
	want := []string{"namespace from-yaml", "namespace from-yml"}
	if g := names(got); !reflect.DeepEqual(g, want) {
		t.Errorf("objects %q, want %q", g, want)
	}
}

func TestIgnoredKindsAreLoggedOnce(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"m.yaml": `apiVersion: apps/v1
kind: Deployment
metadata: {name: curl}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
`})
	log, logs := testLogger(t)
	load(t, dir, WithLogger(log))
	out := logs.String()
	for _, want := range []string{"kind=Deployment name=curl", "kind=ConfigMap name=settings"} {
		if n := strings.Count(out, want); n != 1 {
			t.Errorf("log mentions %q %d times, want once:\n%s", want, n, out)
		}
	}
}

// TestLookalikeKindsAreWarnings: an object whose kind or API group is
// misspelt serves nothing; it is a warning naming file and line, where
// other kinds (a Deployment, Knative's Service) are only a debug line.
func TestLookalikeKindsAreWarnings(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"m.yaml": `apiVersion: networking.istio.com/v1
kind: ServiceEntry
metadata: {name: typo}
---
apiVersion: v1
kind: service
metadata: {name: lower}
---
apiVersion: core/v1
kind: Pod
metadata: {name: core}
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: knative}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: curl}
`})
	log, logs := testLogger(t)
	_, errs, warnings := loadWithWarnings(t, dir, WithLogger(log))
	if len(errs) > 0 {
		t.Errorf("objects of another kind must not be problems: %v", errs)
	}
	path := filepath.Join(dir, "m.yaml")
	wantErrors(t, warnings, []string{
		path + `:1: ServiceEntry typo of apiVersion networking.istio.com/v1 ignored: it looks like a kind ztdns reads, but is not (want ServiceEntry of apiVersion networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3)`,
		path + `:5: service lower of apiVersion v1 ignored: it looks like a kind ztdns reads, but is not (want Service of apiVersion v1)`,
		path + `:9: Pod core of apiVersion core/v1 ignored: it looks like a kind ztdns reads, but is not (want Pod of apiVersion v1)`,
	})
	out := logs.String()
	for _, want := range []string{
		`level=WARN msg="manifest warning: served, but not as written" source=configdir dir=` + dir + ` warning="` + path + `:1: ServiceEntry typo of apiVersion`,
		`level=DEBUG msg="ignoring object of a kind ztdns does not read" source=configdir dir=` + dir + ` path=` + path + ` apiVersion=serving.knative.dev/v1 kind=Service name=knative`,
		`level=DEBUG msg="ignoring object of a kind ztdns does not read" source=configdir dir=` + dir + ` path=` + path + ` apiVersion=apps/v1 kind=Deployment name=curl`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	}
}

func TestUnknownFieldsAreWarnings(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"m.yaml": `apiVersion: v1
kind: Namespace
metadata: {name: a}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: typo}
spec:
  hosts: [typo.example]
  adresses: [198.51.100.1]
  resolution: STATIC
  ports:
  - {number: 80, name: http}
  - number: 81
    nmae: other
  endpoints:
  - lables: {app: x}
    address: 198.51.100.2
---
apiVersion: v1
kind: Service
metadata: {name: typo}
spec: {clusterIP: 10.96.0.1,
  publishNotReadyAdresses: true,
  ports: [
    {port: 80},
    {port: 81,
     prot: 3}]}
`})
	log, _ := testLogger(t)
	got, errs, warnings := loadWithWarnings(t, dir, WithLogger(log))
	if len(errs) > 0 {
		t.Fatalf("unknown fields must not be errors: %v", errs)
	}
	if want := []string{"namespace a", "service default/typo", "serviceentry default/typo"}; !reflect.DeepEqual(names(got), want) {
		t.Errorf("objects %q, want %q", names(got), want)
	}
	// Each on the line of the field itself; before, only a log line, at
	// the object's first line.
	wantErrors(t, warnings, []string{
		dir + `/m.yaml:10: serviceentry default/typo: unknown field "spec.adresses" ignored: the object is served without it`,
		dir + `/m.yaml:15: serviceentry default/typo: unknown field "spec.ports[1].nmae" ignored: the object is served without it`,
		dir + `/m.yaml:17: serviceentry default/typo: unknown field "spec.endpoints[0].lables" ignored: the object is served without it`,
		dir + `/m.yaml:28: service default/typo: unknown field "spec.ports[1].prot" ignored: the object is served without it`,
		dir + `/m.yaml:24: service default/typo: unknown field "spec.publishNotReadyAdresses" ignored: the object is served without it`,
	})
}

// TestBadStatusAddressesAreSkipped: status.addresses has no schema, so a
// value that is no address, or a status.addresses or status of another
// shape, is skipped with a warning naming the object, as istiod skips it:
// the ServiceEntry is served with its spec.addresses and its good status
// addresses, the file with its other objects, and there is no problem
// (before, the whole file was refused, and kept serving its old content).
func TestBadStatusAddressesAreSkipped(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"m.yaml": `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: values}
spec: {hosts: [a.example]}
status:
  addresses:
  - {host: a.example, value: nope}
  - {host: a.example, value: 240.240.0.1}
  - {host: a.example, value: 7}
  - 42
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shape}
spec: {hosts: [b.example], addresses: [198.51.100.1]}
status: {addresses: x, conditions: [{type: Reconciled, status: "True"}]}
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: notobject}
spec: {hosts: [c.example]}
status: [x]
---
apiVersion: v1
kind: Namespace
metadata: {name: a}
`})
	log, logs := testLogger(t)
	got, errs, warnings := loadWithWarnings(t, dir, WithLogger(log))
	if len(errs) > 0 {
		t.Fatalf("a bad status must not be a problem: %v", errs)
	}
	if want := []string{"namespace a", "serviceentry default/values", "serviceentry default/shape", "serviceentry default/notobject"}; !reflect.DeepEqual(names(got), want) {
		t.Fatalf("objects %q, want %q", names(got), want)
	}
	if sa := got.ServiceEntries[0].StatusAddresses; len(sa) != 1 || sa[0].Address != netip.MustParseAddr("240.240.0.1") || sa[0].Host != "a.example" {
		t.Errorf("values' status addresses %v, want only a.example's 240.240.0.1", sa)
	}
	if se := got.ServiceEntries[1]; !slices.Equal(se.Addresses, []netip.Addr{netip.MustParseAddr("198.51.100.1")}) || se.StatusAddresses != nil {
		t.Errorf("shape: addresses %v, status addresses %v; want its spec.addresses and no status address", se.Addresses, se.StatusAddresses)
	}
	wantErrors(t, warnings, []string{
		dir + `/m.yaml:7: serviceentry default/values: skipped in status.addresses: [0] value "nope" is not an IP address, [2] is not {value, host} strings, [3] is not {value, host} strings`,
		dir + `/m.yaml:16: serviceentry default/shape: status.addresses is not a list: skipped`,
		dir + `/m.yaml:22: serviceentry default/notobject: status is not an object: skipped`,
	})
	out := logs.String()
	if strings.Contains(out, "unknown field") {
		t.Errorf("status fields other than addresses are no unknown fields:\n%s", out)
	}
}

func TestSplitDocumentsKeepsLines(t *testing.T) {
	data := "a: 1\n---\nb: 2\n\n--- # c\nc: 3\n---"
	got := slices.Collect(documents([]byte(data)))
	want := []document{
		{data: []byte("a: 1\n"), line: 1},
		{data: []byte("---\nb: 2\n\n"), line: 2},
		{data: []byte("--- # c\nc: 3\n"), line: 5},
		{data: []byte("---"), line: 7},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("documents(%q)\n got %s\nwant %s", data, fmtDocs(got), fmtDocs(want))
	}
}

// utf16LE encodes s as UTF-16LE with a byte order mark, as PowerShell 5.1's
// > writes.
func utf16LE(s string) string {
	b := []byte{0xff, 0xfe}
	for _, r := range s {
		b = append(b, byte(r), byte(r>>8))
	}
	return string(b)
}

// TestNoDocumentDropped: go-yaml ends lines at CR, NEL, U+2028 and U+2029
// as well as LF, and reads UTF-16: a "---" after one of those, or in a
// UTF-16 file, starts a document the splitting must see, or the conversion
// silently reads only the first. Each is served in full or refused with an
// error, never served in part. Between "..." and the next "---" YAML allows
// directives (%YAML, %TAG) as well as comments (before: refused as content
// after the end marker).
func TestNoDocumentDropped(t *testing.T) {
	ns := func(name string) string { return "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: " + name + "\n" }
	cr := func(s string) string { return strings.ReplaceAll(s, "\n", "\r") }
	dir, snap, errs := loadFiles(t, map[string]string{
		"cr.yaml":    cr(ns("cr1") + "---\n" + ns("cr2")),
		"crlf.yaml":  strings.ReplaceAll(ns("crlf1")+"---\n"+ns("crlf2"), "\n", "\r\n"),
		"ls.yaml":    ns("ls1") + "\u2028---\u2028" + ns("ls2"),
		"nel.yaml":   strings.TrimSuffix(ns("nel1"), "\n") + "\u0085---\n" + ns("nel2"),
		"ps.yaml":    ns("ps1") + "---\u2029" + ns("ps2"),
		"utf16.yaml": utf16LE(ns("wide1") + "---\n" + ns("wide2")),
		"nul.yaml":   ns("nul1") + "---\n" + "apiVersion: v1\nkind: Namespace\x00\n",
		"end.yaml":   ns("end1") + "...\n# a comment\n" + ns("end2"),
		"ended.yaml": ns("ended1") + "...\n---\n" + ns("ended2") + "...\n",
		// A directive after "..." belongs to the next document.
		"directive.yaml": ns("dir1") + "...\n%YAML 1.1\n# c\n\n--- !!map\n" + ns("dir2"),
	})
	want := []string{
		filepath.Join(dir, "end.yaml") + ":7: content after a document end marker (...): start a new document with ---",
		filepath.Join(dir, "nul.yaml") + ":7: a NUL byte: YAML manifests are UTF-8 text (a file saved as UTF-16 has one in every ASCII character)",
		filepath.Join(dir, "utf16.yaml") + ": the file is UTF-16LE (it starts with that byte order mark): save it as UTF-8",
	}
	wantErrors(t, errs, want)
	wantNames := []string{"namespace cr1", "namespace cr2", "namespace crlf1", "namespace crlf2",
		"namespace dir1", "namespace dir2", "namespace ended1", "namespace ended2", "namespace ls1", "namespace ls2",
		"namespace nel1", "namespace nel2", "namespace ps1", "namespace ps2"}
	got := names(snap)
	slices.Sort(got)
	if !reflect.DeepEqual(got, wantNames) {
		t.Errorf("objects\n%q\nwant\n%q", got, wantNames)
	}
}

// TestEncodingErrorsNameTheirLine: a byte that is not UTF-8 (a Latin-1
// é) or a control character YAML does not allow is reported on its line;
// go-yaml names no line for them.
func TestEncodingErrorsNameTheirLine(t *testing.T) {
	dir, _, errs := loadFiles(t, map[string]string{
		"latin1.yaml": "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: caf\xe9\n",
		"ctrl.yaml":   "apiVersion: v1\r\nkind: Namespace\r\nmetadata:\r\n  name: a\x01\r\n",
	})
	want := []string{
		filepath.Join(dir, "ctrl.yaml") + ":4: control character U+0001, which YAML does not allow",
		filepath.Join(dir, "latin1.yaml") + ":4: byte 0xE9 is not UTF-8: save the file as UTF-8",
	}
	wantErrors(t, errs, want)
}

func fmtDocs(docs []document) string {
	var b strings.Builder
	for _, d := range docs {
		fmt.Fprintf(&b, "{line %d: %q} ", d.line, d.data)
	}
	return b.String()
}
