package dotapp

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/net/http2"

	"github.com/dnsfront/dnsfront/caddydns"
)

// maxBatch bounds how many octets of answers are written in one go.
const maxBatch = 16 << 10

// readBufferSize holds many pipelined queries; a TLS read returns at
// most one record anyway.
const readBufferSize = 1 << 10

// parkAfter is how long a connection's reader waits for the next query
// before it parks: its goroutine, read buffer and writer are let go, and
// the idle poller resumes it when the client sends again. A pipelining
// client is never quiet this long; a stub resolver asking now and then
// is parked between its queries, at the cost of an epoll_ctl and a new
// goroutine when it asks again.
const parkAfter = 250 * time.Millisecond

// conn is one DoT connection. Its reader decodes queries in order; each
// query is answered in its own goroutine (so a slow upstream answer does
// not hold back the others: RFC 7766 6.2.1.1 out-of-order answers); a
// writer goroutine sends the answers, as many as are ready in one write.
// A connection that stays quiet is parked (see parkNow): it then holds no
// goroutine and no buffer of its own, only its TLS state.
type conn struct {
	raw      net.Conn
	rc       syscall.RawConn // nil where the socket has none: no parking, no quick ACKs
	tc       net.Conn        // the TLS connection over raw; for cleartext DoH, raw with what sniffing read
	key      string          // listener address
	client   netip.AddrPort
	local    netip.AddrPort         // the address it reached (a PROXY header's destination behind a balancer)
	sni      string                 // the TLS server name the client asked for
	srv      atomic.Pointer[Server] // the server whose config applies now
	metrics  *dotMetrics            // of the server that accepted it
	helloBy  monoTime               // the handshake's deadline, from accept
	accepted monoTime               // when it was accepted (max_connection_duration)

	// owned by whoever runs the connection: the reader, or what ends it
	w       *writer // from the first query on; stopped while parked
	queries int

	aborted atomic.Bool
	reading atomic.Bool // waiting for a query, deadline set from srv
	park    parking

	h2 *h2conn // a DoH server's HTTP/2 connection
}

var (
	packPool   = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBufferSize) }}
	batchPool  = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}
)

func newConn(raw net.Conn, key string) *conn {
	c := &conn{raw: raw, key: key}
	c.park.shard = uint8(nextParkShard.Add(1) % parkShards)
	if ap, err := netip.ParseAddrPort(raw.RemoteAddr().String()); err == nil {
		c.client = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	// after RemoteAddr: behind a PROXY header, both are the header's
	if ap, err := netip.ParseAddrPort(raw.LocalAddr().String()); err == nil {
		c.local = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if sc, ok := raw.(syscall.Conn); ok {
		c.rc, _ = sc.SyscallConn()
	}
	return c
}

// serve does the TLS handshake, then hands the connection to a reader. A
// client that connects and stays silent is parked until its ClientHello
// comes or the handshake times out, holding no goroutine meanwhile.
func (c *conn) serve(s *Server) {
	defer func() {
		if r := recover(); r != nil {
			s.logger.Error("dot connection panicked", zap.Any("panic", r))
			c.drop()
		}
	}()
	c.metrics = s.metrics
	if c.helloBy == 0 {
		c.accepted = monoNow()
		c.helloBy = c.accepted + monoTime(s.set.handshake)
		if c.rc != nil && idlePoller.ok() && !c.peekHello(s.set.parkAfter) && c.parkHello() {
			return
		}
	}
	_ = c.raw.SetDeadline(c.helloBy.Time())
	if s.cleartext() {
		h2, err := c.sniff()
		if err != nil {
			if ce := s.logger.Check(zapcore.DebugLevel, "cleartext connection sent no request"); ce != nil {
				ce.Write(zap.Stringer("client", c.client), zap.Error(err))
			}
			if errors.Is(err, errNotHTTP) {
				c.lingerClose()
			}
			c.drop()
			return
		}
		_ = c.raw.SetDeadline(time.Time{})
		c.metrics.open.Inc()
		c.dispatchDoH(h2)
		return
	}
	tc := tls.Server(c.raw, s.tlsCfg)
	c.tc = tc
	if err := tc.Handshake(); err != nil {
		c.metrics.handshakeFailures.Inc()
		if ce := s.logger.Check(zapcore.DebugLevel, "tls handshake failed"); ce != nil {
			ce.Write(zap.Stringer("client", c.client), zap.Error(err))
		}
		c.drop()
		return
	}
	_ = c.raw.SetDeadline(time.Time{})
	// the client's Finished arrived and we have nothing to send: ACK it
	// now, or a client with Nagle on holds its first query back for our
	// delayed ACK (40 ms on Linux)
	quickAck(c.rc)
	c.metrics.open.Inc()
	cs := tc.ConnectionState()
	c.sni = cs.ServerName
	if s.doh != nil {
		c.dispatchDoH(cs.NegotiatedProtocol == "h2")
		return
	}
	// the handshake grew this goroutine's stack; the reader starts afresh
	go c.run()
}

// dispatchDoH hands a DoH connection to its HTTP/2 loop or, unless h2,
// to net/http's HTTP/1.1.
func (c *conn) dispatchDoH(h2 bool) {
	if h2 {
		go serveH2(c)
		return
	}
	// the server that owns it now: one replacing s in a reload takes it
	// even if s has stopped since the handshake began
	c.srv.Load().doh.serveH1(c)
}

// sniff reads the start of a cleartext DoH connection: HTTP/2's client
// preface (prior knowledge, RFC 9113 3.3) makes h2 true; an HTTP/1.1
// request line's method makes it false. Anything else is neither, and an
// error: the connection is closed, as RFC 9113 3.4 wants for an invalid
// preface. What it read is read again from c.tc, which is raw.
func (c *conn) sniff() (h2 bool, err error) {
	var b [len(http2.ClientPreface)]byte
	n := 0
	for {
		switch start := string(b[:n]); {
		case start == http2.ClientPreface:
			h2 = true
		case slices.ContainsFunc(h1Methods, func(m string) bool { return strings.HasPrefix(start, m) }):
		case strings.HasPrefix(http2.ClientPreface, start),
			slices.ContainsFunc(h1Methods, func(m string) bool { return strings.HasPrefix(m, start) }):
			m, err := c.raw.Read(b[n:]) // undecided: read on
			n += m
			if err != nil && m == 0 {
				return false, err
			}
			continue
		default:
			return false, fmt.Errorf("%w: %q", errNotHTTP, start)
		}
		c.tc = &replayConn{Conn: c.raw, pre: b[:n]}
		return h2, nil
	}
}

var errNotHTTP = errors.New("neither HTTP/2's preface nor an HTTP/1.1 request")

// lingerClose ends the sending side and reads what the client still
// sends (4 KiB at most, for half a second at most) before the
// connection is closed: a close with octets unread resets it, and the
// client sees a reset rather than the end it was told.
func (c *conn) lingerClose() {
	if cw, ok := c.raw.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = c.raw.SetReadDeadline(time.Now().Add(lingerTime))
	_, _ = io.Copy(io.Discard, io.LimitReader(c.raw, 4096))
}

// lingerTime bounds lingerClose.
const lingerTime = 500 * time.Millisecond

// h1Methods are the starts of the HTTP/1.1 requests a cleartext DoH
// server takes (RFC 9110 9.3; net/http answers them).
var h1Methods = []string{"GET ", "POST ", "HEAD ", "OPTIONS ", "PUT ", "DELETE ", "PATCH ", "CONNECT ", "TRACE "}

// replayConn is a cleartext connection whose first octets, read already
// by sniff, are read again. (The HTTP/2 loop reads through a pooled
// buffer, as DoT's reader does, and net/http through its own: neither
// reads the socket a frame header at a time.)
type replayConn struct {
	net.Conn
	pre []byte // read by sniff, to read again
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// drop closes a connection that never finished its handshake.
func (c *conn) drop() {
	idlePoller.forget(c)
	c.raw.Close()
	c.release()
}

// run reads and answers queries until the connection parks or ends; an
// ended connection is closed once its answers are written.
func (c *conn) run() {
	parked := false
	defer func() {
		if r := recover(); r != nil {
			c.srv.Load().logger.Error("dot connection panicked", zap.Any("panic", r))
			c.abort()
			parked = false
		}
		if !parked {
			c.finish()
		}
	}()
	parked = c.read()
}

// finish ends the connection: the answers in flight are written, then it
// is closed cleanly (close_notify) unless it was aborted.
func (c *conn) finish() {
	if c.h2 != nil {
		c.h2.endParked() // only a parked one ends here
		return
	}
	if c.w != nil {
		c.w.pending.Wait()
		c.w.stop()
		c.w = nil
	}
	c.closeOut()
}

// closeOut closes a connection whose answers are written: cleanly
// (close_notify) unless it was aborted; and counts it out.
func (c *conn) closeOut() {
	idlePoller.forget(c)
	if !c.aborted.Load() {
		_ = c.raw.SetWriteDeadline(time.Now().Add(time.Second))
		_ = c.tc.Close()
	} else {
		c.raw.Close()
	}
	c.metrics.open.Dec()
	c.release()
}

// release counts a closed connection out of the server that owns it now.
func (c *conn) release() {
	for {
		s := c.srv.Load()
		s.mu.Lock()
		if c.srv.Load() != s {
			s.mu.Unlock()
			continue // handed over meanwhile
		}
		s.countOut(c)
		s.mu.Unlock()
		return
	}
}

// read decodes queries until the connection ends (false), a limit closes
// it, the server stops with no successor and the connection goes quiet,
// or it stays quiet for parkAfter and is parked (true). The writer and
// its queues start with the first query after a (re)start: an idle
// connection holds little more than its TLS state.
func (c *conn) read() (parked bool) {
	r := readerPool.Get().(*bufio.Reader)
	r.Reset(c.tc)
	defer func() {
		r.Reset(nil)
		readerPool.Put(r)
	}()
	var set monoTime // the read deadline of a wait, as set here; 0: another one, or none
	for {
		if c.aborted.Load() {
			return false // a write failed: the deadlines set below must not undo that
		}
		srv := c.srv.Load()
		if r.Buffered() == 0 {
			since := time.Now()
			deadline := c.idleDeadline(srv, since)
			canPark := c.rc != nil && idlePoller.ok()
			c.reading.Store(true)
			if canPark {
				// a wait that ends a little early parks the connection a
				// little sooner, which is all it does (below)
				set = lazyReadDeadline(c.raw, set, since, minTime(deadline, since.Add(srv.set.parkAfter)), srv.set.parkAfter/8)
			} else {
				_ = c.raw.SetReadDeadline(deadline) // it ends the connection: exactly
				set = 0
			}
			_, err := r.Peek(1)
			c.reading.Store(false)
			if err != nil {
				// quiet for a while, with nothing buffered at any layer
				// (a read returns what TLS holds before it waits)
				if canPark && isTimeout(err) && time.Now().Before(deadline) && c.parkNow(since) {
					return true
				}
				return false // idle timeout, client closed, or drained
			}
		}
		// a query has started: the rest must come within read_timeout,
		// and the client may be waiting for our ACK to send it
		if r.Buffered() < 2 {
			quickAck(c.rc)
			_ = c.raw.SetReadDeadline(time.Now().Add(srv.set.read))
			set = 0
		}
		hdr, err := r.Peek(2)
		if err != nil {
			return false
		}
		size := int(binary.BigEndian.Uint16(hdr))
		if size < caddydns.MinMessage {
			srv.metrics.badFrames.Inc()
			return false // not DNS: close (RFC 7766 8)
		}
		if r.Buffered() < 2+size {
			quickAck(c.rc)
			_ = c.raw.SetReadDeadline(time.Now().Add(srv.set.read))
			set = 0
		}
		_, _ = r.Discard(2)
		// the query goes to its answerer in a pooled buffer of its own,
		// which the answer is then packed into
		bp := packPool.Get().(*[]byte)
		if cap(*bp) < size {
			*bp = make([]byte, 0, max(size, 512))
		}
		query := (*bp)[:size]
		if _, err := io.ReadFull(r, query); err != nil {
			packPool.Put(bp)
			return false
		}
		if c.w == nil {
			c.w = startWriter(c, srv.set.maxInFlight)
		}
		c.w.sem <- struct{}{}
		c.w.inFlight.Add(1)
		c.w.pending.Add(1)
		c.queries++
		last := (srv.MaxQueries > 0 && c.queries >= srv.MaxQueries) || c.expired(srv)
		t := dotTaskPool.Get().(*dotTask)
		*t = dotTask{c: c, w: c.w, bp: bp, size: size, last: last}
		dispatch(t)
		if last {
			return false
		}
	}
}

// answer runs the query in (*bp)[:size] through the chain of the server
// that owns the connection now, and hands the answer, packed into bp, to
// the writer. last is the connection's last query (max_queries): its
// answer announces keepalive 0.
func (c *conn) answer(w *writer, bp *[]byte, size int, last bool) {
	defer w.pending.Done()
	defer func() { <-w.sem }()
	srv := c.enter()
	defer srv.active.Add(-1)
	r := caddydns.AcquireRequest()
	r.Transport, r.Server, r.Client, r.Local, r.Size, r.Keepalive = "dot", srv.name, c.client, c.local, caddydns.MaxMessage, srv.keepalive(last)
	r.ServerName = c.sni
	a := srv.Chain.Serve(context.Background(), r, (*bp)[:size], (*bp)[:0])
	caddydns.ReleaseRequest(r)
	if a.Drop { // a handler's policy: the connection ends, unanswered
		packPool.Put(bp)
		w.inFlight.Add(-1)
		c.abort()
		return
	}
	if a.Wire == nil { // no header to answer: the reader lets no such frame in
		packPool.Put(bp)
		w.inFlight.Add(-1)
		return
	}
	*bp = a.Wire // a FORMERR when the query did not decode
	w.out <- bp
	w.inFlight.Add(-1) // after the send: a parking reader that sees 0 may close out
}

// enter returns the server whose chain answers a query, counted as
// active there until the caller is done; a hand-over in between is seen.
func (c *conn) enter() *Server {
	for {
		s := c.srv.Load()
		s.active.Add(1)
		if c.srv.Load() == s {
			return s
		}
		s.active.Add(-1)
	}
}

// wake makes a connection that waits for a query take the draining
// server's shorter idle deadline.
func (c *conn) wake() {
	if c.reading.Load() {
		_ = c.raw.SetReadDeadline(c.idleDeadline(c.srv.Load(), time.Now()))
	}
	p := &c.park
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.parked && !p.hello { // a handshake keeps its own deadline
		p.deadline = monoOf(c.idleDeadline(c.srv.Load(), p.since.Time()))
		c.timers().set(c, p.deadline)
	}
}

// abort ends the connection now (grace period over, or a write failed).
func (c *conn) abort() {
	c.aborted.Store(true)
	_ = c.raw.SetDeadline(time.Now())
	c.park.mu.Lock()
	parked, hello := c.unpark()
	c.park.mu.Unlock()
	// in goroutines of their own: the caller may hold the server's lock,
	// which release takes
	switch {
	case hello:
		go c.drop()
	case parked:
		go c.finish()
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// lazyReadDeadline sets raw's read deadline to t, unless the one set
// (cur, from the last call; 0 for none known) is still ahead of now and
// short of t by at most slack. It returns the deadline set. For a reader
// whose timeout only parks its connection, or sends it round its loop
// again, a deadline a little early costs nothing; setting one for every
// read costs a runtime timer update every read.
func lazyReadDeadline(raw net.Conn, cur monoTime, now, t time.Time, slack time.Duration) monoTime {
	m := monoOf(t)
	if cur != 0 && monoOf(now) < cur && cur <= m && m-cur <= monoTime(slack) {
		return cur
	}
	_ = raw.SetReadDeadline(t)
	return m
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// growStack grows the stack of an answering worker (workers.go) to 8 KB,
// while it is one frame deep. A new goroutine's first stack is the runtime's running
// average (2 or 4 KB here), and a cache miss forwarded over UDP takes
// ~3.6 KB of frames (cache, flight, forward, the UDP exchange; miekg/dns
// keeps a kilobyte alone to decode a name). A stack that grows deep in
// the call copies every frame on it: 15-19% of the CPU of a miss, or of
// a hit when the first stack is 2 KB, in runtime.newstack under dnsperf;
// growing here copies one frame (5-7%, the 4 KB frame's zeroing
// included).
//
//go:noinline
func growStack() {
	var pad [4 << 10]byte
	keepByte(pad[:])
}

//go:noinline
func keepByte(b []byte) byte { return b[len(b)-1] }
