//go:build linux

package cnie2e

import (
	"context"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/version"
)

// pluginExec runs plugins as libcni's default executor does, but retries
// "text file busy" with a fresh process. These tests install the ztdns
// binary (cni.Install writes it) while parallel tests fork: a child forked
// between the write and the close holds the file open for writing until it
// execs, and an exec of the binary in that window fails with ETXTBSY. libcni
// retries that itself, but with the same exec.Cmd, which then fails with
// "exec: already started" instead of running the plugin.
var pluginExec invoke.Exec = &retryExec{Exec: &invoke.DefaultExec{
	RawExec:       &invoke.RawExec{},
	PluginDecoder: version.PluginDecoder{},
}}

type retryExec struct{ invoke.Exec }

func (e *retryExec) ExecPlugin(ctx context.Context, path string, stdin []byte, environ []string) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		out, err := e.Exec.ExecPlugin(ctx, path, stdin, environ)
		if err == nil || attempt == 5 || !textFileBusy(err) {
			return out, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// textFileBusy reports libcni's errors for ETXTBSY: the first run's, or the
// one its own retry gives.
func textFileBusy(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "text file busy") || strings.Contains(msg, "exec: already started")
}
