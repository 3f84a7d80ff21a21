package configdir

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	yamlv3 "go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Naming a field the way its manifest spells it: a path such as
// spec.ports[0].name, and the line of the field itself, found in the
// document's yaml.v3 tree (see locator). Only for problems and warnings
// that are kept: never on the common path.

// fieldLine is the file line of the field at path (spec.ports[0].name;
// an index may be left out, spec.ports.name, to take the first item that
// has the field) in the object at, or the object's line.
func (l *locator) fieldLine(at []int, path string) int {
	if found := findField(l.node(at), splitFieldPath(path), ""); found != nil {
		return l.line(found.key)
	}
	return l.objectLine(at)
}

// fieldAt is a field found in a document: its path with every index
// spelt out, its key and its value.
type fieldAt struct {
	path       string
	key, value *yamlv3.Node
}

// splitFieldPath splits spec.ports[0].name into spec, ports, [0], name.
func splitFieldPath(path string) []string {
	var out []string
	for _, c := range strings.Split(path, ".") {
		name, idx, _ := strings.Cut(c, "[")
		if name != "" {
			out = append(out, name)
		}
		for idx != "" {
			var i string
			i, idx, _ = strings.Cut(idx, "[")
			out = append(out, "["+strings.TrimSuffix(i, "]")+"]")
		}
	}
	return out
}

// findField finds the field at path (as splitFieldPath splits it) under n,
// whose own path is prefix; where path names no index into a list, the
// first item that has the field is taken.
func findField(n *yamlv3.Node, path []string, prefix string) *fieldAt {
	return findFieldWhere(n, path, prefix, func(*fieldAt) bool { return true })
}

// findFieldWhere is findField taking the first field at path that ok
// accepts.
func findFieldWhere(n *yamlv3.Node, path []string, prefix string, ok func(*fieldAt) bool) *fieldAt {
	n = resolved(n)
	if n == nil || len(path) == 0 {
		return nil
	}
	c := path[0]
	if strings.HasPrefix(c, "[") {
		i, err := strconv.Atoi(strings.Trim(c, "[]"))
		if err != nil || n.Kind != yamlv3.SequenceNode || i < 0 || i >= len(n.Content) {
			return nil
		}
		return findFieldWhere(n.Content[i], path[1:], prefix+c, ok)
	}
	switch n.Kind {
	case yamlv3.SequenceNode: // no index given: the first item that fits
		for i, item := range n.Content {
			if found := findFieldWhere(item, path, fmt.Sprintf("%s[%d]", prefix, i), ok); found != nil {
				return found
			}
		}
	case yamlv3.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value != c {
				continue
			}
			p := joinField(prefix, c)
			if len(path) == 1 {
				if f := (&fieldAt{path: p, key: n.Content[i], value: resolved(n.Content[i+1])}); ok(f) {
					return f
				}
				return nil
			}
			return findFieldWhere(n.Content[i+1], path[1:], p, ok)
		}
	}
	return nil
}

func joinField(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

// resolved is n, or what n aliases.
func resolved(n *yamlv3.Node) *yamlv3.Node {
	for n != nil && n.Kind == yamlv3.AliasNode {
		n = n.Alias
	}
	return n
}

// shapeOf says what a YAML value is, as a manifest's author would: a
// list, a map, a string, a number, a boolean, null.
func shapeOf(n *yamlv3.Node) string {
	n = resolved(n)
	if n == nil {
		return "nothing"
	}
	switch n.Kind {
	case yamlv3.SequenceNode:
		return "a list"
	case yamlv3.MappingNode:
		return "a map"
	}
	switch n.ShortTag() {
	case "!!int", "!!float":
		return "a number"
	case "!!bool":
		return "a boolean"
	case "!!null":
		return "null"
	}
	return "a string"
}

// fits reports whether a value of shape fits want (a shape, or "a
// number or a string"). null fits anything: it is as if left out.
func fits(shape, want string) bool {
	return shape == "null" || shape == want || strings.Contains(want, " or ") && strings.Contains(want, shape)
}

// unmarshalTypeErr matches encoding/json's (and sigs.k8s.io/json's) type
// error: "json: cannot unmarshal string into Go struct field
// ServicePort.spec.ports.port of type int32".
var unmarshalTypeErr = regexp.MustCompile(`^json: cannot unmarshal (\S+)(?: \S+)? into Go struct field [^.]+\.(\S+) of type (\S+)$`)

// goTypeShape is what a value of the Go type named t looks like in YAML.
func goTypeShape(t string) string {
	t = strings.TrimLeft(t, "*")
	switch {
	case strings.HasPrefix(t, "[]"):
		return "a list"
	case strings.HasPrefix(t, "map["):
		return "a map"
	case t == "string":
		return "a string"
	case t == "bool":
		return "a boolean"
	case strings.HasPrefix(t, "int"), strings.HasPrefix(t, "uint"), strings.HasPrefix(t, "float"):
		return "a number"
	}
	return "a map" // a struct
}

// typeMismatch turns a decoding error about a value of the wrong type into
// one that names the field by its path, with the line of its value:
// "spec.ports[0].port: want a number, got a string". ok is false when err
// is not such an error, or its value cannot be found.
//
// A field whose Go type decodes itself (a ServiceEntry's spec, with
// protojson) is named alone, whatever its value's own field: opaque names
// it, for protoMismatch to look into.
func (l *locator) typeMismatch(at []int, err error, opaque string) (line int, out error, ok bool) {
	m := unmarshalTypeErr.FindStringSubmatch(err.Error())
	if m == nil || opaque != "" && m[2] == opaque {
		return 0, nil, false
	}
	want := goTypeShape(m[3])
	found := findFieldWhere(l.node(at), splitFieldPath(m[2]), "", func(f *fieldAt) bool { return !fits(shapeOf(f.value), want) })
	if found == nil {
		return 0, nil, false
	}
	return l.line(found.value), fmt.Errorf("%s: want %s, got %s", found.path, want, gotOf(found.value, want)), true
}

// gotOf is what a value that does not fit its field (wanting want) is,
// in a message: a number out of the field's range itself, else its shape.
func gotOf(n *yamlv3.Node, want string) string {
	if s := shapeOf(n); s != "a number" || !strings.HasPrefix(want, "a whole number") {
		return s
	}
	return n.Value
}

// protoMismatch finds the first value in the object at's spec, read as
// md, whose shape does not fit its field (what a ServiceEntry's decoding
// reports only as "spec").
func (l *locator) protoMismatch(at []int, md protoreflect.MessageDescriptor) (line int, out error, ok bool) {
	spec := findField(l.node(at), []string{"spec"}, "")
	if spec == nil {
		return 0, nil, false
	}
	protoFields(spec.value, md, "spec", func(fieldAt) bool { return true }, func(f fieldAt, want string) bool {
		line, out, ok = l.line(f.value), fmt.Errorf("%s: want %s, got %s", f.path, want, gotOf(f.value, want)), true
		return false
	})
	return line, out, ok
}

// protoUnknown lists the fields in the object at's spec that md does not
// have, each with the line of its key.
func (l *locator) protoUnknown(at []int, md protoreflect.MessageDescriptor) (out []fieldAt) {
	spec := findField(l.node(at), []string{"spec"}, "")
	if spec == nil {
		return nil
	}
	protoFields(spec.value, md, "spec", func(f fieldAt) bool {
		out = append(out, f)
		return true
	}, func(fieldAt, string) bool { return true })
	return out
}

// protoFields walks the YAML map n as the protobuf message md (with the
// names protojson reads: JSON names and field names), path being n's
// path. It calls unknown for each key md does not have, and mismatch for
// each value whose shape does not fit its field (a string where a list
// goes), until either returns false.
func protoFields(n *yamlv3.Node, md protoreflect.MessageDescriptor, path string,
	unknown func(f fieldAt) bool, mismatch func(f fieldAt, want string) bool) bool {
	n = resolved(n)
	if n == nil || n.Kind != yamlv3.MappingNode || strings.HasPrefix(string(md.FullName()), "google.protobuf.") {
		return true
	}
	fields := md.Fields()
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, value := n.Content[i], resolved(n.Content[i+1])
		f := fieldAt{path: joinField(path, key.Value), key: key, value: value}
		fd := fields.ByJSONName(key.Value)
		if fd == nil {
			fd = fields.ByName(protoreflect.Name(key.Value))
		}
		if fd == nil {
			if !unknown(f) {
				return false
			}
			continue
		}
		switch {
		case fd.IsList():
			if !fits(shapeOf(value), "a list") {
				if !mismatch(f, "a list") {
					return false
				}
				continue
			}
			if value.Kind != yamlv3.SequenceNode {
				continue
			}
			for j, item := range value.Content {
				if !protoValue(fieldAt{path: fmt.Sprintf("%s[%d]", f.path, j), key: key, value: resolved(item)}, fd, unknown, mismatch) {
					return false
				}
			}
		case fd.IsMap():
			if !fits(shapeOf(value), "a map") {
				if !mismatch(f, "a map") {
					return false
				}
				continue
			}
			if value.Kind != yamlv3.MappingNode {
				continue
			}
			for j := 0; j+1 < len(value.Content); j += 2 {
				item := fieldAt{path: f.path + "." + value.Content[j].Value, key: value.Content[j], value: resolved(value.Content[j+1])}
				if !protoValue(item, fd.MapValue(), unknown, mismatch) {
					return false
				}
			}
		default:
			if !protoValue(f, fd, unknown, mismatch) {
				return false
			}
		}
	}
	return true
}

// protoValue checks one value of a field (an item, for a list or map).
func protoValue(f fieldAt, fd protoreflect.FieldDescriptor, unknown func(fieldAt) bool, mismatch func(fieldAt, string) bool) bool {
	if fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind {
		if strings.HasPrefix(string(fd.Message().FullName()), "google.protobuf.") {
			return true // wrappers and the like take scalars too
		}
		if !fits(shapeOf(f.value), "a map") {
			return mismatch(f, "a map")
		}
		return protoFields(f.value, fd.Message(), f.path, unknown, mismatch)
	}
	want := "a string"
	switch fd.Kind() {
	case protoreflect.BoolKind:
		want = "a boolean"
	case protoreflect.StringKind, protoreflect.BytesKind, protoreflect.EnumKind:
	default:
		want = "a number" // protojson takes "80" for 80 too
	}
	switch s := shapeOf(f.value); {
	case s == "a list" || s == "a map":
		return mismatch(f, want)
	case s == "a number" && want == "a number":
		if r := outOfRange(fd.Kind(), f.value.Value); r != "" {
			return mismatch(f, r)
		}
	}
	return true
}

// outOfRange says which whole numbers a protobuf integer field takes when
// v is not one of them (-1 for a port's uint32), else "".
func outOfRange(k protoreflect.Kind, v string) string {
	var bits int
	signed := false
	switch k {
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		bits = 32
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		bits = 64
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		bits, signed = 32, true
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		bits, signed = 64, true
	default:
		return "" // floats take any number
	}
	if signed {
		if _, err := strconv.ParseInt(v, 0, bits); err != nil {
			return fmt.Sprintf("a whole number from %d to %d", -(int64(1) << (bits - 1)), int64(1)<<(bits-1)-1)
		}
		return ""
	}
	if _, err := strconv.ParseUint(v, 0, bits); err != nil {
		return fmt.Sprintf("a whole number from 0 to %d", uint64(1)<<bits-1)
	}
	return ""
}
