package forward

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/miekg/dns"
	"github.com/pires/go-proxyproto"

	"github.com/dnsfront/dnsfront/caddydns"
)

// proxyUpstream is a UDP and TCP upstream that takes a PROXY v2 header
// before each datagram and at the start of each connection (read with
// go-proxyproto, as a real backend's reader would), and answers each
// query with a TXT record saying what the header said: "source
// destination" after the family (v4 or v6), or "local" for a LOCAL
// header. A query for a name under
// tc. is answered truncated over UDP. A message without a header gets
// no answer.
type proxyUpstream struct {
	addr      string
	udp, tcp  atomic.Int64 // queries taken
	conns     atomic.Int64 // TCP connections
	noHeaders atomic.Int64
}

func newProxyUpstream(t *testing.T) *proxyUpstream {
	pc, ln := listenUDPTCP(t)
	p := &proxyUpstream{addr: pc.LocalAddr().String()}
	var wg sync.WaitGroup
	t.Cleanup(func() { pc.Close(); ln.Close(); wg.Wait() })
	wg.Add(2)
	go func() {
		defer wg.Done()
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			rd := bufio.NewReader(bytes.NewReader(buf[:n]))
			h, err := proxyproto.Read(rd)
			if err != nil {
				p.noHeaders.Add(1)
				continue
			}
			rest, _ := io.ReadAll(rd)
			p.udp.Add(1)
			if a := p.answer(h, rest, true); a != nil {
				_, _ = pc.WriteTo(a, from)
			}
		}
	}()
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.conns.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				rd := bufio.NewReader(c)
				h, err := proxyproto.Read(rd)
				if err != nil {
					p.noHeaders.Add(1)
					return
				}
				for {
					var l [2]byte
					if _, err := io.ReadFull(rd, l[:]); err != nil {
						return
					}
					q := make([]byte, binary.BigEndian.Uint16(l[:]))
					if _, err := io.ReadFull(rd, q); err != nil {
						return
					}
					p.tcp.Add(1)
					if a := p.answer(h, q, false); a != nil {
						_, _ = c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(a))), a...))
					}
				}
			}()
		}
	}()
	return p
}

func (p *proxyUpstream) answer(h *proxyproto.Header, query []byte, udp bool) []byte {
	q := new(dns.Msg)
	if q.Unpack(query) != nil || len(q.Question) != 1 {
		return nil
	}
	m := new(dns.Msg)
	m.SetReply(q)
	said := "local"
	if h.Command == proxyproto.PROXY {
		family := "v4 "
		if h.TransportProtocol.IsIPv6() {
			family = "v6 "
		}
		said = family + h.SourceAddr.String() + " " + h.DestinationAddr.String()
	}
	if udp && strings.HasPrefix(strings.ToLower(q.Question[0].Name), "tc.") {
		m.Truncated = true
	} else {
		m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60}, Txt: []string{said}})
	}
	b, _ := m.Pack()
	return b
}

// TestProxyProtocol: with proxy_protocol, an upstream gets a PROXY v2
// header before each query naming the client and the address it reached:
// in each UDP datagram, on the TCP connection of UDP's fallback after a
// truncated answer, and on a connection of its own for each query to a
// tcp:// or tls:// upstream. Two families are written as IPv6; a health
// check sends a LOCAL header; without proxy_protocol, no header.
func TestProxyProtocol(t *testing.T) {
	up := newProxyUpstream(t)
	ask := func(f *Forward, name string, client, local string) string {
		t.Helper()
		r := &caddydns.Request{Msg: query(name, dns.TypeTXT), Transport: "test", Size: caddydns.MaxMessage}
		if client != "" {
			r.Client = netip.MustParseAddrPort(client)
		}
		if local != "" {
			r.Local = netip.MustParseAddrPort(local)
		}
		m := serveMsg(context.Background(), caddydns.NewChain("test", "test", f), r)
		if m == nil || len(m.Answer) != 1 {
			t.Fatalf("%s: %v", name, m)
		}
		return m.Answer[0].(*dns.TXT).Txt[0]
	}
	udp := forwardTo(t, "udp://"+up.addr, map[string]any{"proxy_protocol": true, "tries": 1})
	for _, c := range []struct{ name, client, local, want string }{
		{"www.example.net.", "192.0.2.7:5300", "127.0.0.1:853", "v4 192.0.2.7:5300 127.0.0.1:853"},
		{"www.example.net.", "[2001:db8::7]:5300", "[::1]:853", "v6 [2001:db8::7]:5300 [::1]:853"},
		// an IPv6 client that reached an IPv4 address: both as IPv6 (the
		// IPv4 one mapped, which Go prints as IPv4)
		{"www.example.net.", "[2001:db8::7]:5300", "127.0.0.1:443", "v6 [2001:db8::7]:5300 127.0.0.1:443"},
		{"www.example.net.", "192.0.2.7:5300", "", "v4 192.0.2.7:5300 0.0.0.0:0"},
		{"tc.example.net.", "192.0.2.8:5301", "127.0.0.1:853", "v4 192.0.2.8:5301 127.0.0.1:853"},
	} {
		udpBefore, tcpBefore := up.udp.Load(), up.tcp.Load()
		if got := ask(udp, c.name, c.client, c.local); got != c.want {
			t.Errorf("%s from %s to %s: the upstream saw %q, want %q", c.name, c.client, c.local, got, c.want)
		}
		wantTCP := int64(0)
		if strings.HasPrefix(c.name, "tc.") {
			wantTCP = 1
		}
		if up.udp.Load()-udpBefore != 1 || up.tcp.Load()-tcpBefore != wantTCP {
			t.Errorf("%s: %d UDP and %d TCP queries, want 1 and %d", c.name, up.udp.Load()-udpBefore, up.tcp.Load()-tcpBefore, wantTCP)
		}
	}
	if s := udp.ups[0].status(time.Now()); !s.ProxyProtocol {
		t.Errorf("GET /dns/upstreams: %+v, want proxy_protocol", s)
	}
	// a health check's query: LOCAL
	a, err := udp.ups[0].query(context.Background(), nil, time.Now().Add(2*time.Second), mustPack(t, query("health.example.net.", dns.TypeTXT)))
	if err != nil {
		t.Fatal(err)
	}
	m := new(dns.Msg)
	if err := m.Unpack(a.Bytes()); err != nil || len(m.Answer) != 1 || m.Answer[0].(*dns.TXT).Txt[0] != "local" {
		t.Errorf("a health check's query: %v %v, want a LOCAL header", m, err)
	}
	a.Release()

	// tcp://: a connection per query, each opened by its client's header
	tcp := forwardTo(t, "tcp://"+up.addr, map[string]any{"proxy_protocol": true, "tries": 1})
	conns := up.conns.Load()
	for i, client := range []string{"192.0.2.9:1000", "192.0.2.10:1001", "192.0.2.9:1000"} {
		if got, want := ask(tcp, "www.example.net.", client, "127.0.0.1:853"), "v4 "+client+" 127.0.0.1:853"; got != want {
			t.Errorf("tcp:// query %d: the upstream saw %q, want %q", i, got, want)
		}
	}
	if n := up.conns.Load() - conns; n != 3 {
		t.Errorf("3 queries over tcp:// took %d connections, want one each", n)
	}

	// without proxy_protocol, no header: the upstream answers nothing
	plain := forwardTo(t, "udp://"+up.addr, map[string]any{"tries": 1, "timeout": "200ms"})
	before := up.noHeaders.Load()
	r := &caddydns.Request{Msg: query("www.example.net.", dns.TypeTXT), Transport: "test", Size: caddydns.MaxMessage, Client: netip.MustParseAddrPort("192.0.2.7:5300")}
	if m := serveMsg(context.Background(), caddydns.NewChain("test", "test", plain), r); m == nil || m.Rcode != dns.RcodeServerFailure {
		t.Errorf("without proxy_protocol: %v, want SERVFAIL (the upstream wants a header)", m)
	}
	if up.noHeaders.Load() == before {
		t.Error("the upstream saw no message without a header")
	}
}

func mustPack(t *testing.T, m *dns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestProxyProtocolConfig: a DoH upstream takes no PROXY header.
func TestProxyProtocolConfig(t *testing.T) {
	f := &Forward{To: []string{"https://127.0.0.1/dns-query"}, ProxyProtocol: true}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := f.Provision(ctx); err == nil || !strings.Contains(err.Error(), "forward: proxy_protocol: https://127.0.0.1:443/dns-query is a DoH upstream") {
		t.Errorf("https:// with proxy_protocol: %v", err)
	}
}

// BenchmarkProxyHeader is the cost of a query's PROXY header.
func BenchmarkProxyHeader(b *testing.B) {
	r := &caddydns.Request{Client: netip.MustParseAddrPort("192.0.2.7:5300"), Local: netip.MustParseAddrPort("127.0.0.1:853")}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := proxyHeader(r); err != nil {
			b.Fatal(err)
		}
	}
}

// TestQuestionlessError: an error answer without its question (unbound's
// REFUSED from its access control is one) answers its query, which gets
// it with its question: over TCP at once, over UDP without 0x20 too, and
// over UDP with 0x20 (where it escapes the case check) once TCP has
// confirmed it. A NOERROR without a question does not (it would answer
// any query), and over UDP is counted forged.
func TestQuestionlessError(t *testing.T) {
	pc, ln := listenUDPTCP(t)
	var tcpQueries atomic.Int64
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		if w.RemoteAddr().Network() == "tcp" {
			tcpQueries.Add(1)
		}
		rcode := dns.RcodeRefused
		if strings.EqualFold(q.Question[0].Name, "empty.example.net.") {
			rcode = dns.RcodeSuccess
		}
		b := make([]byte, 12)
		binary.BigEndian.PutUint16(b, q.Id)
		b[2], b[3] = 0x84, byte(rcode) // QR, AA; QDCOUNT 0
		_, _ = w.Write(b)
	})
	serveUDPTCP(t, pc, ln, h, 0)
	for _, c := range []struct {
		up      string
		cfg     map[string]any
		viaTCP  int64
		counted bool // a forged NOERROR is counted (UDP)
	}{
		{"udp://" + pc.LocalAddr().String(), map[string]any{"tries": 1}, 1, true},
		{"udp://" + pc.LocalAddr().String(), map[string]any{"tries": 1, "disable_0x20": true}, 0, true},
		{"tcp://" + pc.LocalAddr().String(), map[string]any{"tries": 1}, 1, false},
	} {
		f := forwardTo(t, c.up, c.cfg)
		ch := caddydns.NewChain("test", "test", f)
		before := tcpQueries.Load()
		m := serveMsg(context.Background(), ch, &caddydns.Request{Msg: query("refused.example.net.", dns.TypeA), Transport: "test", Size: caddydns.MaxMessage})
		if m == nil || m.Rcode != dns.RcodeRefused || len(m.Question) != 1 || m.Question[0].Name != "refused.example.net." {
			t.Errorf("%s %v: a REFUSED without a question: %v, want REFUSED with the query's question", c.up, c.cfg, m)
		}
		if got := tcpQueries.Load() - before; got != c.viaTCP {
			t.Errorf("%s %v: %d queries over TCP, want %d", c.up, c.cfg, got, c.viaTCP)
		}
		f.timeout = 300 * time.Millisecond
		forged := metricValue(t, f.ups[0].forged[forgedQuestion])
		m = serveMsg(context.Background(), ch, &caddydns.Request{Msg: query("empty.example.net.", dns.TypeA), Transport: "test", Size: caddydns.MaxMessage})
		if m == nil || m.Rcode != dns.RcodeServerFailure {
			t.Errorf("%s: a NOERROR without a question: %v, want it not taken (SERVFAIL)", c.up, m)
		}
		if c.counted && metricValue(t, f.ups[0].forged[forgedQuestion]) == forged {
			t.Errorf("%s: the NOERROR without a question was not counted forged", c.up)
		}
	}
}
