package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/ztdns/ztdns/pkg/control"
)

// TestStatusShowsCaptureNameservers: `ztdns status` names the nameservers
// capture is limited to, and says nothing of a list when there is none
// (every destination is captured).
func TestStatusShowsCaptureNameservers(t *testing.T) {
	var limited, all strings.Builder
	statusTable(&limited, control.Status{Capture: true, CaptureNameservers: []string{"10.96.0.10/32", "fd00:10:96::a/128"}}, false)
	statusTable(&all, control.Status{Capture: true}, false)
	if want := "Capture only:\t10.96.0.10/32, fd00:10:96::a/128\n"; !strings.Contains(limited.String(), want) {
		t.Errorf("status lacks %q:\n%s", want, limited.String())
	}
	if strings.Contains(all.String(), "Capture only") {
		t.Errorf("status with no list shows one:\n%s", all.String())
	}
}

// TestStatusShowsFailingOpen: `ztdns status` warns while capture fails
// open, its pods' queries going around ztdns, and says nothing of it
// otherwise.
func TestStatusShowsFailingOpen(t *testing.T) {
	var open, beating strings.Builder
	statusTable(&open, control.Status{Ready: true, Capture: true, FailingOpen: true}, false)
	statusTable(&beating, control.Status{Ready: true, Capture: true}, false)
	if want := "Failing open:\tyes: the agent's heartbeat is stale; captured pods' queries go to their own nameservers, around ztdns\n"; !strings.Contains(open.String(), want) {
		t.Errorf("status lacks %q:\n%s", want, open.String())
	}
	if strings.Contains(beating.String(), "Failing open") {
		t.Errorf("status of an agent that beats warns of failing open:\n%s", beating.String())
	}
	var stalled strings.Builder
	why := "the resolver has read no query waiting on udp 169.254.20.53:10053 for 4s: the agent holds its heartbeat back until it reads again"
	statusTable(&stalled, control.Status{Ready: true, Capture: true, FailingOpen: true, ResolverStalled: why}, false)
	if want := "Failing open:\tyes: " + why + "; captured pods' queries go to their own nameservers, around ztdns\n"; !strings.Contains(stalled.String(), want) {
		t.Errorf("status lacks %q:\n%s", want, stalled.String())
	}
}

// TestStatusShowsSourceFailing: `ztdns status` of a ready agent whose
// source fails says it is ready and serves its last table, and why.
func TestStatusShowsSourceFailing(t *testing.T) {
	var failing, fine strings.Builder
	why := "serving the last table; the source is failing: watch of services failing since 2026-12-05T21:16:56Z: connection refused"
	statusTable(&failing, control.Status{Ready: true, SourceFailing: why}, false)
	statusTable(&fine, control.Status{Ready: true}, false)
	if want := "Ready:\tyes, " + why + "\n"; !strings.Contains(failing.String(), want) {
		t.Errorf("status lacks %q:\n%s", want, failing.String())
	}
	if want := "Ready:\tyes\n"; !strings.Contains(fine.String(), want) {
		t.Errorf("status lacks %q:\n%s", want, fine.String())
	}
}

// TestStatusShowsCaptureBroken: `ztdns status` lists what the agent found
// undone in capture and could not put back, a line each, and says nothing
// of it when capture is whole.
func TestStatusShowsCaptureBroken(t *testing.T) {
	var broken, whole strings.Builder
	problems := []string{
		"ztdns_connect4: link 7 is detached from cgroup /sys/fs/cgroup: pods' queries are not captured; re-attaching failed: boom",
		"map pods: pin /sys/fs/bpf/ztdns/pods holds map 9, not this agent's map 4",
	}
	statusTable(&broken, control.Status{Ready: true, Capture: true, CaptureProblems: problems}, false)
	statusTable(&whole, control.Status{Ready: true, Capture: true}, false)
	if want := "Capture broken:\t" + problems[0] + "\n\t" + problems[1] + "\n"; !strings.Contains(broken.String(), want) {
		t.Errorf("status lacks %q:\n%s", want, broken.String())
	}
	if strings.Contains(whole.String(), "Capture broken") {
		t.Errorf("status of a whole capture says it is broken:\n%s", whole.String())
	}
}

// TestPodsTableShowsNameserverSlots: `ztdns pods` names each learned
// nameserver's slot (-o wide: and how long it has been idle), so a pod
// that learned slot 1 alone does not read as one with slot 0, and says
// which slots are unconfirmed, so an operator sees why one idle for 2 s
// went to another destination.
func TestPodsTableShowsNameserverSlots(t *testing.T) {
	rows := []control.PodRow{{Namespace: "shop", Name: "web", Nameservers: []control.PodNameserver{
		{Slot: 1, Address: "10.96.0.10:53", Idle: "4.2s"},
		{Slot: 2, Address: "10.0.3.7:53", Idle: "1.5s", Unconfirmed: true},
	}}}
	for _, tc := range []struct{ format, want string }{
		{"", "10.96.0.10:53 (slot 1), 10.0.3.7:53 (slot 2, unconfirmed)"},
		{"wide", "10.96.0.10:53 (slot 1, idle 4.2s), 10.0.3.7:53 (slot 2, idle 1.5s, unconfirmed)"},
	} {
		var out strings.Builder
		if err := printList(&out, tc.format, rows, podColumns); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), tc.want) {
			t.Errorf("ztdns pods -o %q lacks %q:\n%s", tc.format, tc.want, out.String())
		}
	}
}

// TestTablesEscapeWhatTheyCannotShow: whatever the agent reports (a
// source error naming a file, a pod's name, a netns path), `ztdns status`
// and the lists print it on its own line and in its own column, with
// control characters, tabs, line breaks and octets that are not UTF-8
// escaped: no ESC reaches the terminal.
func TestTablesEscapeWhatTheyCannotShow(t *testing.T) {
	var status strings.Builder
	statusTable(&status, control.Status{Ready: true, SourceErrors: []string{
		"/etc/ztdns/a\x1b[2K\nReady:\tyes.yaml:3: bad",
		"/etc/ztdns/b.yaml: \xff\u202e",
	}}, false)
	if want := "Source errors:\t/etc/ztdns/a\\x1b[2K\\nReady:\\tyes.yaml:3: bad\n\t/etc/ztdns/b.yaml: \\xff\\u202e\n"; !strings.HasSuffix(status.String(), want) {
		t.Errorf("status does not end with %q:\n%q", want, status.String())
	}
	if strings.Count(status.String(), "Ready:") != 2 || !strings.HasPrefix(status.String(), "Ready:\tyes\n") {
		t.Errorf("status has more than its own Ready line:\n%s", status.String())
	}

	var pods strings.Builder
	rows := []control.PodRow{{Namespace: "shop", Name: "web\x1b]0;owned\a\tx\n", NetnsPath: "/run/netns/\xfe"}}
	if err := printList(&pods, "wide", rows, podColumns); err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(pods.String(), "\x1b\a\t\xfe") || strings.Count(pods.String(), "\n") != 2 {
		t.Errorf("ztdns pods -o wide prints raw control characters or more than 2 lines:\n%q", pods.String())
	}
	for _, want := range []string{`web\x1b]0;owned\a\tx\n`, `/run/netns/\xfe`} {
		if !strings.Contains(pods.String(), want) {
			t.Errorf("ztdns pods -o wide lacks %q:\n%s", want, pods.String())
		}
	}
}

// TestStatusShowsHostsWithoutVIP: `ztdns status` counts the ServiceEntry
// hosts that should have a VIP and have none, by reason in a fixed order,
// and says nothing of them when every one has its VIP.
func TestStatusShowsHostsWithoutVIP(t *testing.T) {
	var missing, fine strings.Builder
	statusTable(&missing, control.Status{Ready: true, VIPs: "auto: istiod's status.addresses",
		HostsWithoutVIP: map[string]int{"istiod_no_ipv4": 7, "istiod_pending": 3}}, false)
	statusTable(&fine, control.Status{Ready: true, VIPs: "auto: istiod's status.addresses"}, false)
	if want := "Hosts without VIP:\t3 istiod_pending, 7 istiod_no_ipv4 (ztdns table -n NS lists them, forwarded, with why)\n"; !strings.Contains(missing.String(), want) {
		t.Errorf("status lacks %q:\n%s", want, missing.String())
	}
	if strings.Contains(fine.String(), "without VIP") {
		t.Errorf("status with every VIP says some are missing:\n%s", fine.String())
	}
}

// TestStatusShowsDefaultExportTo: `ztdns status` says what exportTo a
// ServiceEntry without one gets, and where it comes from.
func TestStatusShowsDefaultExportTo(t *testing.T) {
	var b strings.Builder
	statusTable(&b, control.Status{Ready: true, DefaultExportTo: `"." (mesh config istio-system/istio)`}, false)
	if want := "ExportTo:\tdefault \".\" (mesh config istio-system/istio)\n"; !strings.Contains(b.String(), want) {
		t.Errorf("status lacks %q:\n%s", want, b.String())
	}
}

// TestStatusListsSourceWarnings: what the source serves other than as
// written (a manifest's misspelt field) is listed after its errors, a
// line each, escaped as they are.
func TestStatusListsSourceWarnings(t *testing.T) {
	var status strings.Builder
	statusTable(&status, control.Status{Ready: true,
		SourceErrors: []string{"/etc/ztdns/a.yaml:3: bad"},
		SourceWarnings: []string{
			`/etc/ztdns/c.yaml:7: serviceentry shop/db: unknown field "spec.adresses" ignored: the object is served without it`,
			"/etc/ztdns/d\x1b.yaml:2: x",
		}}, false)
	want := "Source errors:\t/etc/ztdns/a.yaml:3: bad\n" +
		"Source warnings:\t/etc/ztdns/c.yaml:7: serviceentry shop/db: unknown field \"spec.adresses\" ignored: the object is served without it\n" +
		"\t/etc/ztdns/d\\x1b.yaml:2: x\n"
	if !strings.Contains(status.String(), want) {
		t.Errorf("status lacks\n%s\ngot:\n%s", want, status.String())
	}
}

// TestStatusShowsUpstreamsAsked: `ztdns status` calls --upstream the
// fallback, and lists the nameservers asked recently with their outcomes
// in a fixed order, five of them without -o wide; with none asked, it
// says so.
func TestStatusShowsUpstreamsAsked(t *testing.T) {
	var asked []control.AskedUpstream
	for i := range 6 {
		asked = append(asked, control.AskedUpstream{Address: fmt.Sprintf("10.96.0.%d:53", 10+i), Idle: "1.5s",
			Results: map[string]uint64{"timeout": 2, "ok": 7, "source_limited": 1}})
	}
	st := control.Status{Ready: true, FallbackUpstreams: []string{"10.0.0.2:53"}, AskedUpstreams: asked}
	var short, wide, none strings.Builder
	statusTable(&short, st, false)
	statusTable(&wide, st, true)
	statusTable(&none, control.Status{Ready: true, FallbackUpstreams: []string{"10.0.0.2:53"}}, false)
	fallback := "Fallback upstreams:\t10.0.0.2:53 (for clients whose own nameserver is not known; a captured pod's misses go to the nameserver it asked)\n"
	first := "Upstreams asked:\t10.96.0.10:53: 7 ok, 2 timeout, 1 source_limited (last 1.5s ago)\n"
	for _, tc := range []struct {
		what, out string
		want      []string
		not       string
	}{
		{"status", short.String(), []string{fallback, first + "\t10.96.0.11:53: ", "\t10.96.0.14:53: 7 ok, 2 timeout, 1 source_limited (last 1.5s ago)\n\t... and 1 more (-o wide shows them)\n"}, "10.96.0.15"},
		{"status -o wide", wide.String(), []string{fallback, first, "\t10.96.0.15:53: 7 ok, 2 timeout, 1 source_limited (last 1.5s ago)\n"}, "more"},
		{"status with none asked", none.String(), []string{fallback, "Upstreams asked:\tnone in the last 10 minutes\n"}, "ago"},
	} {
		for _, want := range tc.want {
			if !strings.Contains(tc.out, want) {
				t.Errorf("%s lacks %q:\n%s", tc.what, want, tc.out)
			}
		}
		if strings.Contains(tc.out, tc.not) {
			t.Errorf("%s has %q:\n%s", tc.what, tc.not, tc.out)
		}
	}
}
