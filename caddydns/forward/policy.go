package forward

import (
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"
)

// policy chooses which of the healthy upstreams a query is sent to first,
// as CoreDNS's forward Policy does: Forward.Policy names one.
type policy interface {
	// first returns the index in healthy (at least two) to try first.
	first(healthy []*upstream) int
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
	}
	return nil, fmt.Errorf("forward: unknown policy %q (least_outstanding, round_robin, random, first)", name)
}

// ordered returns the upstreams in the order one query tries them: the
// healthy ones, p's pick first, then the unhealthy ones (tried only when
// every healthy one failed, or none is healthy).
func ordered(ups []*upstream, now time.Time, p policy) []*upstream {
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
		i := p.first(out)
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

func (leastOutstanding) first(h []*upstream) int {
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

func (r *roundRobin) first(h []*upstream) int { return int(r.next.Add(1)-1) % len(h) }

// randomPolicy picks any healthy upstream.
type randomPolicy struct{}

func (randomPolicy) first(h []*upstream) int { return rand.IntN(len(h)) }

// firstPolicy keeps the configured order: the first healthy upstream.
type firstPolicy struct{}

func (firstPolicy) first([]*upstream) int { return 0 }
