package caddydns

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Stream client limits: queries are pipelined on a connection until it has
// streamPipeline in flight, then another is opened, up to streamMaxConns.
const (
	streamMaxConns = 4
	streamPipeline = 64
	dialTimeout    = 3 * time.Second
)

// streamClient sends queries to one TCP or TLS (DoT) upstream over a few
// reused connections, pipelined (RFC 7766 6.2.1.1): answers may come in
// any order and are matched by ID and question.
type streamClient struct {
	addr   string
	tlsCfg *tls.Config // nil for plain TCP

	mu     sync.Mutex
	conns  []*streamConn
	closed bool
}

type streamConn struct {
	conn net.Conn

	wmu sync.Mutex // serialises frames
	wb  []byte

	mu      sync.Mutex // guards pending and dead
	pending map[uint16]*call
	dead    bool
}

func newStreamClient(addr string, tlsCfg *tls.Config) *streamClient {
	return &streamClient{addr: addr, tlsCfg: tlsCfg}
}

// exchange sends packed (its ID is replaced) and waits for the answer.
func (c *streamClient) exchange(ctx context.Context, q *dns.Msg, packed []byte) (*dns.Msg, error) {
	sc, err := c.conn(ctx)
	if err != nil {
		return nil, err
	}
	cl := &call{q: q, resp: make(chan *dns.Msg, 1)}
	sc.mu.Lock()
	if sc.dead {
		sc.mu.Unlock()
		return nil, ErrUpstreamClosed
	}
	id := reserveID(sc.pending, cl)
	sc.mu.Unlock()
	defer func() {
		sc.mu.Lock()
		if sc.pending[id] == cl {
			delete(sc.pending, id)
		}
		sc.mu.Unlock()
	}()

	withID(packed, id)
	if err := sc.write(ctx, packed); err != nil {
		c.drop(sc, err)
		return nil, fmt.Errorf("%s: %w", c.addr, err)
	}
	select {
	case resp := <-cl.resp:
		if resp == nil {
			return nil, fmt.Errorf("%s: %w", c.addr, ErrUpstreamClosed)
		}
		return resp, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%s: %w", c.addr, ctx.Err())
	}
}

// conn returns the connection with the fewest queries in flight, opening
// one when all are busy and there is room.
func (c *streamClient) conn(ctx context.Context) (*streamConn, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrUpstreamClosed
	}
	var best *streamConn
	bestN := int(^uint(0) >> 1)
	for _, sc := range c.conns {
		sc.mu.Lock()
		n := len(sc.pending)
		sc.mu.Unlock()
		if n < bestN {
			best, bestN = sc, n
		}
	}
	if best != nil && (bestN < streamPipeline || len(c.conns) >= streamMaxConns) {
		c.mu.Unlock()
		return best, nil
	}
	c.mu.Unlock()

	sc, err := c.dial(ctx)
	if err != nil {
		if best != nil {
			return best, nil
		}
		return nil, err
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		sc.conn.Close()
		return nil, ErrUpstreamClosed
	}
	c.conns = append(c.conns, sc)
	c.mu.Unlock()
	go c.read(sc)
	return sc, nil
}

func (c *streamClient) dial(ctx context.Context) (*streamConn, error) {
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	var conn net.Conn
	var err error
	if c.tlsCfg != nil {
		d := &tls.Dialer{Config: c.tlsCfg}
		conn, err = d.DialContext(dctx, "tcp", c.addr)
	} else {
		var d net.Dialer
		conn, err = d.DialContext(dctx, "tcp", c.addr)
	}
	if err != nil {
		return nil, err
	}
	return &streamConn{conn: conn, pending: make(map[uint16]*call)}, nil
}

func (sc *streamConn) write(ctx context.Context, packed []byte) error {
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	sc.wb = binary.BigEndian.AppendUint16(sc.wb[:0], uint16(len(packed)))
	sc.wb = append(sc.wb, packed...)
	if dl, ok := ctx.Deadline(); ok {
		_ = sc.conn.SetWriteDeadline(dl)
	}
	_, err := sc.conn.Write(sc.wb)
	return err
}

// read hands each answer on sc to its query until the connection ends.
func (c *streamClient) read(sc *streamConn) {
	r := bufio.NewReaderSize(sc.conn, 4096)
	var lenBuf [2]byte
	buf := make([]byte, 512)
	var err error
	for {
		if _, err = io.ReadFull(r, lenBuf[:]); err != nil {
			break
		}
		n := int(binary.BigEndian.Uint16(lenBuf[:]))
		if n > cap(buf) {
			buf = make([]byte, n)
		}
		if _, err = io.ReadFull(r, buf[:n]); err != nil {
			break
		}
		if n < MinMessage {
			continue
		}
		id := binary.BigEndian.Uint16(buf)
		sc.mu.Lock()
		cl := sc.pending[id]
		sc.mu.Unlock()
		if cl == nil {
			continue
		}
		resp := new(dns.Msg)
		if resp.Unpack(buf[:n]) != nil || !resp.Response || !sameQuestion(cl.q, resp) {
			continue
		}
		sc.mu.Lock()
		if sc.pending[id] == cl {
			delete(sc.pending, id)
			cl.resp <- resp
		}
		sc.mu.Unlock()
	}
	c.drop(sc, err)
}

// drop closes a failed connection and fails its queries.
func (c *streamClient) drop(sc *streamConn, _ error) {
	c.mu.Lock()
	for i, x := range c.conns {
		if x == sc {
			c.conns = append(c.conns[:i], c.conns[i+1:]...)
			break
		}
	}
	c.mu.Unlock()
	sc.mu.Lock()
	if !sc.dead {
		sc.dead = true
		for id, cl := range sc.pending {
			delete(sc.pending, id)
			cl.resp <- nil
		}
	}
	sc.mu.Unlock()
	sc.conn.Close()
}

func (c *streamClient) close() {
	c.mu.Lock()
	c.closed = true
	conns := c.conns
	c.conns = nil
	c.mu.Unlock()
	for _, sc := range conns {
		sc.conn.Close() // the reader fails the pending queries
	}
}
