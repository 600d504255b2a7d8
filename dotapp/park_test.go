//go:build linux

package dotapp

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dnsfront/dnsfront/internal/handlertest"
)

// parkServer is a test server on a real loopback listener (parking needs
// a socket), parking connections after 50 ms of quiet, with the given idle
// and handshake timeouts (0: the default).
func parkServer(t *testing.T, idle, handshake time.Duration) (*Server, string) {
	t.Helper()
	return listenParking(t, newTestServer(t), dotVecs, idle, handshake)
}

// listenParking puts s (a DoT or a DoH server) on a loopback listener,
// parking after 50 ms of quiet.
func listenParking(t *testing.T, s *Server, vecs *connVecs, idle, handshake time.Duration) (*Server, string) {
	t.Helper()
	s.IdleTimeout = caddy.Duration(idle)
	s.HandshakeTimeout = caddy.Duration(handshake)
	s.quietPark = 50 * time.Millisecond
	s.applyDefaults()
	s.metrics = newDotMetrics(s.ctx, vecs, t.Name())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			c := newConn(raw, "park")
			if s.admit(c) == "" {
				go c.serve(s)
			}
		}
	}()
	return s, ln.Addr().String()
}

// metricValue reads a gauge or a counter.
func metricValue(g prometheus.Metric) float64 { return handlertest.MetricValue(g) }

// waitMetric polls a gauge or counter until it shows want.
func waitMetric(t *testing.T, what string, g prometheus.Metric, want float64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for metricValue(g) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v, want %v", what, metricValue(g), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitParked(t *testing.T, s *Server, want float64) {
	t.Helper()
	waitMetric(t, "connections parked", s.metrics.parked, want)
}

func dialDoT(t *testing.T, addr string) *tls.Conn {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"dot"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// ask sends queries with the given IDs in one write and reads as many
// answers, checking each against its query.
func ask(t *testing.T, c *tls.Conn, ids ...uint16) {
	t.Helper()
	var out []byte
	for _, id := range ids {
		q := new(dns.Msg)
		q.SetQuestion("www.example.org.", dns.TypeA)
		q.Id = id
		out = append(out, frame(q)...)
	}
	if _, err := c.Write(out); err != nil {
		t.Fatal(err)
	}
	seen := map[uint16]bool{}
	for range ids {
		m, err := readAnswer(c)
		if err != nil {
			t.Fatalf("reading an answer: %v", err)
		}
		if len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != "192.0.2.80" {
			t.Fatalf("answer %d: %v", m.Id, m.Answer)
		}
		seen[m.Id] = true
	}
	for _, id := range ids {
		if !seen[id] {
			t.Fatalf("no answer for ID %d (got %v)", id, seen)
		}
	}
}

// readAnswer reads one framed DoT answer.
func readAnswer(c net.Conn) (*dns.Msg, error) {
	var l [2]byte
	if _, err := io.ReadFull(c, l[:]); err != nil {
		return nil, err
	}
	b := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(c, b); err != nil {
		return nil, err
	}
	m := new(dns.Msg)
	return m, m.Unpack(b)
}

// TestParkAndResume: a quiet connection is parked, both right after the
// handshake and after queries; a query then wakes it, pipelined queries
// included, and each is answered.
func TestParkAndResume(t *testing.T) {
	s, addr := parkServer(t, 10*time.Second, 0)
	c := dialDoT(t, addr)
	waitParked(t, s, 1) // parked before its first query
	ask(t, c, 1)
	waitParked(t, s, 1) // parked again, writer stopped
	ask(t, c, 2, 3, 4, 5)
	ask(t, c, 6)
	c2 := dialDoT(t, addr)
	waitParked(t, s, 2)
	ask(t, c2, 7)
	ask(t, c, 8)
	if got := metricValue(s.metrics.open); got != 2 {
		t.Fatalf("connections open: %v, want 2", got)
	}
}

// TestQueryAcrossPause: a query whose octets come in TLS records with
// pauses between them longer than the quiet that parks a connection (a
// slow link) is answered: inside its length, inside its message, and
// between two pipelined queries; the rest of a query begun gets
// read_timeout, not the wait that parks.
func TestQueryAcrossPause(t *testing.T) {
	s, addr := parkServer(t, 10*time.Second, 0)
	c := dialDoT(t, addr)
	waitParked(t, s, 1)
	q := new(dns.Msg)
	q.SetQuestion("www.example.org.", dns.TypeA)
	var in []byte
	for id := uint16(1); id <= 2; id++ {
		q.Id = id
		in = append(in, frame(q)...)
	}
	one, from := len(in)/2, 0
	for _, to := range []int{1, 2 + 5, one, one + 1, len(in)} {
		if _, err := c.Write(in[from:to]); err != nil {
			t.Fatal(err)
		}
		from = to
		time.Sleep(3 * s.quietPark) // the slow link: what the test is about
	}
	for id := uint16(1); id <= 2; id++ {
		m, err := readAnswer(c)
		if err != nil {
			t.Fatalf("reading answer %d: %v", id, err)
		}
		if m.Id != id || len(m.Answer) != 1 {
			t.Fatalf("answer %d: %v", id, m)
		}
	}
}

// TestParkedIdleTimeout: a parked connection is closed cleanly
// (close_notify) at its idle deadline.
func TestParkedIdleTimeout(t *testing.T) {
	s, addr := parkServer(t, 300*time.Millisecond, 0)
	c := dialDoT(t, addr)
	ask(t, c, 1)
	waitParked(t, s, 1)
	var b [1]byte
	if _, err := c.Read(b[:]); !errors.Is(err, io.EOF) {
		t.Fatalf("a parked connection past its idle timeout: read %v, want a clean close (EOF)", err)
	}
	waitParked(t, s, 0)
	waitMetric(t, "connections open", s.metrics.open, 0)
}

// TestParkedClientClose: a client that closes a parked connection frees it.
func TestParkedClientClose(t *testing.T) {
	s, addr := parkServer(t, 10*time.Second, 0)
	c := dialDoT(t, addr)
	waitParked(t, s, 1)
	c.Close()
	waitParked(t, s, 0)
	waitMetric(t, "connections open", s.metrics.open, 0)
}

// TestParkedDrain: a server that stops with no successor closes its
// parked connections after they stay quiet, within the grace period.
func TestParkedDrain(t *testing.T) {
	s, addr := parkServer(t, 10*time.Second, 0)
	s.GracePeriod = caddy.Duration(3 * time.Second)
	c := dialDoT(t, addr)
	ask(t, c, 1)
	waitParked(t, s, 1)
	stopped := make(chan struct{})
	go func() { s.stop(); close(stopped) }()
	var b [1]byte
	if _, err := c.Read(b[:]); !errors.Is(err, io.EOF) {
		t.Fatalf("a parked connection of a stopped server: read %v, want a clean close", err)
	}
	<-stopped
	s.mu.Lock()
	open := len(s.conns)
	s.mu.Unlock()
	if open != 0 {
		t.Fatalf("%d connections left after stop", open)
	}
}

// TestParkBeforeHello: clients that connect and send nothing do not hold a
// goroutine each while they wait; one of them that then does its
// handshake is served, and the others are let go when they close.
func TestParkBeforeHello(t *testing.T) {
	s, addr := parkServer(t, 10*time.Second, 10*time.Second)
	before := runtime.NumGoroutine()
	const silent = 200
	var raws []net.Conn
	for i := 0; i < silent; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		raws = append(raws, c)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+silent/10 {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines with %d silent clients, %d before: they are not parked", runtime.NumGoroutine(), silent, before)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c := tls.Client(raws[0], &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"dot"}})
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	ask(t, c, 1)
	waitMetric(t, "connections open", s.metrics.open, 1)
	for _, r := range raws[1:] {
		r.Close()
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		n := len(s.conns)
		s.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections counted after %d silent clients closed, want 1", n, silent-1)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestParkedHelloTimeout: a client that never sends its ClientHello is
// closed at the handshake timeout and counted as a failed handshake.
func TestParkedHelloTimeout(t *testing.T) {
	s, addr := parkServer(t, 10*time.Second, 300*time.Millisecond)
	failures := metricValue(s.metrics.handshakeFailures)
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [1]byte
	if _, err := raw.Read(b[:]); err == nil || isTimeout(err) {
		t.Fatalf("a silent client: read %v, want the server to close the connection", err)
	}
	waitMetric(t, "handshake failures", s.metrics.handshakeFailures, failures+1)
}
