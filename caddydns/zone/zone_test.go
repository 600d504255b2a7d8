package zone

import (
	"context"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns"
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

func testChain(t testing.TB) *caddydns.Chain {
	t.Helper()
	zd, err := newZoneData("example.org.", mustParse(t, testZone))
	if err != nil {
		t.Fatal(err)
	}
	return caddydns.NewChain("test", "test", &Zone{Origin: "example.org.", zone: zd})
}

func mustParse(t testing.TB, s string) []dns.RR {
	t.Helper()
	rrs, err := parseZone(strings.NewReader(s), "example.org.", "test")
	if err != nil {
		t.Fatal(err)
	}
	return rrs
}

// ask runs q through c, as a transport would, and decodes the answer.
func ask(c *caddydns.Chain, q *dns.Msg) *dns.Msg {
	b, err := q.Pack()
	if err != nil {
		panic(err)
	}
	a := c.Serve(context.Background(), &caddydns.Request{Transport: "test", Size: caddydns.MaxMessage}, b, nil)
	m := new(dns.Msg)
	if m.Unpack(a.Wire) != nil {
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
		{"example.org.", "WWW.Example.ORG.", true},
		{"example.org.", `www\.example.org.`, false}, // the label "www.example" under org.
		{"example.org.", `www\\.example.org.`, true}, // the label "www\" under example.org.
		{"example.org.", `www\\\.example.org.`, false},
	} {
		if got := caddydns.InDomain(tc.name, tc.origin); got != tc.want || got != dns.IsSubDomain(tc.origin, tc.name) {
			t.Errorf("InDomain(%q, %q) = %v, want %v (as dns.IsSubDomain)", tc.name, tc.origin, got, tc.want)
		}
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
