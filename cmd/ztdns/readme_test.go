package main

import (
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/spf13/pflag"

	"github.com/ztdns/ztdns/internal/testenv"
)

// notInFlagTable are agent flags README.md's table of `ztdns agent`'s flags
// leaves out on purpose, each with the reason. None: `ztdns agent -h` and
// the table name the same flags.
var notInFlagTable = []string{}

// TestREADMEAgentFlagTable: README.md's table of `ztdns agent`'s flags
// names every flag the agent has (but notInFlagTable), and no other, and a
// default the table gives is the flag's: the same value, read as the flag
// reads it (a duration, a number written with thousands separators or in
// MiB), `$VAR` for one taken from the environment, "off" or "none" for an
// empty one; a default told in words is the flag's when the flag has none
// of its own (the agent works it out) or the words quote it, and, when the
// flag's help tells it "(default: ...)", the words start as the help's do
// and quote nothing the help does not name. (Before: eight flags,
// --kubeconfig and --config-dir among them, had no row; --cgroup's row
// said "the cgroup2 root", the fallback, while its help said the pods'
// cgroup.)
func TestREADMEAgentFlagTable(t *testing.T) {
	rows := agentFlagTable(t)
	// Flags whose default is the environment's are built with a value
	// there that only the environment gives.
	for _, def := range rows {
		if v, ok := envDefault(def); ok {
			t.Setenv(v, "from-$"+v)
		}
	}
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	addAgentFlags(fs)

	fs.VisitAll(func(f *pflag.Flag) {
		_, listed := rows[f.Name]
		switch {
		case slices.Contains(notInFlagTable, f.Name):
			if listed {
				t.Errorf("README.md's flag table has --%s, which notInFlagTable says it leaves out", f.Name)
			}
		case !listed:
			t.Errorf("README.md's flag table has no row for --%s (default %q): %s", f.Name, f.DefValue, f.Usage)
		}
	})
	for _, name := range slices.Sorted(maps.Keys(rows)) {
		def := rows[name]
		f := fs.Lookup(name)
		if f == nil {
			t.Errorf("README.md's flag table has --%s, which `ztdns agent` does not take", name)
			continue
		}
		if def == "" {
			continue // a row of several flags that gives no defaults
		}
		if err := sameDefault(f, def); err != nil {
			t.Errorf("README.md's flag table gives --%s the default %q: %v", name, def, err)
		}
	}
}

// agentFlagTable returns README.md's rows of `ztdns agent`'s flags: each
// flag's name and the default the table gives it ("" when its row gives
// none).
func agentFlagTable(t *testing.T) map[string]string {
	t.Helper()
	flagRE := regexp.MustCompile("`--([a-z0-9-]+)[^`]*`")
	rows := map[string]string{}
	// | flag | default | what |
	for _, cells := range testenv.MarkdownTable(t, "../../README.md", "Flags of `ztdns agent` (`ztdns agent -h` for all):\n\n| flag | default | |") {
		if len(cells) < 3 {
			t.Fatalf("README.md: a flag row of fewer than three cells: %q", cells)
		}
		var names []string
		for _, m := range flagRE.FindAllStringSubmatch(cells[0], -1) {
			names = append(names, m[1])
		}
		if len(names) == 0 {
			t.Errorf("README.md: a flag row that names no flag: %q", cells)
			continue
		}
		defaults := []string{cells[1]}
		if len(names) > 1 {
			if defaults[0] == "" {
				defaults = make([]string, len(names))
			} else if defaults = strings.Split(defaults[0], ", "); len(defaults) != len(names) {
				t.Errorf("README.md: the row of %v gives %d defaults: %q", names, len(defaults), cells[1])
				continue
			}
		}
		for i, name := range names {
			if _, dup := rows[name]; dup {
				t.Errorf("README.md: two rows for --%s", name)
			}
			rows[name] = defaults[i]
		}
	}
	if len(rows) < 40 {
		t.Fatalf("README.md's flag table: only %d flags read", len(rows))
	}
	return rows
}

var (
	codeRE    = regexp.MustCompile("`([^`]*)`")
	envRE     = regexp.MustCompile("^`\\$([A-Z_]+)`$")
	numberRE  = regexp.MustCompile(`^([0-9][0-9,]*(?:\.[0-9]+)?)(?: (KiB|MiB|GiB))?$`)
	unitBytes = map[string]float64{"": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
)

// envDefault returns VAR of a default written `$VAR`.
func envDefault(def string) (string, bool) {
	m := envRE.FindStringSubmatch(def)
	if m == nil {
		return "", false
	}
	return m[1], true
}

// sameDefault says whether the table's default def is f's, and how not.
func sameDefault(f *pflag.Flag, def string) error {
	if v, ok := envDefault(def); ok {
		if f.DefValue != "from-$"+v {
			return fmt.Errorf("the flag's default is %q, not $%s's", f.DefValue, v)
		}
		return nil
	}
	if def == "off" || def == "none" {
		if !isZero(f.DefValue) {
			return fmt.Errorf("the flag's default is %q, not empty", f.DefValue)
		}
		return nil
	}
	if m := codeRE.FindStringSubmatch(def); m != nil && m[0] == def { // one value, as written
		return sameValue(f, m[1])
	}
	if numberRE.MatchString(def) { // 8 MiB, 25,000
		return sameValue(f, def)
	}
	// Told in words: the agent works it out when the flag has no value
	// of its own, as the help says; a value it has is quoted among the
	// words.
	if help, ok := helpDefault(f.Usage); ok {
		if err := sameWords(def, help); err != nil {
			return err
		}
	}
	if isZero(f.DefValue) {
		return nil
	}
	for _, m := range codeRE.FindAllStringSubmatch(def, -1) {
		if sameValue(f, m[1]) == nil {
			return nil
		}
	}
	return fmt.Errorf("the flag's default, %q, is not among the words", f.DefValue)
}

// helpDefault returns the text of "(default: ...)" in a flag's help, the
// default the agent works out when the flag has no value of its own.
func helpDefault(usage string) (string, bool) {
	_, rest, ok := strings.Cut(usage, "(default: ")
	if !ok {
		return "", false
	}
	depth := 0
	for i, r := range rest {
		switch r {
		case '(':
			depth++
		case ')':
			if depth == 0 {
				return rest[:i], true
			}
			depth--
		}
	}
	return rest, true
}

// sameWords says whether the table's default in words, def, tells the
// help's: its first clause is the help's, or the help's begins with it,
// so the table cannot lead with a fallback; and every value it quotes is
// named in the help.
func sameWords(def, help string) error {
	plain := func(s string) string { return strings.ToLower(strings.ReplaceAll(s, "`", "")) }
	firstClause := func(s string) string {
		if i := strings.IndexAny(s, ",;:("); i >= 0 {
			s = s[:i]
		}
		return strings.TrimPrefix(strings.TrimSpace(s), "the ")
	}
	d, h := firstClause(plain(def)), firstClause(plain(help))
	if d == "" || (d != h && !strings.HasPrefix(h, d+" ")) {
		return fmt.Errorf("the flag's help says the default is %q: the row should start so", help)
	}
	for _, m := range codeRE.FindAllStringSubmatch(def, -1) {
		if !strings.Contains(plain(help), strings.ToLower(m[1])) {
			return fmt.Errorf("the row quotes %q, which the flag's help does not name in its default, %q", m[1], help)
		}
	}
	return nil
}

// sameValue says whether v, as the table writes a value, is f's default.
func sameValue(f *pflag.Flag, v string) error {
	got, want := v, f.DefValue
	switch f.Value.Type() {
	case "duration":
		g, err1 := time.ParseDuration(got)
		w, err2 := time.ParseDuration(want)
		if err1 != nil || err2 != nil || g != w {
			return fmt.Errorf("the flag's default is %s", want)
		}
		return nil
	case "int", "int64", "uint", "float64":
		m := numberRE.FindStringSubmatch(got)
		if m == nil {
			return fmt.Errorf("not a number; the flag's default is %s", want)
		}
		g, err1 := strconv.ParseFloat(strings.ReplaceAll(m[1], ",", ""), 64)
		w, err2 := strconv.ParseFloat(want, 64)
		if err1 != nil || err2 != nil || g*unitBytes[m[2]] != w {
			return fmt.Errorf("the flag's default is %s", want)
		}
		return nil
	case "stringSlice":
		want = strings.TrimSuffix(strings.TrimPrefix(want, "["), "]")
	}
	if got != want {
		return fmt.Errorf("the flag's default is %q", want)
	}
	return nil
}

// isZero says whether a flag's default is no value: empty, 0, false.
func isZero(def string) bool {
	return slices.Contains([]string{"", "[]", "0", "0s", "false"}, def)
}

// quickStartLines is how far into README.md a reader finds the way to
// install, verify and debug on a cluster.
const quickStartLines = 150

// TestREADMEQuickStartLinksDeployGuide: README.md's first quickStartLines
// lines link deploy/README.md's Requirements, Install, Verify, Debug and
// "A pod cannot resolve a name", and every link into deploy/README.md
// names a heading it has, so a section renamed or moved out of the top
// fails here. (Before: the first link to the install was at line 2553.)
func TestREADMEQuickStartLinksDeployGuide(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	guide, err := os.ReadFile("../../deploy/README.md")
	if err != nil {
		t.Fatal(err)
	}
	anchors := markdownAnchors(string(guide))
	lines := strings.SplitAfter(string(readme), "\n")
	top := strings.Join(lines[:min(quickStartLines, len(lines))], "")
	for _, anchor := range []string{"requirements", "install", "verify", "debug", "a-pod-cannot-resolve-a-name"} {
		if !strings.Contains(top, "](deploy/README.md#"+anchor+")") {
			t.Errorf("README.md's first %d lines do not link deploy/README.md#%s", quickStartLines, anchor)
		}
	}
	links := regexp.MustCompile(`\]\(deploy/README\.md#([^)]*)\)`).FindAllStringSubmatch(string(readme), -1)
	for _, m := range links {
		if !anchors[m[1]] {
			t.Errorf("README.md links deploy/README.md#%s, which names no heading there", m[1])
		}
	}
	if len(links) < 5 {
		t.Fatalf("README.md: only %d links into deploy/README.md read", len(links))
	}
}

// markdownAnchors returns the anchors GitHub gives the headings of a
// Markdown document: lower case, spaces as hyphens, punctuation but
// hyphens and underscores dropped, and -1, -2, ... after a repeated one.
func markdownAnchors(doc string) map[string]bool {
	anchors := map[string]bool{}
	seen := map[string]int{}
	inCode := false
	for line := range strings.Lines(doc) {
		line = strings.TrimRight(line, "\n")
		if strings.HasPrefix(line, "```") {
			inCode = !inCode
			continue
		}
		title, ok := strings.CutPrefix(strings.TrimLeft(line, "#"), " ")
		if inCode || !ok || !strings.HasPrefix(line, "#") {
			continue
		}
		var b strings.Builder
		for _, r := range strings.ToLower(strings.TrimSpace(title)) {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
				b.WriteRune(r)
			}
		}
		anchor := b.String()
		if n := seen[anchor]; n > 0 {
			seen[anchor]++
			anchor = fmt.Sprintf("%s-%d", anchor, n)
		} else {
			seen[anchor] = 1
		}
		anchors[anchor] = true
	}
	return anchors
}

// TestMakefileTargetsDocumented: every target of the Makefile is in its
// header's list and in README.md, as `make TARGET`. (Before: the header
// called its nine targets five, and left out demo-standalone and clean,
// which README.md never named either.)
func TestMakefileTargetsDocumented(t *testing.T) {
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	header, _, _ := strings.Cut(string(mk), "\n\n")
	var targets []string
	for _, m := range regexp.MustCompile(`(?m)^([a-z][a-z-]*):([^=]|$)`).FindAllStringSubmatch(string(mk), -1) {
		if !slices.Contains(targets, m[1]) {
			targets = append(targets, m[1])
		}
	}
	if len(targets) < 5 {
		t.Fatalf("the Makefile's targets: only %q", targets)
	}
	for _, target := range targets {
		named := regexp.MustCompile(`(?m)(^|\x60)make ` + regexp.QuoteMeta(target) + `([^a-z-]|$)`)
		if !regexp.MustCompile(`(?m)^#   make ` + regexp.QuoteMeta(target) + ` `).MatchString(header) {
			t.Errorf("the Makefile's header does not list `make %s`", target)
		}
		if !named.Match(readme) {
			t.Errorf("README.md never names `make %s`", target)
		}
	}
	if regexp.MustCompile(`(?i)\b(two|three|four|five|six|seven|eight|nine|ten) targets\b`).MatchString(header) {
		t.Errorf("the Makefile's header counts its targets: %q", header)
	}
}
