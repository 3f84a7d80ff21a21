//go:build linux

package cni

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/control"
)

// handingOver is an agent that hands its socket over while a CNI call
// waits, and then answers the call 503 having done nothing of it, as an
// agent does whose hand-over outlasts a request (control.Unavailable).
type handingOver struct {
	*fakeAgent
	asked     chan struct{} // closed when the first call has come
	askedOnce sync.Once
	answer    chan struct{} // closed when it may answer
}

func (h *handingOver) handOver() error {
	h.askedOnce.Do(func() { close(h.asked) })
	<-h.answer
	return control.Unavailable(errors.New("this agent handed over to a new one: try the new one"))
}

func (h *handingOver) CNIAdd(req control.CNIAddRequest) (control.CNIAddResponse, error) {
	h.mu.Lock()
	h.adds = append(h.adds, req)
	h.mu.Unlock()
	return control.CNIAddResponse{}, h.handOver()
}

func (h *handingOver) CNIDel(req control.CNIDelRequest) error {
	h.mu.Lock()
	h.dels = append(h.dels, req)
	h.mu.Unlock()
	return h.handOver()
}

// serveAPI serves api on ln until the returned stop, or the test's end.
func serveAPI(tb testing.TB, ln net.Listener, api control.API) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- control.Serve(ctx, ln, control.NewHandler(api, nil)) }()
	stop = sync.OnceValue(func() error { cancel(); return <-done })
	tb.Cleanup(func() {
		if err := stop(); err != nil {
			tb.Errorf("serving the control socket: %v", err)
		}
	})
	return stop
}

// TestHandedOverCallSentAgain: the agent hands its control socket over to
// a successor while the plugin's ADD (or DEL) waits, and answers it 503,
// having done nothing of it. The plugin sends the call again, within its
// timeout, and the successor takes it: the ADD succeeds under "fail" and
// "allow" alike with the pod handed to the successor, and nothing is
// recorded for a replay. (Before: the plugin took the 503 for an agent
// away: under "fail" the ADD failed, under "allow" the pod started
// without DNS capture until the successor replayed its record.)
func TestHandedOverCallSentAgain(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ name, cmd, policy string }{
		{"ADD, fail", "ADD", PolicyFail},
		{"ADD, allow", "ADD", PolicyAllow},
		{"DEL", "DEL", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newPluginEnv(t)
			old := &handingOver{fakeAgent: &fakeAgent{}, asked: make(chan struct{}), answer: make(chan struct{})}
			letAnswer := sync.OnceFunc(func() { close(old.answer) })
			ln, err := control.Listen(e.socket, control.Access{})
			if err != nil {
				t.Fatal(err)
			}
			stopOld := serveAPI(t, ln, old)
			t.Cleanup(letAnswer) // before stopOld: the old agent's handler returns
			succ := &fakeAgent{release: make(chan struct{})}

			// The old agent answers 503 after its 2 s of waiting for what
			// it took: the plugin's timeout must outlast them.
			fields := map[string]any{"timeout": "20s"}
			if tt.policy != "" {
				fields["onAgentUnreachable"] = tt.policy
			}
			args := e.args(t, "1.0.0", fields)
			plugin := e.plugin()
			ran := make(chan error, 1)
			go func() {
				if tt.cmd == "ADD" {
					ran <- plugin.add(args)
				} else {
					ran <- plugin.del(args)
				}
			}()
			select {
			case <-old.asked:
			case err := <-ran:
				t.Fatalf("%s returned before the agent had its call: %v", tt.cmd, err)
			case <-time.After(time.Minute):
				t.Fatalf("the agent has not had the %s after a minute", tt.cmd)
			}

			// The hand-over, as the agents make it: the old one's listener
			// to the successor, which serves it once the old one stopped.
			f, err := control.ListenerFile(ln)
			if err != nil {
				t.Fatal(err)
			}
			control.KeepPathOnClose(ln)
			if err := stopOld(); err != nil {
				t.Errorf("the old agent: %v", err)
			}
			nl, err := net.FileListener(f)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			adopted, err := control.Adopt(e.socket, nl.(*net.UnixListener), control.Access{})
			if err != nil {
				nl.Close()
				t.Fatal(err)
			}
			serveAPI(t, adopted, succ)
			letAnswer() // 503

			if err := <-ran; err != nil {
				t.Fatalf("%s after the agent handed over: %v", tt.cmd, err)
			}
			oldAdds, oldDels := old.requests()
			adds, dels := succ.requests()
			pendingAdds, _ := PendingAdds(e.pending)
			pendingDels, _ := PendingDeletes(e.pending)
			if tt.cmd == "ADD" {
				requirePrevResult(t, "1.0.0", args.StdinData, e.stdout.Bytes())
				if len(oldAdds) != 1 || len(adds) != 1 || adds[0].ContainerID != args.ContainerID {
					t.Errorf("the old agent got %+v, the successor %+v; want the pod's ADD once each", oldAdds, adds)
				}
			} else if len(oldDels) != 1 || len(dels) != 1 || dels[0].ContainerID != args.ContainerID {
				t.Errorf("the old agent got %+v, the successor %+v; want the pod's DEL once each", oldDels, dels)
			}
			if len(pendingAdds) != 0 || len(pendingDels) != 0 {
				t.Errorf("recorded for a replay: ADDs %+v, DELs %+v; want nothing", pendingAdds, pendingDels)
			}
			if log := e.stderr.String(); strings.Contains(log, "unreachable") || strings.Contains(log, "could not take") {
				t.Errorf("the plugin took the agent for away:\n%s", log)
			}
		})
	}
}
