package testenv

import (
	"io"
	"net/http"
	"testing"
	"time"
)

// Metrics fetches the /metrics page served on addr (host:port) and returns
// its text; the test fails on any error or a status other than 200.
func Metrics(tb testing.TB, addr string) string {
	tb.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	url := "http://" + addr + "/metrics"
	resp, err := c.Get(url)
	if err != nil {
		tb.Fatalf("testenv: GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		tb.Fatalf("testenv: GET %s: %s %v\n%s", url, resp.Status, err, body)
	}
	return string(body)
}
