package cache

import (
	"bytes"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/maypok86/otter/v2"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/caddydns/dnswire"
)

// entryOverhead is what an entry costs beyond its octets: the entry, its
// slice headers, the store's node and index (measured with the Go
// benchmark of the store, rounded up).
const entryOverhead = 200

// entry is one cached answer, as the upstream (or a handler) gave it, its
// TTLs clamped to min_ttl and max_ttl. It is read-only once stored, but
// for its counters.
type entry struct {
	key    []byte
	msg    []byte
	l      dnswire.Layout
	ttls   []uint16 // offsets of the TTL fields to lower on a hit
	stored int64    // unix nanos
	// expires is when the entry stops being fresh; staleUntil when it may
	// no longer be served stale (RFC 8767) and leaves the store
	expires, staleUntil int64
	failure             bool // a SERVFAIL or an answer with nothing to cache, kept for failure_ttl

	hits        atomic.Uint32
	prefetching atomic.Bool
	// failedUntil: the upstream failed to refresh this expired entry;
	// until then it is served stale without asking (RFC 8767 5)
	failedUntil atomic.Int64
}

func (e *entry) size() uint32 { return uint32(len(e.key) + len(e.msg) + 2*len(e.ttls) + entryOverhead) }

// answer returns the entry as a caddydns.Wire with every TTL lowered by
// its age (never below 0), or set to ttl when ttl >= 0 (a stale answer).
// The Wire is a pooled copy: the chain releases it.
func (e *entry) answer(now int64, ttl int64) *caddydns.Wire {
	l := e.l
	w := caddydns.NewWire(e.msg, &l)
	msg := w.Bytes()
	age := uint32(max(now-e.stored, 0) / int64(time.Second))
	for _, off := range e.ttls {
		t := binary.BigEndian.Uint32(msg[off:])
		switch {
		case ttl >= 0:
			t = uint32(ttl)
		case t > age:
			t -= age
		default:
			t = 0
		}
		binary.BigEndian.PutUint32(msg[off:], t)
	}
	lay := w.Layout()
	switch {
	case ttl >= 0:
		lay.TTL = uint32(ttl)
	case lay.TTL > age:
		lay.TTL -= age
	default:
		lay.TTL = 0
	}
	return w
}

// store is the cache of one config, shared by every handler that has the
// same config, across reloads (a usage pool, as upstreams are).
type store struct {
	name  string
	c     *otter.Cache[uint64, *entry]
	bytes atomic.Int64

	hits, misses, stale, prefetches, coalesced, evictions atomic.Uint64

	flights sync.Map // key hash -> *flight
}

// stores holds the stores of all configs, by their config; live lists
// them for the admin API and the metrics.
var (
	stores = caddy.NewUsagePool()
	live   sync.Map // *store -> struct{}
)

func newStore(name string, maxEntries int, maxBytes int64) (*store, error) {
	s := &store{name: name}
	// each entry weighs at least maxBytes/maxEntries: the weight bound
	// then keeps both the byte budget and the entry count
	floor := uint32(max(maxBytes/int64(maxEntries), 1))
	c, err := otter.New(&otter.Options[uint64, *entry]{
		MaximumWeight: uint64(maxBytes),
		Weigher:       func(_ uint64, e *entry) uint32 { return max(e.size(), floor) },
		ExpiryCalculator: otter.ExpiryWritingFunc(func(en otter.Entry[uint64, *entry]) time.Duration {
			return time.Duration(en.Value.staleUntil - time.Now().UnixNano())
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
	if !ok || !bytes.Equal(e.key, key) {
		return nil
	}
	return e
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
		if len(e.key) < 5 {
			continue
		}
		owner := keyName(e.key)
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
