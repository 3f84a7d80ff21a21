package testenv

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// TestMarkdownTable: the rows of the table under the header, not those of
// another table or the text after a blank line, with an escaped pipe kept
// in its cell.
func TestMarkdownTable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "README.md")
	doc := "Intro.\n\n| name | default | |\n| --- | --- | --- |\n| x | 1 | other |\n\n" +
		"Flags:\n\n| name | default | |\n| --- | --- | --- |\n| `--a` | `on\\|off` | what  |\n| `--b` |  | |\n\nAfter.\n"
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	got := MarkdownTable(t, path, "Flags:\n\n| name | default |")
	want := [][]string{{"`--a`", "`on|off`", "what"}, {"`--b`", "", ""}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("MarkdownTable: %q, want %q", got, want)
	}
}
