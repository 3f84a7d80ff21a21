package redirect

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/cilium/ebpf"
)

// FailingOpen reports whether the programs are letting marked pods' queries
// go to their own nameservers because the agent's heartbeat is stale (or
// was never written), as the programs judge it (bpf/ztdns.c
// resolver_alive).
func (r *Redirector) FailingOpen() (bool, error) {
	now, err := monotonicNow()
	if err != nil {
		return false, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false, errors.New("redirector is closed")
	}
	beat := atomic.LoadUint64(r.beat)
	return beat == 0 || now > beat && now-beat > uint64(r.cfg.StaleAfter), nil
}

// MapUse is how full one of the maps is that pods fill.
type MapUse struct {
	Name     string
	Entries  int
	Capacity int
}

// MapUses reports the maps with one entry per marked pod (pods) or per
// nameserver a pod addressed (nameservers). When pods is full, Mark fails
// (and with it the CNI ADD of a pod to capture); when nameservers is, the
// programs learn no new nameserver and leave a query to one alone.
func (r *Redirector) MapUses() ([]MapUse, error) {
	var uses []MapUse
	for _, m := range []struct {
		name string
		m    *ebpf.Map
	}{{"pods", r.objs.Pods}, {"nameservers", r.objs.Nameservers}} {
		n, err := countKeys(m.m)
		if err != nil {
			return nil, fmt.Errorf("count %s: %w", m.name, err)
		}
		uses = append(uses, MapUse{Name: m.name, Entries: n, Capacity: int(m.m.MaxEntries())})
	}
	return uses, nil
}

// countKeys walks m's keys without reading values. Entries added or
// removed meanwhile may be missed or counted; the walk never goes past the
// map's capacity.
func countKeys(m *ebpf.Map) (int, error) {
	var (
		n         int
		cur, next = make([]byte, m.KeySize()), make([]byte, m.KeySize())
	)
	err := m.NextKey(nil, &next)
	for err == nil && n < int(m.MaxEntries()) {
		n++
		cur, next = next, cur
		err = m.NextKey(cur, &next)
	}
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		err = nil
	}
	return n, err
}
