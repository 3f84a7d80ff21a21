package main

import (
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
}
