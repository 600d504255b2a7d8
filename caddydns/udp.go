package caddydns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// udpSockets is how many sockets a UDP upstream multiplexes queries over:
// enough to spread load and source ports, few enough to stay cheap.
const udpSockets = 4

// readBatch is how many answers one read of an upstream socket takes, at
// most, and datagramBuffer the largest answer it takes whole (see
// batchReader): the largest EDNS buffer size in common use, over three
// times the 1232 octets of DNS Flag Day 2020.
const (
	readBatch      = 8
	datagramBuffer = 4096
)

// udpClient sends queries to one UDP upstream over a few connected
// sockets, each read by one goroutine that hands answers to the waiting
// query by ID. Answers whose ID is unknown or whose question differs are
// dropped (anti-spoofing), and the query goes on waiting.
type udpClient struct {
	addr  string
	next  atomic.Uint32
	socks [udpSockets]udpSocket
}

type udpSocket struct {
	mu      sync.Mutex
	conn    *net.UDPConn // nil until first use or after an error
	batch   batchWriter  // conn's sendmmsg
	pending map[uint16]*call
	queued  *udpBatch // queries waiting for their batch to be sent
	closed  bool
}

func newUDPClient(addr string) *udpClient {
	c := &udpClient{addr: addr}
	for i := range c.socks {
		c.socks[i].pending = make(map[uint16]*call)
	}
	return c
}

// exchange sends packed (its ID is replaced) and waits for the answer
// until deadline. (No defer and no error formatting on the way to the
// socket: see Forward.ServeDNS.)
//
// Queries are sent in batches, one system call each (sendmmsg): the
// query that opens a batch yields the processor once (runtime.Gosched)
// before sending it, so that the handlers ready to run queue theirs in
// the same batch. An idle server has none ready and sends at once; a
// busy one saves a system call and, above all, a wake-up of the
// upstream per query (waking a sleeping upstream was half the cost of a
// send on loopback).
func (c *udpClient) exchange(ctx context.Context, deadline time.Time, question, packed []byte) (*answer, error) {
	s := &c.socks[c.next.Load()%udpSockets]
	cl := newCall(question)
	id, lead, err := c.register(s, cl, packed)
	if err != nil {
		cl.release()
		return nil, err
	}
	if lead != nil {
		runtime.Gosched()
		c.send(s, lead)
	}
	resp, err := cl.wait(ctx, deadline)
	if resp == nil && err == nil {
		err = cl.err // the socket failed, or the send (sent with the nil answer)
	}
	s.mu.Lock()
	if s.pending[id] == cl {
		delete(s.pending, id)
	}
	s.mu.Unlock()
	cl.release() // after the delete: nothing sends on it any more
	if err != nil || resp == nil {
		return nil, c.failed(err)
	}
	return resp, nil
}

// register adds cl to one of s's pending queries under a free ID, opening
// the socket first if it is not open, and queues packed with that ID.
// When packed opened a batch, lead is that batch: the caller sends it.
func (c *udpClient) register(s *udpSocket, cl *call, packed []byte) (id uint16, lead *udpBatch, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, nil, ErrUpstreamClosed
	}
	if s.conn == nil {
		conn, err := dialUDP(c.addr)
		if err != nil {
			return 0, nil, err
		}
		s.conn, s.batch = conn, newBatchWriter(conn)
		go c.read(s, conn)
	}
	id = reserveID(s.pending, cl)
	withID(packed, id)
	if s.queued == nil || s.queued.full() {
		lead = batchPool.Get().(*udpBatch)
		s.queued = lead
	}
	s.queued.add(packed, cl)
	return id, lead, nil
}

// send sends the batch b opened on s. The queries it could not send
// fail with the cause.
func (c *udpClient) send(s *udpSocket, b *udpBatch) {
	s.mu.Lock()
	if s.queued == b {
		s.queued = nil
	}
	w := s.batch
	s.mu.Unlock()
	c.next.Add(1) // the next batch goes out on the next socket
	if err := b.send(w); err != nil {
		s.mu.Lock()
		for i, p := range b.unsent() {
			id := uint16(p[0])<<8 | uint16(p[1])
			if cl := b.calls[b.sent+i]; s.pending[id] == cl { // still waiting
				delete(s.pending, id)
				cl.err = err
				cl.resp <- nil
			}
		}
		s.mu.Unlock()
	}
	b.reset()
	batchPool.Put(b)
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

func dialUDP(addr string) (*net.UDPConn, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	conn, err := net.DialUDP("udp", nil, ua)
	if err != nil {
		return nil, err
	}
	_ = conn.SetReadBuffer(udpReadBuffer) // best effort: a smaller buffer still works
	return conn, nil
}

// read hands each answer on conn to its query until conn fails.
func (c *udpClient) read(s *udpSocket, conn *net.UDPConn) {
	r, err := newBatchReader(conn)
	var msgs [][]byte
	for err == nil {
		if msgs, err = r.read(msgs[:0]); err == nil {
			deliverAll(&s.mu, s.pending, msgs)
		}
	}
	// closed, or refused (ICMP port unreachable: nothing listens there
	// now): the queries waiting on this socket fail at once and go to the
	// next upstream instead of waiting for their timeout; the next query
	// dials again
	if errors.Is(err, net.ErrClosed) {
		err = ErrUpstreamClosed
	}
	s.mu.Lock()
	if s.conn == conn {
		s.conn, s.batch = nil, nil
		for id, cl := range s.pending {
			delete(s.pending, id)
			cl.err = err
			cl.resp <- nil
		}
	}
	s.mu.Unlock()
	conn.Close()
}

func (c *udpClient) close() {
	for i := range c.socks {
		s := &c.socks[i]
		s.mu.Lock()
		s.closed = true
		if s.conn != nil {
			s.conn.Close()
			s.conn, s.batch = nil, nil
		}
		s.mu.Unlock()
	}
}
