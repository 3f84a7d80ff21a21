package redirect

import (
	"net/netip"

	"github.com/ztdns/ztdns/pkg/model"
)

// PodAddr is model.PodAddr: NetnsAddrs lists only such addresses, so the
// agent refuses a CNI ADD that claims another; the plugin leaves them out
// of what it claims.
func PodAddr(ip netip.Addr) bool { return model.PodAddr(ip) }
