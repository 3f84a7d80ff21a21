package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// recordingAPI is an API that keeps the last request it was handed.
type recordingAPI struct {
	got any
}

func (a *recordingAPI) Status() Status { a.got = "status"; return Status{} }
func (a *recordingAPI) Table(_ context.Context, ns string) (iter.Seq[TableRow], error) {
	a.got = "table " + ns
	return slices.Values([]TableRow(nil)), nil
}
func (a *recordingAPI) Pods() ([]PodRow, error)           { a.got = "pods"; return nil, nil }
func (a *recordingAPI) CaptureDel(r CaptureRequest) error { a.got = r; return nil }
func (a *recordingAPI) CNIDel(r CNIDelRequest) error      { a.got = r; return nil }
func (a *recordingAPI) CaptureAdd(r CaptureRequest) (PodRow, error) {
	a.got = r
	return PodRow{}, nil
}
func (a *recordingAPI) CNIAdd(r CNIAddRequest) (CNIAddResponse, error) {
	a.got = r
	return CNIAddResponse{}, nil
}
func (a *recordingAPI) SetAccessLog(r AccessLogRequest) (AccessLog, error) {
	a.got = r
	return AccessLog{}, nil
}

// FuzzRequest sends arbitrary bodies (and table queries) to every route of
// the real handler, as root, and checks that the agent only ever sees
// requests that validate and survive a round trip, and that everything
// else is answered 400 or 413 without reaching it.
func FuzzRequest(f *testing.F) {
	add := CNIAddRequest{ContainerID: "c0ffee", Netns: "/var/run/netns/cni-1", IfName: "eth0", PodNamespace: "shop",
		PodName: "web-0", PodUID: "6f1c", IPs: []netip.Addr{netip.MustParseAddr("10.88.0.5"), netip.MustParseAddr("2001:db8::5")}, NetnsCookie: 4099}
	for i, v := range []any{
		add,
		CNIDelRequest{ContainerID: "c0ffee"},
		CaptureRequest{Netns: "/run/netns/pod1", Namespace: "default", Name: "pod1"},
		AccessLogRequest{On: true, Sample: 10},
	} {
		b, _ := json.Marshal(v)
		f.Add(uint8(i+3), b)
	}
	f.Add(uint8(1), []byte("shop"))
	f.Add(uint8(5), []byte(`{"ContainerID":"a","Netns":"/x","PodNamespace":"n","PodName":"p","NetnsCookie":1,"IPs":["1.2.3.4","::1"]}`))
	f.Add(uint8(5), []byte(`{"ContainerID":"a"} {"ContainerID":"b"}`))
	f.Add(uint8(3), []byte(`{"netns":"relative"}`))
	f.Add(uint8(7), []byte(`{"on":true,"sample":-1}`))
	f.Add(uint8(5), bytes.Repeat([]byte(" "), MaxRequestBytes+1))
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		route := Routes[int(which)%len(Routes)]
		api := &recordingAPI{}
		h := NewHandler(api, slog.New(slog.DiscardHandler))
		target := route.Path
		var reqBody *bytes.Reader
		if route.Method == http.MethodGet {
			target += "?namespace=" + url.QueryEscape(string(body))
			reqBody = bytes.NewReader(nil)
		} else {
			reqBody = bytes.NewReader(body)
		}
		root := &peerConn{peer: Peer{UID: 0}}
		r := httptest.NewRequestWithContext(context.WithValue(context.Background(), connKey{}, root), route.Method, target, reqBody)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		switch w.Code {
		case http.StatusOK:
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			if api.got != nil {
				t.Fatalf("%s answered %d, yet the agent was handed %+v", route.Name, w.Code, api.got)
			}
			if route.Method != http.MethodGet && len(body) > MaxRequestBytes && w.Code != http.StatusRequestEntityTooLarge {
				t.Fatalf("%s: a body of %d bytes answered %d, want 413", route.Name, len(body), w.Code)
			}
			return
		default:
			t.Fatalf("%s answered %d: %s", route.Name, w.Code, w.Body)
		}
		if api.got == nil {
			t.Fatalf("%s answered 200 without asking the agent", route.Name)
		}
		switch got := api.got.(type) {
		case CNIAddRequest:
			requireValidRoundTrip(t, &got)
			if len(got.IPs) > MaxPodIPs || got.NetnsCookie == 0 || got.PodNamespace == "" || got.PodName == "" {
				t.Fatalf("the agent was handed %+v", got)
			}
		case CNIDelRequest:
			requireValidRoundTrip(t, &got)
		case CaptureRequest:
			requireValidRoundTrip(t, &got)
			if !strings.HasPrefix(got.Netns, "/") {
				t.Fatalf("the agent was handed a relative netns %q", got.Netns)
			}
		case AccessLogRequest:
			requireValidRoundTrip(t, &got)
			if got.Sample < 0 || got.Sample > MaxAccessLogSample {
				t.Fatalf("the agent was handed a sample rate of %d", got.Sample)
			}
		}
	})
}

// requireValidRoundTrip checks that v validates, and that encoding and
// parsing it again gives the same request.
func requireValidRoundTrip[T any, PT validator[T]](t *testing.T, v PT) {
	t.Helper()
	if err := v.Validate(); err != nil {
		t.Fatalf("the agent was handed an invalid request %+v: %v", *v, err)
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	again, err := parseRequest[T, PT](b)
	if err != nil {
		t.Fatalf("%s does not parse again: %v", b, err)
	}
	if !reflect.DeepEqual(again, *v) {
		t.Fatalf("round trip changed the request:\n%+v\n%+v", *v, again)
	}
}

// TestParseAddKeepsPodAddrs: what is no pod's own address (loopback,
// link-local, multicast, unspecified), which an older plugin may list, is
// dropped, not refused; an IPv4-mapped address is its IPv4 address.
func TestParseAddKeepsPodAddrs(t *testing.T) {
	req, err := parseRequest[CNIAddRequest]([]byte(`{"ContainerID":"a","Netns":"/n","PodNamespace":"ns","PodName":"p","NetnsCookie":1,` +
		`"IPs":["203.0.113.5","127.0.0.1","::1","fe80::1","169.254.1.1","224.0.0.1","0.0.0.0","::ffff:203.0.113.5","2001:db8::5"]}`))
	want := []netip.Addr{netip.MustParseAddr("203.0.113.5"), netip.MustParseAddr("2001:db8::5")}
	if err != nil || !slices.Equal(req.IPs, want) {
		t.Errorf("parse = %v, %v; want IPs %v", req.IPs, err, want)
	}
}

func TestParseRequestErrors(t *testing.T) {
	for _, tc := range []struct {
		name, body, want string
	}{
		{"two values", `{"ContainerID":"a"} {}`, "more than one JSON value"},
		{"no cookie", `{"ContainerID":"a","Netns":"/n","PodNamespace":"ns","PodName":"p"}`, "no network namespace cookie"},
		{"too many IPs", `{"ContainerID":"a","Netns":"/n","PodNamespace":"ns","PodName":"p","NetnsCookie":1,"IPs":[` +
			strings.TrimSuffix(strings.Repeat(`"10.0.0.1",`, MaxPodIPs+1), ",") + `]}`, "17 IPs, more than 16"},
		{"namespace not a label", `{"ContainerID":"a","Netns":"/n","PodNamespace":"Shop.x","PodName":"p","NetnsCookie":1}`, `namespace "Shop.x"`},
		{"relative netns", `{"ContainerID":"a","Netns":"n","PodNamespace":"ns","PodName":"p","NetnsCookie":1}`, "not an absolute path"},
		{"container ID with a slash", `{"ContainerID":"../a","Netns":"/n","PodNamespace":"ns","PodName":"p","NetnsCookie":1}`, "invalid characters"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseRequest[CNIAddRequest]([]byte(tc.body))
			if err == nil || !strings.Contains(err.Error(), tc.want) || StatusOf(err) != http.StatusBadRequest {
				t.Fatalf("parse = %v (status %d), want a 400 containing %q", err, StatusOf(err), tc.want)
			}
		})
	}
	_, err := decodeRequest[CNIAddRequest](bytes.NewReader(make([]byte, MaxRequestBytes+1)))
	if StatusOf(err) != http.StatusRequestEntityTooLarge {
		t.Errorf("a body over the bound: %v (status %d), want 413", err, StatusOf(err))
	}
	if code := StatusOf(fmt.Errorf("wrapped: %w", Refused(errors.New("x")))); code != http.StatusForbidden {
		t.Errorf("a wrapped Refused error answers %d, want 403", code)
	}
}
