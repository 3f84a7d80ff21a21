package configdir

import (
	"bytes"
	"errors"
	"fmt"
	"iter"
	"strconv"
	"strings"
	"unicode/utf8"

	yamlv2 "go.yaml.in/yaml/v2"
	yamlv3 "go.yaml.in/yaml/v3"
)

// Finding the file line of a problem: documents keep the line they start
// on, and lines inside a document come from the YAML parsers.

// document is one YAML document of a file.
type document struct {
	data []byte
	line int // the file line the document's first byte is on
	// afterEnd is the file line of content after a document end marker
	// ("...") in data, 0 if none: YAML allows only directives and a new
	// document (---) there, and the conversion would silently read the
	// first one only. A directive there starts the next document.
	afterEnd int
}

// documents yields the documents of a multi-document YAML file, split at
// its "---" lines, one at a time. YAML forbids a "---" at the start of a
// line inside any content (block scalars included), so splitting on lines
// is exact, and it lets every document keep its starting line for error
// messages. Lines end where go-yaml ends them: at LF, CR, CR LF, NEL,
// U+2028 and U+2029. The marker stays at the start of the document it
// opens, which the YAML parsers accept.
func documents(data []byte) iter.Seq[document] {
	return func(yield func(document) bool) {
		start, startLine, line := 0, 1, 1
		ended := false // a "..." line in the document so far
		afterEnd := 0
		// The first directive after "...", which opens the next document
		// (its "---" must follow): -1 if none.
		directive, directiveLine := -1, 0
		for off := 0; off < len(data); line++ {
			end, next := lineEnd(data, off)
			text := data[off:end]
			switch {
			case off > start && isMarker(text, "---"):
				cut, cutLine := off, line
				if directive >= 0 && afterEnd == 0 {
					cut, cutLine = directive, directiveLine
				}
				if !yield(document{data: data[start:cut], line: startLine, afterEnd: afterEnd}) {
					return
				}
				start, startLine, ended, afterEnd, directive = cut, cutLine, false, 0, -1
			case isMarker(text, "..."):
				ended = true
			case ended && afterEnd == 0 && len(text) > 0 && text[0] == '%':
				if directive < 0 {
					directive, directiveLine = off, line
				}
			case ended && afterEnd == 0 && !isBlankOrComment(text):
				afterEnd = line
			}
			off = next
		}
		if directive >= 0 && afterEnd == 0 {
			afterEnd = directiveLine // a directive and no document
		}
		yield(document{data: data[start:], line: startLine, afterEnd: afterEnd})
	}
}

// isEmpty reports whether doc holds only blank lines and comments, after
// its "---": a document of nothing, known without a YAML parser.
func (doc document) isEmpty() bool {
	data := doc.data
	for off := 0; off < len(data); {
		end, next := lineEnd(data, off)
		text := data[off:end]
		if off == 0 && isMarker(text, "---") {
			text = text[3:]
		}
		if !isBlankOrComment(text) {
			return false
		}
		off = next
	}
	return true
}

// lineEnd returns where the line starting at off ends, and where the next
// one starts, with go-yaml's line breaks.
func lineEnd(data []byte, off int) (end, next int) {
	for i := off; i < len(data); i++ {
		switch c := data[i]; c {
		case '\n':
			return i, i + 1
		case '\r':
			if i+1 < len(data) && data[i+1] == '\n' {
				return i, i + 2
			}
			return i, i + 1
		case 0xC2: // NEL is C2 85
			if i+1 < len(data) && data[i+1] == 0x85 {
				return i, i + 2
			}
		case 0xE2: // U+2028 and U+2029 are E2 80 A8 and E2 80 A9
			if i+2 < len(data) && data[i+1] == 0x80 && (data[i+2] == 0xA8 || data[i+2] == 0xA9) {
				return i, i + 3
			}
		}
	}
	return len(data), len(data)
}

// isMarker reports whether line (without its break) is the document marker
// m ("---" or "..."), alone or followed by a blank.
func isMarker(line []byte, m string) bool {
	rest, ok := bytes.CutPrefix(line, []byte(m))
	return ok && (len(rest) == 0 || rest[0] == ' ' || rest[0] == '\t')
}

// isBlankOrComment reports whether line (without its break) holds nothing
// but blanks and a comment.
func isBlankOrComment(line []byte) bool {
	line = bytes.TrimLeft(line, " \t")
	return len(line) == 0 || line[0] == '#'
}

// encodingError reports a file go-yaml would misread, or refuse without
// saying where: UTF-16 and UTF-32 (go-yaml decodes UTF-16, whose line
// breaks the splitting above does not see), bytes that are not UTF-8, and
// the characters YAML does not allow (NUL, other control characters).
func encodingError(data []byte) (line int, err error) {
	for _, bom := range []struct {
		mark, name string
	}{
		{"\x00\x00\xfe\xff", "UTF-32BE"},
		{"\xff\xfe\x00\x00", "UTF-32LE"},
		{"\xfe\xff", "UTF-16BE"},
		{"\xff\xfe", "UTF-16LE"},
	} {
		if bytes.HasPrefix(data, []byte(bom.mark)) {
			return 0, fmt.Errorf("the file is %s (it starts with that byte order mark): save it as UTF-8", bom.name)
		}
	}
	for i := 0; i < len(data); {
		if c := data[i]; c >= 0x20 && c < 0x7f || c == '\n' || c == '\t' || c == '\r' {
			i++
			continue
		}
		r, n := utf8.DecodeRune(data[i:])
		switch {
		case r == 0:
			return lineAt(data, i), errors.New("a NUL byte: YAML manifests are UTF-8 text (a file saved as UTF-16 has one in every ASCII character)")
		case r == utf8.RuneError && n == 1:
			return lineAt(data, i), fmt.Errorf("byte 0x%02X is not UTF-8: save the file as UTF-8", data[i])
		case !(r == 0x85 || r >= 0xa0 && r <= 0xd7ff || r >= 0xe000 && r <= 0xfffd || r >= 0x10000):
			// go-yaml's allowed characters (YAML 1.1's printable set).
			return lineAt(data, i), fmt.Errorf("control character %U, which YAML does not allow", r)
		}
		i += n
	}
	return 0, nil
}

// lineAt is the file line of data[off].
func lineAt(data []byte, off int) int {
	line := 1
	for i := 0; ; line++ {
		_, next := lineEnd(data, i)
		if next > off || next >= len(data) {
			return line
		}
		i = next
	}
}

// firstContentLine is the file line of the first line of doc that is not
// blank, a comment or a bare "---": where the object starts.
func firstContentLine(doc document) int {
	data := doc.data
	for n, off := 0, 0; off < len(data); n++ {
		end, next := lineEnd(data, off)
		text := strings.TrimSpace(string(data[off:end]))
		off = next
		if text == "" || text == "---" || text[0] == '#' || text[0] == '%' {
			continue
		}
		return doc.line + n
	}
	return doc.line
}

// syntaxErrors turns a YAML error into file errors. go-yaml reports "yaml:
// line N: msg" for syntax errors and a TypeError with one "line N: msg" per
// problem for repeated keys; N counts from the document's first line.
func syntaxErrors(pr *problems, doc document, err error) {
	var typeErr *yamlv2.TypeError
	msgs := []string{strings.TrimPrefix(err.Error(), "yaml: ")}
	if errors.As(err, &typeErr) {
		msgs = typeErr.Errors
	}
	for _, msg := range msgs {
		pr.addWith(func() (int, error) {
			skew := 0
			if _, rest, ok := cutLineNumber(msg); ok && isParserProblem(rest) {
				skew = 1 // go-yaml numbers these from 0, scanner errors from 1
			}
			line, rest := errorLine(doc, msg, skew)
			return line, fmt.Errorf("invalid YAML: %s", rest)
		})
	}
}

// errorLine is the file line of a YAML error message "line N: rest" about
// doc (N from 1, plus skew), and rest; the document's first line when the
// message names none. libyaml puts the end of the stream on a line of its
// own, past the last line of the document: such a line is the last one.
func errorLine(doc document, msg string, skew int) (int, string) {
	n, rest, ok := cutLineNumber(msg)
	if !ok {
		return firstContentLine(doc), msg
	}
	return doc.line + min(n+skew, lineCount(doc.data)) - 1, rest
}

// lineCount is the number of lines in data, a last line without a line
// break included.
func lineCount(data []byte) int {
	n := 0
	for off := 0; off < len(data); n++ {
		_, off = lineEnd(data, off)
	}
	return max(n, 1)
}

// isParserProblem reports whether msg is one of libyaml's parser errors
// (rather than a scanner error), listed in go-yaml v2's parserc.go.
func isParserProblem(msg string) bool {
	for _, p := range []string{
		"did not find expected <", // <document start>, <stream-start>
		"did not find expected key",
		"did not find expected node content",
		"did not find expected '-' indicator",
		"did not find expected ',' or ",
		"found duplicate %",
		"found incompatible YAML document",
		"found undefined tag handle",
	} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// cutLineNumber splits "line N: rest".
func cutLineNumber(msg string) (int, string, bool) {
	rest, ok := strings.CutPrefix(msg, "line ")
	if !ok {
		return 0, msg, false
	}
	num, rest, ok := strings.Cut(rest, ": ")
	n, err := strconv.Atoi(num)
	if !ok || err != nil || n < 1 {
		return 0, msg, false
	}
	return n, rest, true
}

// locator finds lines inside a document. It parses the document a second
// time (with yaml.v3, which keeps positions) only when a line inside it is
// needed: for List items and for errors, never on the common path.
type locator struct {
	doc    document
	root   *yamlv3.Node // the document's content; nil when it has none
	err    error        // yaml.v3's, when it could not parse the document
	parsed bool
}

// parse parses the document with yaml.v3, once.
func (l *locator) parse() (*yamlv3.Node, error) {
	if !l.parsed {
		l.parsed = true
		var n yamlv3.Node
		if l.err = yamlv3.Unmarshal(l.doc.data, &n); l.err == nil && n.Kind == yamlv3.DocumentNode && len(n.Content) == 1 {
			l.root = n.Content[0]
		}
	}
	return l.root, l.err
}

func (l *locator) node(at []int) *yamlv3.Node {
	n, _ := l.parse()
	for _, i := range at {
		items := mappingValue(n, "items")
		if items == nil || items.Kind != yamlv3.SequenceNode || i >= len(items.Content) {
			return nil
		}
		n = items.Content[i]
	}
	return n
}

// line is the file line of a node of the document.
func (l *locator) line(n *yamlv3.Node) int { return l.doc.line + n.Line - 1 }

// objectLine is the file line where the object at starts.
func (l *locator) objectLine(at []int) int {
	if len(at) > 0 {
		if n := l.node(at); n != nil {
			return l.line(n)
		}
	}
	return firstContentLine(l.doc)
}

// valueLine is the file line of the first value inside the object at that
// msg quotes (the converters quote the value they reject, as in `address
// "1.2.3" is not an IP address`), or the object's line.
func (l *locator) valueLine(at []int, msg string) int {
	if n := findQuotedValue(l.node(at), msg); n != nil {
		return l.line(n)
	}
	return l.objectLine(at)
}

func findQuotedValue(n *yamlv3.Node, msg string) *yamlv3.Node {
	if n == nil {
		return nil
	}
	switch n.Kind {
	case yamlv3.ScalarNode:
		if n.Value != "" && strings.Contains(msg, strconv.Quote(n.Value)) {
			return n
		}
	case yamlv3.MappingNode:
		for i := 1; i < len(n.Content); i += 2 { // values only, not keys
			if found := findQuotedValue(n.Content[i], msg); found != nil {
				return found
			}
		}
	case yamlv3.SequenceNode:
		for _, c := range n.Content {
			if found := findQuotedValue(c, msg); found != nil {
				return found
			}
		}
	}
	return nil
}

func mappingValue(n *yamlv3.Node, key string) *yamlv3.Node {
	if n == nil || n.Kind != yamlv3.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}
