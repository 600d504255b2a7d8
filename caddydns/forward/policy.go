package forward

import (
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/dnsfront/dnsfront/caddydns"
)

// policy chooses which of the healthy upstreams a query is sent to first,
// as CoreDNS's forward Policy does: Forward.Policy names one.
type policy interface {
	// first returns the index in healthy (at least two) to try first
	// for r.
	first(healthy []*upstream, r *caddydns.Request) int
}

func newPolicy(name string) (policy, error) {
	switch name {
	case "", "least_outstanding":
		return leastOutstanding{}, nil
	case "round_robin":
		return new(roundRobin), nil
	case "random":
		return randomPolicy{}, nil
	case "first":
		return firstPolicy{}, nil
	case "hash":
		return hashPolicy{}, nil
	}
	return nil, fmt.Errorf("forward: unknown policy %q (least_outstanding, round_robin, random, first, hash)", name)
}

// ordered returns the upstreams in the order one query tries them: the
// healthy ones, p's pick first, then the unhealthy ones (tried only when
// every healthy one failed, or none is healthy).
func ordered(ups []*upstream, now time.Time, p policy, r *caddydns.Request) []*upstream {
	if len(ups) == 1 {
		return ups // nothing to order (and no slice to make)
	}
	out := make([]*upstream, 0, len(ups))
	for _, u := range ups {
		if u.isHealthy(now) {
			out = append(out, u)
		}
	}
	if healthy := len(out); healthy > 1 {
		i := p.first(out, r)
		out[0], out[i] = out[i], out[0]
	}
	for _, u := range ups {
		if !u.isHealthy(now) {
			out = append(out, u)
		}
	}
	return out
}

// leastOutstanding picks the upstream with the fewest queries in flight,
// at random among equals.
type leastOutstanding struct{}

func (leastOutstanding) first(h []*upstream, _ *caddydns.Request) int {
	best, bestN, ties := 0, h[0].outstanding.Load(), 1
	for i := 1; i < len(h); i++ {
		n := h[i].outstanding.Load()
		switch {
		case n < bestN:
			best, bestN, ties = i, n, 1
		case n == bestN:
			ties++
			if rand.IntN(ties) == 0 { // a fair pick among equals
				best = i
			}
		}
	}
	return best
}

// roundRobin takes the healthy upstreams in turn.
type roundRobin struct{ next atomic.Uint32 }

func (rr *roundRobin) first(h []*upstream, _ *caddydns.Request) int {
	return int(rr.next.Add(1)-1) % len(h)
}

// randomPolicy picks any healthy upstream.
type randomPolicy struct{}

func (randomPolicy) first(h []*upstream, _ *caddydns.Request) int { return rand.IntN(len(h)) }

// firstPolicy keeps the configured order: the first healthy upstream.
type firstPolicy struct{}

func (firstPolicy) first([]*upstream, *caddydns.Request) int { return 0 }

// hashPolicy sends each name to one upstream: rendezvous hashing of the
// question's name, in lower case, over the healthy upstreams (dnsdist's
// chashed). The upstreams' caches then each hold their share of the
// names rather than all of them, and an upstream that goes down or comes
// back moves only its own share. The hash depends on nothing but the
// name and the upstreams' addresses: every instance of a fleet sends a
// name to the same upstream.
type hashPolicy struct{}

func (hashPolicy) first(h []*upstream, r *caddydns.Request) int {
	name := nameHash(r)
	best, bestScore := 0, mix64(name^h[0].hashKey)
	for i := 1; i < len(h); i++ {
		if score := mix64(name ^ h[i].hashKey); score > bestScore {
			best, bestScore = i, score
		}
	}
	return best
}

// nameHash is the 64-bit FNV-1a hash of r's question name in lower case
// (0 without one).
func nameHash(r *caddydns.Request) uint64 {
	if r == nil || r.Msg == nil || len(r.Msg.Question) == 0 {
		return 0
	}
	return fnv64Lower(r.Msg.Question[0].Name)
}

// fnv64Lower is the 64-bit FNV-1a hash of s with ASCII letters in lower
// case.
func fnv64Lower(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
}

// mix64 is SplitMix64's finalizer: every bit of x moves every bit of the
// score, so that one name's scores for its upstreams are independent.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
