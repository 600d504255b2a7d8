package dotapp

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/dnsfront/dnsfront/caddydns"
)

// maxBatch bounds how many octets of answers are written in one go.
const maxBatch = 16 << 10

// readBufferSize holds many pipelined queries; a TLS read returns at
// most one record anyway.
const readBufferSize = 1 << 10

// conn is one DoT connection. Its reader decodes queries in order; each
// query is answered in its own goroutine (so a slow upstream answer does
// not hold back the others: RFC 7766 6.2.1.1 out-of-order answers); a
// writer goroutine sends the answers, as many as are ready in one write.
type conn struct {
	raw    net.Conn
	tc     *tls.Conn
	key    string // listener address
	client netip.AddrPort
	srv    atomic.Pointer[Server] // the server whose config applies now

	out        chan *[]byte  // packed answers, to the writer (from the first query on)
	sem        chan struct{} // queries in flight
	writerDone chan struct{}
	pending    sync.WaitGroup
	aborted    atomic.Bool
	reading    atomic.Bool // waiting for a query, deadline set from srv
}

var packPool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

func newConn(raw net.Conn, key string) *conn {
	c := &conn{raw: raw, key: key}
	if ap, err := netip.ParseAddrPort(raw.RemoteAddr().String()); err == nil {
		c.client = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return c
}

func (c *conn) serve(first *Server) {
	handedOn := false
	defer func() {
		if !handedOn {
			c.release()
		}
	}()
	defer func() {
		if r := recover(); r != nil {
			first.logger.Error("dot connection panicked", zap.Any("panic", r))
			c.raw.Close()
		}
	}()
	m := first.metrics
	c.tc = tls.Server(c.raw, first.tlsCfg)
	_ = c.raw.SetDeadline(time.Now().Add(first.handshakeTimeout()))
	if err := c.tc.Handshake(); err != nil {
		m.handshakeFailures.Inc()
		if ce := first.logger.Check(zapcore.DebugLevel, "tls handshake failed"); ce != nil {
			ce.Write(zap.Stringer("client", c.client), zap.Error(err))
		}
		c.raw.Close()
		return
	}
	_ = c.raw.SetDeadline(time.Time{})
	// the client's Finished arrived and we have nothing to send: ACK it
	// now, or a client with Nagle on holds its first query back for our
	// delayed ACK (40 ms on Linux)
	quickAck(c.raw)
	// the handshake grew this goroutine's stack; a long-lived idle
	// connection should not keep it: the reader starts afresh
	handedOn = true
	go c.run(first)
}

// run reads and answers queries until the connection ends, then closes it.
func (c *conn) run(first *Server) {
	defer c.release()
	defer func() {
		if r := recover(); r != nil {
			first.logger.Error("dot connection panicked", zap.Any("panic", r))
			c.raw.Close()
		}
	}()
	m := first.metrics
	m.open.Inc()
	defer m.open.Dec()

	c.read(first.maxInFlight())

	// answer what was asked, then close cleanly (close_notify)
	c.pending.Wait()
	if c.out != nil {
		close(c.out)
		<-c.writerDone
	}
	if !c.aborted.Load() {
		_ = c.raw.SetWriteDeadline(time.Now().Add(time.Second))
		_ = c.tc.Close()
	} else {
		c.raw.Close()
	}
}

// read decodes queries until the connection ends, a limit closes it, or
// the server stops with no successor and the connection goes quiet. The
// writer and its queues start with the first query: an idle connection
// holds little more than its TLS state.
func (c *conn) read(inFlight int) {
	r := bufio.NewReaderSize(c.tc, readBufferSize)
	var buf []byte
	queries := 0
	for {
		srv := c.srv.Load()
		if r.Buffered() == 0 {
			c.reading.Store(true)
			_ = c.raw.SetReadDeadline(srv.idleDeadline(time.Now()))
			_, err := r.Peek(1)
			c.reading.Store(false)
			if err != nil {
				return // idle timeout, client closed, or drained
			}
		}
		// a query has started: the rest must come within read_timeout,
		// and the client may be waiting for our ACK to send it
		if r.Buffered() < 2 {
			quickAck(c.raw)
			_ = c.raw.SetReadDeadline(time.Now().Add(srv.readTimeout()))
		}
		hdr, err := r.Peek(2)
		if err != nil {
			return
		}
		size := int(binary.BigEndian.Uint16(hdr))
		if size < caddydns.MinMessage {
			srv.metrics.badFrames.Inc()
			return // not DNS: close (RFC 7766 8)
		}
		if r.Buffered() < 2+size {
			quickAck(c.raw)
			_ = c.raw.SetReadDeadline(time.Now().Add(srv.readTimeout()))
		}
		_, _ = r.Discard(2)
		if cap(buf) < size {
			buf = make([]byte, size)
		}
		buf = buf[:size]
		if _, err := io.ReadFull(r, buf); err != nil {
			return
		}
		q, formErr := caddydns.Decode(buf)
		if c.out == nil {
			c.out = make(chan *[]byte, inFlight)
			c.sem = make(chan struct{}, inFlight)
			c.writerDone = make(chan struct{})
			go c.write()
		}
		c.sem <- struct{}{}
		c.pending.Add(1)
		go c.answer(q, formErr)
		queries++
		if srv.MaxQueries > 0 && queries >= srv.MaxQueries {
			return
		}
	}
}

// answer runs one query through the chain of the server that owns the
// connection now, and hands the packed answer to the writer.
func (c *conn) answer(q *dns.Msg, resp *dns.Msg) {
	defer c.pending.Done()
	defer func() { <-c.sem }()
	srv := c.enter()
	defer srv.active.Add(-1)
	if q != nil {
		resp = srv.Chain.Serve(context.Background(), &caddydns.Request{
			Msg: q, Transport: "dot", Server: srv.name, Client: c.client, Size: caddydns.MaxMessage,
		})
	}
	bp := packPool.Get().(*[]byte)
	packed, err := caddydns.FitMessage(resp, (*bp)[:cap(*bp)])
	if err != nil {
		srv.logger.Error("packing answer", zap.Error(err))
		packPool.Put(bp)
		return
	}
	*bp = packed
	c.out <- bp
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

// write sends answers, batching those that are ready into one write.
func (c *conn) write() {
	defer close(c.writerDone)
	batch := make([]byte, 0, 4096)
	failed := false
	for bp := range c.out {
		batch = appendFrame(batch[:0], bp)
	more:
		for len(batch) < maxBatch {
			select {
			case next, ok := <-c.out:
				if !ok {
					break more
				}
				batch = appendFrame(batch, next)
			default:
				break more
			}
		}
		if failed {
			continue // keep draining so that answering goroutines finish
		}
		_ = c.raw.SetWriteDeadline(time.Now().Add(DefaultWriteTimeout))
		if _, err := c.tc.Write(batch); err != nil {
			failed = true
			c.abort()
		}
	}
}

func appendFrame(batch []byte, bp *[]byte) []byte {
	p := *bp
	batch = binary.BigEndian.AppendUint16(batch, uint16(len(p)))
	batch = append(batch, p...)
	packPool.Put(bp)
	return batch
}

// wake makes a connection that waits for a query take the draining
// server's shorter idle deadline.
func (c *conn) wake() {
	if c.reading.Load() {
		_ = c.raw.SetReadDeadline(c.srv.Load().idleDeadline(time.Now()))
	}
}

// abort ends the connection now (grace period over, or a write failed).
func (c *conn) abort() {
	c.aborted.Store(true)
	_ = c.raw.SetDeadline(time.Now())
}
