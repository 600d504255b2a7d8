package forward

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns"
)

// spoofUpstream is a UDP upstream that also serves an attacker's zone:
// it answers names under attacker.test. at once and notes the source
// port each came from (all an off-path attacker who serves a zone
// learns), and answers target.example.org. after delay. It never tells
// the attacker the port or the ID of a target query.
type spoofUpstream struct {
	pc      net.PacketConn
	delay   atomic.Int64 // nanoseconds
	mu      sync.Mutex
	learned map[int]bool
	target  chan struct{} // a target query came (when, not from where); never blocks serve
}

func newSpoofUpstream(t *testing.T) *spoofUpstream {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &spoofUpstream{pc: pc, learned: make(map[int]bool), target: make(chan struct{}, 16)}
	done := make(chan struct{})
	go u.serve(done)
	t.Cleanup(func() { pc.Close(); <-done })
	return u
}

func (u *spoofUpstream) serve(done chan struct{}) {
	defer close(done)
	var wg sync.WaitGroup
	defer wg.Wait()
	buf := make([]byte, 4096)
	for {
		n, from, err := u.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		q := new(dns.Msg)
		if q.Unpack(buf[:n]) != nil || len(q.Question) != 1 {
			continue
		}
		m := new(dns.Msg)
		m.SetReply(q)
		name := strings.ToLower(q.Question[0].Name)
		if strings.HasSuffix(name, ".attacker.test.") {
			u.mu.Lock()
			u.learned[from.(*net.UDPAddr).Port] = true
			u.mu.Unlock()
			rr, _ := dns.NewRR(q.Question[0].Name + " 60 IN A 192.0.2.66")
			m.Answer = append(m.Answer, rr)
			b, _ := m.Pack()
			_, _ = u.pc.WriteTo(b, from)
			continue
		}
		rr, _ := dns.NewRR(q.Question[0].Name + " 60 IN A 192.0.2.1")
		m.Answer = append(m.Answer, rr)
		b, _ := m.Pack()
		select {
		case u.target <- struct{}{}:
		default: // a signal is already waiting: the reader never blocks this loop
		}
		delay := time.Duration(u.delay.Load())
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(delay) // the real answer is slow
			_, _ = u.pc.WriteTo(b, from)
		}()
	}
}

func (u *spoofUpstream) ports() []int {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []int
	for p := range u.learned {
		out = append(out, p)
	}
	return out
}

// ephemeralRange reads the kernel's range of source ports.
func ephemeralRange(t *testing.T) (lo, hi int) {
	lo, hi = 32768, 60999
	f, err := os.Open("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	defer f.Close()
	_, _ = fmt.Fscan(bufio.NewReader(f), &lo, &hi)
	return lo, hi
}

// TestSpoofedAnswers plays an off-path attacker who can send datagrams
// from the upstream's address: it learns dnsfront's source ports from
// 64 queries for its own zone, then, while the real answer to a target
// query is delayed, sends a forged answer for every ID to every learned
// port and for a spread of IDs to a spread of the ephemeral range, with
// the target's question as the client asked it. No forged answer may be
// accepted, at either delay, and the real answers must arrive.
func TestSpoofedAnswers(t *testing.T) {
	if testing.Short() {
		t.Skip("floods loopback for a few seconds")
	}
	up := newSpoofUpstream(t)
	f := forwardTo(t, up.pc.LocalAddr().String(), map[string]any{"tries": 1, "timeout": "4s", "max_fails": -1})
	const target = "Target.Example.ORG."
	forged := new(dns.Msg)
	forged.SetQuestion(target, dns.TypeA)
	forged.Response, forged.RecursionAvailable = true, true
	evil, _ := dns.NewRR(target + " 86400 IN A 203.0.113.66")
	forged.Answer = append(forged.Answer, evil)
	tmpl, err := forged.Pack()
	if err != nil {
		t.Fatal(err)
	}
	lo, hi := ephemeralRange(t)

	accepted := map[time.Duration]int{}
	for _, tc := range []struct {
		delay  time.Duration
		trials int
	}{{1500 * time.Millisecond, 4}, {100 * time.Millisecond, 8}} {
		up.delay.Store(int64(tc.delay))
		for trial := 0; trial < tc.trials; trial++ {
			// 1. learn the source ports
			var wg sync.WaitGroup
			for i := 0; i < 64; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, _ = f.ServeDNS(context.Background(), &caddydns.Request{Msg: query(fmt.Sprintf("l%d-%d.attacker.test.", trial, i), dns.TypeA)}, nil)
				}()
			}
			wg.Wait()
			ports := up.ports()
			if len(ports) == 0 {
				t.Fatal("the attacker learned no port: its zone was never asked")
			}
			// 2. the target query, whose answer is slow
			type result struct {
				msg *dns.Msg
				err error
			}
			res := make(chan result, 1)
			for len(up.target) > 0 {
				<-up.target // an earlier trial's query asked again
			}
			asked := time.Now()
			go func() {
				r := &caddydns.Request{Msg: query(target, dns.TypeA)}
				resp, err := f.ServeDNS(context.Background(), r, nil)
				if err != nil {
					res <- result{err: err}
					return
				}
				m, err := resp.Message()
				res <- result{m, err}
			}()
			<-up.target
			// 3. the flood, from the upstream's own address, until the
			// real answer is in (bounded in count either way)
			pkt := append([]byte(nil), tmpl...)
			sent := 0
		flood:
			for _, p := range ports {
				to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: p}
				for id := 0; id < 65536; id++ {
					binary.BigEndian.PutUint16(pkt, uint16(id))
					_, _ = up.pc.WriteTo(pkt, to)
					sent++
					if id%4096 == 0 && len(res) > 0 {
						break flood
					}
				}
			}
			for i := 0; i < 512 && len(res) == 0; i++ {
				to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: lo + rand.IntN(hi-lo+1)}
				for j := 0; j < 128; j++ {
					binary.BigEndian.PutUint16(pkt, uint16(rand.Uint32()))
					_, _ = up.pc.WriteTo(pkt, to)
					sent++
				}
			}
			// 4. what did the client get?
			r := <-res
			took := time.Since(asked)
			u := f.ups[0]
			if r.err != nil {
				t.Fatalf("delay %v, trial %d: the real answer did not arrive: %v (dropped as forged: id %v, question %v, case %v)", tc.delay, trial, r.err,
					metricValue(t, u.forged[forgedID]), metricValue(t, u.forged[forgedQuestion]), metricValue(t, u.forged[forgedCase]))
			}
			if len(r.msg.Answer) != 1 {
				t.Fatalf("delay %v, trial %d: answer %v", tc.delay, trial, r.msg)
			}
			if strings.Contains(r.msg.Answer[0].String(), "203.0.113.66") {
				accepted[tc.delay]++
			}
			t.Logf("delay %v, trial %d: %d ports learned, %d forged answers sent, dropped as forged: id %v, question %v, case %v; answer %s after %v",
				tc.delay, trial, len(ports), sent, metricValue(t, u.forged[forgedID]), metricValue(t, u.forged[forgedQuestion]),
				metricValue(t, u.forged[forgedCase]), r.msg.Answer[0], took.Round(time.Millisecond))
		}
	}
	for d, n := range accepted {
		if n > 0 {
			t.Errorf("delay %v: a forged answer was accepted in %d trials", d, n)
		}
	}
}

// Test0x20: questions go to a UDP upstream in random letter case, the
// client gets its own case back, and an upstream that does not keep case
// (it lower-cases every answer) is asked again over TCP, then, after
// caseMissLimit answers in a row, gets its queries without 0x20.
func Test0x20(t *testing.T) {
	pc, ln := listenUDPTCP(t)
	var udpQueries, tcpQueries atomic.Int64
	var lower atomic.Bool
	var n atomic.Int64
	seen := make(chan string, 64)
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		if w.RemoteAddr().Network() == "tcp" {
			tcpQueries.Add(1)
		} else {
			udpQueries.Add(1)
			seen <- q.Question[0].Name
		}
		m := new(dns.Msg)
		m.SetReply(q)
		if lower.Load() {
			m.Question[0].Name = strings.ToLower(m.Question[0].Name)
		}
		rr, _ := dns.NewRR(m.Question[0].Name + " 60 IN A 192.0.2.7")
		m.Answer = append(m.Answer, rr)
		// the owner compressed into the question, or in full
		m.Compress = n.Add(1)%2 == 0
		_ = w.WriteMsg(m)
	})
	serveUDPTCP(t, pc, ln, h, 0)
	c, f := forwardChain(t, "udp://"+pc.LocalAddr().String())
	u := f.ups[0]
	const name = "WwW.ExAmPle-Zone.ORG."
	ask := func(i int) {
		t.Helper()
		m := serveMsg(context.Background(), c, &caddydns.Request{Msg: query(name, dns.TypeA), Transport: "test", Size: caddydns.MaxMessage})
		if m == nil || m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 || m.Question[0].Name != name {
			t.Fatalf("query %d: %v, want an answer to %s in the client's case", i, m, name)
		}
	}

	// an upstream that keeps case: the names it sees vary in case
	differs := 0
	for i := 0; i < 20; i++ {
		ask(i)
		got := <-seen
		if !strings.EqualFold(got, name) {
			t.Fatalf("the upstream was asked %s for %s", got, name)
		}
		if got != name {
			differs++
		}
	}
	if differs == 0 || metricValue(t, u.randomized) != 1 {
		t.Fatalf("20 queries went upstream in the client's own case (0x20 gauge %v)", metricValue(t, u.randomized))
	}
	// a decoded answer (the JSON API's) has its record's owner in the
	// client's case too, whether the upstream compressed it into the
	// question or wrote it in full
	for i := 0; i < 4; i++ {
		got, _ := c.ServeMsg(context.Background(), &caddydns.Request{Msg: query(name, dns.TypeA), Transport: "test", Size: caddydns.MaxMessage})
		<-seen
		if got == nil || len(got.Answer) != 1 || got.Answer[0].Header().Name != name {
			t.Fatalf("decoded answer %d: %v, want the record's owner in the client's case %s", i, got, name)
		}
	}

	// an upstream that lower-cases: each answer asked again over TCP,
	// then 0x20 off for it
	lower.Store(true)
	for i := 0; i < caseMissLimit; i++ {
		ask(i)
		<-seen
	}
	if got := tcpQueries.Load(); got != caseMissLimit {
		t.Fatalf("%d queries asked again over TCP, want %d", got, caseMissLimit)
	}
	if metricValue(t, u.randomized) != 0 || metricValue(t, u.forged[forgedCase]) != caseMissLimit {
		t.Fatalf("after %d answers that lost the case: 0x20 gauge %v (want 0), case drops %v", caseMissLimit,
			metricValue(t, u.randomized), metricValue(t, u.forged[forgedCase]))
	}
	udp := udpQueries.Load()
	for i := 0; i < 5; i++ {
		ask(i)
		if got := <-seen; got != name {
			t.Fatalf("with 0x20 off the upstream was asked %s, want the client's %s", got, name)
		}
	}
	if tcpQueries.Load() != caseMissLimit || udpQueries.Load() != udp+5 {
		t.Fatalf("with 0x20 off: %d more over UDP, %d more over TCP; want 5 and 0", udpQueries.Load()-udp, tcpQueries.Load()-caseMissLimit)
	}
}
