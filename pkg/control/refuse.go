package control

// What a caller the socket's mode let in but the peer check refuses is
// told (turnDown): a 403 saying why, not a connection closed unserved,
// which its client reads as a reset, as from an agent that died.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/user"
	"strconv"
	"time"
)

// maxRefusedAnswers bounds the refused callers' connections answered at
// once: past it one is closed unserved, as before. Nobody the socket's mode
// lets in is refused but for a supplementary member of the socket group
// (or anyone, with the mode loosened by mistake): a few at a time is all a
// person at a terminal needs, and a flood costs the agent no more.
const maxRefusedAnswers = 4

// refusal says why the peer p may not call (PeerOf failed with err, or
// Access.allowed refused it), and what to do about it.
func (a Access) refusal(p Peer, err error) string {
	if err != nil {
		return fmt.Sprintf("the agent could not tell who is calling (%v), so it answers root alone: run as root", err)
	}
	if a.Group <= 0 {
		return fmt.Sprintf("the control socket is root's: uid %d may not call; run as root", p.UID)
	}
	g := GroupName(a.Group)
	return fmt.Sprintf("the control socket is root's and group %s's: uid %d, of primary group %d, may not call. "+
		"The agent sees a caller's primary group only (SO_PEERCRED), not its supplementary ones: "+
		"run as root, or with %s as primary group (sg %s -c 'ztdns status')", g, p.UID, p.GID, g, g)
}

// GroupName names gid as the refusal does, and the CLI when the socket's
// mode keeps it out: its name, or the number.
func GroupName(gid int) string {
	if g, err := user.LookupGroupId(strconv.Itoa(gid)); err == nil {
		return g.Name
	}
	return strconv.Itoa(gid)
}

// turnDown answers the connection of a caller refused (peer p, or err
// from PeerOf) with the refusal, unless maxRefusedAnswers are being
// answered already (then it is closed), on a goroutine of its own:
// acceptLoop never waits, not even for the group's name (NSS may ask a
// directory server).
func (l *guardedListener) turnDown(c *net.UnixConn, p Peer, err error) {
	l.mu.Lock()
	if l.closed || len(l.turnedDown) >= maxRefusedAnswers {
		l.mu.Unlock()
		c.Close()
		return
	}
	l.turnedDown[c] = true
	l.mu.Unlock()
	go func() {
		answerRefused(c, l.access.refusal(p, err))
		l.mu.Lock()
		delete(l.turnedDown, c)
		l.mu.Unlock()
		c.Close()
	}()
}

// answerRefused reads one request from c, the whole of it within
// ReadTimeout and the server's bounds, and answers it 403 with reason, as
// the server answers errors. Nothing of it reaches the API. The request is
// read before the answer is written: a connection closed with its request
// unread resets its caller, who would read no answer.
func answerRefused(c *net.UnixConn, reason string) {
	c.SetDeadline(time.Now().Add(ReadTimeout))
	in := bufio.NewReader(io.LimitReader(c, maxHeaderBytes+MaxRequestBytes))
	req, err := http.ReadRequest(in)
	if err != nil {
		return
	}
	if _, err := io.Copy(io.Discard, req.Body); err != nil {
		return
	}
	body, err := json.Marshal(errorBody{Error: reason})
	if err != nil {
		return
	}
	body = append(body, '\n')
	resp := &http.Response{
		StatusCode: http.StatusForbidden, ProtoMajor: 1, ProtoMinor: 1, Request: req, Close: true,
		Header:        http.Header{"Content-Type": {"application/json"}},
		ContentLength: int64(len(body)), Body: io.NopCloser(bytes.NewReader(body)),
	}
	resp.Write(c)
}
