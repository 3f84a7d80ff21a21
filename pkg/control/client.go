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
	// network namespace), 413 for one too large, 429 for a table asked for
	// while another's answer is written (ask again), 500 when the agent failed,
	// 503 when it handed over to a successor while the request waited,
	// having done nothing of it (sent again, it reaches the successor), or
	// for a table asked for before the agent has one (ask again once it is
	// ready).
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
	return NewStreamingClient(path, timeout, timeout)
}

// NewStreamingClient returns a client for the socket at path whose calls
// must begin to be answered within timeout and end within whole: an answer
// written as it is made (TableEach) may take longer to read than to begin.
func NewStreamingClient(path string, timeout, whole time.Duration) *Client {
	return &Client{http: &http.Client{
		Timeout: whole,
		Transport: &http.Transport{
			ResponseHeaderTimeout: timeout,
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
	err := c.TableEach(ctx, namespace, func(r TableRow) error {
		rows = append(rows, r)
		return nil
	})
	return rows, err
}

// TableEach hands each row of Table to each as it is read, in the agent's
// order (by name, reverse names last), and stops at the first error each
// returns. The agent writes the rows as it makes them, so the first come at
// once however large the table; an answer cut short is an error wrapping
// ErrUnreachable, after the rows read.
func (c *Client) TableEach(ctx context.Context, namespace string, each func(TableRow) error) error {
	resp, err := c.send(ctx, RouteTable, url.Values{"namespace": {namespace}}, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	if err := expectDelim(dec, '['); err != nil {
		return fmt.Errorf("%w: reading the answer: %w", ErrUnreachable, err)
	}
	for dec.More() {
		var r TableRow
		if err := dec.Decode(&r); err != nil {
			return fmt.Errorf("%w: reading the answer: %w", ErrUnreachable, err)
		}
		if err := each(r); err != nil {
			return err
		}
	}
	if err := expectDelim(dec, ']'); err != nil {
		return fmt.Errorf("%w: reading the answer: %w", ErrUnreachable, err)
	}
	return nil
}

// expectDelim reads the JSON delimiter want from dec.
func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	if tok != want {
		return fmt.Errorf("got %v, want %v", tok, want)
	}
	return nil
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
	resp, err := c.send(ctx, route, query, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%w: reading the answer: %w", ErrUnreachable, err)
	}
	return nil
}

// send sends in (if not nil) as JSON to route and returns the agent's 2xx
// answer, its body to be read and closed. A non-2xx reply becomes an
// *Error carrying the agent's message; a call nobody answered wraps
// ErrUnreachable.
func (c *Client) send(ctx context.Context, route Route, query url.Values, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	u := url.URL{Scheme: "http", Host: "ztdns", Path: route.Path, RawQuery: query.Encode()}
	req, err := http.NewRequestWithContext(ctx, route.Method, u.String(), body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		var e errorBody
		if json.NewDecoder(resp.Body).Decode(&e) == nil && e.Error != "" {
			return nil, &Error{Code: resp.StatusCode, Message: e.Error}
		}
		return nil, &Error{Code: resp.StatusCode, Message: "agent answered " + resp.Status}
	}
	return resp, nil
}

// errorBody is how the server reports failures.
type errorBody struct {
	Error string `json:"error"`
}
