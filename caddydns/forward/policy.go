package forward

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/dnsfront/dnsfront/caddydns"
)

// policy chooses which of the healthy upstreams a query is sent to first,
// as CoreDNS's forward Policy does: Forward.Policy names one.
type policy interface {
	// first returns the index in healthy (at least two) to try first
	// for r, each upstream weighing what ws says.
	first(healthy []*upstream, ws weights, r *caddydns.Request) int
}

// maxWeight bounds an upstream's weight.
const maxWeight = 1000

// weights are a forward's upstreams' weights (Forward.Weights): w[i] is
// ups[i]'s; w nil, all 1.
type weights struct {
	ups []*upstream
	w   []uint32
}

// of returns u's weight.
func (ws weights) of(u *upstream) uint32 {
	if ws.w == nil {
		return 1
	}
	for i, v := range ws.ups {
		if v == u {
			return ws.w[i]
		}
	}
	return 1
}

// pick returns the index in h where x (below the sum of h's weights)
// falls, each upstream taking as many as its weight.
func (ws weights) pick(h []*upstream, x uint64) int {
	for i, u := range h {
		w := uint64(ws.of(u))
		if x < w {
			return i
		}
		x -= w
	}
	return 0
}

// total is the sum of h's weights.
func (ws weights) total(h []*upstream) uint64 {
	var t uint64
	for _, u := range h {
		t += uint64(ws.of(u))
	}
	return t
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
func ordered(ups []*upstream, now time.Time, p policy, ws weights, r *caddydns.Request) []*upstream {
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
		i := p.first(out, ws, r)
		out[0], out[i] = out[i], out[0]
	}
	for _, u := range ups {
		if !u.isHealthy(now) {
			out = append(out, u)
		}
	}
	return out
}

// leastOutstanding picks the upstream with the fewest queries in flight
// per unit of weight, at random among equals.
type leastOutstanding struct{}

func (leastOutstanding) first(h []*upstream, ws weights, _ *caddydns.Request) int {
	best, bestN, bestW, ties := 0, h[0].outstanding.Load(), int64(ws.of(h[0])), 1
	for i := 1; i < len(h); i++ {
		n, w := h[i].outstanding.Load(), int64(ws.of(h[i]))
		switch a, b := n*bestW, bestN*w; {
		case a < b:
			best, bestN, bestW, ties = i, n, w, 1
		case a == b:
			ties++
			if rand.IntN(ties) == 0 { // a fair pick among equals
				best, bestN, bestW = i, n, w
			}
		}
	}
	return best
}

// roundRobin takes the healthy upstreams in turn, each as many times
// in a row as its weight.
type roundRobin struct{ next atomic.Uint64 }

func (rr *roundRobin) first(h []*upstream, ws weights, _ *caddydns.Request) int {
	n := rr.next.Add(1) - 1
	if ws.w == nil {
		return int(n % uint64(len(h)))
	}
	return ws.pick(h, n%ws.total(h))
}

// randomPolicy picks any healthy upstream, each as likely as its weight.
type randomPolicy struct{}

func (randomPolicy) first(h []*upstream, ws weights, _ *caddydns.Request) int {
	if ws.w == nil {
		return rand.IntN(len(h))
	}
	return ws.pick(h, rand.Uint64N(ws.total(h)))
}

// firstPolicy keeps the configured order: the first healthy upstream.
type firstPolicy struct{}

func (firstPolicy) first([]*upstream, weights, *caddydns.Request) int { return 0 }

// hashPolicy sends each name to one upstream: rendezvous hashing of the
// question's name, in lower case, over the healthy upstreams (dnsdist's
// chashed; with weights, whashed). The upstreams' caches then each hold
// their share of the names rather than all of them, and an upstream that
// goes down or comes back moves only its own share. The hash depends on
// nothing but the name and the upstreams' addresses (and weights): every
// instance of a fleet sends a name to the same upstream.
type hashPolicy struct{}

func (hashPolicy) first(h []*upstream, ws weights, r *caddydns.Request) int {
	name := nameHash(r)
	if ws.w == nil {
		best, bestScore := 0, mix64(name^h[0].hashKey)
		for i := 1; i < len(h); i++ {
			if score := mix64(name ^ h[i].hashKey); score > bestScore {
				best, bestScore = i, score
			}
		}
		return best
	}
	// weighted: the highest weight / -ln(u), u the hash in (0, 1)
	// (logarithmic rendezvous hashing): each upstream wins its weight's
	// share of the names, and still only its own move
	best, bestScore := 0, -1.0
	for i, u := range h {
		unit := (float64(mix64(name^u.hashKey)>>11) + 0.5) / (1 << 53)
		if score := float64(ws.of(u)) / -math.Log(unit); score > bestScore {
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
