package forward

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dnsfront/dnsfront/caddydns"

	"github.com/dnsfront/dnsfront/caddydns/dnswire"
)

// Stream client limits: queries are pipelined on a connection until it has
// streamPipeline in flight, then another is opened, up to streamMaxConns.
const (
	streamMaxConns = 4
	streamPipeline = 64
	streamResends  = 8
	dialTimeout    = 3 * time.Second
)

// streamClient sends queries to one TCP or TLS (DoT) upstream over a few
// reused connections, pipelined (RFC 7766 6.2.1.1): answers may come in
// any order and are matched by ID and question.
type streamClient struct {
	addr   string
	tlsCfg *tls.Config  // nil for plain TCP
	hop    caddydns.Hop // what a Tap is told

	mu      sync.Mutex
	conns   []*streamConn
	dialing int // connections being opened
	closed  bool
	seen    int // queries answered on the last connection the upstream closed with queries left

	// limit is the upstream's per-connection query limit, learned from
	// the connections it closed with queries unanswered (0 while unknown;
	// see learn): a connection that has carried that many leaves the
	// pool, so that new queries go on a fresh one rather than on one the
	// upstream is about to close.
	limit atomic.Int64
}

type streamConn struct {
	conn net.Conn

	wmu sync.Mutex // serialises frames
	wb  []byte

	mu      sync.Mutex // guards pending, sent and dead
	pending pendingCalls
	sent    int // queries sent on the connection
	dead    bool
}

func newStreamClient(addr string, tlsCfg *tls.Config) *streamClient {
	return &streamClient{addr: addr, tlsCfg: tlsCfg}
}

// exchange sends packed (its ID is replaced) and waits for the answer. A
// query whose connection closes before its answer arrives (the upstream's
// idle timeout or per-connection query limit, a reset) is sent again on
// another connection, as RFC 7766 6.2.1 asks of clients, up to
// streamResends times or until deadline; only then does it fail.
func (c *streamClient) exchange(ctx context.Context, r *caddydns.Request, deadline time.Time, question, packed []byte) (*caddydns.Wire, error) {
	for resend := 0; ; {
		resp, err := c.exchangeOnce(ctx, r, deadline, question, packed, resend > 0)
		switch {
		case errors.Is(err, errConnUnusable): // not sent: choose again
		case errors.Is(err, errConnClosed):
			resend++
		default:
			return resp, err
		}
		if resend > streamResends || ctx.Err() != nil || !time.Now().Before(deadline) {
			return nil, fmt.Errorf("%s: %w", c.addr, ErrUpstreamClosed)
		}
	}
}

var (
	// errConnClosed: the connection a query went out on closed before its
	// answer; the query may be sent again.
	errConnClosed = errors.New("connection closed before the answer")
	// errConnUnusable: the connection chosen for a query closed, or
	// reached the upstream's limit, before the query went out on it.
	errConnUnusable = errors.New("connection closed or full before the query")
)

func (c *streamClient) exchangeOnce(ctx context.Context, r *caddydns.Request, deadline time.Time, question, packed []byte, resend bool) (*caddydns.Wire, error) {
	sc, err := c.conn(ctx, deadline, resend)
	if err != nil {
		return nil, err
	}
	cl := newCall(question)
	defer cl.release() // deferred first: runs after the delete below
	sc.mu.Lock()
	limit := c.limit.Load()
	if sc.dead || (limit > 0 && int64(sc.sent) >= limit) {
		// closed, or other queries took it to the limit since it was
		// chosen: the query would be lost on it
		sc.mu.Unlock()
		c.retire(sc)
		return nil, errConnUnusable
	}
	id := sc.pending.reserve(cl)
	sc.sent++
	full := limit > 0 && int64(sc.sent) >= limit
	sc.mu.Unlock()
	if full {
		c.retire(sc)
	}
	defer func() {
		sc.mu.Lock()
		sc.pending.forget(id, cl)
		sc.mu.Unlock()
	}()

	dnswire.SetID(packed, id)
	tapQuery(r, c.hop, packed)
	if err := sc.write(deadline, packed); err != nil {
		c.drop(sc, err)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, fmt.Errorf("%s: %w", c.addr, context.DeadlineExceeded)
		}
		return nil, errConnClosed
	}
	resp, err := cl.wait(ctx, deadline)
	switch {
	case err != nil:
		return nil, fmt.Errorf("%s: %w", c.addr, err)
	case resp == nil:
		return nil, errConnClosed
	}
	tapResponse(r, c.hop, resp)
	return resp, nil
}

// conn returns the connection with the fewest queries in flight, opening
// one when all are busy and there is room. A resent query goes on a new
// connection when there is room, else on the one that has carried the
// fewest queries: its old connection most likely met the upstream's
// per-connection query limit, which its siblings are close to as well.
func (c *streamClient) conn(ctx context.Context, deadline time.Time, resend bool) (*streamConn, error) {
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
		if resend {
			n = sc.sent
		}
		sc.mu.Unlock()
		if n < bestN {
			best, bestN = sc, n
		}
	}
	room := len(c.conns)+c.dialing < streamMaxConns
	if best != nil && (!room || (!resend && bestN < streamPipeline)) {
		c.mu.Unlock()
		return best, nil
	}
	c.dialing++
	c.mu.Unlock()

	sc, err := c.dial(ctx, deadline, nil)
	c.mu.Lock()
	c.dialing--
	if err != nil {
		c.mu.Unlock()
		if best != nil {
			return best, nil
		}
		return nil, err
	}
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

// dial opens a connection; hdr, when set, is a PROXY header written
// first (before the TLS handshake, where a balancer's goes).
func (c *streamClient) dial(ctx context.Context, deadline time.Time, hdr []byte) (*streamConn, error) {
	if dl := time.Now().Add(dialTimeout); dl.Before(deadline) {
		deadline = dl
	}
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dctx, "tcp", c.addr)
	if err != nil {
		return nil, err
	}
	if hdr != nil {
		_ = conn.SetWriteDeadline(deadline)
		if _, err := conn.Write(hdr); err != nil {
			conn.Close()
			return nil, err
		}
	}
	if c.tlsCfg != nil {
		cfg := c.tlsCfg
		if cfg.ServerName == "" && !cfg.InsecureSkipVerify {
			// as tls.Dialer does: the name is the address's host
			cfg = cfg.Clone()
			cfg.ServerName, _, _ = net.SplitHostPort(c.addr)
		}
		tc := tls.Client(conn, cfg)
		if err := tc.HandshakeContext(dctx); err != nil {
			conn.Close()
			return nil, err
		}
		conn = tc
	}
	return &streamConn{conn: conn, pending: make(pendingCalls)}, nil
}

// exchangeWith is exchange, or with hdr (a PROXY header naming the
// query's client) a query on a connection of its own that hdr opens,
// closed once answered: the header is the connection's, and a connection
// is one client's.
func (c *streamClient) exchangeWith(ctx context.Context, r *caddydns.Request, deadline time.Time, question, packed, hdr []byte) (*caddydns.Wire, error) {
	if hdr == nil {
		return c.exchange(ctx, r, deadline, question, packed)
	}
	sc, err := c.dial(ctx, deadline, hdr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.addr, err)
	}
	cl := newCall(question)
	defer cl.release() // deferred first: runs after the delete below
	sc.mu.Lock()
	id := sc.pending.reserve(cl)
	sc.sent++
	sc.mu.Unlock()
	defer func() {
		sc.mu.Lock()
		sc.pending.forget(id, cl)
		sc.mu.Unlock()
		sc.conn.Close() // its reader ends
	}()
	go c.read(sc)
	dnswire.SetID(packed, id)
	tapQuery(r, c.hop, packed)
	if err := sc.write(deadline, packed); err != nil {
		return nil, fmt.Errorf("%s: %w", c.addr, err)
	}
	resp, err := cl.wait(ctx, deadline)
	switch {
	case err != nil:
		return nil, fmt.Errorf("%s: %w", c.addr, err)
	case resp == nil:
		return nil, fmt.Errorf("%s: %w", c.addr, ErrUpstreamClosed)
	}
	tapResponse(r, c.hop, resp)
	return resp, nil
}

func (sc *streamConn) write(deadline time.Time, packed []byte) error {
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	sc.wb = binary.BigEndian.AppendUint16(sc.wb[:0], uint16(len(packed)))
	sc.wb = append(sc.wb, packed...)
	_ = sc.conn.SetWriteDeadline(deadline)
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
		deliver(&sc.mu, sc.pending, buf[:n], nil)
	}
	c.drop(sc, err)
}

// drop closes a failed connection and fails its queries. When the
// upstream closed it (EOF) with queries unanswered, how many it answered
// is a hint of its per-connection query limit (see learn).
func (c *streamClient) drop(sc *streamConn, err error) {
	c.retire(sc)
	answered := 0
	sc.mu.Lock()
	if !sc.dead {
		sc.dead = true
		if len(sc.pending) > 0 && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
			answered = sc.sent - len(sc.pending)
		}
		sc.pending.failAll(nil)
	}
	sc.mu.Unlock()
	sc.conn.Close()
	if answered > 0 {
		c.learn(answered)
	}
}

// retire takes sc out of the pool: no new query goes on it, and its
// place is free for a new connection. Its reader goes on until it closes.
func (c *streamClient) retire(sc *streamConn) {
	c.mu.Lock()
	for i, x := range c.conns {
		if x == sc {
			c.conns = append(c.conns[:i], c.conns[i+1:]...)
			break
		}
	}
	c.mu.Unlock()
}

// learn notes that the upstream closed a connection with queries left
// after answering n. Two closes in a row after the same number is the
// upstream's per-connection limit (CoreDNS, miekg/dns servers and others
// close after a fixed count): from then on each connection leaves the
// pool when it has carried that many queries. A close after another
// number (a reset, an idle timeout that met a late query) is only noted.
func (c *streamClient) learn(n int) {
	c.mu.Lock()
	if n == c.seen {
		c.limit.Store(int64(n))
	}
	c.seen = n
	c.mu.Unlock()
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
