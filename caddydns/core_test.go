package caddydns

import (
	"context"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap"
)

const testZone = `$ORIGIN example.org.
$TTL 3600
@       IN SOA ns1 hostmaster 1 7200 3600 1209600 300
        IN NS  ns1
ns1     IN A   192.0.2.53
www     IN A   192.0.2.80
api 60  IN A   192.0.2.81
alias   IN CNAME www
far     IN CNAME www.example.net.
loop1   IN CNAME loop2
loop2   IN CNAME loop1
a.b.c   IN TXT "deep"
*.apps  IN A   192.0.2.90
sub     IN NS  ns.sub
ns.sub  IN A   192.0.2.99
`

func testChain(t testing.TB) *Chain {
	t.Helper()
	zd, err := newZoneData("example.org.", mustParse(t, testZone))
	if err != nil {
		t.Fatal(err)
	}
	z := &Zone{Origin: "example.org.", zone: zd}
	c := &Chain{handlers: []Handler{z}}
	c.next = func(ctx context.Context, r *Request) (Response, error) { return z.ServeDNS(ctx, r, refused) }
	c.metrics = &serverMetrics{server: "test", transport: "test", duration: queryDuration.WithLabelValues("test", "test")}
	c.logger = zap.NewNop()
	return c
}

func mustParse(t testing.TB, s string) []dns.RR {
	t.Helper()
	rrs, err := parseZone(strings.NewReader(s), "example.org.", "test")
	if err != nil {
		t.Fatal(err)
	}
	return rrs
}

func ask(c *Chain, q *dns.Msg) *dns.Msg {
	return serveMsg(context.Background(), c, &Request{Msg: q, Transport: "test", Size: MaxMessage})
}

// serveMsg runs r through c and decodes the answer; nil when it does not
// decode.
func serveMsg(ctx context.Context, c *Chain, r *Request) *dns.Msg {
	m := new(dns.Msg)
	if m.Unpack(c.Serve(ctx, r, nil)) != nil {
		return nil
	}
	return m
}

func query(name string, qtype uint16) *dns.Msg {
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	return q
}

func TestZoneAnswers(t *testing.T) {
	c := testChain(t)
	for _, tc := range []struct {
		name     string
		qtype    uint16
		rcode    int
		answers  int
		aa       bool
		soaInNs  bool
		contains string
	}{
		{"www.example.org.", dns.TypeA, dns.RcodeSuccess, 1, true, false, "192.0.2.80"},
		{"WwW.ExAmPlE.oRg.", dns.TypeA, dns.RcodeSuccess, 1, true, false, "192.0.2.80"},
		{"www.example.org.", dns.TypeAAAA, dns.RcodeSuccess, 0, true, true, ""},              // NODATA
		{"nope.example.org.", dns.TypeA, dns.RcodeNameError, 0, true, true, ""},              // NXDOMAIN
		{"b.c.example.org.", dns.TypeA, dns.RcodeSuccess, 0, true, true, ""},                 // empty non-terminal
		{"alias.example.org.", dns.TypeA, dns.RcodeSuccess, 2, true, false, "192.0.2.80"},    // CNAME chased
		{"far.example.org.", dns.TypeA, dns.RcodeSuccess, 1, true, false, "www.example.net"}, // out of zone
		{"x.apps.example.org.", dns.TypeA, dns.RcodeSuccess, 1, true, false, "x.apps.example.org.\t3600\tIN\tA\t192.0.2.90"},
		{"host.sub.example.org.", dns.TypeA, dns.RcodeSuccess, 0, false, false, "ns.sub.example.org"}, // referral
		{"loop1.example.org.", dns.TypeA, dns.RcodeSuccess, maxCNAMEChain, true, false, ""},
	} {
		t.Run(tc.name+"/"+dns.TypeToString[tc.qtype], func(t *testing.T) {
			q := query(tc.name, tc.qtype)
			r := ask(c, q)
			if r.Rcode != tc.rcode || len(r.Answer) != tc.answers || r.Authoritative != tc.aa {
				t.Fatalf("rcode %s answers %d aa %v, want %s %d %v\n%s", dns.RcodeToString[r.Rcode], len(r.Answer), r.Authoritative,
					dns.RcodeToString[tc.rcode], tc.answers, tc.aa, r)
			}
			if r.Question[0].Name != tc.name {
				t.Fatalf("question %q, want the client's casing %q", r.Question[0].Name, tc.name)
			}
			hasSOA := len(r.Ns) == 1 && r.Ns[0].Header().Rrtype == dns.TypeSOA
			if hasSOA != tc.soaInNs {
				t.Fatalf("SOA in authority: %v, want %v\n%s", hasSOA, tc.soaInNs, r)
			}
			if hasSOA && r.Ns[0].Header().Ttl != 300 {
				t.Fatalf("negative SOA TTL %d, want the minimum 300", r.Ns[0].Header().Ttl)
			}
			if tc.contains != "" && !strings.Contains(r.String(), tc.contains) {
				t.Fatalf("answer lacks %q:\n%s", tc.contains, r)
			}
		})
	}
	// outside the origin: the next handler (REFUSED at the end)
	if r := ask(c, query("example.com.", dns.TypeA)); r.Rcode != dns.RcodeRefused {
		t.Fatalf("out of zone: %s, want REFUSED", dns.RcodeToString[r.Rcode])
	}
}

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
		b := c.Serve(context.Background(), &Request{Msg: q, Transport: "test", Size: MaxMessage}, nil)
		if len(b)%PaddingBlock != 0 {
			t.Fatalf("%s: padded answer is %d octets, not a multiple of %d", name, len(b), PaddingBlock)
		}
	}
}

func TestDecodeGarbage(t *testing.T) {
	if q, fe := Decode([]byte{0xAB, 0xCD, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xFF}); q != nil || fe == nil ||
		fe.Id != 0xABCD || fe.Rcode != dns.RcodeFormatError {
		t.Fatalf("garbage after a header: %v %v", q, fe)
	}
	if q, fe := Decode([]byte{1, 2, 3}); q != nil || fe != nil {
		t.Fatal("a message shorter than a header got an answer")
	}
}

func FuzzServe(f *testing.F) {
	c := testChain(f)
	for _, q := range []*dns.Msg{query("www.example.org.", dns.TypeA), query("alias.example.org.", dns.TypeANY)} {
		q.SetEdns0(1232, true)
		b, _ := q.Pack()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		q, fe := Decode(b)
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

func TestInZone(t *testing.T) {
	for _, tc := range []struct {
		origin, name string
		want         bool
	}{
		{"example.org.", "example.org.", true},
		{"example.org.", "www.example.org.", true},
		{"example.org.", "a.b.example.org.", true},
		{"example.org.", "badexample.org.", false},
		{"example.org.", "org.", false},
		{"example.org.", "example.com.", false},
		{".", "anything.", true},
	} {
		if got := inZone(tc.origin, tc.name); got != tc.want || got != dns.IsSubDomain(tc.origin, tc.name) {
			t.Errorf("inZone(%q, %q) = %v, want %v (as dns.IsSubDomain)", tc.origin, tc.name, got, tc.want)
		}
	}
}

func TestHugeAnswerFits(t *testing.T) {
	m := new(dns.Msg)
	m.SetQuestion("big.example.org.", dns.TypeTXT)
	for i := 0; i < 400; i++ {
		m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: "big.example.org.", Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60},
			Txt: []string{strings.Repeat("x", 250)}})
	}
	out, err := FitMessage(m, nil)
	if err != nil || len(out) > MaxMessage || !m.Truncated {
		t.Fatalf("%d octets, truncated %v, %v", len(out), m.Truncated, err)
	}
}

func TestZoneWithoutTTL(t *testing.T) {
	_, err := parseZone(strings.NewReader("@ IN SOA ns1 host 1 2 3 4 5\n"), "example.org.", "z.zone")
	if err == nil || !strings.Contains(err.Error(), "z.zone: example.org. SOA has no TTL") {
		t.Fatalf("error = %v, want one naming the file and the record", err)
	}
	// an earlier record's TTL is inherited, as RFC 1035 says
	rrs, err := parseZone(strings.NewReader("@ 600 IN SOA ns1 host 1 2 3 4 5\nwww IN A 192.0.2.1\n"), "example.org.", "z.zone")
	if err != nil || rrs[1].Header().Ttl != 600 {
		t.Fatalf("inherited TTL: %v %v", rrs, err)
	}
}

// TestServeIntoBuffer: the answer is packed into the caller's buffer when
// it is large enough (transports pool their buffers), both for a
// handler's message and for an upstream's answer passed through.
func TestServeIntoBuffer(t *testing.T) {
	wire := upstreamAnswers(t)["a with opt"]
	l, _ := walk(wire)
	zone := testChain(t)
	fwd := testChain(t)
	fwd.next = func(context.Context, *Request) (Response, error) { return Response{ans: newAnswer(wire, &l)}, nil }
	for name, c := range map[string]*Chain{"zone": zone, "passed through": fwd} {
		buf := make([]byte, 0, 4096)
		q := query("www.example.org.", dns.TypeA)
		out := c.Serve(context.Background(), &Request{Msg: q, Transport: "test", Size: MaxMessage}, buf)
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
	l, ok := walk(b)
	if !ok {
		t.Fatalf("answer does not walk: % x", b)
	}
	if l.opt < 0 {
		return 0, 0
	}
	for opts := b[l.optRdata:l.end]; len(opts) >= 4; {
		size := int(binary.BigEndian.Uint16(opts[2:]))
		if binary.BigEndian.Uint16(opts) == dns.EDNS0TCPKEEPALIVE {
			n, timeout = n+1, -1
			if size == 2 {
				timeout = int(binary.BigEndian.Uint16(opts[4:]))
			}
		}
		opts = opts[min(4+size, len(opts)):]
	}
	return n, timeout
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
		b := c.Serve(context.Background(), &Request{Msg: q, Transport: "test", Size: MaxMessage, Keepalive: tc.keepalive}, nil)
		m := new(dns.Msg)
		if err := m.Unpack(b); err != nil || m.Rcode != tc.rcode {
			t.Fatalf("%s: rcode %d (%v), want %d", tc.name, m.Rcode, err, tc.rcode)
		}
		if n, timeout := keepaliveOption(t, b); n != tc.n || timeout != tc.want {
			t.Errorf("%s: %d keepalive options, TIMEOUT %d; want %d, %d", tc.name, n, timeout, tc.n, tc.want)
		}
		if hasOption(q.IsEdns0(), dns.EDNS0PADDING) && len(b)%PaddingBlock != 0 {
			t.Errorf("%s: padded answer of %d octets", tc.name, len(b))
		}
	}
}

// TestZoneFileErrors: an unclosed parenthesis is reported on the line it
// opened (the parser itself fails lines later), and a record outside the
// zone names the file.
func TestZoneFileErrors(t *testing.T) {
	for _, tc := range []struct{ name, text, want string }{
		{"unclosed paren", "$TTL 60\n@ IN SOA ns1 host ( 1 2 3 4 5\nwww IN A 192.0.2.1\n; a comment (\nmail IN A 192.0.2.2\n",
			"z.zone:2: '(' opened on this line is not closed"},
		{"paren in a comment and a string", "$TTL 60\n; (\nwww IN TXT \"(\"\nwww IN A 192.0.2.1 garbage\n", "z.zone: dns: garbage after rdata: \"garbage\" at line: 4"},
		{"outside the zone", "$TTL 60\nwww.example.net. IN A 192.0.2.1\n", `z.zone:2: record "www.example.net.\t60\tIN\tA\t192.0.2.1" is outside the zone example.org.`},
		{"outside the zone, by $ORIGIN", "$TTL 60\n@ IN A 192.0.2.1\n$ORIGIN example.net.\nwww IN A 192.0.2.1\n", `z.zone:4: record "www.example.net.`},
	} {
		_, err := parseZone(strings.NewReader(tc.text), "example.org.", "z.zone")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error = %v, want %q", tc.name, err, tc.want)
		}
	}
}
