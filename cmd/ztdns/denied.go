package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ztdns/ztdns/pkg/control"
)

// socketDenied turns the error of a call to the agent that the control
// socket's permissions kept this user from (connect: EACCES) into a
// sentence saying so. It is no agent down: the advice that goes with one
// (agentDownHint) would send the operator looking at a healthy agent. A
// caller the mode let in but the agent refuses gets the agent's own 403,
// which says why.
func socketDenied(cmd *cobra.Command, err error) error {
	f := cmd.Flags().Lookup("socket")
	if f == nil || !errors.Is(err, control.ErrUnreachable) || !errors.Is(err, syscall.EACCES) {
		return err
	}
	socket := f.Value.String()
	cause := fmt.Sprintf("uid %d may not connect: permission denied", os.Getuid())
	if g := socketGroup(socket); g != "" {
		return fmt.Errorf("the control socket %s is root's and group %s's: run as root (members of %s may read, with it as their primary group); %s",
			socket, g, g, cause)
	}
	return fmt.Errorf("the control socket %s is root's: run as root; %s", socket, cause)
}

// socketGroup names the group the socket at path is opened to, by its own
// mode or, where this user may not look at it, by its directory's: "" when
// neither gives a group access (the agent without --socket-group).
func socketGroup(path string) string {
	for _, p := range []struct {
		path string
		bits os.FileMode
	}{{path, 0o060}, {filepath.Dir(path), 0o050}} {
		fi, err := os.Stat(p.path)
		if err != nil {
			continue
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok || st.Gid == 0 || fi.Mode().Perm()&p.bits == 0 {
			return ""
		}
		return control.GroupName(int(st.Gid))
	}
	return ""
}
