package rebind

import (
	"context"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/caddydns/dnswire"
	"github.com/dnsfront/dnsfront/internal/handlertest"
)

func newRebind(t testing.TB, cfg string) *Rebind {
	t.Helper()
	rb := new(Rebind)
	handlertest.Provision(t, rb, cfg)
	return rb
}

func rr(t testing.TB, s string) dns.RR {
	t.Helper()
	r, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// serve asks rb for name with edns, the answer being records (in the
// answer section; "glue:" records go to the additional one), as an
// upstream's octets (wire) or a handler's message; it returns the answer
// and whether it is the one the handler after rb gave, untouched.
func serve(t *testing.T, rb *Rebind, name string, edns, wire bool, records ...string) (*dns.Msg, bool) {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeA)
	if edns {
		q.SetEdns0(1232, false)
	}
	up := new(dns.Msg)
	up.SetReply(q)
	for _, s := range records {
		if g, ok := strings.CutPrefix(s, "glue:"); ok {
			up.Extra = append(up.Extra, rr(t, g))
		} else {
			up.Answer = append(up.Answer, rr(t, s))
		}
	}
	given := up.Copy()
	var res caddydns.Response
	if wire {
		b, err := up.Pack()
		if err != nil {
			t.Fatal(err)
		}
		l, ok := dnswire.Walk(b)
		if !ok {
			t.Fatal("Walk refused the upstream's answer")
		}
		res.Wire = caddydns.NewWire(b, &l)
	} else {
		res.Msg = up
	}
	r := &caddydns.Request{Msg: q, Server: "test"}
	out, err := rb.ServeDNS(context.Background(), r, func(context.Context, *caddydns.Request) (caddydns.Response, error) { return res, nil })
	if err != nil {
		t.Fatal(err)
	}
	if !wire && up.String() != given.String() {
		t.Fatal("the handler's own message was changed")
	}
	switch {
	case out.Wire != nil:
		m := new(dns.Msg)
		if err := m.Unpack(out.Wire.Bytes()); err != nil {
			t.Fatal(err)
		}
		return m, out.Wire == res.Wire
	case out.Msg != nil:
		return out.Msg, out.Msg == res.Msg
	}
	t.Fatal("no answer")
	return nil, false
}

// records lists m's records of every section, as "A 10.0.0.1".
func records(m *dns.Msg) string {
	var out []string
	for _, rr := range append(append(append([]dns.RR{}, m.Answer...), m.Ns...), m.Extra...) {
		if rr.Header().Rrtype == dns.TypeOPT {
			continue
		}
		f := strings.Fields(rr.String())
		out = append(out, f[0]+" "+strings.Join(f[3:], " "))
	}
	return strings.Join(out, "; ")
}

func hasEDE(m *dns.Msg) bool {
	if opt := m.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if e, ok := o.(*dns.EDNS0_EDE); ok && e.InfoCode == EDE {
				return true
			}
		}
	}
	return false
}

// TestRebind: an RRset holding a private address goes whole, from any
// section, with an Extended DNS Error for a client that sent EDNS; other
// records and RRsets stay; an answer without one is passed untouched;
// a name of an allowed domain keeps its private addresses.
func TestRebind(t *testing.T) {
	rb := newRebind(t, `{"allow":["Corp.Example"]}`)
	counter := rb.removed.WithLabelValues("test")
	before := handlertest.MetricValue(counter)
	for _, wire := range []bool{true, false} {
		m, same := serve(t, rb, "www.example.org.", true, wire,
			"www.example.org. 60 IN CNAME a.example.net.", "a.example.net. 60 IN A 192.0.2.1", "a.example.net. 60 IN A 10.0.0.1",
			"a.example.net. 60 IN RRSIG A 13 3 60 20270101000000 20260101000000 12345 example.net. dGVzdA==",
			"b.example.net. 60 IN A 192.0.2.2", "glue:ns.example.net. 60 IN AAAA fe80::1", "glue:ns2.example.net. 60 IN AAAA 2001:db8::1")
		if same || !hasEDE(m) || m.Rcode != dns.RcodeSuccess {
			t.Fatalf("wire %v: untouched %v, EDE %v, rcode %d", wire, same, hasEDE(m), m.Rcode)
		}
		if got, want := records(m), "www.example.org. CNAME a.example.net.; b.example.net. A 192.0.2.2; ns2.example.net. AAAA 2001:db8::1"; got != want {
			t.Fatalf("wire %v: %s\nwant %s", wire, got, want)
		}

		if _, same := serve(t, rb, "www.example.org.", true, wire, "www.example.org. 60 IN A 192.0.2.1", "www.example.org. 60 IN AAAA 2001:db8::80",
			"www.example.org. 60 IN HTTPS 1 . alpn=h2 ipv4hint=192.0.2.1 ipv6hint=2001:db8::80"); !same {
			t.Fatalf("wire %v: an answer of public addresses was not passed untouched", wire)
		}
		// a browser may connect to an HTTPS record's hints (RFC 9460 7.3)
		m, same = serve(t, rb, "www.example.org.", true, wire, "www.example.org. 60 IN HTTPS 1 . alpn=h2 ipv4hint=192.0.2.1,192.168.0.1",
			"www.example.org. 60 IN RRSIG HTTPS 13 3 60 20270101000000 20260101000000 12345 example.org. dGVzdA==",
			"www.example.org. 60 IN A 192.0.2.1", "svc.example.org. 60 IN SVCB 1 svc.example.org. ipv6hint=fe80::1")
		if same || !hasEDE(m) || records(m) != "www.example.org. A 192.0.2.1" {
			t.Fatalf("wire %v: HTTPS and SVCB with private hints: %s", wire, records(m))
		}
		if m, same := serve(t, rb, "nas.corp.example.", true, wire, "nas.corp.example. 60 IN A 192.168.1.10"); !same || records(m) != "nas.corp.example. A 192.168.1.10" {
			t.Fatalf("wire %v: an allowed domain's private address: untouched %v, %s", wire, same, records(m))
		}
		// IPv4-mapped, unspecified, loopback: all private by default
		for _, a := range []string{"AAAA ::ffff:127.0.0.1", "AAAA ::", "AAAA ::1", "A 0.0.0.0", "A 100.64.1.1", "A 169.254.169.254", "AAAA fd00::1"} {
			m, _ := serve(t, rb, "x.example.org.", false, wire, "x.example.org. 60 IN "+a)
			if records(m) != "" || m.IsEdns0() != nil {
				t.Fatalf("wire %v: %s: %s, OPT %v; want nothing, and no OPT for a query without EDNS", wire, a, records(m), m.IsEdns0())
			}
		}
	}
	if n := handlertest.MetricValue(counter) - before; n != 18 {
		t.Fatalf("rebind_protection_answers_total grew by %v, want 18", n)
	}
}

// TestPrivateList: private replaces the default list; "default" brings
// it back, beside others.
func TestPrivateList(t *testing.T) {
	own := newRebind(t, `{"private":["198.18.0.0/15"]}`)
	if m, _ := serve(t, own, "x.example.org.", true, true, "x.example.org. 60 IN A 198.19.0.1"); records(m) != "" {
		t.Fatalf("a listed prefix kept: %s", records(m))
	}
	if _, same := serve(t, own, "x.example.org.", true, true, "x.example.org. 60 IN A 10.0.0.1"); !same {
		t.Fatal("10.0.0.1 removed with a list that does not hold it")
	}
	both := newRebind(t, `{"private":["default","198.18.0.0/15"]}`)
	for _, a := range []string{"198.19.0.1", "10.0.0.1"} {
		if m, _ := serve(t, both, "x.example.org.", true, true, "x.example.org. 60 IN A "+a); records(m) != "" {
			t.Fatalf("%s kept with default and 198.18.0.0/15", a)
		}
	}
}

func TestBadConfig(t *testing.T) {
	handlertest.BadConfigs(t, func() caddy.Provisioner { return new(Rebind) }, map[string]string{
		`{"private":["10.0.0.1/8"]}`:   `private[0]: "10.0.0.1/8" has bits set`,
		`{"private":["lan"]}`:          `private[0]: "lan" is not an IP address`,
		`{"allow":["*.corp.example"]}`: `allow[0]: "*.corp.example" is not a domain name`,
		`{"allow":["a..b"]}`:           `allow[0]: "a..b" is not a domain name`,
	})
}

func TestCaddyfile(t *testing.T) {
	rb := new(Rebind)
	in := "rebind_protection {\n\tprivate default 198.18.0.0/15\n\tallow corp.example home.arpa\n}"
	if err := rb.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err != nil {
		t.Fatal(err)
	}
	if strings.Join(rb.Private, " ") != "default 198.18.0.0/15" || strings.Join(rb.Allow, " ") != "corp.example home.arpa" {
		t.Fatalf("%+v", rb)
	}
	for in, msg := range map[string]string{
		"rebind_protection lan":                    "wrong argument count",
		"rebind_protection {\n\tprivate\n}":        "wrong argument count",
		"rebind_protection {\n\tprivate 10.1/8\n}": `private: "10.1/8" is not an IP prefix`,
		"rebind_protection {\n\tallow *.x\n}":      `allow: "*.x" is not a domain name, at Testfile:2`,
		"rebind_protection {\n\tblock all\n}":      "unrecognized subdirective 'block'",
	} {
		err := new(Rebind).UnmarshalCaddyfile(caddyfile.NewTestDispenser(in))
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q: %v, want %q", in, err, msg)
		}
	}
}

// BenchmarkPublic is an upstream's answer of public addresses read for
// private ones: it allocates nothing.
func BenchmarkPublic(b *testing.B) {
	rb := newRebind(b, `{}`)
	q := new(dns.Msg)
	q.SetQuestion("www.example.org.", dns.TypeA)
	up := new(dns.Msg)
	up.SetReply(q)
	up.Answer = []dns.RR{rr(b, "www.example.org. 60 IN A 192.0.2.1"), rr(b, "www.example.org. 60 IN A 192.0.2.2")}
	wire, _ := up.Pack()
	l, _ := dnswire.Walk(wire)
	w := caddydns.NewWire(wire, &l)
	r := &caddydns.Request{Msg: q, Server: "bench"}
	next := func(context.Context, *caddydns.Request) (caddydns.Response, error) {
		return caddydns.Response{Wire: w}, nil
	}
	b.ReportAllocs()
	for b.Loop() {
		_, _ = rb.ServeDNS(context.Background(), r, next)
	}
}
