// Package resolvconf reads the parts of resolv.conf(5) ztdns uses: the
// nameservers (the default upstreams) and the search domains (which kubelet
// appends to a pod's, and autopath must know).
package resolvconf

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
)

// Config is a parsed resolv.conf.
type Config struct {
	Nameservers []netip.Addr
	Search      []string
}

// ReadFile parses the file at path.
func ReadFile(path string) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, err
	}
	defer f.Close()
	c, err := Parse(f)
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Parse reads resolv.conf syntax. Like glibc, the last search or domain line
// wins and unknown lines are ignored; a nameserver that is not an address is
// an error, since silently dropping it would change where queries go.
func Parse(r io.Reader) (Config, error) {
	var c Config
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") || strings.HasPrefix(fields[0], ";") {
			continue
		}
		switch fields[0] {
		case "nameserver":
			if len(fields) < 2 {
				return c, fmt.Errorf("line %d: nameserver without an address", line)
			}
			// A scoped IPv6 link-local (fe80::1%eth0) keeps its zone.
			a, err := netip.ParseAddr(fields[1])
			if err != nil {
				return c, fmt.Errorf("line %d: nameserver %q is not an IP address", line, fields[1])
			}
			c.Nameservers = append(c.Nameservers, a.Unmap())
		case "search", "domain":
			c.Search = append([]string(nil), fields[1:]...)
		}
	}
	return c, sc.Err()
}
