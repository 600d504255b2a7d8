// Package clientrate keeps a token bucket per client prefix, in a store
// bounded in prefixes (otter, the least active forgotten first): the
// rate limit handler's queries and the DoT and DoH servers' new
// connections.
package clientrate

import (
	"iter"
	"net/netip"
	"sync"
	"time"

	"github.com/maypok86/otter/v2"
)

// Limiter holds the buckets of one limit.
type Limiter struct {
	rate           float64 // tokens a nanosecond
	burst          float64
	bitsV4, bitsV6 int
	blockFor       int64 // nanoseconds a prefix is blocked once it runs out; 0 for none
	buckets        *otter.Cache[[16]byte, *Bucket]
}

// Bucket is one prefix's token bucket.
type Bucket struct {
	mu           sync.Mutex
	tokens       float64
	last         int64 // unix nanos of the last refill
	limited      uint64
	lastLimited  int64
	blockedUntil int64 // unix nanos; a take before it is refused
}

// New makes a limiter of perSecond tokens a second and bursts of burst,
// per prefix of v4 (IPv4) or v6 (IPv6) bits, for at most maxClients
// prefixes at once.
func New(perSecond float64, burst, v4, v6, maxClients int) (*Limiter, error) {
	c, err := otter.New(&otter.Options[[16]byte, *Bucket]{MaximumSize: maxClients})
	if err != nil {
		return nil, err
	}
	return &Limiter{rate: perSecond / 1e9, burst: float64(burst), bitsV4: v4, bitsV6: v6, buckets: c}, nil
}

// SetBlock makes a prefix that runs out of tokens blocked for d: every
// take refused until d has passed, whatever its bucket holds by then
// (dnsdist's dynamic blocks). Call it before the limiter is used; 0 (the
// default) refuses only the takes that find the bucket empty.
func (l *Limiter) SetBlock(d time.Duration) { l.blockFor = int64(d) }

// Close forgets every prefix and stops the store's goroutines.
func (l *Limiter) Close() {
	l.buckets.InvalidateAll()
	l.buckets.StopAllGoroutines()
}

// PerSecond is the limiter's rate, in tokens a second.
func (l *Limiter) PerSecond() float64 { return l.rate * 1e9 }

// Burst is how many tokens a full bucket holds.
func (l *Limiter) Burst() int { return int(l.burst) }

// Key is the client's prefix, as 16 octets (IPv4 mapped into IPv6, so
// that the two families never meet).
func (l *Limiter) Key(a netip.Addr) [16]byte {
	bits := l.bitsV6
	if a.Is4() {
		bits = 96 + l.bitsV4
	}
	k := a.As16()
	for i := range k {
		switch {
		case bits >= 8:
			bits -= 8
		case bits > 0:
			k[i] &= ^byte(0xFF >> bits)
			bits = 0
		default:
			k[i] = 0
		}
	}
	return k
}

// Prefix is the prefix a key stands for.
func (l *Limiter) Prefix(k [16]byte) netip.Prefix {
	a := netip.AddrFrom16(k)
	if a.Is4In6() {
		return netip.PrefixFrom(a.Unmap(), l.bitsV4)
	}
	return netip.PrefixFrom(a, l.bitsV6)
}

// Allow takes a token from the bucket of a's prefix, at now (unix
// nanos); false when it has none.
func (l *Limiter) Allow(a netip.Addr, now int64) bool {
	k := l.Key(a)
	b, ok := l.buckets.GetIfPresent(k)
	if !ok {
		// a new prefix starts full; of two first takers at once, both
		// take from the bucket that is kept
		b, _ = l.buckets.SetIfAbsent(k, &Bucket{tokens: l.burst, last: now})
	}
	return b.take(l, now)
}

// Ready reports whether a's prefix has a token and is not blocked, at
// now, taking none: a refusal is counted as Allow's is. A prefix the
// limiter does not hold is ready, and is not stored.
func (l *Limiter) Ready(a netip.Addr, now int64) bool {
	b, ok := l.buckets.GetIfPresent(l.Key(a))
	if !ok {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill(l, now)
	if now < b.blockedUntil || b.tokens < 1 {
		b.refused(now)
		return false
	}
	return true
}

// Spend takes a token from the bucket of a's prefix for something that
// has already happened (an answer sent), at now: the bucket does not go
// below empty, and the take that empties it blocks the prefix (SetBlock).
func (l *Limiter) Spend(a netip.Addr, now int64) {
	k := l.Key(a)
	b, ok := l.buckets.GetIfPresent(k)
	if !ok {
		b, _ = l.buckets.SetIfAbsent(k, &Bucket{tokens: l.burst, last: now})
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill(l, now)
	b.tokens = max(b.tokens-1, 0)
	if b.tokens < 1 && l.blockFor > 0 && now >= b.blockedUntil {
		b.blockedUntil = now + l.blockFor
	}
}

func (b *Bucket) take(l *Limiter, now int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill(l, now)
	if now < b.blockedUntil {
		b.refused(now)
		return false
	}
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	b.refused(now)
	if l.blockFor > 0 {
		b.blockedUntil = now + l.blockFor
	}
	return false
}

func (b *Bucket) refill(l *Limiter, now int64) {
	if d := now - b.last; d > 0 {
		b.tokens = min(l.burst, b.tokens+float64(d)*l.rate)
		b.last = now
	}
}

func (b *Bucket) refused(now int64) {
	b.limited++
	b.lastLimited = now
}

// State is a bucket as read at a moment.
type State struct {
	Limited      uint64  // takes refused
	LastLimited  int64   // unix nanos of the last, 0 for none
	Tokens       float64 // what the bucket holds
	BlockedUntil int64   // unix nanos the prefix's block ends, 0 for none
}

// All reads every bucket at now, with its prefix's key.
func (l *Limiter) All(now int64) iter.Seq2[[16]byte, State] {
	return func(yield func([16]byte, State) bool) {
		for k, b := range l.buckets.All() {
			b.mu.Lock()
			st := State{Limited: b.limited, LastLimited: b.lastLimited, Tokens: min(l.burst, b.tokens+float64(max(now-b.last, 0))*l.rate)}
			if b.blockedUntil > now {
				st.BlockedUntil = b.blockedUntil
			}
			b.mu.Unlock()
			if !yield(k, st) {
				return
			}
		}
	}
}

// Len is how many prefixes the limiter holds.
func (l *Limiter) Len() int { return l.buckets.EstimatedSize() }

// CleanUp applies the store's pending evictions (Len is then exact).
func (l *Limiter) CleanUp() { l.buckets.CleanUp() }
