package caddydns

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/dnsfront/dnsfront/caddydns/dnswire"
)

// testHandler answers for example.org. as a small zone would: an A
// record for www and any other name, NXDOMAIN with the SOA for nope, a
// CNAME and its target for alias; REFUSED outside the zone.
type testHandler struct{}

func (testHandler) ServeDNS(ctx context.Context, r *Request, next Next) (Response, error) {
	name := r.Name()
	if !dns.IsSubDomain("example.org.", name) {
		return next(ctx, r)
	}
	m := new(dns.Msg)
	m.SetReply(r.Msg)
	m.Authoritative = true
	rr := func(s string) dns.RR {
		x, err := dns.NewRR(s)
		if err != nil {
			panic(err)
		}
		return x
	}
	switch name {
	case "nope.example.org.":
		m.Rcode = dns.RcodeNameError
		m.Ns = append(m.Ns, rr("example.org. 3600 IN SOA ns1.example.org. hostmaster.example.org. 1 7200 3600 1209600 300"))
	case "alias.example.org.":
		m.Answer = append(m.Answer, rr("alias.example.org. 3600 IN CNAME www.example.org."), rr("www.example.org. 3600 IN A 192.0.2.80"))
	default:
		m.Answer = append(m.Answer, rr(name+" 3600 IN A 192.0.2.80"))
	}
	return Response{Msg: m}, nil
}

func testChain(testing.TB) *Chain { return NewChain("test", "test", testHandler{}) }

func ask(c *Chain, q *dns.Msg) *dns.Msg {
	return serveMsg(context.Background(), c, &Request{Msg: q, Transport: "test", Size: MaxMessage})
}

// serve runs r.Msg through c as a transport would: packed, and the answer's
// octets returned.
func serve(ctx context.Context, c *Chain, r *Request, buf []byte) []byte {
	b, err := r.Msg.Pack()
	if err != nil {
		panic(err)
	}
	return c.Serve(ctx, r, b, buf).Wire
}

// serveMsg runs r through c and decodes the answer; nil when it does not
// decode.
func serveMsg(ctx context.Context, c *Chain, r *Request) *dns.Msg {
	m := new(dns.Msg)
	if m.Unpack(serve(ctx, c, r, nil)) != nil {
		return nil
	}
	return m
}

func query(name string, qtype uint16) *dns.Msg {
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	return q
}

func rrOf(t *testing.T, s string) dns.RR {
	t.Helper()
	r, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestQueryValidation: what DESIGN.md's validation answers, and what no
// honest client sends (records where a query has none, TC) never reaches
// the handlers.
func TestQueryValidation(t *testing.T) {
	c := testChain(t)
	mk := func(f func(*dns.Msg)) *dns.Msg {
		q := query("www.example.org.", dns.TypeA)
		q.Id = 4242
		f(q)
		return q
	}
	for _, tc := range []struct {
		name  string
		q     *dns.Msg
		rcode int
	}{
		{"QR set", mk(func(q *dns.Msg) { q.Response = true }), dns.RcodeFormatError},
		{"opcode NOTIFY", mk(func(q *dns.Msg) { q.Opcode = dns.OpcodeNotify }), dns.RcodeNotImplemented},
		{"no question", mk(func(q *dns.Msg) { q.Question = nil }), dns.RcodeFormatError},
		{"two questions", mk(func(q *dns.Msg) { q.Question = append(q.Question, q.Question[0]) }), dns.RcodeFormatError},
		{"AXFR", mk(func(q *dns.Msg) { q.Question[0].Qtype = dns.TypeAXFR }), dns.RcodeNotImplemented},
		{"IXFR", mk(func(q *dns.Msg) { q.Question[0].Qtype = dns.TypeIXFR }), dns.RcodeNotImplemented},
		{"EDNS version 1", mk(func(q *dns.Msg) { q.SetEdns0(1232, false); q.IsEdns0().SetVersion(1) }), dns.RcodeBadVers},
		{"two OPT", mk(func(q *dns.Msg) { q.SetEdns0(1232, false); q.Extra = append(q.Extra, q.Extra[0]) }), dns.RcodeFormatError},
		{"TC set", mk(func(q *dns.Msg) { q.Truncated = true }), dns.RcodeFormatError},
		{"an answer record", mk(func(q *dns.Msg) { q.Answer = []dns.RR{rrOf(t, "www.example.org. 60 IN A 192.0.2.66")} }), dns.RcodeFormatError},
		{"an authority record", mk(func(q *dns.Msg) { q.Ns = []dns.RR{rrOf(t, "example.org. 60 IN NS ns.attacker.example.")} }), dns.RcodeFormatError},
		{"an additional record", mk(func(q *dns.Msg) {
			q.SetEdns0(1232, false)
			q.Extra = append(q.Extra, rrOf(t, "ns.example.org. 60 IN A 192.0.2.66"))
		}), dns.RcodeFormatError},
		{"TSIG", mk(func(q *dns.Msg) { q.SetTsig("key.", dns.HmacSHA256, 300, 0) }), dns.RcodeFormatError},
		{"qtype OPT", mk(func(q *dns.Msg) { q.Question[0].Qtype = dns.TypeOPT }), dns.RcodeFormatError},
		{"qtype TSIG", mk(func(q *dns.Msg) { q.Question[0].Qtype = dns.TypeTSIG }), dns.RcodeFormatError},
		{"qtype TKEY", mk(func(q *dns.Msg) { q.Question[0].Qtype = dns.TypeTKEY }), dns.RcodeFormatError},
		{"qtype MAILB", mk(func(q *dns.Msg) { q.Question[0].Qtype = dns.TypeMAILB }), dns.RcodeFormatError},
		{"qtype 128", mk(func(q *dns.Msg) { q.Question[0].Qtype = 128 }), dns.RcodeFormatError},
		{"qtype 127, a data type", mk(func(q *dns.Msg) { q.Question[0].Qtype = 127 }), dns.RcodeSuccess},
		{"qtype URI (256)", mk(func(q *dns.Msg) { q.Question[0].Qtype = dns.TypeURI }), dns.RcodeSuccess},
		{"qtype ANY", mk(func(q *dns.Msg) { q.Question[0].Qtype = dns.TypeANY }), dns.RcodeSuccess},
		{"OPT not owned by the root", mk(func(q *dns.Msg) { q.SetEdns0(1232, false); q.IsEdns0().Hdr.Name = "example.org." }), dns.RcodeFormatError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := ask(c, tc.q)
			if r.Rcode != tc.rcode || r.Id != 4242 || !r.Response {
				t.Fatalf("rcode %s id %d, want %s with the client's ID", dns.RcodeToString[r.Rcode], r.Id, dns.RcodeToString[tc.rcode])
			}
			if _, err := r.Pack(); err != nil {
				t.Fatalf("response does not pack: %v", err)
			}
		})
	}
}

func TestEDNSAndPadding(t *testing.T) {
	c := testChain(t)
	// no OPT in, none out
	if r := ask(c, query("www.example.org.", dns.TypeA)); r.IsEdns0() != nil {
		t.Fatal("OPT in the answer to a query without one")
	}
	// DO echoed
	q := query("www.example.org.", dns.TypeA)
	q.SetEdns0(4096, true)
	r := ask(c, q)
	if r.IsEdns0() == nil || !r.IsEdns0().Do() {
		t.Fatal("DO bit not echoed")
	}
	if hasOption(r.IsEdns0(), dns.EDNS0PADDING) {
		t.Fatal("padded without being asked")
	}
	// padding to a multiple of 468 when asked
	for _, name := range []string{"www.example.org.", "nope.example.org.", "alias.example.org."} {
		q := query(name, dns.TypeA)
		q.SetEdns0(1232, false)
		q.IsEdns0().Option = append(q.IsEdns0().Option, &dns.EDNS0_PADDING{Padding: make([]byte, 100)})
		b := serve(context.Background(), c, &Request{Msg: q, Transport: "test", Size: MaxMessage}, nil)
		if len(b)%dnswire.PaddingBlock != 0 {
			t.Fatalf("%s: padded answer is %d octets, not a multiple of %d", name, len(b), dnswire.PaddingBlock)
		}
	}
}

// countingHandler counts the queries that reach it, and answers them.
type countingHandler struct{ n *int }

func (h countingHandler) ServeDNS(ctx context.Context, r *Request, next Next) (Response, error) {
	*h.n++
	return testHandler{}.ServeDNS(ctx, r, next)
}

// TestQueryCutShort: a query whose question or records end before the
// message does, which miekg/dns decodes leniently, is answered FORMERR
// with the client's ID and never reaches a handler.
func TestQueryCutShort(t *testing.T) {
	var n int
	c := NewChain("cutshort", "test", countingHandler{&n})
	whole, err := query("www.example.org.", dns.TypeA).Pack()
	if err != nil {
		t.Fatal(err)
	}
	opt := []byte{0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0, 0, 0} // root, OPT, 1232, TTL 0, RDLEN 0
	withCounts := func(b []byte, an, ar byte) []byte {
		b = append([]byte(nil), b...)
		b[7], b[11] = an, ar
		return b
	}
	for _, tc := range []struct {
		name string
		raw  []byte
	}{
		{"question without its class", whole[:len(whole)-2]},
		{"question without its type and class", whole[:len(whole)-4]},
		{"ARCOUNT 1, no record", withCounts(whole, 0, 1)},
		{"ANCOUNT 1, no record, then an OPT", withCounts(append(append([]byte(nil), whole...), opt...), 1, 1)},
		{"OPT cut short", withCounts(append(append([]byte(nil), whole...), opt[:8]...), 0, 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.raw[0], tc.raw[1] = 0x12, 0x34
			n = 0
			a := c.Serve(context.Background(), &Request{Size: MaxMessage}, tc.raw, nil)
			m := new(dns.Msg)
			if err := m.Unpack(a.Wire); err != nil || m.Rcode != dns.RcodeFormatError || m.Id != 0x1234 || !m.Response {
				t.Fatalf("answer %v (%v), want FORMERR with ID 0x1234", m, err)
			}
			if n != 0 {
				t.Fatalf("the query reached the handler %d times", n)
			}
		})
	}
	// the whole query, and one with octets after its last record, are
	// answered by the handler
	for _, raw := range [][]byte{whole, append(append([]byte(nil), whole...), 0, 0, 0xFF)} {
		n = 0
		a := c.Serve(context.Background(), &Request{Size: MaxMessage}, raw, nil)
		if a.Rcode != dns.RcodeSuccess || n != 1 {
			t.Fatalf("a well-formed query: rcode %d, handler called %d times", a.Rcode, n)
		}
	}
}

func TestDecodeGarbage(t *testing.T) {
	if q, fe := decode([]byte{0xAB, 0xCD, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xFF}, new(dns.Msg), new(quickMsg)); q != nil || fe == nil ||
		fe.Id != 0xABCD || fe.Rcode != dns.RcodeFormatError {
		t.Fatalf("garbage after a header: %v %v", q, fe)
	}
	if q, fe := decode([]byte{1, 2, 3}, new(dns.Msg), new(quickMsg)); q != nil || fe != nil {
		t.Fatal("a message shorter than a header got an answer")
	}
	// through the chain, for every transport: FORMERR, counted
	c := NewChain("garbage", "test", testHandler{})
	formerrs := queriesTotal.WithLabelValues("garbage", "test", "FORMERR")
	a := c.Serve(context.Background(), &Request{Size: MaxMessage}, []byte{0xAB, 0xCD, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xFF}, nil)
	m := new(dns.Msg)
	if !a.Malformed || a.Rcode != dns.RcodeFormatError || m.Unpack(a.Wire) != nil || m.Id != 0xABCD || m.Rcode != dns.RcodeFormatError {
		t.Fatalf("garbage after a header: %+v", a)
	}
	if a := c.Serve(context.Background(), &Request{Size: MaxMessage}, []byte{1, 2, 3}, nil); !a.Malformed || a.Wire != nil {
		t.Fatalf("a message shorter than a header: %+v", a)
	}
	var got dto.Metric
	if err := formerrs.(prometheus.Metric).Write(&got); err != nil || got.GetCounter().GetValue() != 2 {
		t.Fatalf("%v FORMERR counted for 2 undecodable queries (%v)", got.GetCounter().GetValue(), err)
	}
}

func FuzzServe(f *testing.F) {
	c := testChain(f)
	var reached int
	raw := NewChain("fuzz", "test", countingHandler{&reached})
	for _, q := range []*dns.Msg{query("www.example.org.", dns.TypeA), query("alias.example.org.", dns.TypeANY)} {
		q.SetEdns0(1232, true)
		b, _ := q.Pack()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		// the octets as a client sent them: an answer with their ID
		// whenever there is a header, and a handler reached only by a
		// well-formed query
		reached = 0
		a := raw.Serve(context.Background(), &Request{Size: MaxMessage}, b, nil)
		if len(b) >= MinMessage {
			m := new(dns.Msg)
			if err := m.Unpack(a.Wire); err != nil || m.Id != binary.BigEndian.Uint16(b) || !m.Response {
				t.Fatalf("answer to the octets: %v (%v)", m, err)
			}
		}
		if _, ok := dnswire.Walk(b); reached > 0 && !ok {
			t.Fatal("a query that is not well-formed reached the handler")
		}
		q, fe := decode(b, new(dns.Msg), new(quickMsg))
		if q == nil {
			if fe != nil {
				if _, err := fe.Pack(); err != nil {
					t.Fatalf("FORMERR does not pack: %v", err)
				}
			}
			return
		}
		r := ask(c, q)
		if r == nil {
			t.Fatal("answer does not decode")
		}
		if r.Id != q.Id || !r.Response {
			t.Fatal("answer lost the query's ID")
		}
	})
}

func TestHugeAnswerFits(t *testing.T) {
	m := new(dns.Msg)
	m.SetQuestion("big.example.org.", dns.TypeTXT)
	for i := 0; i < 400; i++ {
		m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: "big.example.org.", Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60},
			Txt: []string{strings.Repeat("x", 250)}})
	}
	out, err := fitMessage(m, nil)
	if err != nil || len(out) > MaxMessage || !m.Truncated {
		t.Fatalf("%d octets, truncated %v, %v", len(out), m.Truncated, err)
	}
}

// TestServeIntoBuffer: the answer is packed into the caller's buffer when
// it is large enough (transports pool their buffers), both for a
// handler's message and for an upstream's answer passed through.
func TestServeIntoBuffer(t *testing.T) {
	wire := upstreamAnswers(t)["a with opt"]
	l, _ := dnswire.Walk(wire)
	zone := testChain(t)
	fwd := testChain(t)
	fwd.next = func(context.Context, *Request) (Response, error) { return Response{Wire: NewWire(wire, &l)}, nil }
	for name, c := range map[string]*Chain{"zone": zone, "passed through": fwd} {
		buf := make([]byte, 0, 4096)
		q := query("www.example.org.", dns.TypeA)
		out := serve(context.Background(), c, &Request{Msg: q, Transport: "test", Size: MaxMessage}, buf)
		if len(out) < MinMessage || &out[0] != &buf[:1][0] {
			t.Fatalf("%s: answer of %d octets not packed into the caller's buffer", name, len(out))
		}
	}
}

// keepaliveOption reads the edns-tcp-keepalive options of a packed answer
// off the wire: how many there are, and the TIMEOUT of the last (with an
// OPTION-LENGTH of 2, as a server must send it; -1 for another length).
func keepaliveOption(t *testing.T, b []byte) (n, timeout int) {
	t.Helper()
	l, ok := dnswire.Walk(b)
	if !ok {
		t.Fatalf("answer does not walk: % x", b)
	}
	data, n := dnswire.Option(b, &l, dns.EDNS0TCPKEEPALIVE)
	switch {
	case n == 0:
		return 0, 0
	case len(data) != 2:
		return n, -1
	}
	return n, int(binary.BigEndian.Uint16(data))
}

// TestKeepalive: over DoT (a Request with Keepalive), the answer to a
// query with an edns-tcp-keepalive option carries the connection's idle
// timeout in 100 ms units (RFC 7828 3.3.2), capped at 65535, and 0 while
// the server drains; without the option in the query, or over DoH, none.
// A query whose option holds a TIMEOUT is FORMERR over DoT (RFC 7828
// 3.2.1, as unbound answers it) and ignored over DoH. Padding still fills
// the block.
func TestKeepalive(t *testing.T) {
	c := testChain(t)
	ka := func(timeout uint16) dns.EDNS0 {
		return &dns.EDNS0_TCP_KEEPALIVE{Code: dns.EDNS0TCPKEEPALIVE, Timeout: timeout}
	}
	pad := &dns.EDNS0_PADDING{Padding: make([]byte, 20)}
	for _, tc := range []struct {
		name      string
		opts      []dns.EDNS0
		keepalive time.Duration
		rcode     int
		n, want   int
	}{
		{"dot", []dns.EDNS0{ka(0)}, 10 * time.Second, dns.RcodeSuccess, 1, 100},
		{"dot, idle 90m", []dns.EDNS0{ka(0)}, 90 * time.Minute, dns.RcodeSuccess, 1, 54000},
		{"dot, idle 3h", []dns.EDNS0{ka(0)}, 3 * time.Hour, dns.RcodeSuccess, 1, 0xFFFF},
		{"dot, draining", []dns.EDNS0{ka(0)}, KeepaliveClose, dns.RcodeSuccess, 1, 0},
		{"dot, padded", []dns.EDNS0{ka(0), pad}, 10 * time.Second, dns.RcodeSuccess, 1, 100},
		{"dot, no option", nil, 10 * time.Second, dns.RcodeSuccess, 0, 0},
		{"dot, option with a timeout", []dns.EDNS0{ka(50)}, 10 * time.Second, dns.RcodeFormatError, 0, 0},
		{"doh", []dns.EDNS0{ka(0)}, 0, dns.RcodeSuccess, 0, 0},
		{"doh, option with a timeout", []dns.EDNS0{ka(50)}, 0, dns.RcodeSuccess, 0, 0},
	} {
		q := query("www.example.org.", dns.TypeA)
		q.SetEdns0(1232, false)
		q.IsEdns0().Option = tc.opts
		b := serve(context.Background(), c, &Request{Msg: q, Transport: "test", Size: MaxMessage, Keepalive: tc.keepalive}, nil)
		m := new(dns.Msg)
		if err := m.Unpack(b); err != nil || m.Rcode != tc.rcode {
			t.Fatalf("%s: rcode %d (%v), want %d", tc.name, m.Rcode, err, tc.rcode)
		}
		if n, timeout := keepaliveOption(t, b); n != tc.n || timeout != tc.want {
			t.Errorf("%s: %d keepalive options, TIMEOUT %d; want %d, %d", tc.name, n, timeout, tc.n, tc.want)
		}
		if hasOption(q.IsEdns0(), dns.EDNS0PADDING) && len(b)%dnswire.PaddingBlock != 0 {
			t.Errorf("%s: padded answer of %d octets", tc.name, len(b))
		}
	}
}

// ecsAnswerer answers with an ECS option (as an upstream echoes the one
// it was sent), as a message or as octets.
type ecsAnswerer struct{ wire bool }

func (h ecsAnswerer) ServeDNS(_ context.Context, r *Request, _ Next) (Response, error) {
	m := new(dns.Msg)
	m.SetReply(r.Msg)
	m.SetEdns0(1232, false)
	m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, SourceScope: 24, Address: net.IPv4(192, 0, 2, 0).To4()}}
	if !h.wire {
		return Response{Msg: m}, nil
	}
	b, _ := m.Pack()
	l, _ := dnswire.Walk(b)
	return Response{Wire: NewWire(b, &l)}, nil
}

// TestECS: a malformed ECS option is answered FORMERR (RFC 7871 6); an
// answer's ECS option reaches only a client that sent one (7.2.2), on
// both the message and the octets paths.
func TestECS(t *testing.T) {
	for _, data := range [][]byte{{0, 1, 24, 8, 192, 0, 2}, {0, 1, 16, 0, 192, 0, 2}, {0, 1, 23, 0, 192, 0, 3}} {
		q := query("www.example.org.", dns.TypeA)
		q.SetEdns0(1232, false)
		q.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_LOCAL{Code: dns.EDNS0SUBNET, Data: data}}
		if m := ask(testChain(t), q); m == nil || m.Rcode != dns.RcodeFormatError {
			t.Errorf("ECS %v: %v, want FORMERR", data, m)
		}
	}
	for _, wire := range []bool{false, true} {
		c := NewChain("test", "test", ecsAnswerer{wire: wire})
		plain := query("www.example.org.", dns.TypeA)
		plain.SetEdns0(1232, false)
		if m := ask(c, plain); m == nil || len(m.IsEdns0().Option) != 0 {
			t.Errorf("wire %v: a client that sent no ECS got %v", wire, m)
		}
		withECS := query("www.example.org.", dns.TypeA)
		withECS.SetEdns0(1232, false)
		withECS.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.IPv4(192, 0, 2, 0).To4()}}
		m := ask(c, withECS)
		if m == nil || len(m.IsEdns0().Option) != 1 || m.IsEdns0().Option[0].Option() != dns.EDNS0SUBNET {
			t.Errorf("wire %v: a client that sent ECS got %v", wire, m)
		}
	}
}

// TestRequestClone: a clone for background work keeps the query as it
// came and its message after the transport reuses its buffer and the
// Request goes back to the pool.
func TestRequestClone(t *testing.T) {
	q := new(dns.Msg)
	q.SetQuestion("clone.example.", dns.TypeA)
	buf, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), buf...)
	r := AcquireRequest()
	r.Msg, _ = decode(buf, &r.msg, &r.quick) // as Serve does
	r.query = buf
	c := r.Clone()
	for i := range buf {
		buf[i] = 0xEE // the transport's next query
	}
	ReleaseRequest(r)
	if !bytes.Equal(c.Octets(), want) || c.Msg == nil || c.Msg.Question[0].Name != "clone.example." {
		t.Fatalf("clone: octets % x, message %v", c.Octets(), c.Msg)
	}
}

// clockTap records the times the chain shows a Tap.
type clockTap struct{ at []time.Time }

func (t *clockTap) ClientResponse(_ *Request, at time.Time, _ []byte) { t.at = append(t.at, at) }
func (*clockTap) ForwarderQuery(*Request, Hop, []byte)                {}
func (*clockTap) ForwarderResponse(*Request, Hop, []byte)             {}

// TestStartAndAnswerTimes: a query's Start, which dnstap's CLIENT_QUERY
// and the rate limit take as the query's time, is set by Serve and by
// ServeMsg (DoH's JSON API) alike, and the answer's time shown to the Tap
// is no earlier.
func TestStartAndAnswerTimes(t *testing.T) {
	var started time.Time
	c := testChain(t)
	c.next = func(ctx context.Context, r *Request) (Response, error) {
		started = r.Start()
		return testHandler{}.ServeDNS(ctx, r, nil)
	}
	for _, how := range []string{"Serve", "ServeMsg"} {
		tap := new(clockTap)
		started = time.Time{}
		before := time.Now()
		r := &Request{Msg: query("www.example.org.", dns.TypeA), Transport: "test", Size: MaxMessage, Tap: tap}
		if how == "Serve" {
			serve(context.Background(), c, r, nil)
		} else {
			c.ServeMsg(context.Background(), r)
		}
		after := time.Now()
		if started.Before(before) || started.After(after) {
			t.Errorf("%s: the handler saw Start %v, not between %v and %v", how, started, before, after)
		}
		if len(tap.at) != 1 || tap.at[0].Before(started) || tap.at[0].After(after) {
			t.Errorf("%s: the Tap saw answers at %v, want one between %v and %v", how, tap.at, started, after)
		}
	}
}

// TestDecodeQuick: the common queries (with and without an OPT record, DO
// and CD set, the root, a wildcard) take decodeQuick, which allocates only
// the name; the others (options, escapes, compression, records, octets
// after the message) are left to Unpack. FuzzDecodeQuick checks that the
// two decode alike.
func TestDecodeQuick(t *testing.T) {
	pack := func(name string, qtype uint16, edit func(m *dns.Msg)) []byte {
		m := query(name, qtype)
		if edit != nil {
			edit(m)
		}
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	edns := func(m *dns.Msg) { m.SetEdns0(1232, true); m.CheckingDisabled = true }
	for _, tc := range []struct {
		name  string
		b     []byte
		quick bool
	}{
		{"plain", pack("www.Example.org.", dns.TypeA, nil), true},
		{"EDNS, DO, CD", pack("_dns.x-y.example.", dns.TypeSVCB, edns), true},
		{"root", pack(".", dns.TypeNS, edns), true},
		{"wildcard", pack("*.example.org.", dns.TypeA, nil), true},
		{"padding", pack("www.example.org.", dns.TypeA, func(m *dns.Msg) {
			edns(m)
			m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_PADDING{Padding: make([]byte, 8)}}
		}), true},
		{"padding of 0 octets", pack("www.example.org.", dns.TypeA, func(m *dns.Msg) {
			edns(m)
			m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_PADDING{}}
		}), true},
		{"padding not of zeros", pack("www.example.org.", dns.TypeA, func(m *dns.Msg) {
			edns(m)
			m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_PADDING{Padding: []byte{0, 0, 7}}}
		}), false},
		{"another option", pack("www.example.org.", dns.TypeA, func(m *dns.Msg) {
			edns(m)
			m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"}}
		}), false},
		{"padding and another", pack("www.example.org.", dns.TypeA, func(m *dns.Msg) {
			edns(m)
			m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_PADDING{Padding: make([]byte, 8)}, &dns.EDNS0_NSID{Code: dns.EDNS0NSID}}
		}), false},
		{"an escape", pack(`a\.b.example.org.`, dns.TypeA, nil), false},
		{"a record", pack("www.example.org.", dns.TypeA, func(m *dns.Msg) {
			m.Ns = []dns.RR{&dns.NS{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeNS, Class: dns.ClassINET}, Ns: "a."}}
		}), false},
		{"octets after it", append(pack("www.example.org.", dns.TypeA, nil), 0), false},
	} {
		q := new(dns.Msg)
		b := bytes.Clone(tc.b)
		if got := decodeQuick(b, q, new(quickMsg)); got != tc.quick {
			t.Errorf("%s: quick %v, want %v", tc.name, got, tc.quick)
			continue
		}
		for i := range b {
			b[i] = 0xEE // the transport writes its answer there: the message holds none of it
		}
		want := new(dns.Msg)
		if err := want.Unpack(tc.b); err != nil {
			t.Fatal(err)
		}
		if tc.quick && !reflect.DeepEqual(q, want) {
			t.Errorf("%s: decoded %v, Unpack %v", tc.name, q, want)
		}
	}
	b := pack("www.example.org.", dns.TypeA, edns)
	r := new(Request)
	if n := testing.AllocsPerRun(100, func() { decode(b, &r.msg, &r.quick) }); n != 0 {
		t.Errorf("decode allocates %v times, want 0 (the name was asked a moment before)", n)
	}
	var fresh [][]byte // names decoded once each
	for i := range 101 {
		fresh = append(fresh, pack("n"+strconv.Itoa(i)+".fresh.example.org.", dns.TypeA, edns))
	}
	if n := testing.AllocsPerRun(100, func() {
		decode(fresh[0], &r.msg, &r.quick)
		fresh = fresh[1:]
	}); n != 1 {
		t.Errorf("decode of a name not asked before allocates %v times, want 1 (the name)", n)
	}
}

// FuzzDecodeQuick: whatever decodeQuick takes, it decodes as miekg/dns's
// Unpack does.
func FuzzDecodeQuick(f *testing.F) {
	for _, q := range []*dns.Msg{query("www.example.org.", dns.TypeA), query(".", dns.TypeNS)} {
		b, _ := q.Pack()
		f.Add(b)
		q.SetEdns0(1232, true)
		b, _ = q.Pack()
		f.Add(b)
		q.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_PADDING{Padding: make([]byte, 5)}}
		b, _ = q.Pack()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		q := new(dns.Msg)
		if !decodeQuick(b, q, new(quickMsg)) {
			return
		}
		want := new(dns.Msg)
		if err := want.Unpack(b); err != nil {
			t.Fatalf("decodeQuick took what Unpack refuses: %v", err)
		}
		if !reflect.DeepEqual(q, want) {
			t.Fatalf("decoded %#v\nUnpack %#v", q, want)
		}
	})
}

// staleHandler answers as a cache serving stale does: the answer as a
// message (msg) or as an upstream's octets, with r.Cache set.
type staleHandler struct{ msg bool }

func (h staleHandler) ServeDNS(_ context.Context, r *Request, _ Next) (Response, error) {
	r.Cache = CacheStale
	m := new(dns.Msg)
	m.SetReply(r.Msg)
	m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Msg.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30}, A: net.IPv4(192, 0, 2, 1)})
	if h.msg {
		return Response{Msg: m}, nil
	}
	b, err := m.Pack()
	if err != nil {
		return Response{}, err
	}
	l, _ := dnswire.Walk(b)
	return Response{Wire: NewWire(b, &l)}, nil
}

// TestStaleEDE: an answer served stale carries Extended DNS Error 3
// (RFC 8914) whether it is a message or an upstream's octets, and only to
// a client that sent EDNS.
func TestStaleEDE(t *testing.T) {
	for _, asMsg := range []bool{false, true} {
		c := NewChain("stale", "test", staleHandler{msg: asMsg})
		for _, edns := range []bool{true, false} {
			q := query("www.example.org.", dns.TypeA)
			if edns {
				q.SetEdns0(1232, false)
			}
			b, _ := q.Pack()
			a := c.Serve(context.Background(), &Request{Size: MaxMessage}, b, nil)
			m := new(dns.Msg)
			if err := m.Unpack(a.Wire); err != nil {
				t.Fatal(err)
			}
			var ede *dns.EDNS0_EDE
			if opt := m.IsEdns0(); opt != nil {
				for _, o := range opt.Option {
					if e, ok := o.(*dns.EDNS0_EDE); ok {
						ede = e
					}
				}
			}
			if edns && (ede == nil || ede.InfoCode != dns.ExtendedErrorCodeStaleAnswer) || !edns && m.IsEdns0() != nil {
				t.Errorf("message %v, EDNS %v: %v", asMsg, edns, m)
			}
		}
	}
}
