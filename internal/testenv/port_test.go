package testenv

import (
	"net"
	"testing"
)

// TestFreePortIsOutOfTheKernelsWay: the port FreePort gives is below the
// ephemeral range, so no socket the kernel gives a port to by itself
// (another test's client, another port-0 bind) takes it before the
// caller binds it; and it is free for UDP and TCP.
func TestFreePortIsOutOfTheKernelsWay(t *testing.T) {
	low := ephemeralLow()
	if low <= 21000 {
		t.Fatalf("ephemeral range starts at %d on this machine: no room below it to test", low)
	}
	for range 20 {
		addr := FreePort(t)
		if int(addr.Port()) >= low {
			t.Fatalf("FreePort gave %v, in the ephemeral range from %d", addr, low)
		}
		pc, err := net.ListenPacket("udp", addr.String())
		if err != nil {
			t.Fatalf("udp port not free: %v", err)
		}
		ln, err := net.Listen("tcp", addr.String())
		if err != nil {
			pc.Close()
			t.Fatalf("tcp port not free: %v", err)
		}
		pc.Close()
		ln.Close()
	}
}
