package forward

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns/dnswire"

	"github.com/dnsfront/dnsfront/caddydns"
)

// benchUpstream answers every query with one A record, over UDP and TCP
// on the same loopback port, until the test ends. Like many servers it
// closes a TCP connection after a number of queries (miekg/dns: 128).
func benchUpstream(b testing.TB, maxTCPQueries int) string {
	pc, ln := listenUDPTCP(b)
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)})
		_ = w.WriteMsg(m)
	})
	serveUDPTCP(b, pc, ln, h, maxTCPQueries)
	return pc.LocalAddr().String()
}

// serveUDPTCP serves h on pc and ln until the test ends; TCP connections
// close after maxTCPQueries (miekg/dns: 0 means 128).
func serveUDPTCP(t testing.TB, pc net.PacketConn, ln net.Listener, h dns.Handler, maxTCPQueries int) {
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // runs last: after each Shutdown below
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h, MaxTCPQueries: maxTCPQueries}} {
		wg.Add(1)
		go func() { defer wg.Done(); _ = s.ActivateAndServe() }()
		t.Cleanup(func() { _ = s.Shutdown() })
	}
}

// forwardChain is a provisioned chain with one forward handler to up.
func forwardChain(t testing.TB, up string) (*caddydns.Chain, *Forward) {
	t.Helper()
	f := forwardTo(t, up, map[string]any{"tries": 1})
	return caddydns.NewChain("test", "test", f), f
}

// TestForwardUpstreamClosesConnections: an upstream that closes each TCP
// connection after 16 queries, under parallel pipelined load with a single
// try per query. Unanswered queries go again on another connection (RFC
// 7766 6.2.1), so every query is answered; the client learns the limit
// and from then on gives each connection 16 queries.
func TestForwardUpstreamClosesConnections(t *testing.T) {
	c, f := forwardChain(t, "tcp://"+benchUpstream(t, 16))
	var wg sync.WaitGroup
	var failed atomic.Int64
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := query("www.example.net.", dns.TypeA)
			for i := 0; i < 200; i++ {
				if m := serveMsg(context.Background(), c, &caddydns.Request{Msg: q.Copy(), Transport: "test", Size: caddydns.MaxMessage}); m == nil || m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d of 3200 queries failed", n)
	}
	if limit := f.ups[0].stream.limit.Load(); limit != 16 {
		t.Fatalf("learned a per-connection limit of %d, want 16", limit)
	}
}

// BenchmarkForward is a query's round trip through a forward handler to a
// loopback upstream and back (UDP, and a reused pipelined TCP connection),
// with parallel clients as a busy server has. Each query has its own
// cancelable context, as an HTTP/2 request does.
func BenchmarkForward(b *testing.B) {
	addr := benchUpstream(b, 0)
	for _, proto := range []string{"udp", "tcp"} {
		b.Run(proto, func(b *testing.B) {
			c, _ := forwardChain(b, proto+"://"+addr)
			b.ReportAllocs()
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				q := query("www.example.net.", dns.TypeA)
				var buf []byte
				for pb.Next() {
					q.Id = dns.Id()
					ctx, cancel := context.WithCancel(context.Background())
					buf = serve(ctx, c, &caddydns.Request{Msg: q, Transport: "bench", Size: caddydns.MaxMessage}, buf)
					cancel()
					// what a transport sends: packed, with the rcode and
					// one record
					if len(buf) < dnswire.HeaderLen || buf[3]&0xF != dns.RcodeSuccess || buf[6] != 0 || buf[7] != 1 {
						b.Errorf("answer: % x", buf)
						return
					}
				}
			})
		})
	}
}

// listenUDPTCP listens on a loopback port free for both UDP and TCP: the
// port the kernel gives UDP may be taken for TCP, so it tries again.
func listenUDPTCP(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	for i := 0; ; i++ {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln
		}
		pc.Close()
		if i == 20 {
			t.Fatalf("no loopback port free for both UDP and TCP: %v", err)
		}
	}
}
