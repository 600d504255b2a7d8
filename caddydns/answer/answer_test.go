package answer

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/internal/handlertest"
)

func ask(t *testing.T, cfg, name string, qtype uint16) *dns.Msg {
	t.Helper()
	return askEDNS(t, cfg, name, qtype, false)
}

func askEDNS(t *testing.T, cfg, name string, qtype uint16, edns bool) *dns.Msg {
	t.Helper()
	a := new(Answer)
	handlertest.Provision(t, a, cfg)
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	q.Id = 777
	if edns {
		q.SetEdns0(1232, false)
	}
	b, _ := q.Pack()
	c := caddydns.NewChain("test", "test", a)
	res := c.Serve(context.Background(), &caddydns.Request{Transport: "dot", Client: netip.MustParseAddrPort("192.0.2.1:5300"), Size: caddydns.MaxMessage}, b, nil)
	m := new(dns.Msg)
	if err := m.Unpack(res.Wire); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestRcode: the rcode, with the query's ID and question; the chain is
// never asked further.
func TestRcode(t *testing.T) {
	for cfg, want := range map[string]int{
		`{"rcode":"nxdomain"}`: dns.RcodeNameError, `{"rcode":"REFUSED"}`: dns.RcodeRefused,
		`{"rcode":"servfail"}`: dns.RcodeServerFailure, `{"rcode":"noerror"}`: dns.RcodeSuccess,
	} {
		m := ask(t, cfg, "Ads.Example.", dns.TypeA)
		if m.Rcode != want || m.Id != 777 || len(m.Answer) != 0 || m.Question[0].Name != "Ads.Example." || !m.RecursionAvailable || m.Authoritative {
			t.Errorf("%s: %v", cfg, m)
		}
	}
}

// TestAddresses: A records to A, AAAA to AAAA, both to ANY, NODATA to
// any other type; the TTL is the config's.
func TestAddresses(t *testing.T) {
	cfg := `{"addresses":["192.0.2.7","2001:db8::7","::ffff:192.0.2.8"],"ttl":"5m"}`
	for qtype, want := range map[uint16][]string{
		dns.TypeA:    {"192.0.2.7", "192.0.2.8"},
		dns.TypeAAAA: {"2001:db8::7"},
		dns.TypeANY:  {"192.0.2.7", "192.0.2.8", "2001:db8::7"},
		dns.TypeMX:   nil,
	} {
		m := ask(t, cfg, "sink.example.", qtype)
		var got []string
		for _, rr := range m.Answer {
			if rr.Header().Ttl != 300 || rr.Header().Name != "sink.example." {
				t.Errorf("%s: %v", dns.TypeToString[qtype], rr)
			}
			switch rr := rr.(type) {
			case *dns.A:
				got = append(got, rr.A.String())
			case *dns.AAAA:
				got = append(got, rr.AAAA.String())
			}
		}
		if m.Rcode != dns.RcodeSuccess || strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s: %s %v, want %v", dns.TypeToString[qtype], dns.RcodeToString[m.Rcode], got, want)
		}
	}
	if m := ask(t, `{"addresses":["192.0.2.7"]}`, "a.example.", dns.TypeA); len(m.Answer) != 1 || m.Answer[0].Header().Ttl != 60 {
		t.Errorf("the default TTL: %v", m.Answer)
	}
}

// TestEDE: the Extended DNS Error goes to a client that sent EDNS, with
// the rcode or the addresses; not to one that did not.
func TestEDE(t *testing.T) {
	for _, cfg := range []string{`{"rcode":"nxdomain","ede":{"code":15,"text":"blocked by policy"}}`, `{"addresses":["0.0.0.0"],"ede":{"code":17}}`} {
		m := askEDNS(t, cfg, "ads.example.", dns.TypeA, true)
		opt := m.IsEdns0()
		if opt == nil || len(opt.Option) != 1 {
			t.Fatalf("%s: %v", cfg, m)
		}
		ede, ok := opt.Option[0].(*dns.EDNS0_EDE)
		if !ok || (ede.InfoCode != 15 || ede.ExtraText != "blocked by policy") && (ede.InfoCode != 17 || ede.ExtraText != "") {
			t.Errorf("%s: %v", cfg, opt.Option[0])
		}
		if m := askEDNS(t, cfg, "ads.example.", dns.TypeA, false); m.IsEdns0() != nil {
			t.Errorf("%s: an OPT record to a client without EDNS: %v", cfg, m)
		}
	}
}

func TestBadConfig(t *testing.T) {
	handlertest.BadConfigs(t, func() caddy.Provisioner { return new(Answer) }, map[string]string{
		`{}`: "answer: give an rcode (nxdomain, refused, servfail, noerror), addresses or a cname",
		`{"rcode":"nxdomain","addresses":["192.0.2.1"]}`:     "give one of them",
		`{"cname":"safe.example","addresses":["192.0.2.1"]}`: "give one of them",
		`{"cname":"a..b"}`:                           `answer: cname "a..b" is not a domain name`,
		`{"cname":"."}`:                              `answer: cname "." is not a domain name`,
		`{"rcode":"formerr"}`:                        `answer: rcode "formerr": want nxdomain, refused, servfail or noerror`,
		`{"addresses":["192.0.2.1","host.example"]}`: `answer: addresses[1]: "host.example" is not an IP address`,
		`{"addresses":["192.0.2.1"],"ttl":"1500ms"}`: "answer: ttl 1.5s: want whole seconds",
	})
}

func TestCaddyfile(t *testing.T) {
	for in, want := range map[string]string{
		"answer NXDOMAIN":                          `{"rcode":"nxdomain"}`,
		"answer 0.0.0.0 ::":                        `{"addresses":["0.0.0.0","::"]}`,
		"answer 192.0.2.7 {\n\tttl 1h\n}":          `{"addresses":["192.0.2.7"],"ttl":3600000000000}`,
		"answer cname safe.example {\n\tttl 5m\n}": `{"cname":"safe.example","ttl":300000000000}`,
		"answer nxdomain {\n\tttl 1h\n\tsoa\n}":    `{"rcode":"nxdomain","soa":true,"ttl":3600000000000}`,
	} {
		a := new(Answer)
		if err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if got, _ := json.Marshal(a); string(got) != want {
			t.Errorf("%q: %s, want %s", in, got, want)
		}
	}
	for in, msg := range map[string]string{
		"answer":                              "answer takes an rcode (nxdomain, refused, servfail, noerror), addresses, or cname <target>, at Testfile:1",
		"answer cname":                        "answer cname takes one target name, e.g. answer cname forcesafesearch.google.com, at Testfile:1",
		"answer cname a.example b.example":    "answer cname takes one target name",
		"answer blocked":                      "answer blocked: not an rcode (nxdomain, refused, servfail, noerror) nor an IP address, at Testfile:1",
		"answer 192.0.2.1 nxdomain":           `answer: "nxdomain" is not an IP address, at Testfile:1`,
		"answer nxdomain {\n\tttl 1h\n}":      "ttl: an rcode answer has no records (but with soa), at Testfile:2",
		"answer nxdomain {\n\tsoa 1h\n}":      "wrong argument count",
		"answer 192.0.2.1 {\n\tttl -1s\n}":    "ttl must be positive, got -1s, at Testfile:2",
		"answer 192.0.2.1 {\n\tcount 2\n}":    "unrecognized subdirective 'count', at Testfile:2",
		"answer nxdomain {\n\tede blocked\n}": "ede blocked: not an info code (0 to 65535; 15 Blocked, 17 Filtered), at Testfile:2",
		"answer nxdomain {\n\tede\n}":         "ede takes an info code and an optional text",
	} {
		err := new(Answer).UnmarshalCaddyfile(caddyfile.NewTestDispenser(in))
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q: %v, want %q", in, err, msg)
		}
	}
}

// target is the rest of a chain behind a cname answer: it answers what
// it is asked for, as an upstream would, and notes the questions.
type target struct {
	asked []dns.Question
	rcode int
	err   error
}

func (u *target) ServeDNS(_ context.Context, r *caddydns.Request, _ caddydns.Next) (caddydns.Response, error) {
	u.asked = append(u.asked, r.Msg.Question[0])
	if u.err != nil {
		return caddydns.Response{}, u.err
	}
	m := new(dns.Msg)
	m.SetRcode(r.Msg, u.rcode)
	q := r.Msg.Question[0]
	switch {
	case u.rcode == dns.RcodeNameError:
		soa, _ := dns.NewRR("example. 300 IN SOA ns.example. h.example. 1 2 3 4 60")
		m.Ns = append(m.Ns, soa)
	case u.rcode == dns.RcodeSuccess && q.Qtype == dns.TypeA:
		a, _ := dns.NewRR(q.Name + " 30 IN A 192.0.2.99")
		m.Answer = append(m.Answer, a)
	}
	r.Upstream = "udp://192.0.2.53:53"
	return caddydns.Response{Msg: m}, nil
}

func askCNAME(t *testing.T, up *target, name string, qtype uint16) (*dns.Msg, *caddydns.Request) {
	t.Helper()
	a := new(Answer)
	handlertest.Provision(t, a, `{"cname":"Safe.Example","ttl":"5m"}`)
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	q.Id = 778
	b, _ := q.Pack()
	r := &caddydns.Request{Transport: "dot", Client: netip.MustParseAddrPort("192.0.2.1:5300"), Size: caddydns.MaxMessage}
	res := caddydns.NewChain("test", "test", a, up).Serve(context.Background(), r, b, nil)
	m := new(dns.Msg)
	if err := m.Unpack(res.Wire); err != nil {
		t.Fatal(err)
	}
	return m, r
}

// TestCNAME: the CNAME record, then the rest of the chain's answer for
// its target with the query's type; to a CNAME query the record alone;
// the target's NXDOMAIN with its SOA (RFC 6604); a failure of the rest
// of the chain is the client's SERVFAIL, without the CNAME.
func TestCNAME(t *testing.T) {
	up := &target{}
	m, r := askCNAME(t, up, "WWW.Search.Example.", dns.TypeA)
	if len(up.asked) != 1 || up.asked[0].Name != "safe.example." || up.asked[0].Qtype != dns.TypeA {
		t.Fatalf("the chain was asked %v, want safe.example. A", up.asked)
	}
	if m.Rcode != dns.RcodeSuccess || m.Id != 778 || m.Question[0].Name != "WWW.Search.Example." || len(m.Answer) != 2 || !m.RecursionAvailable {
		t.Fatalf("A: %v", m)
	}
	cn, ok := m.Answer[0].(*dns.CNAME)
	if !ok || cn.Hdr.Name != "WWW.Search.Example." || cn.Target != "safe.example." || cn.Hdr.Ttl != 300 {
		t.Errorf("the first record: %v", m.Answer[0])
	}
	if a, ok := m.Answer[1].(*dns.A); !ok || a.Hdr.Name != "safe.example." || a.A.String() != "192.0.2.99" {
		t.Errorf("the second record: %v", m.Answer[1])
	}
	if r.Upstream != "udp://192.0.2.53:53" {
		t.Errorf("the query log's upstream: %q", r.Upstream)
	}

	up = &target{}
	if m, _ := askCNAME(t, up, "www.search.example.", dns.TypeCNAME); len(up.asked) != 0 || len(m.Answer) != 1 || m.Rcode != dns.RcodeSuccess {
		t.Errorf("CNAME: asked %v, answer %v", up.asked, m)
	}
	up = &target{rcode: dns.RcodeNameError}
	if m, _ := askCNAME(t, up, "www.search.example.", dns.TypeA); m.Rcode != dns.RcodeNameError || len(m.Answer) != 1 || len(m.Ns) != 1 {
		t.Errorf("target NXDOMAIN: %v", m)
	}
	up = &target{rcode: dns.RcodeRefused}
	if m, _ := askCNAME(t, up, "www.search.example.", dns.TypeA); m.Rcode != dns.RcodeRefused || len(m.Answer) != 0 {
		t.Errorf("target REFUSED: %v", m)
	}
	up = &target{err: errors.New("no upstream answered")}
	if m, _ := askCNAME(t, up, "www.search.example.", dns.TypeA); m.Rcode != dns.RcodeServerFailure || len(m.Answer) != 0 {
		t.Errorf("the chain failed: %v", m)
	}
}

// TestSOA: with soa, NXDOMAIN and NODATA answers carry an SOA owned by
// the query's name, TTL and minimum the answer's ttl (RFC 2308), and
// answers with records do not.
func TestSOA(t *testing.T) {
	for _, c := range []struct {
		cfg    string
		qtype  uint16
		rcode  int
		answer int
		soa    bool
	}{
		{`{"rcode":"nxdomain","soa":true,"ttl":"1h"}`, dns.TypeA, dns.RcodeNameError, 0, true},
		{`{"rcode":"noerror","soa":true,"ttl":"1h"}`, dns.TypeA, dns.RcodeSuccess, 0, true},
		{`{"addresses":["0.0.0.0"],"soa":true,"ttl":"1h"}`, dns.TypeMX, dns.RcodeSuccess, 0, true},
		{`{"addresses":["0.0.0.0"],"soa":true,"ttl":"1h"}`, dns.TypeA, dns.RcodeSuccess, 1, false},
		{`{"rcode":"nxdomain"}`, dns.TypeA, dns.RcodeNameError, 0, false},
	} {
		m := ask(t, c.cfg, "Ads.Example.", c.qtype)
		if m.Rcode != c.rcode || len(m.Answer) != c.answer || (len(m.Ns) == 1) != c.soa || len(m.Ns) > 1 {
			t.Errorf("%s %s: %v", c.cfg, dns.TypeToString[c.qtype], m)
			continue
		}
		if c.soa {
			soa, ok := m.Ns[0].(*dns.SOA)
			if !ok || soa.Hdr.Name != "Ads.Example." || soa.Hdr.Ttl != 3600 || soa.Minttl != 3600 {
				t.Errorf("%s: %v", c.cfg, m.Ns[0])
			}
		}
	}
}
