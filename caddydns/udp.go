package caddydns

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"github.com/miekg/dns"
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

// call is one query waiting for its answer.
type call struct {
	q    *dns.Msg
	resp chan *dns.Msg // buffered 1; nil is sent when the connection dies
}

func newUDPClient(addr string) *udpClient {
	c := &udpClient{addr: addr}
	for i := range c.socks {
		c.socks[i].pending = make(map[uint16]*call)
	}
	return c
}

// exchange sends packed (its ID is replaced) and waits for the answer.
func (c *udpClient) exchange(ctx context.Context, q *dns.Msg, packed []byte) (*dns.Msg, error) {
	s := &c.socks[c.next.Add(1)%udpSockets]
	call := &call{q: q, resp: make(chan *dns.Msg, 1)}

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrUpstreamClosed
	}
	if s.conn == nil {
		conn, err := dialUDP(c.addr)
		if err != nil {
			s.mu.Unlock()
			return nil, err
		}
		s.conn = conn
		go c.read(s, conn)
	}
	conn := s.conn
	id := reserveID(s.pending, call)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.pending[id] == call {
			delete(s.pending, id)
		}
		s.mu.Unlock()
	}()

	withID(packed, id)
	if _, err := conn.Write(packed); err != nil {
		return nil, fmt.Errorf("udp %s: %w", c.addr, err)
	}
	select {
	case resp := <-call.resp:
		return resp, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("udp %s: %w", c.addr, ctx.Err())
	}
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
			s.mu.Lock()
			if s.conn == conn {
				s.conn = nil // the next query dials again
			}
			s.mu.Unlock()
			conn.Close()
			return
		}
		if n < MinMessage {
			continue
		}
		id := uint16(buf[0])<<8 | uint16(buf[1])
		s.mu.Lock()
		call := s.pending[id]
		s.mu.Unlock()
		if call == nil {
			continue // late, or not ours
		}
		resp := new(dns.Msg)
		if resp.Unpack(buf[:n]) != nil || !resp.Response || !sameQuestion(call.q, resp) {
			continue // spoofed or garbled: keep waiting for the real one
		}
		s.mu.Lock()
		if s.pending[id] == call {
			delete(s.pending, id)
			call.resp <- resp
		}
		s.mu.Unlock()
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
