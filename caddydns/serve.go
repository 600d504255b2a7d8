package caddydns

import (
	"context"
	"errors"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/dnsfront/dnsfront/caddydns/dnswire"
)

// Answer is what a transport sends back for one query.
type Answer struct {
	// Wire is the packed answer, in the buffer the transport passed; nil
	// from ServeMsg, and for a query too short to hold a header.
	Wire []byte
	// Rcode is the answer's response code (with EDNS's extended bits).
	Rcode int
	// TTL is how long the answer may be cached when Cacheable (RFC 8484
	// 5.1, for DoH's Cache-Control): see dnswire.CacheTTL.
	TTL       uint32
	Cacheable bool
	// Malformed says the query did not decode; the answer is a FORMERR
	// (when the query had a header to answer). DoH answers such a request
	// with 400 instead (RFC 8484 4.2.1).
	Malformed bool
	// Drop says a handler dropped the query (ErrDrop): the transport
	// answers nothing. Wire is nil.
	Drop bool
}

// Serve answers the query in the octets query and appends the packed
// answer to buf[:0]: it decodes the query (an undecodable one is
// answered FORMERR here), checks it (FORMERR, NOTIMP, BADVERS), runs the
// chain, and finishes the answer for the client (its ID and question,
// EDNS, padding). A handler error becomes SERVFAIL. Every query is counted
// in the metrics, by rcode. r.Msg is set to the decoded query. query and
// buf may share memory: the query is decoded before anything is written.
func (c *Chain) Serve(ctx context.Context, r *Request, query []byte, buf []byte) Answer {
	r.start = time.Now()
	q, formErr := decode(query, &r.msg, &r.quick)
	if q == nil {
		return c.malformed(r, formErr, buf)
	}
	r.Msg, r.query = q, query
	var res Response
	var err error
	if resp := checkQuery(r, query); resp != nil {
		res.Msg = resp
	} else {
		// the deepest call of a forwarded query runs on top of this
		// frame, kept small (the rest in functions of their own): see
		// dohhandler's ServeHTTP
		res, err = c.next(ctx, r)
	}
	return c.answer(r, res, err, buf)
}

// answer makes the Answer to r from what the chain returned.
//
//go:noinline
func (c *Chain) answer(r *Request, res Response, err error, buf []byte) Answer {
	if err != nil && errors.Is(err, ErrDrop) {
		return Answer{Drop: true}
	}
	if err == nil && res.Msg == nil && res.Wire != nil {
		if out, rcode, ok := finishWire(r, res.Wire, buf); ok {
			l := res.Wire.Layout()
			a := Answer{Wire: out, Rcode: rcode, TTL: l.TTL, Cacheable: l.Cacheable && dnswire.CacheableRcode(rcode)}
			res.Wire.Release()
			c.done(r, rcode, out)
			return a
		}
	}
	a := c.pack(r, c.message(r, res, err), buf)
	c.done(r, a.Rcode, a.Wire)
	return a
}

// done counts an answered query in the metrics, and shows its answer
// out, if any, to r's Tap: the two from one reading of the clock.
func (c *Chain) done(r *Request, rcode int, out []byte) {
	if r.Tap == nil {
		c.metrics.observe(rcode, time.Since(r.start))
		return
	}
	now := time.Now()
	c.metrics.observe(rcode, now.Sub(r.start))
	if out != nil {
		r.Tap.ClientResponse(r, now, out)
	}
}

// malformed is the Answer to a query that does not decode.
//
//go:noinline
func (c *Chain) malformed(r *Request, formErr *dns.Msg, buf []byte) Answer {
	a := Answer{Rcode: dns.RcodeFormatError, Malformed: true}
	if formErr != nil {
		a.Wire, _ = fitMessage(formErr, buf[:cap(buf)])
	}
	c.metrics.observe(a.Rcode, time.Since(r.start))
	return a
}

// ServeMsg answers the query r.Msg as Serve does, but returns the
// finished answer as a message, not packed (the JSON API: no pack and
// unpack between the chain and the JSON). Answer.Wire is nil; so is the
// message when the query was dropped (Answer.Drop).
func (c *Chain) ServeMsg(ctx context.Context, r *Request) (*dns.Msg, Answer) {
	r.start = time.Now()
	resp := checkQuery(r, nil)
	if resp == nil {
		res, err := c.next(ctx, r)
		if err != nil && errors.Is(err, ErrDrop) {
			return nil, Answer{Drop: true}
		}
		resp = c.message(r, res, err)
	}
	finish(r, resp)
	var packed []byte
	if r.Tap != nil {
		packed, _ = resp.Pack()
	}
	c.done(r, resp.Rcode, packed)
	ttl, cacheable := msgTTL(resp)
	return resp, Answer{Rcode: resp.Rcode, TTL: ttl, Cacheable: cacheable}
}

// message is the chain's answer as a message: SERVFAIL when it failed.
func (c *Chain) message(r *Request, res Response, err error) *dns.Msg {
	var resp *dns.Msg
	if err == nil {
		resp, err = res.Message()
	}
	if err != nil || resp == nil {
		resp = c.servfail(r, err)
	}
	return resp
}

// pack finishes resp for r and packs it into buf; a message that does
// not pack (a handler's bug) is logged and answered with SERVFAIL.
func (c *Chain) pack(r *Request, resp *dns.Msg, buf []byte) Answer {
	finish(r, resp)
	buf = buf[:cap(buf)] // PackBuffer packs into buf's length
	out, err := fitMessage(resp, buf)
	if err != nil {
		c.logger.Error("packing answer", zap.Stringer("client", r.Client), zap.Error(err))
		resp = new(dns.Msg)
		resp.SetRcode(r.Msg, dns.RcodeServerFailure)
		finish(r, resp)
		out, _ = fitMessage(resp, buf)
	}
	if hasOption(r.Msg.IsEdns0(), dns.EDNS0PADDING) {
		if l, ok := dnswire.Walk(out); ok && l.OPTLast {
			out = dnswire.AppendPadding(out, l.OPTRdata-2)
		}
	}
	ttl, cacheable := msgTTL(resp)
	return Answer{Wire: out, Rcode: resp.Rcode, TTL: ttl, Cacheable: cacheable}
}

// servfail is the answer when the chain failed. It is a function of its
// own to keep Serve's frame small: see dohhandler's ServeHTTP.
//
//go:noinline
func (c *Chain) servfail(r *Request, err error) *dns.Msg {
	if ce := c.logger.Check(zapcore.DebugLevel, "query failed"); ce != nil {
		ce.Write(zap.String("name", r.Msg.Question[0].Name), zap.Uint16("type", r.Type()),
			zap.Stringer("client", r.Client), zap.Error(err))
	}
	return ServfailFor(r.Msg, err)
}
