package cache

import (
	"sync"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/caddydns/dnswire"
)

// flight is the query the rest of the chain is asked for one key; the
// identical misses that come meanwhile wait for it rather than ask again.
// A flight nobody waits for costs no object: its key's place in the
// table holds nil until a first waiter comes and makes the flight, and
// the answer is copied for the waiters only.
type flight struct {
	waiters int           // under the table's lock
	done    chan struct{} // made by the first waiter, closed when the answer is in
	msg     []byte        // the waiters' copy of the answer; nil when the chain failed
	l       dnswire.Layout
	err     error
}

// response is the flight's answer for one of its waiters: a copy.
func (f *flight) response() (caddydns.Response, error) {
	if f.msg == nil {
		return caddydns.Response{}, f.err
	}
	return caddydns.Response{Wire: caddydns.NewWire(f.msg, &f.l)}, nil
}

const flightShards = 64

// flights are the flights of a store by key hash, in shards so that
// misses of different names do not meet on one lock.
type flights struct {
	shards [flightShards]flightShard
}

type flightShard struct {
	mu sync.Mutex
	m  map[uint64]*flight // nil: under way, nobody waiting
	_  [48]byte           // a cache line each
}

func (t *flights) init() {
	for i := range t.shards {
		t.shards[i].m = make(map[uint64]*flight)
	}
}

// join returns the flight of hash and false, counting the caller as one
// of its waiters; or, when there is none, true: the caller owns the new
// flight, and lands it. With waiting, the owner will wait for it as a
// waiter does, and gets it; else the flight is nil until a waiter comes.
func (t *flights) join(hash uint64, waiting bool) (*flight, bool) {
	sh := &t.shards[hash%flightShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if _, ok := sh.m[hash]; ok {
		return sh.waiter(hash), false
	}
	var f *flight
	if waiting {
		f = new(flight)
		f.wait()
	}
	sh.m[hash] = f
	return f, true
}

// waiter counts the caller as a waiter of the flight of hash, under way,
// making it for its first waiter; the shard's lock is held.
func (sh *flightShard) waiter(hash uint64) *flight {
	f := sh.m[hash]
	if f == nil {
		f = new(flight)
		sh.m[hash] = f
	}
	f.wait()
	return f
}

func (f *flight) wait() {
	f.waiters++
	if f.done == nil {
		f.done = make(chan struct{})
	}
}

// start starts a flight for hash that the caller owns and lands, and
// reports whether it did: false when one is under way.
func (t *flights) start(hash uint64) bool {
	sh := &t.shards[hash%flightShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if _, ok := sh.m[hash]; ok {
		return false
	}
	sh.m[hash] = nil
	return true
}

// waitFor returns the done channel of the flight of hash, as a waiter, or
// nil when there is none.
func (t *flights) waitFor(hash uint64) <-chan struct{} {
	sh := &t.shards[hash%flightShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if _, ok := sh.m[hash]; ok {
		return sh.waiter(hash).done
	}
	return nil
}

// land ends the flight of hash, the caller's own, with the answer res
// (or err): no one joins it any more, and its waiters, if it has any, get
// a copy.
func (t *flights) land(hash uint64, res caddydns.Response, err error) {
	sh := &t.shards[hash%flightShards]
	sh.mu.Lock()
	f := sh.m[hash]
	delete(sh.m, hash)
	waited := f != nil && f.waiters > 0
	sh.mu.Unlock()
	if !waited {
		return
	}
	if res.Wire != nil {
		f.msg = append([]byte(nil), res.Wire.Bytes()...)
		f.l = *res.Wire.Layout()
	} else {
		f.err = err
	}
	close(f.done)
}
