package cache

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/maypok86/otter/v2"
)

// store is the cache of one config, shared by every handler that has the
// same config, across reloads (a usage pool, as upstreams are).
type store struct {
	name  string
	c     *otter.Cache[uint64, *entry]
	bytes atomic.Int64

	// stale is how long past its expiry an entry may be answered stale
	// (the same for every config sharing the store: it is in the key)
	stale time.Duration

	hits, misses, staleServed, prefetches, coalesced, evictions atomic.Uint64

	flights flights
}

// stores holds the stores of all configs, by their config; live lists
// them for the admin API and the metrics.
var (
	stores = caddy.NewUsagePool()
	live   sync.Map // *store -> struct{}
)

func newStore(name string, maxEntries int, maxBytes int64, stale time.Duration) (*store, error) {
	s := &store{name: name, stale: stale}
	s.flights.init()
	// each entry weighs at least maxBytes/maxEntries: the weight bound
	// then keeps both the byte budget and the entry count
	floor := uint32(max((maxBytes+int64(maxEntries)-1)/int64(maxEntries), 1)) // rounded up: maxEntries at most
	c, err := otter.New(&otter.Options[uint64, *entry]{
		MaximumWeight: uint64(maxBytes),
		Weigher:       func(_ uint64, e *entry) uint32 { return max(e.size(), floor) },
		ExpiryCalculator: otter.ExpiryWritingFunc(func(en otter.Entry[uint64, *entry]) time.Duration {
			return time.Duration(s.staleUntil(en.Value) - time.Now().UnixNano())
		}),
		OnAtomicDeletion: func(ev otter.DeletionEvent[uint64, *entry]) {
			s.bytes.Add(-int64(ev.Value.size()))
			if ev.WasEvicted() && ev.Cause == otter.CauseOverflow {
				s.evictions.Add(1)
			}
		},
	})
	if err != nil {
		return nil, err
	}
	s.c = c
	live.Store(s, struct{}{})
	return s, nil
}

// Destruct implements caddy.Destructor: the last config using the store
// is gone.
func (s *store) Destruct() error {
	live.Delete(s)
	s.c.InvalidateAll()
	s.c.StopAllGoroutines()
	return nil
}

// get returns the entry of key, if there is one.
func (s *store) get(hash uint64, key []byte) *entry {
	e, ok := s.c.GetIfPresent(hash)
	if !ok || !e.is(key) {
		return nil
	}
	return e
}

// staleUntil is when e may no longer be answered stale (RFC 8767), and
// leaves the store.
func (s *store) staleUntil(e *entry) int64 {
	if e.failure {
		return e.expires
	}
	return e.expires + int64(s.stale)
}

func (s *store) put(hash uint64, e *entry) {
	s.bytes.Add(int64(e.size()))
	s.c.Set(hash, e)
}

// purge removes the entries of name (a question name, any case) and,
// with subtree, of every name under it; with name "" every entry. It
// returns how many it removed.
func (s *store) purge(name string, subtree bool) int {
	if name == "" {
		n := s.c.EstimatedSize()
		s.c.InvalidateAll()
		return n
	}
	name = lowerFQDN(name)
	n := 0
	for h, e := range s.c.All() {
		if e.klen < 5 {
			continue
		}
		owner := keyName(e.key())
		if owner == name || (subtree && (name == "." || len(owner) > len(name) && owner[len(owner)-len(name)-1] == '.' && owner[len(owner)-len(name):] == name)) {
			if _, ok := s.c.Invalidate(h); ok {
				n++
			}
		}
	}
	return n
}

// keyName is the question name in a key (after type, class, flags and
// the ECS option).
func keyName(key []byte) string {
	rest := key[5:]
	if len(rest) >= 4 && rest[0] == 0xEC {
		n := 4 + (int(rest[3])+7)/8
		if n <= len(rest) {
			rest = rest[n:]
		}
	}
	return string(rest)
}

func lowerFQDN(name string) string {
	b := []byte(name)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	if len(b) == 0 || b[len(b)-1] != '.' {
		b = append(b, '.')
	}
	return string(b)
}
