package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// A conflist is edited in place, byte by byte: only the bytes of the ztdns
// entry (and the separator before it) are written or removed, so every other
// byte of the file — other plugins' fields, key order, formatting, a trailing
// newline — stays as the primary plugin wrote it, and uninstalling after
// installing gives back the original file exactly.

// span is a byte range [start, end) of a file.
type span struct{ start, end int }

// pluginList locates the "plugins" array of a conflist.
type pluginList struct {
	open    int    // just after '['
	close   int    // at ']'
	entries []span // each entry's object, without surrounding whitespace
	types   []string
}

// parsePluginList finds the plugins array of the conflist in data and the
// byte range and "type" of each entry.
func parsePluginList(data []byte) (*pluginList, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	var list *pluginList
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		if key, _ := tok.(string); key != "plugins" {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return nil, err
			}
			continue
		}
		if list != nil {
			return nil, errors.New(`"plugins" appears twice`)
		}
		if list, err = parseEntries(dec, data); err != nil {
			return nil, fmt.Errorf("plugins: %w", err)
		}
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return nil, err
	}
	if list == nil {
		return nil, errors.New(`no "plugins" list`)
	}
	return list, nil
}

func parseEntries(dec *json.Decoder, data []byte) (*pluginList, error) {
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		return nil, errors.New("not a JSON array")
	}
	list := &pluginList{open: int(dec.InputOffset())}
	for dec.More() {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, err
		}
		end := int(dec.InputOffset())
		s := span{end - len(raw), end}
		if s.start < 0 || !bytes.Equal(data[s.start:s.end], raw) {
			return nil, errors.New("cannot locate an entry in the file") // never expected: refuse rather than corrupt
		}
		var entry struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(raw, &entry); err != nil {
			return nil, fmt.Errorf("entry %d: %w", len(list.entries), err)
		}
		list.entries = append(list.entries, s)
		list.types = append(list.types, entry.Type)
	}
	if _, err := dec.Token(); err != nil { // ']'
		return nil, err
	}
	list.close = int(dec.InputOffset()) - 1
	return list, nil
}

// index returns the position of the first entry of type typ, or -1.
func (l *pluginList) index(typ string) int {
	for i, t := range l.types {
		if t == typ {
			return i
		}
	}
	return -1
}

// upsertEntry returns data with entry as the entry of its type, placed
// after the first entry of type after when there is one (istio-cni's, for
// ztdns: see Install): an existing entry that is after it, or anywhere when
// there is none, is replaced where it stands (so two installers that each
// want to be last never move each other around forever); one before it is
// taken out and put back right after it; a missing one goes right after
// it, or last. It reports whether anything changed (an entry equal to
// entry, formatting aside, in its place is left as it is) and whether that
// was moving an entry from before after's.
func upsertEntry(data, entry []byte, typ, after string) (updated []byte, changed, moved bool, err error) {
	list, err := parsePluginList(data)
	if err != nil {
		return nil, false, false, err
	}
	i, a := list.index(typ), -1
	if after != "" {
		a = list.index(after)
	}
	if i >= 0 && i > a {
		old := list.entries[i]
		if jsonEqual(data[old.start:old.end], entry) {
			return data, false, false, nil
		}
		rendered, err := renderEntry(entry, data, old, lineIndent(data, old.start))
		if err != nil {
			return nil, false, false, err
		}
		return splice(data, old, rendered), true, false, nil
	}
	moved = i >= 0
	if moved { // before after's: out, and back in after it
		if data, _, err = removeEntries(data, typ); err != nil {
			return nil, false, false, err
		}
		if list, err = parsePluginList(data); err != nil {
			return nil, false, false, err
		}
		a = list.index(after)
	}
	if a < 0 {
		a = len(list.entries) - 1
	}
	if data, err = insertAfter(data, list, a, entry); err != nil {
		return nil, false, false, err
	}
	return data, true, moved, nil
}

// insertAfter returns data with entry inserted after list's entry k
// (list is data's), or as the only one when the list is empty (k -1).
func insertAfter(data []byte, list *pluginList, k int, entry []byte) ([]byte, error) {
	n := len(list.entries)
	if n == 0 {
		rendered, err := renderEntry(entry, data, span{}, "")
		if err != nil {
			return nil, err
		}
		return splice(data, span{list.open, list.close}, rendered), nil
	}
	// Separate the new entry from entry k the way entry k is separated
	// from the one before it (the next one, when it is the first; the
	// '[' when it is the only one).
	prev := list.entries[k]
	sep := "," + string(data[list.open:list.entries[0].start])
	if n >= 2 {
		j := max(k, 1)
		sep = string(data[list.entries[j-1].end:list.entries[j].start])
	}
	rendered, err := renderEntry(entry, data, prev, afterLastNewline(sep))
	if err != nil {
		return nil, err
	}
	return splice(data, span{prev.end, prev.end}, append([]byte(sep), rendered...)), nil
}

// removeEntries returns data without any entry of type typ, and whether
// there was one. The separator that came with an entry goes with it.
func removeEntries(data []byte, typ string) ([]byte, bool, error) {
	removed := false
	for {
		list, err := parsePluginList(data)
		if err != nil {
			return nil, false, err
		}
		i := list.index(typ)
		if i < 0 {
			return data, removed, nil
		}
		var cut span
		switch {
		case i > 0: // from the end of the previous entry
			cut = span{list.entries[i-1].end, list.entries[i].end}
		case len(list.entries) > 1: // up to the start of the next one
			cut = span{list.entries[0].start, list.entries[1].start}
		default:
			cut = span{list.open, list.close}
		}
		data = splice(data, cut, nil)
		removed = true
	}
}

// renderEntry formats entry to sit at indentation prefix, in the style of
// the sample entry at s in data: indented with the same unit when the
// sample spans lines, compact when it does not (or when there is none).
func renderEntry(entry, data []byte, sample span, prefix string) ([]byte, error) {
	var buf bytes.Buffer
	unit := indentUnit(data[sample.start:sample.end], prefix)
	var err error
	if unit == "" {
		err = json.Compact(&buf, entry)
	} else {
		err = json.Indent(&buf, entry, prefix, unit)
	}
	if err != nil {
		return nil, fmt.Errorf("plugin entry: %w", err)
	}
	return buf.Bytes(), nil
}

// indentUnit guesses one level of indentation from an entry's second line,
// which is indented one level deeper than prefix. "" means compact.
func indentUnit(entry []byte, prefix string) string {
	_, rest, ok := bytes.Cut(entry, []byte("\n"))
	if !ok {
		return ""
	}
	ws := rest[:len(rest)-len(bytes.TrimLeft(rest, " \t"))]
	if unit, ok := strings.CutPrefix(string(ws), prefix); ok && unit != "" {
		return unit
	}
	return "  "
}

// lineIndent returns the whitespace between the start of the line holding
// offset and offset.
func lineIndent(data []byte, offset int) string {
	lineStart := bytes.LastIndexByte(data[:offset], '\n') + 1
	return afterLastNewline(string(data[lineStart:offset]))
}

func afterLastNewline(s string) string {
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if strings.Trim(s, " \t") != "" {
		return ""
	}
	return s
}

// splice returns data with s replaced by repl.
func splice(data []byte, s span, repl []byte) []byte {
	out := make([]byte, 0, len(data)-(s.end-s.start)+len(repl))
	out = append(out, data[:s.start]...)
	out = append(out, repl...)
	return append(out, data[s.end:]...)
}

// jsonEqual reports whether a and b hold the same JSON value, key order
// and formatting aside.
func jsonEqual(a, b []byte) bool {
	var va, vb any
	if json.Unmarshal(a, &va) != nil || json.Unmarshal(b, &vb) != nil {
		return false
	}
	ca, _ := json.Marshal(va)
	cb, _ := json.Marshal(vb)
	return bytes.Equal(ca, cb)
}

// confToConflist wraps a single-plugin network config (a .conf file) into a
// conflist with the same name and version whose plugins are the original
// config, verbatim but for indentation, followed by entry. Runtimes
// read the same network from it (libcni's ConfListFromConf does the same).
func confToConflist(conf, entry []byte) ([]byte, error) {
	var head struct {
		CNIVersion string `json:"cniVersion,omitempty"`
		Name       string `json:"name,omitempty"`
	}
	if err := json.Unmarshal(conf, &head); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.WriteString("{\n")
	for _, kv := range [][2]string{{"cniVersion", head.CNIVersion}, {"name", head.Name}} {
		if kv[1] != "" {
			v, _ := json.Marshal(kv[1])
			fmt.Fprintf(&b, "  %q: %s,\n", kv[0], v)
		}
	}
	b.WriteString("  \"plugins\": [\n    ")
	if err := json.Indent(&b, bytes.TrimSpace(conf), "    ", "  "); err != nil {
		return nil, err
	}
	b.WriteString(",\n    ")
	if err := json.Indent(&b, entry, "    ", "  "); err != nil {
		return nil, err
	}
	b.WriteString("\n  ]\n}\n")
	return b.Bytes(), nil
}
