package cache

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"time"

	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/caddydns/dnswire"
)

// staleOK reports whether e may be answered stale at now (RFC 8767).
func (c *Cache) staleOK(e *entry, now int64) bool {
	return e != nil && !e.failure && c.stale > 0 && now < c.store.staleUntil(e.expires, false)
}

// miss asks the rest of the chain, once for all the identical misses of
// the moment (coalescing), and keeps the answer. When the chain fails,
// an expired entry young enough is answered stale; with
// stale_answer_timeout, it is also when the chain is slow. rejected is
// the look-up's doorkeeper's (see keep).
func (c *Cache) miss(ctx context.Context, r *caddydns.Request, next caddydns.Next, hash uint64, key []byte, old *entry, rejected bool) (caddydns.Response, error) {
	timed := c.StaleAnswerTimeout > 0 && c.staleOK(old, time.Now().UnixNano())
	f, own := c.store.flights.join(hash, timed)
	if !own {
		c.store.coalesced.Add(1)
		return c.await(ctx, r, f, old)
	}
	if timed {
		return c.missTimed(ctx, r, next, hash, key, old, f)
	}
	// the query is the flight's, not only this client's: it goes on when
	// this client gives up (its waiters, and the store, want the answer);
	// the chain's own timeouts bound it
	res, err := c.fetch(detached(ctx), r, next, hash, key, old, rejected)
	c.store.flights.land(hash, res, err)
	if res.Wire == nil {
		if now := time.Now().UnixNano(); c.staleOK(old, now) {
			c.store.staleServed.Add(1)
			r.Cache = caddydns.CacheStale
			return caddydns.Response{Wire: old.answer(now, StaleTTL)}, nil
		}
		return caddydns.Response{}, err
	}
	return res, nil
}

// missTimed is a miss with stale_answer_timeout and an entry that may be
// answered stale: the flight goes on in the background, and the client
// gets whichever comes first, its answer or the stale one.
func (c *Cache) missTimed(ctx context.Context, r *caddydns.Request, next caddydns.Next, hash uint64, key []byte, old *entry, f *flight) (caddydns.Response, error) {
	rr := r.Clone()                      // the client's request may end before the flight
	owned := append([]byte(nil), key...) // key is the caller's, on its stack
	go func() {
		res, err := c.fetch(detached(ctx), rr, next, hash, owned, old, false)
		c.store.flights.land(hash, res, err)
		if res.Wire != nil {
			res.Wire.Release()
		}
	}()
	timer := time.NewTimer(time.Duration(c.StaleAnswerTimeout))
	defer timer.Stop()
	select {
	case <-f.done:
		return c.orStale(r, f, old)
	case <-timer.C:
		c.store.staleServed.Add(1)
		r.Cache = caddydns.CacheStale
		return caddydns.Response{Wire: old.answer(time.Now().UnixNano(), StaleTTL)}, nil
	case <-ctx.Done():
		return caddydns.Response{}, ctx.Err()
	}
}

// detached is ctx without its cancellation: ctx itself when it has none
// (a transport's Background), with no allocation.
func detached(ctx context.Context) context.Context {
	if ctx.Done() == nil {
		return ctx
	}
	return context.WithoutCancel(ctx)
}

// await waits for the flight f as one of its waiters.
func (c *Cache) await(ctx context.Context, r *caddydns.Request, f *flight, old *entry) (caddydns.Response, error) {
	select {
	case <-f.done:
	case <-ctx.Done():
		return caddydns.Response{}, ctx.Err()
	}
	return c.orStale(r, f, old)
}

// errNoAnswer is a flight's error when the chain returned no answer and
// no error (a handler's bug).
var errNoAnswer = errors.New("cache: the next handlers gave no answer")

// orStale is the flight's answer, or old's stale when the flight failed
// and old may be served stale.
func (c *Cache) orStale(r *caddydns.Request, f *flight, old *entry) (caddydns.Response, error) {
	if f.msg == nil {
		if now := time.Now().UnixNano(); c.staleOK(old, now) {
			c.store.staleServed.Add(1)
			r.Cache = caddydns.CacheStale
			return caddydns.Response{Wire: old.answer(now, StaleTTL)}, nil
		}
	}
	return f.response()
}

// fetch asks the rest of the chain for r, and keeps what may be kept. Its
// answer is always octets (Wire); with none, err says why. A failure is
// remembered: an entry that may be served stale is, without asking, for
// failure_ttl (RFC 8767 5); with none, a SERVFAIL is kept for
// failure_ttl, so that a dead upstream is not asked again and again.
func (c *Cache) fetch(ctx context.Context, r *caddydns.Request, next caddydns.Next, hash uint64, key []byte, old *entry, rejected bool) (caddydns.Response, error) {
	res, err := next(ctx, r)
	if err == nil && res.Wire == nil && res.Msg != nil {
		m := res.Msg.Copy() // the handler's own: it is packed compressed
		m.Compress = true
		if b, perr := m.Pack(); perr == nil {
			if l, ok := dnswire.Walk(b); ok {
				res = caddydns.Response{Wire: caddydns.NewWire(b, &l)}
			}
		}
	}
	if err == nil && res.Wire != nil {
		c.keep(hash, key, res.Wire.Bytes(), res.Wire.Layout(), r, rejected)
		return caddydns.Response{Wire: res.Wire}, nil
	}
	if err == nil {
		err = errNoAnswer
	}
	if now := time.Now().UnixNano(); c.staleOK(old, now) {
		c.store.failed(hash, key, old.stored, now+int64(c.FailureTTL))
		return caddydns.Response{}, err
	}
	sf := caddydns.ServfailFor(r.Msg, err) // with its Extended DNS Error, for those answered from it too
	if b, perr := sf.Pack(); perr == nil {
		if l, ok := dnswire.Walk(b); ok {
			c.keep(hash, key, b, &l, r, rejected)
		}
	}
	return caddydns.Response{}, err
}

// keep stores a copy of the answer msg to r, laid out in l, if it may be
// kept: not truncated, to r's question, small enough, and NOERROR or
// NXDOMAIN (for its TTL: the smallest of its records, or its SOA's for a
// negative answer, RFC 2308, at most max_negative_ttl), or SERVFAIL or an
// answer with nothing to go by (for failure_ttl). REFUSED, FORMERR and
// other rcodes are not kept. An answer for every subnet (ECS scope 0) is
// kept under key's zeroKey. rejected says the doorkeeper turned key
// away at its look-up (a full cache, a key not asked lately): such an
// answer is not kept, unless it goes under the zeroKey (that key's own
// doorkeeper judges it in put). The entry is stored as of now: the clock
// is read only for an answer that may be kept (a flood's answers, turned
// away, cost no reading).
func (c *Cache) keep(hash uint64, key, msg []byte, l *dnswire.Layout, r *caddydns.Request, rejected bool) {
	if len(msg) > c.MaxEntrySize || msg[2]&dnswire.FlagTC != 0 {
		return
	}
	failure := false
	switch {
	case l.Rcode == dns.RcodeServerFailure, dnswire.CacheableRcode(l.Rcode) && !l.Cacheable:
		failure = true
	case !l.Cacheable:
		return // REFUSED, FORMERR, NOTIMP, an extended rcode
	}
	if rejected {
		if scope, ok := dnswire.ECSScope(msg, l); !ok || scope != 0 {
			c.store.notAdmitted.Add(1)
			return
		}
	}
	if !sameQuestion(msg, l, r) {
		return
	}
	var tb [32]uint16
	ttls, ok := dnswire.AppendTTLs(tb[:0], msg)
	if !ok {
		return
	}
	lifetime := time.Duration(c.FailureTTL)
	lay := *l // the entry's own: l stays the caller's answer's
	if !failure {
		lo, hi := uint32(time.Duration(c.MinTTL)/time.Second), uint32(time.Duration(c.MaxTTL)/time.Second)
		if l.Rcode == dns.RcodeNameError || binary.BigEndian.Uint16(msg[6:]) == 0 {
			hi = min(hi, uint32(time.Duration(c.MaxNegativeTTL)/time.Second)) // NXDOMAIN or NODATA
		}
		for _, off := range ttls {
			if t := binary.BigEndian.Uint32(msg[off:]); t < lo || t > hi {
				msg = clampTTLs(msg, ttls, lo, hi)
				lay, _ = dnswire.Walk(msg)
				break
			}
		}
		lay.TTL = min(max(lay.TTL, lo), hi) // a negative answer's SOA minimum too
		lifetime = time.Duration(lay.TTL) * time.Second
	}
	now := time.Now().UnixNano()
	expires := now + int64(lifetime)
	if c.store.staleUntil(expires, failure) <= now {
		return // TTL 0 and no serve-stale: nothing to keep
	}
	var zb [320]byte
	if scope, ok := dnswire.ECSScope(msg, &lay); ok && scope == 0 {
		// for every subnet (RFC 7871 7.3.1): kept once for all of them,
		// and the subnet's own record, expired, is no use any more
		if zk, ok := zeroKey(zb[:0], key); ok {
			c.store.drop(hash, key)
			key, hash = zk, hashKey(zk)
		}
	}
	c.store.put(hash, key, msg, ttls, packLayout(&lay), now, expires, failure)
}

// sameQuestion reports whether the answer msg, laid out in l, is to r's
// question (name in any case, type and class): as the client sent it
// (its octets, when it came through the chain), else packed here.
func sameQuestion(msg []byte, l *dnswire.Layout, r *caddydns.Request) bool {
	if question := dnswire.Question(r.Octets()); question != nil {
		return dnswire.Answers(msg, l, question) != dnswire.OtherQuestion
	}
	qn := r.Msg.Question[0]
	var b [255 + 4]byte // a name is at most 255 octets (RFC 1035 3.1)
	n, err := dns.PackDomainName(qn.Name, b[:], 0, nil, false)
	if err != nil || n+4 > len(b) {
		return false
	}
	b[n], b[n+1], b[n+2], b[n+3] = byte(qn.Qtype>>8), byte(qn.Qtype), byte(qn.Qclass>>8), byte(qn.Qclass)
	return dnswire.Answers(msg, l, b[:n+4]) != dnswire.OtherQuestion
}

// clampTTLs returns a copy of msg with the TTLs at the offsets ttls
// within lo and hi: the caller's answer keeps its own.
func clampTTLs(msg []byte, ttls []uint16, lo, hi uint32) []byte {
	msg = bytes.Clone(msg)
	for _, off := range ttls {
		binary.BigEndian.PutUint32(msg[off:], min(max(binary.BigEndian.Uint32(msg[off:]), lo), hi))
	}
	return msg
}

// prefetch refreshes e (a copy of an entry hit prefetch times in the
// last tenth of its lifetime) in the background, unless its key is being
// asked already; the client is answered from the entry meanwhile.
func (c *Cache) prefetch(e *entry, hash uint64, key []byte, r *caddydns.Request, next caddydns.Next) {
	if !c.store.flights.start(hash) {
		return // already being asked
	}
	c.store.prefetches.Add(1)
	rr := r.Clone()
	owned := append([]byte(nil), key...) // the caller's, on its stack (e's may be the answer for every subnet's)
	go func() {
		res, err := c.fetch(context.Background(), rr, next, hash, owned, e, false)
		c.store.flights.land(hash, res, err)
		if res.Wire != nil {
			res.Wire.Release()
		}
	}()
}
