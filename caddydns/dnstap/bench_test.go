package dnstap

import (
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap"

	"github.com/dnsfront/dnsfront/caddydns"
)

// BenchmarkTapQuery is what dnstap costs a forwarded query: its four
// messages (client query and response, forwarder query and response)
// sent from parallel goroutines, and written to a file by the output's
// goroutine.
func BenchmarkTapQuery(b *testing.B) {
	o, err := newOutput("file", filepath.Join(b.TempDir(), "tap.fstrm"), DefaultBuffer, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	defer o.Destruct()
	d := &Dnstap{out: o, head: appendHead(nil, []byte("bench"))}
	q := new(dns.Msg).SetQuestion("www.example.test.", dns.TypeA)
	qb, _ := q.Pack()
	a := new(dns.Msg).SetReply(q)
	a.Answer = append(a.Answer, &dns.A{Hdr: dns.RR_Header{Name: "www.example.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: []byte{192, 0, 2, 1}})
	ab, _ := a.Pack()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		r := &caddydns.Request{Transport: "dot", Client: netip.MustParseAddrPort("127.0.0.2:40000")}
		up := caddydns.Hop{Addr: netip.MustParseAddrPort("127.0.0.1:5301"), Transport: "udp"}
		for pb.Next() {
			d.out.add(d.head, clientQuery, time.Now(), r.Client, r.Transport, caddydns.Hop{}, qb)
			d.ForwarderQuery(r, up, qb)
			d.ForwarderResponse(r, up, ab)
			d.ClientResponse(r, time.Now(), ab)
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(o.dropped.Load())/float64(b.N), "dropped/op")
}
