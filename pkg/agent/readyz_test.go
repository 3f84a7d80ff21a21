package agent

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/control"
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
