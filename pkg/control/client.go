package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// ErrUnreachable wraps the errors of a call no agent answered: no socket,
// nobody listening, a connection refused or cut, or no reply in time.
var ErrUnreachable = errors.New("agent not reachable")

// Error is an agent's answer with an error status: its verdict on the
// request.
type Error struct {
	// Code is the HTTP status: 400 for an invalid request, 403 for one the
	// agent refuses (a caller that may not, claims that do not match the
	// network namespace), 413 for one too large, 500 when the agent failed,
	// 503 when it handed over to a successor while the request waited,
	// having done nothing of it (sent again, it reaches the successor).
	Code    int
	Message string
}

func (e *Error) Error() string { return e.Message }

// Client talks to an agent's control socket.
type Client struct {
	http *http.Client
}

// NewClient returns a client for the socket at path. Every call is bounded
// by timeout.
func NewClient(path string, timeout time.Duration) *Client {
	return &Client{http: &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			// One connection per request: a kept-alive connection would
			// outlive an agent that handed its socket path to a successor.
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return dial(ctx, path)
			},
		},
	}}
}

// dial connects to the agent's control socket at path and makes sure the
// agent answers: the process listening there must be root, or this
// process's own user (an agent run without root, as in the standalone
// demo). Anyone else planted the socket (where the agent's directory is not
// root's alone, see PrepareDir, or before the agent made it), and is told
// nothing.
func dial(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	p, err := PeerOf(c.(*net.UnixConn))
	if err == nil && !p.root() {
		err = fmt.Errorf("%s is served by pid %d running as uid %d, not root: refusing to talk to a socket another user planted", path, p.PID, p.UID)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Status returns the agent's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.do(ctx, RouteStatus, nil, nil, &st)
	return st, err
}

// Table returns what a pod in namespace can resolve from the agent's table;
// an empty namespace is a client outside every namespace.
func (c *Client) Table(ctx context.Context, namespace string) ([]TableRow, error) {
	var rows []TableRow
	err := c.do(ctx, RouteTable, url.Values{"namespace": {namespace}}, nil, &rows)
	return rows, err
}

// Pods returns the pods the agent knows.
func (c *Client) Pods(ctx context.Context) ([]PodRow, error) {
	var rows []PodRow
	err := c.do(ctx, RoutePods, nil, nil, &rows)
	return rows, err
}

// CaptureAdd marks a network namespace by hand.
func (c *Client) CaptureAdd(ctx context.Context, req CaptureRequest) (PodRow, error) {
	var row PodRow
	err := c.do(ctx, RouteCaptureAdd, nil, req, &row)
	return row, err
}

// CaptureDel unmarks a network namespace marked by hand.
func (c *Client) CaptureDel(ctx context.Context, req CaptureRequest) error {
	return c.do(ctx, RouteCaptureDel, nil, req, nil)
}

// CNIAdd hands a new pod to the agent.
func (c *Client) CNIAdd(ctx context.Context, req CNIAddRequest) (CNIAddResponse, error) {
	var resp CNIAddResponse
	err := c.do(ctx, RouteCNIAdd, nil, req, &resp)
	return resp, err
}

// CNIDel tells the agent a pod is gone.
func (c *Client) CNIDel(ctx context.Context, req CNIDelRequest) error {
	return c.do(ctx, RouteCNIDel, nil, req, nil)
}

// SetAccessLog turns the agent's access log on or off and returns its
// state.
func (c *Client) SetAccessLog(ctx context.Context, req AccessLogRequest) (AccessLog, error) {
	var st AccessLog
	err := c.do(ctx, RouteAccessLog, nil, req, &st)
	return st, err
}

// do sends in (if not nil) as JSON to route and decodes the reply into out
// (if not nil). A non-2xx reply becomes an *Error carrying the agent's
// message; a call nobody answered wraps ErrUnreachable.
func (c *Client) do(ctx context.Context, route Route, query url.Values, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	u := url.URL{Scheme: "http", Host: "ztdns", Path: route.Path, RawQuery: query.Encode()}
	req, err := http.NewRequestWithContext(ctx, route.Method, u.String(), body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var e errorBody
		if json.NewDecoder(resp.Body).Decode(&e) == nil && e.Error != "" {
			return &Error{Code: resp.StatusCode, Message: e.Error}
		}
		return &Error{Code: resp.StatusCode, Message: "agent answered " + resp.Status}
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%w: reading the answer: %w", ErrUnreachable, err)
	}
	return nil
}

// errorBody is how the server reports failures.
type errorBody struct {
	Error string `json:"error"`
}
