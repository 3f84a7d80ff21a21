//go:build linux

package deploy

import (
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/ztdns/ztdns/internal/testenv"
)

// TestValuesTable: deploy/README.md's table of values, under Install, names
// every value of the chart's values.yaml (a map's keys by the map's row or
// their own), and the default it gives is values.yaml's. (Before:
// cni.install, on by default, had no row.)
func TestValuesTable(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(repoRoot(t), chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(raw, &values); err != nil {
		t.Fatal(err)
	}
	rows := valuesTable(t)
	all := leaves(values, "")
	for _, path := range slices.Sorted(maps.Keys(all)) {
		v := all[path]
		documented := ""
		for p := path; p != ""; p = parent(p) {
			if _, ok := rows[p]; ok {
				documented = p
				break
			}
		}
		if documented == "" {
			t.Errorf("deploy/README.md's values table has no row for %s (default %s)", path, asYAML(v))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(rows)) {
		def := rows[name]
		want, ok := lookupValue(values, name)
		if !ok {
			t.Errorf("deploy/README.md's values table names %s, which values.yaml has not", name)
			continue
		}
		got, err := parseDefault(def, want)
		if err != nil {
			t.Errorf("deploy/README.md's values table gives %s the default %q: %v", name, def, err)
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("deploy/README.md's values table gives %s the default %s, values.yaml %s", name, asYAML(got), asYAML(want))
		}
	}
}

// valuesTable returns the rows of deploy/README.md's table of values: each
// value's name and the default the table gives it, one backquoted cell of
// the row's comma-separated defaults (a list's items: every one).
func valuesTable(t *testing.T) map[string]string {
	t.Helper()
	code := regexp.MustCompile("`([^`]*)`")
	rows := map[string]string{}
	for _, cells := range testenv.MarkdownTable(t, filepath.Join(repoRoot(t), "deploy/README.md"), "| value | default | |") {
		if len(cells) < 2 {
			t.Fatalf("deploy/README.md: a values row with no default: %q", cells)
		}
		var names, defaults []string
		for _, m := range code.FindAllStringSubmatch(cells[0], -1) {
			names = append(names, m[1])
		}
		for _, m := range code.FindAllStringSubmatch(cells[1], -1) {
			defaults = append(defaults, m[1])
		}
		if len(names) > 1 && len(defaults) != len(names) {
			t.Errorf("deploy/README.md: the row of %v gives %d defaults", names, len(defaults))
			continue
		}
		if len(names) == 1 && len(defaults) > 1 { // a list's items
			defaults = []string{"[" + strings.Join(defaults, ", ") + "]"}
		}
		for i, name := range names {
			if _, dup := rows[name]; dup {
				t.Errorf("deploy/README.md: two rows for %s", name)
			}
			if i < len(defaults) {
				rows[name] = defaults[i]
			} else {
				t.Errorf("deploy/README.md: the row of %s gives no default", name)
			}
		}
	}
	if len(rows) < 20 {
		t.Fatalf("deploy/README.md's values table: only %d values read", len(rows))
	}
	return rows
}

// parseDefault reads a table default as YAML; the items of a list that are
// strings are taken as written ("[fd00::53]:53" is not YAML's list).
func parseDefault(def string, want any) (any, error) {
	if items, isList := want.([]any); isList && len(items) > 0 && strings.HasPrefix(def, "[") {
		if _, ok := items[0].(string); ok {
			var got []any
			for _, item := range strings.Split(strings.TrimSuffix(strings.TrimPrefix(def, "["), "]"), ", ") {
				got = append(got, item)
			}
			return got, nil
		}
	}
	var got any
	err := yaml.Unmarshal([]byte(def), &got)
	return got, err
}

// leaves yields every value of values that is not a map of more, by its
// dotted path: a scalar, a list, an empty map.
func leaves(values map[string]any, prefix string) map[string]any {
	out := map[string]any{}
	for k, v := range values {
		path := prefix + k
		if m, ok := v.(map[string]any); ok && len(m) > 0 {
			for p, l := range leaves(m, path+".") {
				out[p] = l
			}
			continue
		}
		out[path] = v
	}
	return out
}

// lookupValue finds the value at a dotted path.
func lookupValue(values map[string]any, path string) (any, bool) {
	var v any = values
	for _, k := range strings.Split(path, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		if v, ok = m[k]; !ok {
			return nil, false
		}
	}
	return v, true
}

// parent is the dotted path one level up; "" at the top.
func parent(path string) string {
	i := strings.LastIndex(path, ".")
	if i < 0 {
		return ""
	}
	return path[:i]
}

func asYAML(v any) string {
	b, err := yaml.Marshal(v)
	if err != nil {
		return err.Error()
	}
	return strings.TrimSpace(strings.ReplaceAll(string(b), "\n", " "))
}
