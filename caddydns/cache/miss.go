package cache

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/caddydns/dnswire"
)

// flight is the query the rest of the chain is asked for one key; the
// identical misses that come meanwhile wait for it rather than ask again.
type flight struct {
	done chan struct{}
	msg  []byte // the answer's octets; nil when the chain failed
	l    dnswire.Layout
	err  error
}

// response is the flight's answer for one of its queries: a copy.
func (f *flight) response() (caddydns.Response, error) {
	if f.msg == nil {
		return caddydns.Response{}, f.err
	}
	return caddydns.Response{Wire: caddydns.NewWire(f.msg, &f.l)}, nil
}

// stale reports whether e may be answered stale at now (RFC 8767).
func (c *Cache) staleOK(e *entry, now int64) bool {
	return e != nil && !e.failure && c.stale > 0 && now < e.staleUntil
}

// miss asks the rest of the chain, once for all the identical misses of
// the moment (coalescing), and keeps the answer. When the chain fails,
// an expired entry young enough is answered stale; with
// stale_answer_timeout, it is also when the chain is slow.
func (c *Cache) miss(ctx context.Context, r *caddydns.Request, next caddydns.Next, hash uint64, key []byte, old *entry) (caddydns.Response, error) {
	f := &flight{done: make(chan struct{})}
	if v, loaded := c.store.flights.LoadOrStore(hash, f); loaded {
		c.store.coalesced.Add(1)
		other := v.(*flight)
		select {
		case <-other.done:
		case <-ctx.Done():
			return caddydns.Response{}, ctx.Err()
		}
		return c.orStale(other, old)
	}
	// the query is the flight's, not only this client's: it goes on when
	// this client gives up (its waiters, and the store, want the answer);
	// the chain's own timeouts bound it
	owned := append([]byte(nil), key...) // key is the caller's, on its stack
	run := func(r *caddydns.Request) {
		defer func() {
			c.store.flights.Delete(hash)
			close(f.done)
		}()
		c.fetch(context.WithoutCancel(ctx), r, next, hash, owned, old, f)
	}
	if t := time.Duration(c.StaleAnswerTimeout); t > 0 && c.staleOK(old, time.Now().UnixNano()) {
		rr := *r // the client's request may end before the flight
		rr.Msg = r.Msg.Copy()
		go run(&rr)
		timer := time.NewTimer(t)
		defer timer.Stop()
		select {
		case <-f.done:
			return c.orStale(f, old)
		case <-timer.C:
			c.store.stale.Add(1)
			return caddydns.Response{Wire: old.answer(time.Now().UnixNano(), StaleTTL)}, nil
		case <-ctx.Done():
			return caddydns.Response{}, ctx.Err()
		}
	}
	run(r)
	return c.orStale(f, old)
}

// errNoAnswer is a flight's error when the chain returned no answer and
// no error (a handler's bug).
var errNoAnswer = errors.New("cache: the next handlers gave no answer")

// orStale is the flight's answer, or old's stale when the flight failed
// and old may be served stale.
func (c *Cache) orStale(f *flight, old *entry) (caddydns.Response, error) {
	if f.msg == nil {
		if now := time.Now().UnixNano(); c.staleOK(old, now) {
			c.store.stale.Add(1)
			return caddydns.Response{Wire: old.answer(now, StaleTTL)}, nil
		}
	}
	return f.response()
}

// fetch asks the rest of the chain for r and fills f; what may be kept is
// stored. A failure is remembered: an entry that may be served stale is,
// without asking, for failure_ttl (RFC 8767 5); with none, a SERVFAIL is
// kept for failure_ttl, so that a dead upstream is not asked again and
// again.
func (c *Cache) fetch(ctx context.Context, r *caddydns.Request, next caddydns.Next, hash uint64, key []byte, old *entry, f *flight) {
	res, err := next(ctx, r)
	now := time.Now().UnixNano()
	if err == nil {
		switch {
		case res.Wire != nil:
			f.msg = append([]byte(nil), res.Wire.Bytes()...)
			f.l = *res.Wire.Layout()
			res.Wire.Release()
		case res.Msg != nil:
			m := res.Msg.Copy()
			m.Compress = true
			if b, perr := m.Pack(); perr == nil {
				if l, ok := dnswire.Walk(b); ok {
					f.msg, f.l = b, l
				}
			}
		}
	}
	if f.msg == nil {
		f.err = err
		if err == nil {
			f.err = errNoAnswer
		}
		if c.staleOK(old, now) {
			old.failedUntil.Store(now + int64(c.FailureTTL))
			return
		}
		sf := new(dns.Msg)
		sf.SetRcode(r.Msg, dns.RcodeServerFailure)
		if b, perr := sf.Pack(); perr == nil {
			if l, ok := dnswire.Walk(b); ok {
				c.keep(hash, key, b, &l, r, now)
			}
		}
		return
	}
	c.keep(hash, key, f.msg, &f.l, r, now)
}

// keep stores a copy of the answer msg to r, laid out in l, if it may be
// kept: not truncated, to r's question, small enough, and NOERROR or
// NXDOMAIN (for its TTL: the smallest of its records, or its SOA's for a
// negative answer, RFC 2308), or SERVFAIL or an answer with nothing to
// go by (for failure_ttl). REFUSED, FORMERR and other rcodes are not
// kept.
func (c *Cache) keep(hash uint64, key, msg []byte, l *dnswire.Layout, r *caddydns.Request, now int64) {
	if len(msg) > c.MaxEntrySize || msg[2]&dnswire.FlagTC != 0 || !sameQuestion(msg, r.Msg) {
		return
	}
	failure := false
	switch {
	case l.Rcode == dns.RcodeServerFailure, dnswire.CacheableRcode(l.Rcode) && !l.Cacheable:
		failure = true
	case !l.Cacheable:
		return // REFUSED, FORMERR, NOTIMP, an extended rcode
	}
	e := &entry{key: append([]byte(nil), key...), msg: append([]byte(nil), msg...), stored: now, failure: failure}
	var ok bool
	if e.ttls, ok = dnswire.AppendTTLs(nil, e.msg); !ok {
		return
	}
	lifetime := time.Duration(c.FailureTTL)
	if !failure {
		lo, hi := uint32(time.Duration(c.MinTTL)/time.Second), uint32(time.Duration(c.MaxTTL)/time.Second)
		for _, off := range e.ttls {
			t := uint32(e.msg[off])<<24 | uint32(e.msg[off+1])<<16 | uint32(e.msg[off+2])<<8 | uint32(e.msg[off+3])
			t = min(max(t, lo), hi)
			e.msg[off], e.msg[off+1], e.msg[off+2], e.msg[off+3] = byte(t>>24), byte(t>>16), byte(t>>8), byte(t)
		}
		lay, _ := dnswire.Walk(e.msg)
		lay.TTL = min(max(lay.TTL, lo), hi) // a negative answer's SOA minimum too
		e.l = lay                           // the entry's own: l stays the caller's answer's
		lifetime = time.Duration(lay.TTL) * time.Second
	} else {
		e.l = *l
	}
	e.expires = now + int64(lifetime)
	e.staleUntil = e.expires
	if !failure {
		e.staleUntil += int64(c.stale)
	}
	if e.staleUntil <= now {
		return // TTL 0 and no serve-stale: nothing to keep
	}
	c.store.put(hash, e)
}

// sameQuestion reports whether the answer msg is to q's question (name
// in any case, type and class).
func sameQuestion(msg []byte, q *dns.Msg) bool {
	name, off, err := dns.UnpackDomainName(msg, dnswire.HeaderLen)
	if err != nil || off+4 > len(msg) {
		return false
	}
	qn := q.Question[0]
	return strings.EqualFold(name, qn.Name) &&
		uint16(msg[off])<<8|uint16(msg[off+1]) == qn.Qtype && uint16(msg[off+2])<<8|uint16(msg[off+3]) == qn.Qclass
}

// maybePrefetch refreshes e in the background, once, when it has been hit
// prefetch times and reaches the last tenth of its lifetime; the client
// is answered from e meanwhile.
func (c *Cache) maybePrefetch(e *entry, hash uint64, now int64, r *caddydns.Request, next caddydns.Next) {
	if c.Prefetch == 0 || e.failure {
		return
	}
	if int(e.hits.Add(1)) < c.Prefetch || now < e.expires-(e.expires-e.stored)/10 || !e.prefetching.CompareAndSwap(false, true) {
		return
	}
	f := &flight{done: make(chan struct{})}
	if _, loaded := c.store.flights.LoadOrStore(hash, f); loaded {
		return // already being asked
	}
	c.store.prefetches.Add(1)
	rr := *r
	rr.Msg = r.Msg.Copy()
	key := append([]byte(nil), e.key...)
	go func() {
		defer func() {
			c.store.flights.Delete(hash)
			close(f.done)
		}()
		c.fetch(context.Background(), &rr, next, hash, key, e, f)
	}()
}
