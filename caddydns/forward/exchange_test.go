package forward

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/caddydns/dnswire"
)

// TestCallWait: a pooled call's timer and channel carry nothing from one
// wait to the next. A wait that timed out leaves no stale tick that could
// end the next wait early, and an answer sent as a wait ended is dropped
// on release, not handed to the call's next query.
func TestCallWait(t *testing.T) {
	cl := newCall([]byte("\x03www\x07example\x03org\x00\x00\x01\x00\x01"))
	if _, err := cl.wait(context.Background(), time.Now().Add(time.Millisecond)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait past its deadline: %v, want context.DeadlineExceeded", err)
	}
	for i := 0; i < 20; i++ {
		// an answer is there and the deadline is far: the answer, every
		// time (a stale tick from an earlier wait would win half the time)
		want := new(caddydns.Wire)
		cl.resp <- want
		got, err := cl.wait(context.Background(), time.Now().Add(time.Hour))
		if err != nil || got != want {
			t.Fatalf("wait %d: %v, %v; want the answer sent", i, got, err)
		}
		if _, err := cl.wait(context.Background(), time.Now().Add(-time.Second)); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("wait %d with a past deadline: %v", i, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := cl.wait(ctx, time.Now().Add(time.Hour)); !errors.Is(err, context.Canceled) {
		t.Fatalf("wait with a canceled context: %v, want context.Canceled", err)
	}

	cl.resp <- caddydns.NewWire(make([]byte, 12), &dnswire.Layout{}) // came as the wait ended
	cl.err = errors.New("x")
	cl.release()
	if len(cl.resp) != 0 || cl.question != nil || cl.err != nil {
		t.Fatalf("released call still holds an answer (%d), a question (%v) or an error (%v)", len(cl.resp), cl.question, cl.err)
	}
}

// TestUDPRefused: a UDP upstream with nothing listening answers with ICMP
// port unreachable. The queries waiting on its socket fail at once with
// "connection refused" (and go to the next upstream) instead of waiting
// out their timeout; each query has a socket of its own.
func TestUDPRefused(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close() // nothing listens there now

	c := newUDPClient(addr, nil)
	defer c.close()
	q := query("www.example.org.", dns.TypeA)
	packed, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; i < 5; i++ {
		_, err := c.exchange(context.Background(), nil, deadline, dnswire.Question(packed), packed, nil, false)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("query %d to a closed port: %v, want connection refused", i, err)
		}
	}
}

// TestUDPRefusedConcurrent: queries that keep coming while a socket's
// reader is ending on "connection refused" must not join that socket
// (nothing would read their answers): every one fails with the refusal,
// none waits out its deadline.
func TestUDPRefusedConcurrent(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close() // nothing listens there now
	c := newUDPClient(addr, nil)
	defer c.close()
	const queries = 200
	errs := make(chan error, queries)
	for i := range queries {
		go func() {
			packed, _ := query(fmt.Sprintf("q%d.example.org.", i), dns.TypeA).Pack()
			_, err := c.exchange(context.Background(), nil, time.Now().Add(3*time.Second), dnswire.Question(packed), packed, nil, false)
			errs <- err
		}()
	}
	for range queries {
		if err := <-errs; !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("a query to a closed port: %v, want connection refused", err)
		}
	}
}

// TestUDPTimeout: an upstream that never answers: the query fails at its
// deadline with context.DeadlineExceeded, naming the upstream, and its
// socket is closed.
func TestUDPTimeout(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close() // reads nothing, answers nothing
	c := newUDPClient(pc.LocalAddr().String(), nil)
	defer c.close()
	q := query("www.example.org.", dns.TypeA)
	packed, _ := q.Pack()
	_, err = c.exchange(context.Background(), nil, time.Now().Add(20*time.Millisecond), dnswire.Question(packed), packed, nil, false)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), pc.LocalAddr().String()) {
		t.Fatalf("query to a silent upstream: %v, want a deadline error naming %s", err, pc.LocalAddr())
	}
	c.mu.Lock()
	open := len(c.open)
	c.mu.Unlock()
	if open != 0 {
		t.Fatalf("%d sockets still open after the only query timed out", open)
	}
}

// countingWriter counts the system calls a socket's batches take.
type countingWriter struct {
	batchWriter
	calls, msgs atomic.Int64
}

func (w *countingWriter) WriteBatch(ms []ipv4.Message, flags int) (int, error) {
	n, err := w.batchWriter.WriteBatch(ms, flags)
	w.calls.Add(1)
	w.msgs.Add(int64(n))
	return n, err
}

// TestUDPBatch: queries from handlers that are ready at the same time go
// out together, one system call for several, and each still gets its own
// answer.
func TestUDPBatch(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1)) // one processor: the handlers take turns, as on a busy core
	c := newUDPClient(benchUpstream(t, 0), nil)
	defer c.close()
	// count what goes through each batch's socket
	var mu sync.Mutex
	var counters []*countingWriter
	c.wrap = func(w batchWriter) batchWriter {
		cw := &countingWriter{batchWriter: w}
		mu.Lock()
		counters = append(counters, cw)
		mu.Unlock()
		return cw
	}
	const queries = 64
	start := make(chan struct{})
	errs := make(chan error, queries)
	for i := range queries {
		go func() {
			name := fmt.Sprintf("q%d.example.org.", i)
			packed, err := query(name, dns.TypeA).Pack()
			if err != nil {
				errs <- err
				return
			}
			<-start
			a, err := c.exchange(context.Background(), nil, time.Now().Add(10*time.Second), dnswire.Question(packed), packed, nil, false)
			if err != nil {
				errs <- err
				return
			}
			defer a.Release()
			got, _, err := dns.UnpackDomainName(a.Bytes(), dnswire.HeaderLen)
			if err == nil && got != name {
				err = fmt.Errorf("query %s got the answer for %s", name, got)
			}
			errs <- err
		}()
	}
	close(start)
	for range queries {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	var calls, msgs int64
	for _, w := range counters {
		calls, msgs = calls+w.calls.Load(), msgs+w.msgs.Load()
	}
	if msgs != queries || calls >= queries {
		t.Fatalf("%d queries sent in %d system calls: want %d in fewer", msgs, calls, queries)
	}
	t.Logf("%d queries sent in %d system calls", msgs, calls)
}

// failingWriter sends the first ok messages of a batch, then fails.
type failingWriter struct{ ok int }

var errSend = errors.New("no buffer space")

func (w *failingWriter) WriteBatch(ms []ipv4.Message, _ int) (int, error) {
	if w.ok <= 0 {
		return 0, errSend
	}
	n := min(1, len(ms), w.ok) // one a call, to go through send's loop
	w.ok -= n
	return n, nil
}

// TestUDPBatchSendFails: when a batch cannot be sent, the queries in it
// fail at once with the cause (and go to the next upstream) instead of
// waiting out their timeout; those sent before the failure are not
// failed.
func TestUDPBatchSendFails(t *testing.T) {
	b := new(udpBatch)
	for i := range 5 {
		b.add(nil, []byte{0, byte(i), 1, 2}, uint16(i), nil)
	}
	if err := b.send(&failingWriter{ok: 2}); !errors.Is(err, errSend) {
		t.Fatalf("send: %v, want %v", err, errSend)
	}
	if u := b.ids[b.sent:]; len(u) != 3 || u[0] != 2 || u[2] != 4 {
		t.Fatalf("unsent %v, want the last 3 of 5", u)
	}

	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close() // never answers
	c := newUDPClient(pc.LocalAddr().String(), nil)
	defer c.close()
	c.wrap = func(batchWriter) batchWriter { return &failingWriter{} }
	packed, _ := query("www.example.org.", dns.TypeA).Pack()
	_, err = c.exchange(context.Background(), nil, time.Now().Add(5*time.Second), dnswire.Question(packed), packed, nil, false)
	if !errors.Is(err, errSend) {
		t.Fatalf("query whose send failed: %v, want %v", err, errSend)
	}
}

// TestForwardLargeUDPAnswer: an upstream that answers over UDP whatever
// the size (as some do, past the EDNS size they were offered). An answer
// that fits an upstream socket's buffer comes over UDP; a larger one is
// asked again over TCP and reaches the client whole. Either way the
// client gets every record.
func TestForwardLargeUDPAnswer(t *testing.T) {
	pc, ln := listenUDPTCP(t)
	var tcpQueries atomic.Int64
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		if w.RemoteAddr().Network() == "tcp" {
			tcpQueries.Add(1)
		}
		m := new(dns.Msg)
		m.SetReply(q)
		n := 10 // about 2,200 octets
		// 0x20: the name comes in any case
		if strings.EqualFold(q.Question[0].Name, "big.example.net.") {
			n = 60 // about 13,000
		}
		for i := 0; i < n; i++ {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60},
				Txt: []string{strings.Repeat(strconv.Itoa(i%10), 200)}})
		}
		_ = w.WriteMsg(m)
	})
	serveUDPTCP(t, pc, ln, h, 0)
	c, _ := forwardChain(t, "udp://"+pc.LocalAddr().String())
	for _, tc := range []struct {
		name    string
		records int
		tcp     int64
	}{{"small.example.net.", 10, 0}, {"big.example.net.", 60, 1}} {
		before := tcpQueries.Load()
		q := query(tc.name, dns.TypeTXT)
		q.SetEdns0(65535, false) // the client takes anything: a stream client
		m := serveMsg(context.Background(), c, &caddydns.Request{Msg: q, Transport: "test", Size: caddydns.MaxMessage})
		if m == nil || m.Rcode != dns.RcodeSuccess || m.Truncated || len(m.Answer) != tc.records {
			t.Fatalf("%s: %v, want %d records, not truncated", tc.name, m, tc.records)
		}
		if got := tcpQueries.Load() - before; got != tc.tcp {
			t.Errorf("%s: %d queries over TCP, want %d", tc.name, got, tc.tcp)
		}
	}
}

// TestForwardHopOptions: the client's padding, cookie, keepalive and NSID
// options stay on its hop: the upstream (here over UDP, where RFC 7828
// forbids keepalive) gets the query with its other options only. The
// upstream's own padding, cookie, keepalive and NSID (RFC 5001: not
// transitive) do not reach the client; a DoT client that asked gets
// dnsfront's keepalive, and its padding.
func TestForwardHopOptions(t *testing.T) {
	got := make(chan []uint16, 1)
	up := udpUpstream(t, dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		var codes []uint16
		if o := q.IsEdns0(); o != nil {
			for _, e := range o.Option {
				codes = append(codes, e.Option())
			}
		}
		got <- codes
		m := new(dns.Msg)
		m.SetReply(q)
		m.SetEdns0(1232, false)
		m.IsEdns0().Option = []dns.EDNS0{
			&dns.EDNS0_TCP_KEEPALIVE{Code: dns.EDNS0TCPKEEPALIVE, Timeout: 1200},
			&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708a1a2a3a4a5a6a7a8"},
			&dns.EDNS0_NSID{Code: dns.EDNS0NSID, Nsid: "6e73"},
			&dns.EDNS0_LOCAL{Code: 65002, Data: []byte("up")},
			&dns.EDNS0_PADDING{Padding: make([]byte, 7)},
		}
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)})
		_ = w.WriteMsg(m)
	}))
	c, _ := forwardChain(t, "udp://"+up)

	q := query("www.example.net.", dns.TypeA)
	q.SetEdns0(1232, true)
	q.IsEdns0().Option = []dns.EDNS0{
		&dns.EDNS0_PADDING{Padding: make([]byte, 30)},
		&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "1112131415161718"},
		&dns.EDNS0_NSID{Code: dns.EDNS0NSID},
		&dns.EDNS0_LOCAL{Code: 65001, Data: []byte("client")},
		&dns.EDNS0_TCP_KEEPALIVE{Code: dns.EDNS0TCPKEEPALIVE},
	}
	b := serve(context.Background(), c, &caddydns.Request{Msg: q, Transport: "test", Size: caddydns.MaxMessage, Keepalive: 30 * time.Second}, nil)
	if codes := <-got; !slices.Equal(codes, []uint16{65001}) {
		t.Fatalf("the upstream got options %v, want only the client's option 65001", codes)
	}
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil || len(m.Answer) != 1 || !m.IsEdns0().Do() {
		t.Fatalf("answer: %v (%v)", m, err)
	}
	var codes []uint16
	for _, e := range m.IsEdns0().Option {
		codes = append(codes, e.Option())
	}
	if !slices.Equal(codes, []uint16{65002, dns.EDNS0TCPKEEPALIVE, dns.EDNS0PADDING}) {
		t.Errorf("the client got options %v, want the upstream's option 65002, then dnsfront's keepalive and padding", codes)
	}
	l, _ := dnswire.Walk(b)
	if data, n := dnswire.Option(b, &l, dns.EDNS0TCPKEEPALIVE); n != 1 || string(data) != "\x01\x2c" || len(b)%dnswire.PaddingBlock != 0 {
		t.Errorf("%d keepalive options, TIMEOUT % x (dnsfront's is 300), %d octets (padded to %d)", n, data, len(b), dnswire.PaddingBlock)
	}
}

// TestForwardQueryFlags: the upstream gets the client's RD, AD and CD,
// and never AA, RA, Z or an rcode, which a query has no use for.
func TestForwardQueryFlags(t *testing.T) {
	got := make(chan dns.MsgHdr, 1)
	up := udpUpstream(t, dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		got <- q.MsgHdr
		m := new(dns.Msg)
		m.SetReply(q)
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)})
		_ = w.WriteMsg(m)
	}))
	c, _ := forwardChain(t, "udp://"+up)

	q := query("www.example.net.", dns.TypeA)
	q.Authoritative, q.RecursionAvailable, q.Zero, q.Rcode = true, true, true, dns.RcodeRefused
	q.RecursionDesired, q.AuthenticatedData, q.CheckingDisabled = true, true, true
	if m := serveMsg(context.Background(), c, &caddydns.Request{Msg: q, Transport: "test", Size: caddydns.MaxMessage}); m == nil || len(m.Answer) != 1 {
		t.Fatalf("answer: %v", m)
	}
	if h := <-got; h.Authoritative || h.RecursionAvailable || h.Zero || h.Rcode != 0 || !h.RecursionDesired || !h.AuthenticatedData || !h.CheckingDisabled {
		t.Fatalf("the upstream got AA %v RA %v Z %v rcode %d RD %v AD %v CD %v; want only RD, AD and CD", h.Authoritative, h.RecursionAvailable, h.Zero, h.Rcode, h.RecursionDesired, h.AuthenticatedData, h.CheckingDisabled)
	}
}

// tapRecorder is a caddydns.Tap that keeps what forward tells it.
type tapRecorder struct {
	mu   sync.Mutex
	seen []tapped
}

type tapped struct {
	query bool
	hop   caddydns.Hop
	id    uint16
	name  string // the question as it went, 0x20 case and all
	tc    bool
}

func (t *tapRecorder) ClientResponse(*caddydns.Request, time.Time, []byte) {}
func (t *tapRecorder) ForwarderQuery(_ *caddydns.Request, to caddydns.Hop, msg []byte) {
	t.add(true, to, msg)
}
func (t *tapRecorder) ForwarderResponse(_ *caddydns.Request, from caddydns.Hop, msg []byte) {
	t.add(false, from, msg)
}

func (t *tapRecorder) add(query bool, hop caddydns.Hop, msg []byte) {
	m := new(dns.Msg)
	if err := m.Unpack(msg); err != nil || len(m.Question) != 1 {
		panic(fmt.Sprintf("tapped a message that does not decode: %v", err))
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.seen = append(t.seen, tapped{query, hop, m.Id, m.Question[0].Name, m.Truncated})
}

// TestForwardTap: a Tap sees each message forward exchanges with an
// upstream as it went on the wire (the ID and the 0x20 case the upstream
// got), with the hop it took: a UDP upstream's query and answer as
// "udp", and, when the answer is truncated, the query asked again and
// its answer as "tcp"; a TCP upstream's as "tcp". Every hop carries the
// upstream's name and address.
func TestForwardTap(t *testing.T) {
	pc, ln := listenUDPTCP(t)
	type got struct {
		transport string
		id        uint16
		name      string
	}
	gotc := make(chan got, 8)
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		transport := w.RemoteAddr().Network()
		gotc <- got{transport, q.Id, q.Question[0].Name}
		m := new(dns.Msg)
		m.SetReply(q)
		if transport == "udp" && strings.EqualFold(q.Question[0].Name, "tc.example.net.") {
			m.Truncated = true
		} else {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)})
		}
		_ = w.WriteMsg(m)
	})
	serveUDPTCP(t, pc, ln, h, 0)
	addr := netip.MustParseAddrPort(pc.LocalAddr().String())
	for _, tc := range []struct {
		scheme, name string
		hops         []string // the transports of the tapped messages, in order
	}{
		{"udp", "www.example.net.", []string{"udp", "udp"}},
		{"udp", "tc.example.net.", []string{"udp", "udp", "tcp", "tcp"}},
		{"tcp", "www.example.net.", []string{"tcp", "tcp"}},
	} {
		c, _ := forwardChain(t, tc.scheme+"://"+addr.String())
		rec := new(tapRecorder)
		m := serveMsg(context.Background(), c, &caddydns.Request{Msg: query(tc.name, dns.TypeA), Transport: "test", Size: caddydns.MaxMessage, Tap: rec})
		if m == nil || len(m.Answer) != 1 {
			t.Fatalf("%s %s: %v", tc.scheme, tc.name, m)
		}
		if len(rec.seen) != len(tc.hops) {
			t.Fatalf("%s %s: tapped %+v, want transports %v", tc.scheme, tc.name, rec.seen, tc.hops)
		}
		for i, s := range rec.seen {
			want := caddydns.Hop{Addr: addr, Transport: tc.hops[i]}
			if s.query != (i%2 == 0) || s.hop != want {
				t.Errorf("%s %s: message %d: %+v, want query=%v over %+v", tc.scheme, tc.name, i, s, i%2 == 0, want)
			}
			if !s.query {
				if s.tc != (i == 1 && len(tc.hops) == 4) {
					t.Errorf("%s %s: answer %d: TC=%v", tc.scheme, tc.name, i, s.tc)
				}
				continue
			}
			g := <-gotc
			if g.transport != s.hop.Transport || g.id != s.id || g.name != s.name || !strings.EqualFold(g.name, tc.name) {
				t.Errorf("%s %s: tapped query %d: %+v, the upstream got %+v", tc.scheme, tc.name, i, s, g)
			}
		}
	}
}
