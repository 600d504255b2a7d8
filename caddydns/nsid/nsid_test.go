package nsid

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/caddydns/dnswire"
	"github.com/dnsfront/dnsfront/internal/handlertest"
)

// upstream answers with an NSID of its own, as octets (a forwarded
// answer) or as a message.
type upstream struct{ wire bool }

func (u upstream) ServeDNS(_ context.Context, r *caddydns.Request, _ caddydns.Next) (caddydns.Response, error) {
	m := new(dns.Msg)
	m.SetReply(r.Msg)
	m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Msg.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: []byte{192, 0, 2, 1}}}
	m.SetEdns0(1232, false)
	m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_NSID{Code: dns.EDNS0NSID, Nsid: "7570"}} // "up"
	if !u.wire {
		return caddydns.Response{Msg: m}, nil
	}
	b, err := m.Pack()
	if err != nil {
		return caddydns.Response{}, err
	}
	l, _ := dnswire.Walk(b)
	return caddydns.Response{Wire: caddydns.NewWire(b, &l)}, nil
}

// nsidOf returns the identities in the NSID options of the answer c
// gives a query with or without an NSID option.
func nsidOf(t *testing.T, c *caddydns.Chain, ask, edns bool) []string {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion("www.example.org.", dns.TypeA)
	if edns {
		q.SetEdns0(1232, false)
		if ask {
			q.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_NSID{Code: dns.EDNS0NSID}}
		}
	}
	b, _ := q.Pack()
	a := c.Serve(context.Background(), &caddydns.Request{Size: caddydns.MaxMessage}, b, nil)
	m := new(dns.Msg)
	if err := m.Unpack(a.Wire); err != nil || m.Rcode != dns.RcodeSuccess {
		t.Fatalf("answer %v (%v)", m, err)
	}
	var out []string
	if opt := m.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if n, ok := o.(*dns.EDNS0_NSID); ok {
				text, err := hex.DecodeString(n.Nsid)
				if err != nil {
					t.Fatal(err)
				}
				out = append(out, string(text))
			}
		}
	}
	return out
}

// TestNSID: a query with an NSID option gets the server's, once, and
// never the upstream's; a query without one gets none, through a chain
// with or without the handler, for an answer as octets or as a message.
func TestNSID(t *testing.T) {
	n := new(NSID)
	handlertest.Provision(t, n, `{"id":"front-1 {env.DNSFRONT_TEST_SITE}"}`)
	for _, wire := range []bool{true, false} {
		with := caddydns.NewChain("test", "test", n, upstream{wire})
		without := caddydns.NewChain("test", "test", upstream{wire})
		if got := nsidOf(t, with, true, true); len(got) != 1 || got[0] != "front-1 ams" {
			t.Errorf("wire %v: asked: %q, want the server's identity alone", wire, got)
		}
		for _, c := range []struct {
			name      string
			chain     *caddydns.Chain
			ask, edns bool
		}{
			{"with the handler, not asked", with, false, true},
			{"with the handler, no EDNS", with, false, false},
			{"without the handler, asked", without, true, true},
		} {
			if got := nsidOf(t, c.chain, c.ask, c.edns); len(got) != 0 {
				t.Errorf("wire %v: %s: %q, want no NSID", wire, c.name, got)
			}
		}
	}
}

func TestMain(m *testing.M) {
	os.Setenv("DNSFRONT_TEST_SITE", "ams")
	os.Exit(m.Run())
}

func TestProvision(t *testing.T) {
	n := new(NSID)
	handlertest.Provision(t, n, `{}`)
	if host, _ := os.Hostname(); string(n.id) != host {
		t.Errorf("default id %q, want the host name %q", n.id, host)
	}
	handlertest.BadConfigs(t, func() caddy.Provisioner { return new(NSID) }, map[string]string{
		`{"id":"{env.DNSFRONT_UNSET_VAR}"}`:         `id "{env.DNSFRONT_UNSET_VAR}" is empty`,
		`{"id":"` + strings.Repeat("x", 256) + `"}`: "is 256 octets: at most 255",
	})
}

func TestCaddyfile(t *testing.T) {
	for in, want := range map[string]string{"nsid": "", "nsid {system.hostname}-a": "{system.hostname}-a", `nsid "pop 1"`: "pop 1"} {
		n := new(NSID)
		if err := n.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err != nil || n.ID != want {
			t.Errorf("%q: id %q (%v), want %q", in, n.ID, err, want)
		}
	}
	for in, msg := range map[string]string{
		"nsid a b":         "nsid takes one identity",
		"nsid a {\n\tx\n}": "nsid takes no block",
	} {
		if err := new(NSID).UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q: %v, want %q", in, err, msg)
		}
	}
}

// TestChaos: id.server. and hostname.bind. CH TXT (and ANY) get the
// identity, octet for octet, authoritative; other CHAOS names and IN
// queries for those names go on down the chain.
func TestChaos(t *testing.T) {
	n := new(NSID)
	id := "pop \"1\" \\ \u00e9"
	handlertest.Provision(t, n, fmt.Sprintf(`{"id":%q}`, id))
	c := caddydns.NewChain("test", "test", n, upstream{true})
	ask := func(name string, qtype, qclass uint16) *dns.Msg {
		q := new(dns.Msg)
		q.SetQuestion(name, qtype)
		q.Question[0].Qclass = qclass
		b, _ := q.Pack()
		a := c.Serve(context.Background(), &caddydns.Request{Size: caddydns.MaxMessage}, b, nil)
		m := new(dns.Msg)
		if err := m.Unpack(a.Wire); err != nil {
			t.Fatal(err)
		}
		return m
	}
	for _, q := range []struct {
		name  string
		qtype uint16
	}{{"id.server.", dns.TypeTXT}, {"ID.Server.", dns.TypeTXT}, {"hostname.bind.", dns.TypeTXT}, {"id.server.", dns.TypeANY}} {
		m := ask(q.name, q.qtype, dns.ClassCHAOS)
		if m.Rcode != dns.RcodeSuccess || !m.Authoritative || len(m.Answer) != 1 {
			t.Fatalf("%s %d CH: %v", q.name, q.qtype, m)
		}
		txt, ok := m.Answer[0].(*dns.TXT)
		if !ok || txt.Hdr.Class != dns.ClassCHAOS || len(txt.Txt) != 1 {
			t.Fatalf("%s: %v", q.name, m.Answer[0])
		}
		// the string's octets, as packed: the identity's own
		b := make([]byte, 512)
		off, err := dns.PackRR(txt, b, 0, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		rdata := b[off-int(txt.Hdr.Rdlength) : off]
		if string(rdata[1:]) != id || int(rdata[0]) != len(id) {
			t.Fatalf("%s: TXT octets %q, want %q", q.name, rdata[1:], id)
		}
	}
	for _, q := range []struct {
		name          string
		qtype, qclass uint16
	}{{"version.bind.", dns.TypeTXT, dns.ClassCHAOS}, {"id.server.", dns.TypeA, dns.ClassCHAOS}, {"id.server.", dns.TypeTXT, dns.ClassINET}} {
		if m := ask(q.name, q.qtype, q.qclass); len(m.Answer) != 1 || m.Answer[0].Header().Rrtype != dns.TypeA {
			t.Fatalf("%s %d class %d: %v, want it passed on", q.name, q.qtype, q.qclass, m)
		}
	}
}
