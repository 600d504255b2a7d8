// Package caddydns is dnsfront's DNS core: the handler contract (modules
// in the namespace `dns.handlers`), the chain that runs them, and what
// every transport needs done to a query and its answer: decoding, the
// checks no handler should see (FORMERR, NOTIMP, BADVERS), finishing the
// answer for the client (ID, question, EDNS, keepalive, padding), the
// cache lifetime of the answer, and the query metrics. Transports (the
// `dot` app, the `doh` HTTP handler) frame octets: they hand a query's
// octets to Chain.Serve and send back the Answer. Handlers live in
// packages of their own (caddydns/zone, caddydns/forward); this package
// imports none of them.
package caddydns

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/miekg/dns"
	"go.uber.org/zap"
)

// Request is one query as the handlers see it.
type Request struct {
	// Msg is the query. Handlers must not modify it; forward copies it.
	Msg *dns.Msg
	// Transport is "dot", "doh", ... (metrics and logs).
	Transport string
	// Server names the server or handler that received it (metrics).
	Server string
	// Client is the client's address (after trusted proxies for DoH).
	Client netip.AddrPort
	// Local is the server's address the client connected to: the
	// connection's own, or the destination a trusted PROXY header gives
	// (a load balancer's address the client reached). forward's
	// proxy_protocol passes it on. Invalid when unknown.
	Local netip.AddrPort
	// ServerName is the TLS server name (SNI) the client's connection
	// asked for, as it sent it; "" when it sent none, or came without TLS.
	ServerName string
	// Path is the HTTP request path a DoH query came by, as it was sent
	// (percent-escapes kept); "" on DoT.
	Path string
	// Size is the largest response the client accepts: 65535 on stream
	// transports.
	Size int
	// Keepalive is, on a transport whose connections are DNS's own (DoT),
	// the idle timeout of the query's connection: the answer to a query
	// with an edns-tcp-keepalive option announces it (RFC 7828 3.3.2, in
	// 100 ms units), KeepaliveClose as 0 (the server is closing: send no
	// more on this connection). 0 (DoH, whose connections HTTP manages):
	// the option is ignored.
	Keepalive time.Duration

	// ECS says the query's EDNS Client Subnet option (RFC 7871), or its
	// lack of one, is what goes upstream: set by the ecs handler, which
	// puts the option its policy chooses into Msg. Unset, forward strips
	// the client's option (the default policy, for privacy), and a cache
	// does not key by it.
	ECS bool

	// NSID is the server's identity that the answer carries in an NSID
	// option (RFC 5001), set by the nsid handler for a query that asks for
	// it; nil: none.
	NSID []byte

	// Upstream and Cache are what the handlers did with the query, for
	// the query log: the upstream that answered it (set by forward) and
	// the cache's verdict (CacheHit, CacheMiss, CacheStale; "" with no
	// cache).
	Upstream string
	Cache    string

	// Tap, set by a handler (dnstap), sees the messages of the query as
	// they pass: the answer the client gets (the chain calls it), and the
	// queries to upstreams and their answers (forward calls it).
	Tap Tap

	start time.Time // when Serve (or ServeMsg) took the query
	query []byte    // the query's octets, while the handlers run
	msg   dns.Msg   // Msg's storage: Serve decodes the query into it
	quick quickMsg  // and, for the common query, its question and OPT record
}

// Requests are reused by the transports: a query then allocates neither
// its Request nor its decoded message (Serve decodes into the Request).
var requests = sync.Pool{New: func() any { return new(Request) }}

// AcquireRequest returns an empty Request from the pool.
func AcquireRequest() *Request { return requests.Get().(*Request) }

// ReleaseRequest empties r and returns it to the pool, once Serve has
// returned. Nothing may hold r or r.Msg past Serve: a handler that works
// on in the background copies what it needs (the cache's prefetch does).
func ReleaseRequest(r *Request) {
	*r = Request{}
	requests.Put(r)
}

// Clone returns a copy of r for work that goes on after Serve returns
// (a cache's prefetch, a flight it lets finish): its own Msg and its own
// copy of the query's octets, which r has in the transport's buffer,
// reused once Serve returns. Not pooled: it is the garbage collector's.
func (r *Request) Clone() *Request {
	c := *r
	c.msg, c.quick = dns.Msg{}, quickMsg{} // r's storage, which c.Msg does not use
	c.Msg = r.Msg.Copy()
	c.query = append([]byte(nil), r.query...)
	return &c
}

// Ask returns a request for the question q on r's behalf: r's client,
// transport, server and flags, a message of its own with r's header and
// OPT record and q for its question, and no octets (a query made here).
// A handler that answers r with the answer to another name (the target
// of a CNAME it makes) asks the rest of the chain with it.
func (r *Request) Ask(q dns.Question) *Request {
	c := *r
	c.msg, c.quick = dns.Msg{}, quickMsg{}
	c.Msg = r.Msg.Copy()
	c.Msg.Question = []dns.Question{q}
	c.query = nil
	c.Upstream, c.Cache = "", ""
	return &c
}

// Octets returns the query as the client sent it; valid while the
// handlers run, nil for a query made here (DoH's JSON API).
func (r *Request) Octets() []byte { return r.query }

// Start returns when the chain took the query: dnstap's query time, and
// the clock reading of handlers that need one for the query (ratelimit),
// which saves them reading the clock again. Zero for a Request that did
// not come through Serve or ServeMsg.
func (r *Request) Start() time.Time { return r.start }

// Now is the clock reading a handler takes for the query, in Unix
// nanoseconds: Start's (a reading the query has already paid for), or
// the clock's for a Request that did not come through the chain.
func (r *Request) Now() int64 {
	if !r.start.IsZero() {
		return r.start.UnixNano()
	}
	return time.Now().UnixNano()
}

// Tap sees a query's messages as they pass (see Request.Tap). Its
// methods must neither block nor keep msg.
type Tap interface {
	// ClientResponse sees the answer the client gets, finished at at.
	ClientResponse(r *Request, at time.Time, msg []byte)
	// ForwarderQuery sees each message a forwarder sends upstream, as it
	// goes on the wire, and ForwarderResponse the answer it takes.
	ForwarderQuery(r *Request, to Hop, msg []byte)
	ForwarderResponse(r *Request, from Hop, msg []byte)
}

// Hop is the far end of one of a forwarder's exchanges with an upstream.
type Hop struct {
	// Addr is its address; invalid for an upstream given by host name.
	Addr netip.AddrPort
	// Transport is what the message went over: "udp", "tcp" or "tls"
	// (a UDP upstream's truncated answer is asked again over "tcp").
	Transport string
}

// The cache's verdicts on a query (Request.Cache).
const (
	CacheHit   = "hit"
	CacheMiss  = "miss"
	CacheStale = "stale"
)

// ErrDrop, returned by a handler (an ACL, a rate limit), asks the
// transport to answer nothing at all: DoT closes the connection, DoH
// resets the request's stream (closes an HTTP/1.1 connection).
var ErrDrop = errors.New("dropped by policy")

// ExtendedError is a handler's error with the Extended DNS Error (RFC
// 8914) that the SERVFAIL the chain answers for it carries, to a client
// that sent EDNS: forward's No Reachable Authority or Network Error, so
// that the client (kdig and dig show it) and its operator can tell a
// dead upstream from a failure of the name's own servers. The code says
// only what kind of failure it was: no upstream address or error text
// goes to the client.
type ExtendedError struct {
	Code uint16 // dns.ExtendedErrorCode*
	Err  error
}

func (e *ExtendedError) Error() string { return e.Err.Error() }
func (e *ExtendedError) Unwrap() error { return e.Err }

// EDE returns the Extended DNS Error code that err carries (see
// ExtendedError), if any.
func EDE(err error) (uint16, bool) {
	var e *ExtendedError
	if errors.As(err, &e) {
		return e.Code, true
	}
	return 0, false
}

// ServfailFor is the SERVFAIL answer to q when a handler failed with err:
// with the Extended DNS Error err carries, in an OPT record that finish
// keeps only for a client that sent EDNS.
func ServfailFor(q *dns.Msg, err error) *dns.Msg {
	m := new(dns.Msg)
	m.SetRcode(q, dns.RcodeServerFailure)
	if code, ok := EDE(err); ok {
		opt := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
		opt.Option = []dns.EDNS0{&dns.EDNS0_EDE{InfoCode: code}}
		m.Extra = append(m.Extra, opt)
	}
	return m
}

// KeepaliveClose is the Keepalive of a connection the server is closing.
const KeepaliveClose time.Duration = -1

// Name is the query name, lower-cased.
func (r *Request) Name() string { return dns.CanonicalName(r.Msg.Question[0].Name) }

// Type is the query type.
func (r *Request) Type() uint16 { return r.Msg.Question[0].Qtype }

// Handler answers DNS queries or passes them on: a module in the
// namespace `dns.handlers`. A handler that does not answer calls next.
// The Request and its Msg are reused once the chain returns: a handler
// that works on past ServeDNS copies what it needs.
type Handler interface {
	ServeDNS(ctx context.Context, r *Request, next Next) (Response, error)
}

// Next is the rest of the chain.
type Next func(ctx context.Context, r *Request) (Response, error)

// Response is a handler's answer: a message it made (Msg), or an
// upstream's answer as the upstream sent it (Wire, see NewWire), which
// goes to the client with only its header, question and OPT record
// rewritten. A handler that needs to look into an answer it got from next
// calls Message.
type Response struct {
	Msg  *dns.Msg
	Wire *Wire
}

// Message returns the answer as a message, decoding an upstream's.
func (r *Response) Message() (*dns.Msg, error) {
	if r.Msg == nil && r.Wire != nil {
		m := new(dns.Msg)
		if err := m.Unpack(r.Wire.msg); err != nil {
			return nil, fmt.Errorf("decoding the upstream's answer: %w", err)
		}
		r.Msg = m
	}
	return r.Msg, nil
}

// Chain is the handler chain a transport serves through. Embed it in a
// transport's configuration and Provision it.
type Chain struct {
	// HandlersRaw is the list of handlers, in order. A query no handler
	// answers gets REFUSED.
	HandlersRaw []json.RawMessage `json:"handle,omitempty" caddy:"namespace=dns.handlers inline_key=handler"`

	handlers []Handler
	next     Next
	dropper  ClientDropper // the handler whose drops come before any answer, or nil
	logger   *zap.Logger
	metrics  *serverMetrics
}

// Provision loads the handlers and compiles the chain. server and
// transport label the metrics.
func (c *Chain) Provision(ctx caddy.Context, server, transport string) error {
	c.logger = ctx.Logger()
	mods, err := ctx.LoadModule(c, "HandlersRaw")
	if err != nil {
		return fmt.Errorf("loading dns handlers: %w", err)
	}
	for _, m := range mods.([]any) {
		c.handlers = append(c.handlers, m.(Handler))
	}
	c.compile()
	registerMetrics(ctx)
	c.metrics = newServerMetrics(server, transport)
	return nil
}

// NewChain returns a chain of handlers made without Caddy (tests, and
// programs that embed the handlers): it logs nowhere, and its metrics
// are counted but registered nowhere.
func NewChain(server, transport string, handlers ...Handler) *Chain {
	c := &Chain{handlers: handlers, logger: zap.NewNop(), metrics: newServerMetrics(server, transport)}
	c.compile()
	return c
}

// ClientDropper is a handler that drops every query of some clients,
// whatever they ask (an acl whose action is drop).
type ClientDropper interface {
	DropsClient(client netip.Addr) bool
}

// Watcher is a handler that passes every query on and answers none
// itself: it only watches them go by (the query log, dnstap).
type Watcher interface {
	WatchesOnly()
}

// DropsClient reports whether every query of client is dropped before
// any handler could answer it: the first handler past the watchers is a
// ClientDropper that drops the client. A transport then closes the
// client's connections as it accepts them, before their TLS handshake,
// as dnsdist does with its ACL.
func (c *Chain) DropsClient(client netip.Addr) bool {
	return c.dropper != nil && c.dropper.DropsClient(client)
}

// compile links the handlers, each one's next the rest of the chain.
func (c *Chain) compile() {
	c.dropper = nil
	for _, h := range c.handlers {
		if _, ok := h.(Watcher); ok {
			continue
		}
		c.dropper, _ = h.(ClientDropper)
		break
	}
	c.next = refused
	for i := len(c.handlers) - 1; i >= 0; i-- {
		h, next := c.handlers[i], c.next
		c.next = func(ctx context.Context, r *Request) (Response, error) {
			return h.ServeDNS(ctx, r, next)
		}
	}
}

// Exampler is a handler that can name a query it answers itself (a
// zone: its apex SOA), for the hint a transport logs when it starts.
type Exampler interface {
	ExampleQuery() (name string, qtype uint16)
}

// ExampleQuery returns a query the chain answers, as "name TYPE": the
// first handler's that names one, or "example.org A" (a forwarder's).
func (c *Chain) ExampleQuery() string {
	for _, h := range c.handlers {
		if e, ok := h.(Exampler); ok {
			name, qtype := e.ExampleQuery()
			return name + " " + dns.TypeToString[qtype]
		}
	}
	return "example.org A"
}

// refused ends the chain: no handler is configured for the name.
func refused(_ context.Context, r *Request) (Response, error) {
	m := new(dns.Msg)
	m.SetRcode(r.Msg, dns.RcodeRefused)
	return Response{Msg: m}, nil
}

// ParseType reads a record type: a mnemonic (AAAA, any case), TYPEnnn
// (RFC 3597) or a number, 1 to 65535.
func ParseType(v string) (uint16, bool) {
	if t, ok := dns.StringToType[strings.ToUpper(v)]; ok {
		return t, true
	}
	n, err := strconv.ParseUint(strings.TrimPrefix(strings.ToUpper(v), "TYPE"), 10, 16)
	if err != nil || n == 0 {
		return 0, false
	}
	return uint16(n), true
}

// InDomain reports whether name (fully qualified, presentation form, any
// letter case) is parent (fully qualified, lower case) or a name under
// it, as dns.IsSubDomain does, without splitting either into labels: the
// handlers that look at a query's name (zone, route) call it once a
// query.
func InDomain(name, parent string) bool {
	if parent == "." {
		return true
	}
	if len(name) < len(parent) {
		return false
	}
	if tail := name[len(name)-len(parent):]; tail != parent && !strings.EqualFold(tail, parent) {
		return false // (== first: a canonical name, as the zone's, matches without folding)
	}
	if len(name) == len(parent) {
		return true
	}
	// the octet before is a label's end: a dot no backslash escapes (an
	// odd number of them before it does: www\.example.org. is the label
	// "www.example" under org.)
	i := len(name) - len(parent) - 1
	if name[i] != '.' {
		return false
	}
	n := 0
	for j := i - 1; j >= 0 && name[j] == '\\'; j-- {
		n++
	}
	return n%2 == 0
}
