package configdir

import (
	"bytes"
	"fmt"
	"strings"

	yamlv3 "go.yaml.in/yaml/v3"
)

// maxExpandedBytes bounds what a document may stand for once its YAML
// aliases are expanded, as the conversion to JSON does: `a: &x <1 MiB>` and
// `b: [*x, *x, …]` make a 2 MiB document hundreds of GiB of JSON. go-yaml's
// own alias limit counts nodes, not bytes, so it does not stop that.
const maxExpandedBytes = 4 * maxDocumentBytes

// maxExpandedNodes bounds the nodes a document stands for once its aliases
// are expanded: no more than a document of maxDocumentBytes written out
// could hold (`[{},{},…]`, two bytes a node). Bytes alone miss small nodes:
// an empty map is 2 bytes of JSON but about 200 decoded.
const maxExpandedNodes = maxDocumentBytes / 2

// aliasError is a document refused for what its aliases expand to.
type aliasError struct {
	line int // file line
	err  error
}

// checkAliases refuses a document whose aliases expand it past
// maxExpandedBytes. A document without both an anchor (&) and an alias (*)
// has nothing to expand: YAML has no other way to write either, so most
// documents cost one byte scan. Others are parsed into nodes (loc's, which
// keep aliases unexpanded and serve later for finding lines), and the
// expanded size is summed with each anchored node's size computed once.
func checkAliases(loc *locator) *aliasError {
	doc := loc.doc
	if bytes.IndexByte(doc.data, '&') < 0 || bytes.IndexByte(doc.data, '*') < 0 {
		return nil
	}
	root, err := loc.parse()
	if err != nil {
		// Not left to the conversion: a document this parser refuses is
		// not one whose size it can bound.
		line, msg := errorLine(doc, strings.TrimPrefix(err.Error(), "yaml: "), 0)
		return &aliasError{line: line, err: fmt.Errorf("invalid YAML: %s", msg)}
	}
	e := expansion{sizes: make(map[*yamlv3.Node]cost)}
	c := e.size(root)
	if c.bytes > maxExpandedBytes || c.nodes > maxExpandedNodes {
		line, first := firstContentLine(doc), ""
		if e.firstAlias != nil {
			line, first = doc.line+e.firstAlias.Line-1, " (the first: *"+e.firstAlias.Value+")"
		}
		limit := fmt.Sprintf("%d bytes", maxExpandedBytes)
		if c.bytes <= maxExpandedBytes {
			limit = fmt.Sprintf("%d values", maxExpandedNodes)
		}
		return &aliasError{line: line, err: fmt.Errorf(
			"YAML aliases%s expand this document to more than %s: write the values out instead (Kubernetes manifests do not need anchors and aliases)",
			first, limit)}
	}
	return nil
}

// expansion sums the size of a node tree with its aliases expanded, roughly
// as JSON bytes, and its nodes. Sums stop growing past the bounds, so they
// cannot overflow.
type expansion struct {
	sizes      map[*yamlv3.Node]cost // of anchored nodes; nodes -1 while being summed
	firstAlias *yamlv3.Node
}

type cost struct{ bytes, nodes int64 }

// endless is past both bounds.
var endless = cost{maxExpandedBytes + 1, maxExpandedNodes + 1}

func (e *expansion) size(n *yamlv3.Node) cost {
	if n == nil {
		return cost{}
	}
	if n.Anchor != "" {
		switch s, ok := e.sizes[n]; {
		case ok && s.nodes < 0:
			return endless // an anchor inside itself
		case ok:
			return s
		}
		e.sizes[n] = cost{nodes: -1}
	}
	var s cost
	switch n.Kind {
	case yamlv3.AliasNode:
		if e.firstAlias == nil {
			e.firstAlias = n
		}
		s = e.size(n.Alias)
	case yamlv3.ScalarNode:
		s = cost{int64(len(n.Value)) + 3, 1} // quotes and a separator
	default: // document, mapping, sequence
		s = cost{2, 1}
		for _, c := range n.Content {
			cs := e.size(c)
			s = cost{min(s.bytes+cs.bytes, endless.bytes), min(s.nodes+cs.nodes, endless.nodes)}
		}
	}
	if n.Anchor != "" {
		e.sizes[n] = s
	}
	return s
}
