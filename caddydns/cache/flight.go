package cache

import (
	"sync"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/caddydns/dnswire"
)

// flight is the query the rest of the chain is asked for one key; the
// identical misses that come meanwhile wait for it rather than ask again.
// A flight nobody waits for costs one small object: done is made by its
// first waiter, and the answer is copied for the waiters only.
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
	shards [flightShards]struct {
		mu sync.Mutex
		m  map[uint64]*flight
		_  [48]byte // a cache line each
	}
}

func (t *flights) init() {
	for i := range t.shards {
		t.shards[i].m = make(map[uint64]*flight)
	}
}

// join returns the flight of hash and false, counting the caller as one
// of its waiters; or, when there is none, a new flight the caller owns and
// true (with waiting, the owner will wait for it as a waiter does).
func (t *flights) join(hash uint64, waiting bool) (*flight, bool) {
	sh := &t.shards[hash%flightShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if f := sh.m[hash]; f != nil {
		f.wait()
		return f, false
	}
	f := new(flight)
	if waiting {
		f.wait()
	}
	sh.m[hash] = f
	return f, true
}

func (f *flight) wait() {
	f.waiters++
	if f.done == nil {
		f.done = make(chan struct{})
	}
}

// start returns a new flight for hash, or nil when one is under way.
func (t *flights) start(hash uint64) *flight {
	sh := &t.shards[hash%flightShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.m[hash] != nil {
		return nil
	}
	f := new(flight)
	sh.m[hash] = f
	return f
}

// waitFor returns the done channel of the flight of hash, as a waiter, or
// nil when there is none.
func (t *flights) waitFor(hash uint64) <-chan struct{} {
	sh := &t.shards[hash%flightShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if f := sh.m[hash]; f != nil {
		f.wait()
		return f.done
	}
	return nil
}

// land ends the flight of hash with the answer res (or err): no one joins
// it any more, and its waiters, if it has any, get a copy.
func (t *flights) land(hash uint64, f *flight, res caddydns.Response, err error) {
	sh := &t.shards[hash%flightShards]
	sh.mu.Lock()
	delete(sh.m, hash)
	waited := f.waiters > 0
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
