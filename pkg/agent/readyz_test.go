package agent

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/source/kube"
)

// TestReadyzSaysWhyNoTable: an agent whose source never delivers (RBAC
// refuses a resource, say) says in /readyz and in status what its source
// reports, on one line. (Before: only "waiting for the first full sync of
// the source", whatever the cause.)
func TestReadyzSaysWhyNoTable(t *testing.T) {
	dir, socket, listen, up := handoffSetup(t)
	metrics := testenv.FreePort(t).String()
	src := neverSyncs(dir)
	runTestAgent(t, dir, socket, listen, up, metrics, func(c *Config) { c.Source = src })
	<-src.started
	wantWhy := func(where, got string) error {
		for _, want := range []string{"waiting for the first full sync of the source", "serviceentries.networking.istio.io is forbidden"} {
			if !strings.Contains(got, want) {
				return fmt.Errorf("%s %q lacks %q", where, got, want)
			}
		}
		if strings.Contains(strings.TrimSuffix(got, "\n"), "\n") {
			return fmt.Errorf("%s %q spans lines", where, got)
		}
		return nil
	}
	testenv.EventuallyNil(t, 10*time.Second, func() error {
		c := &http.Client{Timeout: 5 * time.Second}
		resp, err := c.Get("http://" + metrics + "/readyz")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusServiceUnavailable {
			return fmt.Errorf("/readyz: %d %q, want %d", resp.StatusCode, body, http.StatusServiceUnavailable)
		}
		return wantWhy("/readyz", string(body))
	})
	// The metrics listener can answer before the control socket listens.
	testenv.EventuallyNil(t, 10*time.Second, func() error {
		st, err := control.NewClient(socket, time.Second).Status(context.Background())
		if err != nil {
			return err
		}
		return wantWhy("status's notReady", st.NotReady)
	})
}

// TestReadyzStaysReadyWhileTheSourceFails stops the API server under an
// agent that serves its first table: /readyz stays 200, its body, on one
// line, says the agent serves its last table because the source fails,
// and so does `ztdns status` (Ready: yes, and why). Once synced, the
// agent serves stale names rather than none, as CoreDNS's ready plugin
// and NodeLocal DNSCache stay ready. (Before: 503 from the first failed
// call, so an API server's restart turned every node's agent NotReady
// within seconds, for up to a minute.)
func TestReadyzStaysReadyWhileTheSourceFails(t *testing.T) {
	env := kubetest.Start(t)
	dir, socket, listen, up := handoffSetup(t)
	metrics := testenv.FreePort(t).String()
	runTestAgent(t, dir, socket, listen, up, metrics, func(c *Config) {
		c.Source = kube.New(env.Config, kube.WithNodeName("node-a"))
	})
	readyz := func() (int, string, error) {
		c := &http.Client{Timeout: 5 * time.Second}
		resp, err := c.Get("http://" + metrics + "/readyz")
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), err
	}
	testenv.EventuallyNil(t, 30*time.Second, func() error {
		code, body, err := readyz()
		if err != nil {
			return err
		}
		if code != http.StatusOK || body != "ok\n" {
			return fmt.Errorf("/readyz: %d %q, want %d \"ok\"", code, body, http.StatusOK)
		}
		return nil
	})

	env.Stop()
	const failing = "serving the last table; the source is failing: "
	var code int
	var body string
	testenv.EventuallyNil(t, time.Minute, func() error {
		var err error
		if code, body, err = readyz(); err != nil {
			return err
		}
		if !strings.Contains(body, failing) {
			return fmt.Errorf("/readyz %d %q does not say the source is failing yet", code, body)
		}
		return nil
	})
	if code != http.StatusOK {
		t.Errorf("/readyz with the API server down: %d %q, want %d", code, body, http.StatusOK)
	}
	if strings.Contains(strings.TrimSuffix(body, "\n"), "\n") {
		t.Errorf("/readyz %q spans lines", body)
	}
	st, err := control.NewClient(socket, time.Second).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !st.Ready || !strings.Contains(st.SourceFailing, failing) || st.NotReady != "" {
		t.Errorf("status: ready %v, sourceFailing %q, notReady %q; want ready, and the source failing", st.Ready, st.SourceFailing, st.NotReady)
	}
}
