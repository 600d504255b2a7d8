package dotapp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/miekg/dns"
	"go.uber.org/zap"

	"github.com/dnsfront/dnsfront/caddydns"
	_ "github.com/dnsfront/dnsfront/caddydns/zone" // the zone handler the tests answer from
	"github.com/dnsfront/dnsfront/internal/testpki"
)

// newTestServer is a provisioned server with a zone, serving connections
// handed to it (no listener).
func newTestServer(t testing.TB) *Server {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	s := &Server{ReadTimeout: caddy.Duration(time.Second), IdleTimeout: caddy.Duration(2 * time.Second)}
	s.HandlersRaw = []json.RawMessage{json.RawMessage(`{"handler":"zone","origin":"example.org.","records":[` +
		`"@ 3600 IN SOA ns1 host 1 7200 3600 1209600 300","www 60 IN A 192.0.2.80"]}`)}
	s.name, s.logger, s.ctx = "test", zap.NewNop(), ctx
	s.conns, s.perClient = make(map[*conn]struct{}), make(map[netip.Addr]int)
	s.applyDefaults()
	if err := s.Chain.Provision(ctx, "test", "dot"); err != nil {
		t.Fatal(err)
	}
	s.metrics = newDotMetrics(ctx, dotVecs, "test")
	ca := testpki.NewCA(t, "test", testpki.ECDSA)
	leaf := ca.Issue(t, testpki.LeafOptions{}, "dns.example.org")
	s.tlsCfg = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leaf.Cert.Raw}, PrivateKey: leaf.Key, Leaf: leaf.Cert}},
		NextProtos: []string{"dot"}}
	return s
}

// exchange serves one connection that sends input after the handshake
// and closes its side, and returns every frame the server sent back.
func exchange(t testing.TB, s *Server, input []byte) [][]byte {
	t.Helper()
	frames, _ := exchangeCounted(t, s, input)
	return frames
}

// exchangeCounted is exchange, and also returns how many writes the
// server made on the connection after the handshake.
func exchangeCounted(t testing.TB, s *Server, input []byte) ([][]byte, int64) {
	t.Helper()
	srvSide, cliSide := net.Pipe()
	pc := &pipeConn{Conn: srvSide}
	c := newConn(pc, "test")
	if reason := s.admit(c); reason != "" {
		t.Fatal(reason)
	}
	done := make(chan struct{})
	go func() { c.serve(s); close(done) }()
	cli := tls.Client(cliSide, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"dot"}, RootCAs: x509.NewCertPool()})
	_ = cli.SetDeadline(time.Now().Add(5 * time.Second))
	var frames [][]byte
	if err := cli.Handshake(); err != nil {
		t.Fatal(err)
	}
	handshake := pc.writes.Load()
	go func() {
		_, _ = cli.Write(input)
		_ = cli.CloseWrite() // close_notify: the server reads EOF
	}()
	for {
		var l [2]byte
		if _, err := io.ReadFull(cli, l[:]); err != nil {
			break
		}
		b := make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(cli, b); err != nil {
			t.Fatalf("truncated frame: %v", err)
		}
		frames = append(frames, b)
	}
	cli.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the connection was not closed after the client went away")
	}
	return frames, pc.writes.Load() - handshake
}

// pipeConn gives net.Pipe a TCP-like remote address, and counts writes.
type pipeConn struct {
	net.Conn
	writes atomic.Int64
}

func (*pipeConn) RemoteAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353} }

func (c *pipeConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

func frame(q *dns.Msg) []byte {
	b, _ := q.Pack()
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...)
}

func TestFraming(t *testing.T) {
	s := newTestServer(t)
	q := new(dns.Msg)
	q.SetQuestion("www.example.org.", dns.TypeA)
	var in []byte
	for i := 0; i < 3; i++ {
		q.Id = uint16(i + 1)
		in = append(in, frame(q)...)
	}
	// then garbage with a valid header: a FORMERR with its ID, then a
	// frame shorter than a header: the connection closes
	in = append(in, 0, 13, 0xBE, 0xEF, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xFF)
	in = append(in, 0, 3, 1, 2, 3)
	frames := exchange(t, s, in)
	if len(frames) != 4 {
		t.Fatalf("%d answers, want 3 and a FORMERR", len(frames))
	}
	ids := map[uint16]int{}
	for _, f := range frames {
		m := new(dns.Msg)
		if err := m.Unpack(f); err != nil {
			t.Fatal(err)
		}
		ids[m.Id] = m.Rcode
	}
	if ids[1] != dns.RcodeSuccess || ids[3] != dns.RcodeSuccess || ids[0xBEEF] != dns.RcodeFormatError {
		t.Fatalf("answers by ID: %v", ids)
	}
}

// TestAnswersWrittenTogether: answers to pipelined queries that are
// ready at the same time go out in one write, not one each. One
// processor, as on a busy core: the writer, woken by the first answer,
// yields once so that the other answering goroutines queue theirs.
func TestAnswersWrittenTogether(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	s := newTestServer(t)
	const queries = 64
	var in []byte
	for i := range queries {
		q := new(dns.Msg)
		q.SetQuestion("www.example.org.", dns.TypeA)
		q.Id = uint16(i + 1)
		in = append(in, frame(q)...)
	}
	frames, writes := exchangeCounted(t, s, in)
	if len(frames) != queries {
		t.Fatalf("%d answers to %d queries", len(frames), queries)
	}
	ids := map[uint16]bool{}
	for _, f := range frames {
		m := new(dns.Msg)
		if err := m.Unpack(f); err != nil || len(m.Answer) != 1 {
			t.Fatalf("answer %v: %v", m, err)
		}
		ids[m.Id] = true
	}
	if len(ids) != queries {
		t.Fatalf("%d distinct IDs answered, want %d", len(ids), queries)
	}
	if writes > queries/4 {
		t.Fatalf("%d answers in %d writes, want at most %d", queries, writes, queries/4)
	}
	t.Logf("%d answers in %d writes", queries, writes)
}

func FuzzFraming(f *testing.F) {
	s := newTestServer(f)
	q := new(dns.Msg)
	q.SetQuestion("www.example.org.", dns.TypeA)
	q.SetEdns0(1232, true)
	f.Add(frame(q))
	f.Add(append(frame(q), frame(q)...))
	f.Add([]byte{0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0xFF, 0xFF, 1})
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, b := range exchange(t, s, in) {
			if len(b) < 12 {
				t.Fatalf("a %d-octet answer", len(b))
			}
			if err := new(dns.Msg).Unpack(b); err != nil {
				t.Fatalf("an answer that does not unpack: %v", err)
			}
		}
	})
}

// BenchmarkPipelined measures the connection's framing path end to end:
// one TLS connection over loopback TCP, queries pipelined by a writer
// while the answers are read back; one op is one query answered from the
// zone.
func BenchmarkPipelined(b *testing.B) {
	s := newTestServer(b)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		raw, err := ln.Accept()
		if err != nil {
			return
		}
		c := newConn(raw, "bench")
		if s.admit(c) == "" {
			c.serve(s)
		}
	}()
	cli, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"dot"}})
	if err != nil {
		b.Fatal(err)
	}
	q := new(dns.Msg)
	q.SetQuestion("www.example.org.", dns.TypeA)
	q.SetEdns0(1232, false)
	// a batch of 64 queries, written at once as a pipelining client does
	var batch []byte
	for i := 0; i < 64; i++ {
		q.Id = uint16(i)
		batch = append(batch, frame(q)...)
	}
	b.ReportAllocs()
	b.ResetTimer()
	writeErr := make(chan error, 1)
	go func() {
		for sent := 0; sent < b.N; sent += 64 {
			n := min(64, b.N-sent)
			if _, err := cli.Write(batch[:len(batch)/64*n]); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- nil
	}()
	buf := make([]byte, 4096)
	for i := 0; i < b.N; i++ {
		if _, err := io.ReadFull(cli, buf[:2]); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(cli, buf[:binary.BigEndian.Uint16(buf)]); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if err := <-writeErr; err != nil {
		b.Fatal(err)
	}
	cli.Close()
	<-done
}

// TestKeepaliveAnnounced: what a DoT answer announces to a query with an
// edns-tcp-keepalive option (RFC 7828): the server's idle timeout, the
// default one when none is set, and 0 once the server drains.
func TestKeepaliveAnnounced(t *testing.T) {
	s := &Server{IdleTimeout: caddy.Duration(30 * time.Second)}
	s.applyDefaults()
	if got := s.keepalive(false); got != 30*time.Second {
		t.Fatalf("idle_timeout 30s: keepalive %v", got)
	}
	s.IdleTimeout = 0
	s.applyDefaults()
	if got := s.keepalive(false); got != DefaultIdleTimeout {
		t.Fatalf("no idle_timeout: keepalive %v, want %v", got, DefaultIdleTimeout)
	}
	s.drainEnd.Store(time.Now().Add(time.Second).UnixNano())
	if got := s.keepalive(false); got != caddydns.KeepaliveClose {
		t.Fatalf("draining: keepalive %v, want caddydns.KeepaliveClose", got)
	}
}

// TestMaxQueries: a connection is closed after max_queries queries, once
// they are answered; the last answer tells a client that asked for
// keepalive to close (TIMEOUT 0), the others give the idle timeout.
func TestMaxQueries(t *testing.T) {
	s := newTestServer(t)
	s.MaxQueries = 3
	var in []byte
	for id := uint16(1); id <= 5; id++ {
		q := new(dns.Msg)
		q.SetQuestion("www.example.org.", dns.TypeA)
		q.Id = id
		q.SetEdns0(1232, false)
		q.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_TCP_KEEPALIVE{Code: dns.EDNS0TCPKEEPALIVE}}
		in = append(in, frame(q)...)
	}
	frames := exchange(t, s, in)
	if len(frames) != 3 {
		t.Fatalf("%d answers on a connection with max_queries 3 and 5 queries sent", len(frames))
	}
	for _, f := range frames {
		m := new(dns.Msg)
		if err := m.Unpack(f); err != nil || len(m.Answer) != 1 {
			t.Fatalf("answer %v (%v)", m, err)
		}
		want := uint16(20) // idle_timeout 2s
		if m.Id == 3 {
			want = 0
		}
		var got []uint16
		for _, o := range m.IsEdns0().Option {
			if k, ok := o.(*dns.EDNS0_TCP_KEEPALIVE); ok {
				got = append(got, k.Timeout)
			}
		}
		if len(got) != 1 || got[0] != want {
			t.Errorf("answer %d: keepalive %v, want [%d]", m.Id, got, want)
		}
	}
}

// deadlineConn counts the read deadlines set on it.
type deadlineConn struct {
	net.Conn
	set []time.Time
}

func (d *deadlineConn) SetReadDeadline(t time.Time) error {
	d.set = append(d.set, t)
	return nil
}

// TestLazyReadDeadline: a wait's deadline is set again only when the one
// set has passed, is later than the one wanted, or falls short of it by
// more than the slack; otherwise it stays (it ends at most slack early).
func TestLazyReadDeadline(t *testing.T) {
	d := new(deadlineConn)
	now := time.Now()
	const slack = 10 * time.Millisecond
	cur := lazyReadDeadline(d, 0, now, now.Add(time.Second), slack) // none known: set
	steps := []struct {
		name    string
		now, at time.Time
		set     bool
	}{
		{"a little later", now.Add(time.Millisecond), now.Add(time.Second + time.Millisecond), false},
		{"later still, within the slack", now.Add(9 * time.Millisecond), now.Add(time.Second + 9*time.Millisecond), false},
		{"past the slack", now.Add(11 * time.Millisecond), now.Add(time.Second + 11*time.Millisecond), true},
		{"earlier (a draining server's)", now.Add(12 * time.Millisecond), now.Add(500 * time.Millisecond), true},
		{"the same again", now.Add(13 * time.Millisecond), now.Add(500 * time.Millisecond), false},
		{"the one set has passed", now.Add(501 * time.Millisecond), now.Add(505 * time.Millisecond), true},
	}
	for _, s := range steps {
		n := len(d.set)
		next := lazyReadDeadline(d, cur, s.now, s.at, slack)
		if got := len(d.set) > n; got != s.set {
			t.Fatalf("%s: set %v, want %v", s.name, got, s.set)
		}
		if s.set && (next != monoOf(s.at) || !d.set[len(d.set)-1].Equal(s.at)) {
			t.Fatalf("%s: set %v (returned %v), want %v", s.name, d.set[len(d.set)-1], next, s.at)
		}
		if !s.set && next != cur {
			t.Fatalf("%s: returned %v, want the one set, %v", s.name, next, cur)
		}
		cur = next
	}
}
