package resolvconf

import (
	"slices"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	cases := []struct {
		name       string
		in         string
		wantNS     []string
		wantSearch []string
		wantErr    string
	}{
		{name: "kubelet style", in: "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n",
			wantNS: []string{"10.96.0.10"}, wantSearch: []string{"default.svc.cluster.local", "svc.cluster.local", "cluster.local"}},
		{name: "several and v6", in: "# comment\nnameserver 203.0.113.53\nnameserver 2001:db8::53\n; other\n",
			wantNS: []string{"203.0.113.53", "2001:db8::53"}},
		{name: "last search wins", in: "search a.example\ndomain b.example\n", wantSearch: []string{"b.example"}},
		{name: "bad nameserver", in: "nameserver not-an-ip\n", wantErr: `line 1: nameserver "not-an-ip" is not an IP address`},
		{name: "empty nameserver", in: "\nnameserver\n", wantErr: "line 2: nameserver without an address"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(strings.NewReader(tc.in))
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var ns []string
			for _, a := range c.Nameservers {
				ns = append(ns, a.String())
			}
			if !slices.Equal(ns, tc.wantNS) || !slices.Equal(c.Search, tc.wantSearch) {
				t.Errorf("got ns=%v search=%v, want ns=%v search=%v", ns, c.Search, tc.wantNS, tc.wantSearch)
			}
		})
	}
}
