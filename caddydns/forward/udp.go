package forward

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/dnsfront/dnsfront/caddydns"

	"github.com/dnsfront/dnsfront/caddydns/dnswire"
)

// readBatch is how many answers one read of an upstream socket takes, at
// most, and datagramBuffer the largest answer it takes whole (see
// batchReader): the largest EDNS buffer size in common use, over three
// times the 1232 octets of DNS Flag Day 2020.
const (
	readBatch      = 8
	datagramBuffer = 4096
)

// udpClient sends queries to one UDP upstream over short-lived sockets,
// each dialed for the purpose, so on a source port the kernel draws at
// random from the whole ephemeral range. A socket takes queries until it
// has taken socketQueries of them, or for socketFill after it opened, or
// until it has none left waiting (an idle server gives each query a
// socket of its own); it is closed once the last of its queries has its
// answer or has given up. A port learned from earlier queries (by an
// attacker who serves a zone and makes us ask it) is closed by the time
// it is known, and a forged answer must hit a port open for a few
// milliseconds with the right random ID and, with 0x20, the right letter
// case. Answers whose ID is unknown or whose question differs are dropped
// and counted; the query goes on waiting for the real one.
type udpClient struct {
	addr   string
	hop    caddydns.Hop    // what a Tap is told
	raddr  *net.UDPAddr    // resolved at the first dial
	forged *forgedCounters // nil: not counted (tests)
	// wrap, when set (tests), wraps each socket's batch writer
	wrap func(batchWriter) batchWriter

	mu      sync.Mutex
	filling *udpSocket // the socket new queries go to; nil when none
	open    map[*udpSocket]struct{}
	closed  bool
}

// A socket takes at most socketQueries queries, for at most socketFill:
// under load the cost of a socket is shared by many queries, and no port
// lives long.
const (
	socketQueries = 64
	socketFill    = 50 * time.Millisecond
)

// udpSocket is one short-lived socket.
type udpSocket struct {
	c         *udpClient
	conn      *net.UDPConn
	w         batchWriter
	fillUntil time.Time // it takes queries until then
	mu        sync.Mutex
	pending   pendingCalls
	batch     *udpBatch // the batch being filled; nil when none
	taken     int       // queries it has taken
	users     int       // its queries that have not returned
	accepting bool      // it takes more queries
	readDone  bool      // its reader has ended
}

// The pending tables of sockets that are done are kept for the next
// ones: a table grows to the socket's busiest moment (up to
// socketQueries entries) as it fills, which cost every socket several
// allocations, about a fifth of what a forwarded query allocated.
var pendingPool = sync.Pool{New: func() any { return make(pendingCalls, socketQueries) }}

// donePendingLocked gives s's table back once neither its reader nor a
// query can look at it again: the reader has ended and no query is
// left (nor can join: s no longer accepts). s.mu is held.
func (s *udpSocket) donePendingLocked() {
	if !s.readDone || s.users != 0 || s.accepting || s.pending == nil {
		return
	}
	clear(s.pending)
	pendingPool.Put(s.pending)
	s.pending = nil
}

func newUDPClient(addr string, forged *forgedCounters) *udpClient {
	return &udpClient{addr: addr, forged: forged, open: make(map[*udpSocket]struct{})}
}

// exchange sends packed (its ID is replaced) and waits for the answer
// until deadline. exact asks for the question's letter case echoed as
// sent (0x20): an answer that differs only in case ends the wait with
// errCaseMismatch. (No defer and no error formatting on the way to the
// socket: see Forward.ServeDNS.)
//
// Queries are sent in batches, one system call each (sendmmsg): the
// query that opens a batch yields the processor once (runtime.Gosched)
// before sending it, so that the handlers ready to run queue theirs in
// the same batch. An idle server has none ready and sends at once; a
// busy one saves a system call and, above all, a wake-up of the upstream
// per query (waking a sleeping upstream was half the cost of a send on
// loopback).
func (c *udpClient) exchange(ctx context.Context, r *caddydns.Request, deadline time.Time, question, packed, hdr []byte, exact bool) (*caddydns.Wire, error) {
	cl := newCall(question)
	cl.exact = exact
	s, id, lead, err := c.register(cl, packed, hdr)
	if err != nil {
		cl.release()
		return nil, err
	}
	tapQuery(r, c.hop, packed) // under the ID it goes with
	if lead != nil {
		runtime.Gosched()
		s.send(lead)
	}
	resp, err := cl.wait(ctx, deadline)
	if resp == nil && err == nil {
		err = cl.err // the socket failed, the send, or the case (sent with the nil answer)
	}
	s.mu.Lock()
	s.pending.forget(id, cl)
	s.users--
	last := s.users == 0 // idle or done: closed, a fresh port for the next query
	if last {
		s.accepting = false // so no query joins it now
		s.donePendingLocked()
	}
	s.mu.Unlock()
	cl.release() // after the delete: nothing sends on it any more
	if last {
		c.retire(s)
	}
	if err != nil || resp == nil {
		return nil, c.failed(err)
	}
	tapResponse(r, c.hop, resp)
	return resp, nil
}

// register adds cl to the socket taking queries (dialing one when there
// is none), under an ID free on it, and queues packed with that ID (after
// hdr, a PROXY header, in the same datagram). lead is the batch cl
// opened, if it did: the caller sends it.
func (c *udpClient) register(cl *call, packed, hdr []byte) (s *udpSocket, id uint16, lead *udpBatch, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, 0, nil, ErrUpstreamClosed
	}
	for {
		if s = c.filling; s == nil {
			if s, err = c.dial(); err != nil {
				return nil, 0, nil, err
			}
			c.filling = s
		}
		s.mu.Lock()
		if s.accepting {
			break
		}
		s.mu.Unlock() // it went idle and is closing: another
		c.filling = nil
	}
	id = s.pending.reserve(cl)
	dnswire.SetID(packed, id)
	if s.batch == nil {
		s.batch = batchPool.Get().(*udpBatch)
		lead = s.batch
	}
	s.batch.add(hdr, packed, id, cl)
	if s.batch.full() {
		s.batch = nil // the next query opens another batch
	}
	s.users++
	s.taken++
	if s.taken >= socketQueries || (s.taken&7 == 0 && time.Now().After(s.fillUntil)) {
		s.accepting = false // the next query opens another socket
		c.filling = nil
	}
	s.mu.Unlock()
	return s, id, lead, nil
}

// dial opens a socket and starts its reader; c.mu is held.
func (c *udpClient) dial() (*udpSocket, error) {
	if c.raddr == nil {
		ua, err := net.ResolveUDPAddr("udp", c.addr)
		if err != nil {
			return nil, err
		}
		c.raddr = ua
	}
	conn, err := dialUDP(c.raddr)
	if err != nil {
		return nil, err
	}
	s := &udpSocket{c: c, conn: conn, w: newBatchWriter(conn), pending: pendingPool.Get().(pendingCalls),
		accepting: true, fillUntil: time.Now().Add(socketFill)}
	if c.wrap != nil {
		s.w = c.wrap(s.w)
	}
	c.open[s] = struct{}{}
	go s.read()
	return s, nil
}

// send sends the batch b opened on s. The queries it could not send fail
// with the cause.
func (s *udpSocket) send(b *udpBatch) {
	s.mu.Lock()
	if s.batch == b {
		s.batch = nil
	}
	s.mu.Unlock()
	if err := b.send(s.w); err != nil {
		s.mu.Lock()
		if errors.Is(err, syscall.ECONNREFUSED) {
			// the ICMP port unreachable an earlier query drew, reported
			// to this send and so never to the reader: the socket's
			// queries, sent or not, have no answer coming
			s.fail(err)
		}
		for i := b.sent; i < len(b.calls); i++ {
			s.pending.fail(b.ids[i], b.calls[i], err)
		}
		s.mu.Unlock()
	}
	b.reset()
	batchPool.Put(b)
}

// retire closes s, whose queries have all returned; its reader ends.
func (c *udpClient) retire(s *udpSocket) {
	s.conn.Close()
	c.mu.Lock()
	if c.filling == s {
		c.filling = nil
	}
	delete(c.open, s)
	c.mu.Unlock()
}

// failed names the upstream in an exchange's error; no error means the
// socket closed before the answer came.
//
//go:noinline
func (c *udpClient) failed(err error) error {
	if err == nil {
		err = ErrUpstreamClosed
	}
	return fmt.Errorf("udp %s: %w", c.addr, err)
}

// udpReadBuffer is the receive buffer asked for on each upstream socket
// (the kernel caps it at net.core.rmem_max). Linux's default, 208 KB,
// holds a few hundred answers: a burst of them arriving while the CPU is
// busy (thousands of DoH clients connecting at once) overflowed it in the
// benchmarks, and every answer dropped there costs a query its timeout.
// unbound and nsd ask for the same with so-rcvbuf.
const udpReadBuffer = 4 << 20

func dialUDP(ua *net.UDPAddr) (*net.UDPConn, error) {
	conn, err := net.DialUDP("udp", nil, ua)
	if err != nil {
		return nil, err
	}
	_ = conn.SetReadBuffer(udpReadBuffer) // best effort: a smaller buffer still works
	return conn, nil
}

// read hands each answer on the socket to its query until the socket is
// closed or fails.
func (s *udpSocket) read() {
	r, err := newBatchReader(s.conn)
	var msgs [][]byte
	if err == nil {
		msgs = r.batch()
	}
	for err == nil {
		if msgs, err = r.read(msgs[:0]); err == nil {
			deliverAll(&s.mu, s.pending, msgs, s.c.forged)
		}
	}
	r.release()
	// retired (no query left), closed with the client, or refused (ICMP
	// port unreachable: nothing listens there now): the queries still
	// waiting fail at once and go to the next upstream instead of
	// waiting for their timeout
	if errors.Is(err, net.ErrClosed) {
		err = ErrUpstreamClosed
	}
	s.mu.Lock()
	s.fail(err)
	s.readDone = true
	s.donePendingLocked()
	s.mu.Unlock()
}

// fail ends every query waiting on s with err, and s takes no more (the
// next query dials again); s.mu is held.
func (s *udpSocket) fail(err error) {
	s.accepting = false
	s.pending.failAll(err)
}

func (c *udpClient) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for s := range c.open {
		s.conn.Close() // its queries fail: closed
	}
}
