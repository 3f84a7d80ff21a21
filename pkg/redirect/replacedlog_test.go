//go:build linux

package redirect

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/ztdns/ztdns/internal/testenv"
)

// TestReplacedMapLogSaysWhatIsLost: a pinned map of another layout
// (an upgrade changed it) is replaced with a log line that says what that
// costs, map by map: config and config_index, which the agent writes in
// full as it starts, and the heartbeat, written at its next beat, lose
// nothing, and say so at INFO; the maps whose entries are really lost
// (marks, learned nameservers, socket records and counts, the counters)
// warn, naming what. (Before: every one warned "entries lost", config and
// config_index at every such upgrade too, where the README says an
// upgrade loses nothing.)
func TestReplacedMapLogSaysWhatIsLost(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t)
	for _, tt := range []struct {
		name    string
		lost    string // what the warning names; "": nothing is lost
		partner string // pinned too, of this layout: replaced with it, the programs reading the two as one
	}{
		{name: ztdnsMapConfig, partner: ztdnsMapConfigIndex},
		{name: ztdnsMapConfigIndex, partner: ztdnsMapConfig},
		{name: ztdnsMapHeartbeat},
		{name: ztdnsMapPods, lost: "the pods' marks"},
		{name: ztdnsMapNameservers, lost: "the nameservers pods addressed"},
		{name: ztdnsMapSockets, lost: "the records of the sockets redirected"},
		{name: ztdnsMapPodSockets, lost: "the pods' counts of sockets"},
		{name: ztdnsMapCounters, lost: "the programs' counters"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			bpffs := mkdirAll(t, filepath.Join(testenv.NewBPFFS(t), "ztdns"))
			// The value's first member renamed: another layout, the
			// same sizes.
			plantMap(t, bpffs, tt.name, func(ms *ebpf.MapSpec) {
				v := btf.Copy(ms.Value).(*btf.Struct)
				v.Members[0].Name = "renamed"
				ms.Value = v
			})
			if tt.partner != "" {
				plantMap(t, bpffs, tt.partner, func(*ebpf.MapSpec) {}) // of this layout
			}
			var log testenv.Log
			mustLoad(t, Config{BPFFS: bpffs, CgroupPath: testenv.NewCgroup(t).Path, Resolver4: DefaultResolver4(), Logger: teeLogger(t, &log)})
			lines := replacedLines(log.String())
			replaced := []string{tt.name}
			if tt.partner != "" {
				replaced = append(replaced, tt.partner)
			}
			for _, name := range replaced {
				line, ok := lines[pinPath(bpffs, name)]
				switch {
				case !ok:
					t.Errorf("no line logged of replacing %s:\n%s", name, log.String())
				case tt.lost == "" && (!strings.Contains(line, `level=INFO msg="replacing pinned map: layout changed; the agent writes it afresh, nothing is lost"`) ||
					!strings.Contains(line, " written=")):
					t.Errorf("replacing %s, which the agent writes afresh, logged %s; want INFO, nothing lost, and when it is written", name, line)
				case tt.lost != "" && (!strings.Contains(line, `level=WARN msg="replacing pinned map: layout changed, entries lost"`) ||
					!strings.Contains(line, ` lost="`+tt.lost)):
					t.Errorf("replacing %s logged %s; want a warning of entries lost naming %q", name, line, tt.lost)
				}
			}
			if len(lines) != len(replaced) {
				t.Errorf("%d maps replaced, want %v:\n%s", len(lines), replaced, log.String())
			}
		})
	}
}

// replacedLines are the log lines of maps replaced for their layout, by
// pin.
func replacedLines(log string) map[string]string {
	lines := map[string]string{}
	for line := range strings.Lines(log) {
		if !strings.Contains(line, `msg="replacing pinned map: layout changed`) {
			continue
		}
		_, pin, _ := strings.Cut(line, " pin=")
		pin, _, _ = strings.Cut(pin, " ")
		lines[pin] = strings.TrimSpace(line)
	}
	return lines
}

// TestEveryMapSaysWhatReplacingItLoses: each of the programs' maps is
// either lost when replaced (layoutLoss) or written afresh by the agent
// (rewritten), not both: a map added to ztdns.h and to neither would be
// logged at an upgrade as losing nothing, however much it held.
func TestEveryMapSaysWhatReplacingItLoses(t *testing.T) {
	spec, err := loadZtdns()
	if err != nil {
		t.Fatal(err)
	}
	for name := range spec.Maps {
		if strings.HasPrefix(name, ".") { // the programs' global data, never pinned
			continue
		}
		if lost, written := layoutLoss[name] != "", rewritten[name] != ""; lost == written {
			t.Errorf("map %s: in layoutLoss %v, in rewritten %v; want it in one of them", name, lost, written)
		}
	}
	for name := range layoutLoss {
		if spec.Maps[name] == nil {
			t.Errorf("layoutLoss names %s, no map of the programs", name)
		}
	}
	for name := range rewritten {
		if spec.Maps[name] == nil {
			t.Errorf("rewritten names %s, no map of the programs", name)
		}
	}
}
