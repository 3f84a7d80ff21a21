//go:build linux

package cnie2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/ambient"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/netns"
)

// vaultNS holds a ServiceEntry exported to itself only: the name a forged
// ADD once let another namespace's pod resolve.
const vaultNS = "vault"

var vaultManifests = map[string]string{
	"vault.yaml": namespaceManifest(vaultNS, false) + `---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: secret, namespace: vault}
spec:
  hosts: [secret.internal]
  addresses: [198.51.100.66]
  exportTo: ["."]
  ports: [{name: http, number: 80, protocol: HTTP}]
`,
}

// TestForgedAddsRefused sends, as root over the real socket, CNI ADDs that
// do not match the network namespace they name, and `capture add|del` of a
// pod the runtime owns: the agent refuses each with a 403 and the pod keeps
// its namespace's view. (The identity rule is in pkg/agent/verify.go.)
func TestForgedAddsRefused(t *testing.T) {
	t.Parallel()
	n := newCapturingNode(t, NodeOptions{Manifests: vaultManifests})
	n.startAgent(t)
	victim, victimIPs := n.addPod(t, ambientNS, "victim")
	other, otherIPs := n.addPod(t, ambientNS, "other")
	rowBefore := n.requireRow(t, victim, victimIPs, true, ambient.ReasonAmbient)

	c := control.NewClient(n.Socket, 10*time.Second)
	ctx := context.Background()
	nodeCookie, err := netns.Cookie(n.Node.Path())
	if err != nil {
		t.Fatal(err)
	}
	forged := func(change func(*control.CNIAddRequest)) control.CNIAddRequest {
		req := control.CNIAddRequest{ContainerID: containerID(t), Netns: victim.Path(), IfName: "eth0",
			PodNamespace: ambientNS, PodName: "forged", IPs: victimIPs, NetnsCookie: cookieOf(t, victim)}
		change(&req)
		return req
	}
	for _, tc := range []struct {
		name string
		call func() error
		want string
	}{
		{"the victim's netns under another namespace", func() error {
			_, err := c.CNIAdd(ctx, forged(func(r *control.CNIAddRequest) { r.PodNamespace, r.PodName = vaultNS, "victim" }))
			return err
		}, "is pod shop/victim's network namespace: an ADD cannot give it to vault/victim"},
		{"another netns's cookie", func() error {
			_, err := c.CNIAdd(ctx, forged(func(r *control.CNIAddRequest) { r.NetnsCookie = cookieOf(t, other) }))
			return err
		}, fmt.Sprintf("the ADD says the cookie of %s is %d, but it is %d", victim.Path(), cookieOf(t, other), cookieOf(t, victim))},
		{"another pod's IPs", func() error {
			_, err := c.CNIAdd(ctx, forged(func(r *control.CNIAddRequest) { r.IPs = otherIPs }))
			return err
		}, "is not an address of " + victim.Path()},
		{"the node's own netns", func() error {
			_, err := c.CNIAdd(ctx, forged(func(r *control.CNIAddRequest) { r.Netns, r.NetnsCookie, r.IPs = n.Node.Path(), nodeCookie, nil }))
			return err
		}, "is the node's own network namespace"},
		{"capture add of the runtime's pod", func() error {
			_, err := c.CaptureAdd(ctx, control.CaptureRequest{Netns: victim.Path(), Namespace: vaultNS, Name: "victim"})
			return err
		}, "recorded by the container runtime: capture add is for namespaces no runtime manages"},
		{"capture del of the runtime's pod", func() error {
			return c.CaptureDel(ctx, control.CaptureRequest{Netns: victim.Path()})
		}, "recorded by the container runtime: its CNI DEL releases it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			var ce *control.Error
			if !errors.As(err, &ce) || ce.Code != 403 || !strings.Contains(ce.Message, tc.want) {
				t.Fatalf("%v, want a 403 containing %q", err, tc.want)
			}
		})
	}

	// The victim is as it was, still captured, and sees what its namespace
	// sees: not vault's private name.
	if row := n.requireRow(t, victim, victimIPs, true, ambient.ReasonAmbient); fmt.Sprint(row) != fmt.Sprint(rowBefore) {
		t.Errorf("the victim's row changed from %+v to %+v", rowBefore, row)
	}
	n.requireCaptured(t, victim)
	if got, err := n.resolve(t, victim, digUDP, "secret.internal"); err != nil || !slices.Equal(got, []netip.Addr{ownMarker4}) {
		t.Errorf("secret.internal from the victim = %v, %v; want it forwarded to its own nameserver (%s)", got, err, ownMarker4)
	}
	// The name exists, for vault: the check above proves something.
	rows, err := c.Table(ctx, vaultNS)
	if err != nil || !slices.ContainsFunc(rows, func(r control.TableRow) bool { return r.Name == "secret.internal." || r.Name == "secret.internal" }) {
		t.Errorf("vault's table lacks secret.internal: %v %+v", err, rows)
	}
}

// TestUnwritableStateDir: the record of captured pods lives on a read-only
// file system. ADDs succeed and capture all the same; the failure is
// logged, counted and shown by `ztdns status`; once the file system is
// writable the record is written without any new event.
func TestUnwritableStateDir(t *testing.T) {
	t.Parallel()
	n := newCapturingNode(t, NodeOptions{})
	n.stateDir = readOnlyTmpfs(t, filepath.Join(n.Dir, "state-ro"))
	const metrics = "127.0.0.1:15053" // the node namespace's own loopback
	a := testenv.StartAgent(t, n.Node, n.bin, append(n.agentArgs(), "--metrics", metrics)...)
	a.WaitReady(t, n.Socket, 30*time.Second)

	p, ips := n.addPod(t, ambientNS, "web-0")
	n.requireRow(t, p, ips, true, ambient.ReasonAmbient)
	n.requireCaptured(t, p)

	body := n.Node.HTTPGet(t, "http://"+metrics+"/metrics")
	if v := metricValue(body, "ztdns_state_write_failures_total"); v < 1 {
		t.Errorf("ztdns_state_write_failures_total = %v, want at least 1", v)
	}
	c := control.NewClient(n.Socket, 10*time.Second)
	if st, err := c.Status(context.Background()); err != nil || !strings.Contains(st.StateUnsaved, "read-only file system") {
		t.Errorf("status: %+v, %v; want the unsaved record reported", st, err)
	}
	if !a.LogContains("cannot write the record of captured pods") {
		t.Errorf("the failure is not logged:\n%s", a.Log())
	}

	run(t, "mount", "-o", "remount,rw", n.stateDir)
	deadline := time.Now().Add(15 * time.Second)
	for {
		if b, err := os.ReadFile(filepath.Join(n.stateDir, "attachments.json")); err == nil && strings.Contains(string(b), p.ContainerID) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the record was not written within 15 s of the file system turning writable:\n%s", a.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st, err := c.Status(context.Background()); err != nil || st.StateUnsaved != "" {
		t.Errorf("status after the retry: %+v, %v; want nothing unsaved", st, err)
	}
}

// readOnlyTmpfs mounts an empty read-only tmpfs at dir, unmounted at
// cleanup.
func readOnlyTmpfs(t *testing.T, dir string) string {
	t.Helper()
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	testenv.RecordMount(t, dir)
	run(t, "mount", "-t", "tmpfs", "-o", "ro,size=1m,mode=0700", "ztdns-test-state", dir)
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("cleanup: umount %s: %v\n%s", dir, err, out)
		}
	})
	return dir
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// metricValue returns the sum of a metric's samples in a Prometheus text
// exposition, or -1 when it has none.
func metricValue(body, name string) float64 {
	sum, found := 0.0, false
	for _, line := range strings.Split(body, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(rest[strings.LastIndexByte(rest, ' ')+1:], &v); err == nil {
			sum, found = sum+v, true
		}
	}
	if !found {
		return -1
	}
	return sum
}
