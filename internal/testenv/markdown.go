package testenv

import (
	"os"
	"strings"
	"testing"
)

// MarkdownTable returns the rows of the table in the Markdown file at path
// whose header row starts with header (which may begin with the lines
// before it, to tell one table from another), up to the first blank line:
// each row's cells, trimmed, with `\|` read as the "|" it escapes. The
// tests that hold README.md's tables to the code read them with it.
func MarkdownTable(tb testing.TB, path, header string) [][]string {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	_, table, ok := strings.Cut(string(b), "\n"+header)
	if !ok {
		tb.Fatalf("%s has no table whose header starts %q", path, header)
	}
	table, _, _ = strings.Cut(table, "\n\n")
	lines := strings.Split(table, "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[1], "| ---") {
		tb.Fatalf("%s: the table %q has no rule under its header", path, header)
	}
	var rows [][]string
	for _, line := range lines[2:] {
		inner, first := strings.CutPrefix(line, "|")
		inner, last := strings.CutSuffix(inner, "|")
		if !first || !last {
			tb.Fatalf("%s: the table %q has a row not between pipes: %q", path, header, line)
		}
		cells := strings.Split(strings.ReplaceAll(inner, `\|`, "\x00"), "|")
		for i, c := range cells {
			cells[i] = strings.ReplaceAll(strings.TrimSpace(c), "\x00", "|")
		}
		rows = append(rows, cells)
	}
	return rows
}
