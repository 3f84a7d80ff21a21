//go:build linux

package control_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/control"
)

// TestHandedOverListener: an agent hands its control listener to the agent
// that takes over (ListenerFile) and stops serving it without removing the
// path (KeepPathOnClose). A call made between the two waits at the path,
// and the new agent, serving the listener it was handed (Adopt), answers
// it; stopped for good, the new agent removes the path, as one that bound
// it does. (A call never finds the path missing.)
func TestHandedOverListener(t *testing.T) {
	testenv.RequireRoot(t)
	dir := testenv.MkdirTemp(t, "ztctl-")
	socket := filepath.Join(dir, "run", "ztdns.sock")
	access := control.Access{Logger: slog.New(slog.DiscardHandler)}
	old, err := control.Listen(socket, access)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stopOld := context.WithCancel(context.Background())
	oldDone := make(chan error, 1)
	go func() { oldDone <- control.Serve(ctx, old, control.NewHandler(&recorder{}, access.Logger)) }()
	t.Cleanup(func() { stopOld(); <-oldDone })
	c := control.NewClient(socket, time.Minute)
	if _, err := c.Status(context.Background()); err != nil {
		t.Fatal(err)
	}

	f, err := control.ListenerFile(old)
	if err != nil {
		t.Fatal(err)
	}
	control.KeepPathOnClose(old)
	stopOld()
	if err := <-oldDone; err != nil {
		t.Fatalf("the old server: %v", err)
	}
	oldDone <- nil
	if _, err := os.Stat(socket); err != nil {
		t.Fatalf("the path after the old server stopped: %v", err)
	}
	// A call made now waits for whoever serves the socket next.
	answered := make(chan error, 1)
	go func() { _, err := c.Status(context.Background()); answered <- err }()

	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	adopted, err := control.Adopt(socket, ln.(*net.UnixListener), access)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	api := &recorder{}
	ctx2, stopNew := context.WithCancel(context.Background())
	newDone := make(chan error, 1)
	go func() { newDone <- control.Serve(ctx2, adopted, control.NewHandler(api, access.Logger)) }()
	t.Cleanup(func() { stopNew(); <-newDone })
	if err := <-answered; err != nil {
		t.Errorf("the call made between the two servers: %v", err)
	}
	if got := api.seen(); len(got) != 1 || got[0] != "status" {
		t.Errorf("the new server was asked %q, want the status", got)
	}
	stopNew()
	if err := <-newDone; err != nil {
		t.Fatalf("the new server: %v", err)
	}
	newDone <- nil
	if _, err := os.Stat(socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the path after the new server stopped: %v, want it removed", err)
	}
}

// TestAdoptRefusesAnotherPath: a listener bound elsewhere than the control
// socket's path is not served as the control socket.
func TestAdoptRefusesAnotherPath(t *testing.T) {
	testenv.RequireRoot(t)
	dir := testenv.MkdirTemp(t, "ztctl-")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "other.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := control.Adopt(filepath.Join(dir, "run", "ztdns.sock"), ln, control.Access{}); err == nil || !strings.Contains(err.Error(), "other.sock") {
		t.Errorf("Adopt of a listener at another path = %v, want it refused", err)
	}
}
