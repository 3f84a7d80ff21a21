package configdir

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	networkingv1alpha3api "istio.io/api/networking/v1alpha3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/model/typed"
)

// manifests is what one file contributes: its objects reduced to the model,
// and where each object was defined, for duplicate checks.
type manifests struct {
	namespaces     []model.Namespace
	services       []model.Service
	endpointSlices []model.EndpointSlice
	serviceEntries []model.ServiceEntry
	pods           []model.Pod
	placed         []placedObject
	// While parsing: the file's warnings (unknown fields, skipped values,
	// objects that look like a kind ztdns reads but are not), and whether a
	// List had more items than a file may hold.
	warnings *problems
	tooMany  bool
	// ignored counts the objects of kinds ztdns does not read: they count
	// against the limit on objects per file all the same.
	ignored int
}

func (m *manifests) len() int {
	if m == nil {
		return 0
	}
	return len(m.placed)
}

// sameObjects reports whether a and b serve the same objects; where they were
// written (lines) does not matter.
func sameObjects(a, b *manifests) bool {
	if a.len() == 0 || b.len() == 0 {
		return a.len() == b.len()
	}
	return reflect.DeepEqual(a.namespaces, b.namespaces) &&
		reflect.DeepEqual(a.services, b.services) &&
		reflect.DeepEqual(a.endpointSlices, b.endpointSlices) &&
		reflect.DeepEqual(a.serviceEntries, b.serviceEntries) &&
		reflect.DeepEqual(a.pods, b.pods)
}

// objectID identifies an object the way the API server does: two objects
// with the same ID in the directory are a mistake.
type objectID struct {
	kind      string // lower case, as in the converters' messages
	namespace string // empty for cluster-scoped kinds
	name      string
}

func (id objectID) String() string {
	if id.namespace == "" {
		return id.kind + " " + id.name
	}
	return id.kind + " " + id.namespace + "/" + id.name
}

type placedObject struct {
	id   objectID
	line int
}

// parser turns the bytes of one file into manifests.
type parser struct {
	log    *slog.Logger
	limits Limits
}

// tooManyObjects is the problem of a file over limits.ObjectsPerFile,
// found in its documents or in the objects they hold.
func (p parser) tooManyObjects() error {
	return fmt.Errorf("more than %d objects in one file (--config-max-objects-per-file): split it", p.limits.ObjectsPerFile)
}

// parseFile reduces every object in data, read from path, to its model form.
// It returns the problems it finds as *FileError, at most
// maxProblemsPerFile of them, the last of which then counts the rest; a
// file with problems must not be served, so its manifests are then nil. A
// file with more than limits.ObjectsPerFile objects, or documents that are
// not empty, is a problem, found as soon as those read pass the limit:
// objects of kinds ztdns ignores count too. Warnings are what is served
// other than as written, each a *FileError on the line of what it is
// about (an unknown field, a value skipped), kept and counted as problems
// are.
func (p parser) parseFile(path string, data []byte) (_ *manifests, errs, warnings []error) {
	m := &manifests{warnings: &problems{path: path, what: "warnings"}}
	pr := &problems{path: path}
	if line, err := encodingError(data); err != nil {
		pr.add(line, err)
		return nil, pr.list(), nil
	}
	docs := 0
	for doc := range documents(data) {
		if doc.isEmpty() {
			continue // a file of a million "---" lines costs no parse
		}
		// Every document counts, those of kinds ztdns ignores and those
		// with problems included: each costs a parse.
		if docs++; docs > p.limits.ObjectsPerFile {
			pr.add(doc.line, p.tooManyObjects())
			break
		}
		if doc.afterEnd > 0 {
			// go-yaml would read the document before and drop the rest.
			pr.add(doc.afterEnd, errors.New("content after a document end marker (...): start a new document with ---"))
			continue
		}
		if len(doc.data) > maxDocumentBytes {
			// Converting a document costs tens of times its size at once
			// (an 8 MiB kind: List peaked at 380 MB): separate documents
			// are converted one at a time.
			pr.add(doc.line, fmt.Errorf(
				"a document of %d bytes, more than %d: write its objects as separate documents (---)", len(doc.data), maxDocumentBytes))
			continue
		}
		p.parseDocument(pr, doc, m)
		if m.len()+m.ignored > p.limits.ObjectsPerFile || m.tooMany {
			pr.add(doc.line, p.tooManyObjects())
			break
		}
	}
	duplicatesWithin(pr, m.placed)
	warnings = m.warnings.list()
	m.warnings = nil
	if pr.count() > 0 {
		return nil, pr.list(), warnings
	}
	// Kept until the file changes: without the room append left for more.
	m.namespaces, m.services, m.endpointSlices = compact(m.namespaces), compact(m.services), compact(m.endpointSlices)
	m.serviceEntries, m.pods, m.placed = compact(m.serviceEntries), compact(m.pods), compact(m.placed)
	return m, nil, warnings
}

// problems collects the problems of one file as it is parsed. It keeps the
// first maxProblemsPerFile and only counts the rest, so that a file of a
// million broken documents costs a count, not a million errors, and the
// line of a problem (which can take a walk of its document) is found only
// for problems that are kept.
type problems struct {
	path string
	what string // what they are, in the line counting those not kept: "problems" if empty
	kept []error
	more int // problems found but not kept
}

func (p *problems) count() int { return len(p.kept) + p.more }

// addWith records the problem that problem makes, on line (0 for the whole
// file). problem is called only when the problem is kept: past the first
// ones, neither the line nor the message is made.
func (p *problems) addWith(problem func() (line int, err error)) {
	if len(p.kept) >= maxProblemsPerFile {
		p.more++
		return
	}
	line, err := problem()
	p.kept = append(p.kept, &FileError{Path: p.path, Line: line, Err: err})
}

// add records a problem on line (0 for the whole file).
func (p *problems) add(line int, err error) {
	p.addWith(func() (int, error) { return line, err })
}

// addAt records a problem whose line is found by line(), called only when
// the problem is kept.
func (p *problems) addAt(line func() int, err error) {
	p.addWith(func() (int, error) { return line(), err })
}

// list returns the problems kept; when some were only counted, the last one
// kept gives way to their count.
func (p *problems) list() []error {
	what := p.what
	if what == "" {
		what = "problems"
	}
	return capped(p.kept, p.count(), maxProblemsPerFile, func(n int) error {
		return &FileError{Path: p.path, Err: moreProblemsf(n, "%d more %s not listed", n, what)}
	})
}

// capped returns the first problems of total, kept, at most limit of them.
// When there were more, the last one kept gives way to more(n), which
// counts the n problems left out.
func capped(kept []error, total, limit int, more func(n int) error) []error {
	if total <= limit {
		return kept
	}
	return append(kept[:limit-1:limit-1], more(total-limit+1))
}

// compact returns s without spare capacity.
func compact[T any](s []T) []T {
	if cap(s) == len(s) {
		return s
	}
	return append(make([]T, 0, len(s)), s...)
}

// maxDocumentBytes bounds one YAML document (a kind: List of about 9,000
// ServiceEntries).
const maxDocumentBytes = 2 << 20

// maxListDepth bounds how deep kind: List objects nest. kubectl writes one
// level and flattens a few; every level decodes and copies all it holds,
// and holds that copy while its items are read, so 4,000 Lists nested in a
// 2 MiB document cost gigabytes. Past the bound a List is refused unread.
const maxListDepth = 4

func (p parser) parseDocument(pr *problems, doc document, m *manifests) {
	// Aliases are expanded by the conversion below: a small document can
	// stand for gigabytes. Bound what they expand to before converting.
	loc := &locator{doc: doc}
	if err := checkAliases(loc); err != nil {
		pr.add(err.line, err.err)
		return
	}
	// sigs.k8s.io/yaml is what kubectl uses, so values mean what they mean to
	// kubectl (YAML 1.1 booleans included); strict rejects repeated keys.
	raw, err := yaml.YAMLToJSONStrict(doc.data)
	if err != nil {
		syntaxErrors(pr, doc, err)
		return
	}
	if bytes.Equal(raw, []byte("null")) {
		return // empty or comment-only document
	}
	p.parseObject(pr, raw, loc, nil, m)
}

// header is what every object is first decoded into, to pick its type.
type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

// listItems is a kind: List's items, decoded only where a List may be:
// they are copies of all the List holds.
type listItems struct {
	Items []json.RawMessage `json:"items"`
}

// parseObject decodes one object; at is its position in nested Lists' items
// (nil for a document's top-level object).
func (p parser) parseObject(pr *problems, raw []byte, loc *locator, at []int, m *manifests) {
	path := pr.path
	fail := func(err error) { pr.addAt(func() int { return loc.objectLine(at) }, err) }
	if raw[0] != '{' {
		what := "document"
		if len(at) > 0 {
			what = fmt.Sprintf("List item %d", at[len(at)-1])
		}
		fail(fmt.Errorf("%s is not an object but %s", what, jsonKind(raw)))
		return
	}
	var h header
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(raw, &h); err != nil {
		fail(fmt.Errorf("reading apiVersion, kind and metadata: %w", err))
		return
	}
	switch {
	case h.Kind == "":
		fail(errors.New("missing kind"))
		return
	case h.APIVersion == "":
		fail(fmt.Errorf("%s: missing apiVersion", quoted(h.Kind)))
		return
	case h.Kind == "List" && len(at) >= maxListDepth:
		// Refused before its items are decoded.
		fail(fmt.Errorf("a List nested more than %d deep: write its objects as the items of one List, or as separate documents (---)", maxListDepth))
		return
	case h.Kind == "List":
		var l listItems
		if err := sigsjson.UnmarshalCaseSensitivePreserveInts(raw, &l); err != nil {
			fail(fmt.Errorf("reading the List's items: %w", err))
			return
		}
		if m.len()+m.ignored+len(l.Items) > p.limits.ObjectsPerFile {
			m.tooMany = true
			return
		}
		for i, item := range l.Items {
			p.parseObject(pr, item, loc, append(slices.Clip(at), i), m)
		}
		return
	}
	k, ok := kindNamed(h.Kind)
	group, version := splitAPIVersion(h.APIVersion)
	if !ok || group != k.group {
		// Deployments and the like carry nothing DNS answers from; a kind of
		// the same name from another API group is another resource.
		m.ignored++
		if want, ok := lookalike(h.Kind, group); ok {
			// A misspelt kind or group serves nothing, silently: say so.
			m.warnings.addAt(func() int { return loc.objectLine(at) }, fmt.Errorf(
				"%s %s of apiVersion %s ignored: it looks like a kind ztdns reads, but is not (want %s)",
				quoted(h.Kind), quoted(h.Metadata.Name), quoted(h.APIVersion), want))
			return
		}
		p.log.Debug("ignoring object of a kind ztdns does not read",
			"path", path, "apiVersion", h.APIVersion, "kind", h.Kind, "name", h.Metadata.Name)
		return
	}
	if !slices.Contains(k.versions, version) {
		fail(fmt.Errorf("%s: unsupported apiVersion %q (want %s)", h.Kind, h.APIVersion, k.apiVersions()))
		return
	}
	if h.Metadata.Name == "" {
		fail(fmt.Errorf("%s: missing metadata.name", h.Kind))
		return
	}
	id := objectID{kind: k.id, name: h.Metadata.Name}
	if k.namespaced {
		id.namespace = h.Metadata.Namespace
		if id.namespace == "" {
			id.namespace = "default"
		}
	}
	res := k.decode(raw, version, m)
	if res.decodeErr != nil {
		pr.addWith(func() (int, error) {
			// Decoders name a value of the wrong type by Go's names, at
			// best by its path without indices: name it as written.
			var line int
			var err error
			ok := false
			opaque := ""
			if k.spec != nil {
				line, err, ok = loc.protoMismatch(at, k.spec)
				opaque = "spec"
			}
			if !ok {
				line, err, ok = loc.typeMismatch(at, res.decodeErr, opaque)
			}
			if !ok {
				line, err = loc.objectLine(at), res.decodeErr
			}
			return line, fmt.Errorf("%s: %w", id, err)
		})
		return
	}
	if res.convertErr != nil {
		// The converters name the object; point each problem at its value.
		// Finding a value walks the object, so only kept problems look.
		for _, err := range splitJoined(res.convertErr) {
			pr.addAt(func() int { return loc.valueLine(at, err.Error()) }, err)
		}
		return
	}
	// Not errors (newer API versions add fields), but a misspelt field
	// silently changes the answer (adresses: a ServiceEntry's fixed
	// address becomes an allocated VIP), so each is a warning on its line.
	for _, err := range res.unknownFields {
		field, ok := unknownFieldPath(err)
		if !ok {
			m.warnings.addAt(func() int { return loc.objectLine(at) }, fmt.Errorf("%s: %w", id, err))
			continue
		}
		m.warnings.addAt(func() int { return loc.fieldLine(at, field) }, unknownFieldWarning(id, field))
	}
	if res.specErr != nil && k.spec != nil {
		// Found by protojson, which names neither the path nor the line,
		// and only the first: look for them all.
		if m.warnings.count() >= maxProblemsPerFile {
			m.warnings.more++
		} else {
			unknown := loc.protoUnknown(at, k.spec)
			for _, f := range unknown {
				m.warnings.addAt(func() int { return loc.line(f.key) }, unknownFieldWarning(id, f.path))
			}
			if len(unknown) == 0 {
				m.warnings.addAt(func() int { return loc.fieldLine(at, "spec") }, fmt.Errorf("%s: spec: %w", id, res.specErr))
			}
		}
	}
	if res.skipped != nil {
		// status.addresses, which has no schema: skipped as istiod
		// skips them, the rest of the object served.
		m.warnings.addAt(func() int {
			if line := loc.valueLine(at, res.skipped.Error()); line != loc.objectLine(at) {
				return line
			}
			return loc.fieldLine(at, "status")
		}, res.skipped)
	}
	m.placed = append(m.placed, placedObject{id: id, line: loc.objectLine(at)})
}

// kind is one object kind ztdns reads.
type kind struct {
	id         string
	group      string
	versions   []string
	namespaced bool
	// decode decodes raw into the API type of version and appends its model
	// form to m.
	decode func(raw []byte, version string, m *manifests) decodeResult
	// spec is the protobuf message of the kind's spec, for a kind that
	// decodes it with protojson (Istio's): its decoding errors and unknown
	// fields name no path, which is then found walking it.
	spec protoreflect.MessageDescriptor
}

type decodeResult struct {
	decodeErr     error   // raw does not fit the API type
	convertErr    error   // the converter rejected a value
	unknownFields []error // fields the API type does not have
	// specErr is protojson's complaint about the spec, decoded with
	// Istio's types all the same: fields its protobuf message (kind.spec)
	// does not have.
	specErr error
	skipped error // values left out of the object, a warning
}

func (k kind) apiVersions() string {
	var out []string
	for _, v := range k.versions {
		if k.group != "" {
			v = k.group + "/" + v
		}
		out = append(out, v)
	}
	return strings.Join(out, ", ")
}

// kinds are the kinds ztdns reads, by their name: the table kindNamed
// finds a kind in and lookalike compares a misspelt one with.
var kinds = []struct {
	name string
	kind kind
}{
	{"Namespace", kind{id: "namespace", versions: []string{"v1"}, decode: decodeNamespace}},
	{"Service", kind{id: "service", versions: []string{"v1"}, namespaced: true, decode: decodeService}},
	{"Pod", kind{id: "pod", versions: []string{"v1"}, namespaced: true, decode: decodePod}},
	{"EndpointSlice", kind{id: "endpointslice", group: "discovery.k8s.io", versions: []string{"v1"}, namespaced: true, decode: decodeEndpointSlice}},
	{"ServiceEntry", kind{id: "serviceentry", group: "networking.istio.io", versions: []string{"v1", "v1beta1", "v1alpha3"}, namespaced: true, decode: decodeServiceEntry,
		spec: (&networkingv1alpha3api.ServiceEntry{}).ProtoReflect().Descriptor()}},
}

func kindNamed(name string) (kind, bool) {
	for _, k := range kinds {
		if k.name == name {
			return k.kind, true
		}
	}
	return kind{}, false
}

// lookalike reports a kind ztdns reads that kind (of group) is probably
// meant to be: the same name in another case, or the same kind in a group
// one or two letters off (or "core" for the core group). Another group
// altogether (Knative's serving.knative.dev Service) is another resource.
func lookalike(kindName, group string) (string, bool) {
	for _, kk := range kinds {
		name, k := kk.name, kk.kind
		if !strings.EqualFold(kindName, name) {
			continue
		}
		want := name + " of apiVersion " + k.apiVersions()
		switch {
		case kindName != name:
			return want, true
		case k.group == "" && strings.EqualFold(group, "core"):
			return want, true
		case k.group != "" && group != "" && (strings.EqualFold(group, k.group) || editDistance(group, k.group) <= 2):
			return want, true
		}
	}
	return "", false
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			sub := prev[j-1]
			if a[i-1] != b[j-1] {
				sub++
			}
			cur[j] = min(sub, prev[j]+1, cur[j-1]+1)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func splitAPIVersion(apiVersion string) (group, version string) {
	if g, v, ok := strings.Cut(apiVersion, "/"); ok {
		return g, v
	}
	return "", apiVersion
}

// decodeAs decodes raw into a new T the way the API server would (field names
// case-sensitive), converts it and appends the result to *into. The API object
// is dropped here: only the model form stays in memory.
func decodeAs[T, M any](raw []byte, convert func(*T) (M, error), into *[]M) decodeResult {
	obj := new(T)
	unknown, err := sigsjson.UnmarshalStrict(raw, obj, sigsjson.DisallowUnknownFields)
	if err != nil {
		return decodeResult{decodeErr: err}
	}
	out, err := convert(obj)
	if err != nil {
		return decodeResult{convertErr: err}
	}
	*into = append(*into, out)
	return decodeResult{unknownFields: unknown}
}

func decodeNamespace(raw []byte, _ string, m *manifests) decodeResult {
	return decodeAs(raw, typed.FromNamespace, &m.namespaces)
}

func decodeService(raw []byte, _ string, m *manifests) decodeResult {
	return decodeAs(raw, typed.FromService, &m.services)
}

func decodePod(raw []byte, _ string, m *manifests) decodeResult {
	return decodeAs(raw, typed.FromPod, &m.pods)
}

func decodeEndpointSlice(raw []byte, _ string, m *manifests) decodeResult {
	return decodeAs(raw, typed.FromEndpointSlice, &m.endpointSlices)
}

// serviceEntryManifest is a ServiceEntry of any version Istio serves (they
// share the spec type), with its status left as written: status has no
// schema (see kubeapi.ServiceEntryStatus), and what in it is not a
// host's address is skipped with a warning, not a reason to refuse the file.
type serviceEntryManifest struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              networkingv1alpha3api.ServiceEntry `json:"spec,omitempty"`
	Status            json.RawMessage                    `json:"status,omitempty"`
}

func decodeServiceEntry(raw []byte, _ string, m *manifests) decodeResult {
	var skipped error
	res := decodeAs(raw, func(se *serviceEntryManifest) (model.ServiceEntry, error) {
		out, sk, err := typed.FromServiceEntry(&se.ObjectMeta, &se.Spec, se.Status)
		skipped = sk
		return out, err
	}, &m.serviceEntries)
	if res.decodeErr == nil && res.convertErr == nil {
		res.specErr = specFieldsError(raw)
		res.skipped = skipped
	}
	return res
}

// unknownFieldPath is the field an unknown field error of
// sigs.k8s.io/json names: `unknown field "spec.ports[0].prot"`.
func unknownFieldPath(err error) (string, bool) {
	q, ok := strings.CutPrefix(err.Error(), "unknown field ")
	if !ok {
		return "", false
	}
	field, uerr := strconv.Unquote(q)
	return field, uerr == nil
}

func unknownFieldWarning(id objectID, field string) error {
	return fmt.Errorf("%s: unknown field %q ignored: the object is served without it", id, field)
}

// specFieldsError reports spec fields of a ServiceEntry that the Istio
// types do not have. Istio's generated UnmarshalJSON skips them silently,
// and a misspelt "addresses" turns a fixed address into an auto-allocated
// VIP; protojson with its default options rejects them, so it is asked
// only to find whether there are any (the locator finds them all, with
// their paths and lines).
func specFieldsError(raw []byte) error {
	var probe struct {
		Spec json.RawMessage `json:"spec"`
	}
	if json.Unmarshal(raw, &probe) != nil || len(probe.Spec) == 0 {
		return nil
	}
	return protojson.Unmarshal(probe.Spec, &networkingv1alpha3api.ServiceEntry{})
}

func duplicatesWithin(pr *problems, objs []placedObject) {
	first := make(map[objectID]int, len(objs))
	for _, o := range objs {
		if line, ok := first[o.id]; ok {
			pr.addWith(func() (int, error) {
				return o.line, fmt.Errorf("%s is defined twice (first at line %d)", o.id, line)
			})
			continue
		}
		first[o.id] = o.line
	}
}

func jsonKind(raw []byte) string {
	switch raw[0] {
	case '[':
		return "a list"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	default:
		return "a number"
	}
}

// splitJoined undoes errors.Join, nested joins too (the converters join
// their own checks with the reduction's), so that each problem gets its
// own line.
func splitJoined(err error) []error {
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return []error{err}
	}
	var out []error
	for _, e := range j.Unwrap() {
		out = append(out, splitJoined(e)...)
	}
	return out
}
