package caddydns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// udpSockets is how many sockets a UDP upstream multiplexes queries over:
// enough to spread load and source ports, few enough to stay cheap.
const udpSockets = 4

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
	pending map[uint16]*call
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
func (c *udpClient) exchange(ctx context.Context, deadline time.Time, question, packed []byte) (*answer, error) {
	s := &c.socks[c.next.Add(1)%udpSockets]
	cl := newCall(question)
	conn, id, err := c.register(s, cl)
	if err != nil {
		cl.release()
		return nil, err
	}
	withID(packed, id)
	var resp *answer
	if _, err = conn.Write(packed); err == nil {
		if resp, err = cl.wait(ctx, deadline); resp == nil && err == nil {
			err = cl.err // the socket failed (sent with the nil answer)
		}
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
// the socket first if it is not open.
func (c *udpClient) register(s *udpSocket, cl *call) (*net.UDPConn, uint16, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, 0, ErrUpstreamClosed
	}
	if s.conn == nil {
		conn, err := dialUDP(c.addr)
		if err != nil {
			return nil, 0, err
		}
		s.conn = conn
		go c.read(s, conn)
	}
	return s.conn, reserveID(s.pending, cl), nil
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
	buf := make([]byte, MaxMessage)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			// closed, or refused (ICMP port unreachable: nothing listens
			// there now): the queries waiting on this socket fail at once
			// and go to the next upstream instead of waiting for their
			// timeout; the next query dials again
			if errors.Is(err, net.ErrClosed) {
				err = ErrUpstreamClosed
			}
			s.mu.Lock()
			if s.conn == conn {
				s.conn = nil
				for id, cl := range s.pending {
					delete(s.pending, id)
					cl.err = err
					cl.resp <- nil
				}
			}
			s.mu.Unlock()
			conn.Close()
			return
		}
		deliver(&s.mu, s.pending, buf[:n])
	}
}

func (c *udpClient) close() {
	for i := range c.socks {
		s := &c.socks[i]
		s.mu.Lock()
		s.closed = true
		if s.conn != nil {
			s.conn.Close()
			s.conn = nil
		}
		s.mu.Unlock()
	}
}
