package dotapp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"go.uber.org/zap"
)

func (s *Server) start() error {
	if len(s.ServerNames) > 0 {
		tlsApp, err := s.ctx.App("tls")
		if err != nil {
			return fmt.Errorf("tls app: %w", err)
		}
		names := make(map[string]struct{}, len(s.ServerNames))
		for _, n := range s.ServerNames {
			names[n] = struct{}{}
		}
		if err := tlsApp.(*caddytls.TLS).Manage(names); err != nil {
			return fmt.Errorf("managing certificates for %v: %w", s.ServerNames, err)
		}
	}
	for _, na := range s.addrs {
		for port := na.StartPort; port <= na.EndPort; port++ {
			var raw syscall.RawConn
			ln, err := na.Listen(s.ctx, port-na.StartPort, listenConfig(&raw, s.TCPFastOpen))
			if err != nil {
				return fmt.Errorf("listen on %s: %w", na.JoinHostPort(port-na.StartPort), err)
			}
			l, ok := ln.(net.Listener)
			if !ok {
				return fmt.Errorf("listen on %s: not a stream listener", na.JoinHostPort(port-na.StartPort))
			}
			if err := steerToNewest(raw); err != nil {
				// connections coming in as a reload ends may be reset
				s.logger.Warn("cannot steer new connections to the newest listener", zap.String("address", l.Addr().String()), zap.Error(err))
			}
			for _, w := range s.wrappers {
				l = w.WrapListener(l)
			}
			// a DoH server takes over only from a DoH server
			key := s.transport() + ":" + na.Network + "/" + na.JoinHostPort(port-na.StartPort)
			s.listeners = append(s.listeners, l)
			s.rawLns = append(s.rawLns, raw)
			s.keys = append(s.keys, key)
			reloaded := register(key, s)
			s.acceptWG.Add(1)
			go s.accept(l, key)
			if reloaded {
				continue // said when the address first opened
			}
			s.logger.Info(strings.ToLower(s.what())+" server listening", zap.String("address", l.Addr().String()),
				zap.Strings("server_names", s.ServerNames))
			s.sayTryIt(l.Addr())
		}
	}
	return nil
}

// listenConfig is how a server opens its listening sockets (Caddy adds
// SO_REUSEPORT): *raw is set to the socket, which Caddy's listener wraps
// (see stop), and TCP Fast Open is turned on with a queue of fastOpen
// (when above 0). Plain TCP: Go would open an MPTCP socket, which takes
// no reuseport program (steerToNewest); a listener of either kind serves
// a client that does not speak MPTCP (every DoT and DoH client known)
// over plain TCP.
func listenConfig(raw *syscall.RawConn, fastOpen int) net.ListenConfig {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		*raw = c
		if keepAliveOnListener {
			if err := setKeepAlive(c); err != nil {
				return err
			}
		}
		if fastOpen > 0 {
			return setFastOpen(c, fastOpen)
		}
		return nil
	}}
	if keepAliveOnListener {
		lc.KeepAlive = -1 // the accepted connections have it from the listening socket
	}
	lc.SetMultipathTCP(false)
	return lc
}

// TCP keepalive of the connections accepted (Go's defaults for them): a
// client gone without a word is noticed even where no idle timeout ends
// its connection first.
const (
	keepAliveIdle     = 15 // seconds quiet before the first probe
	keepAliveInterval = 15 // seconds between probes
	keepAliveCount    = 9  // probes unanswered before the connection ends
)

// sayTryIt logs the commands that query the server at addr and show its
// staple.
func (s *Server) sayTryIt(addr net.Addr) {
	host, port, _ := net.SplitHostPort(addr.String())
	alpn, query := "dot", fmt.Sprintf("kdig +tls @%s -p %s %s", host, port, s.Chain.ExampleQuery())
	if s.doh != nil {
		alpn = "h2"
		query = fmt.Sprintf("kdig +https=%s @%s -p %s %s", s.doh.path, host, port, s.Chain.ExampleQuery())
	}
	s.logger.Info("try it", zap.String("query", query),
		zap.String("staple", fmt.Sprintf("openssl s_client -connect %s -alpn %s -status < /dev/null 2>/dev/null | grep -A3 'OCSP Response Status'", addr, alpn)))
}

func (s *Server) accept(ln net.Listener, key string) {
	defer s.acceptWG.Done()
	var delay time.Duration
	for {
		raw, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// out of file descriptors and the like: back off, as net/http does
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.logger.Error("accepting connection", zap.Error(err), zap.Duration("retry_in", delay))
			time.Sleep(delay)
			continue
		}
		delay = 0
		s.serveNew(raw, key)
	}
}

// serveNew admits a connection just accepted and serves it. Through a
// listener wrapper, the client's address may be behind a header still
// to read (PROXY protocol): the connection's own goroutine reads it
// (within the wrapper's timeout), not the accepting one.
func (s *Server) serveNew(raw net.Conn, key string) {
	if len(s.wrappers) > 0 {
		go func() {
			if c := s.admitNew(raw, key); c != nil {
				c.serve(s)
			}
		}()
		return
	}
	if c := s.admitNew(raw, key); c != nil {
		go c.serve(s)
	}
}

// admitNew makes a connection of raw and admits it, or closes raw.
func (s *Server) admitNew(raw net.Conn, key string) *conn {
	c := newConn(raw, key)
	if len(s.wrappers) > 0 {
		// a wrapper may hold octets the socket has delivered (the PROXY
		// protocol's reader): the socket is not peeked at, nor parked
		c.rc = nil
	}
	if reason := s.admit(c); reason != "" {
		s.metrics.refused.WithLabelValues(reason).Inc()
		raw.Close()
		return nil
	}
	return c
}

// admit counts the connection in, or says which limit refuses it.
func (s *Server) admit(c *conn) string {
	if s.dropsClient(c.client.Addr()) {
		return "acl"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return "stopping"
	}
	if s.MaxConnections > 0 && len(s.conns) >= s.MaxConnections {
		return "max_connections"
	}
	if s.MaxConnectionsPerClient > 0 && s.perClient[c.client.Addr()] >= s.MaxConnectionsPerClient {
		return "max_connections_per_client"
	}
	// last: a connection another limit refuses takes no token
	if a := c.client.Addr().Unmap(); s.connRate != nil && a.IsValid() && !s.connRate.Allow(a, time.Now().UnixNano()) {
		return "max_connection_rate_per_client"
	}
	s.countIn(c)
	return ""
}

// dropsClient says whether the chain drops every query of client (an
// acl with action drop first): its connection is not worth a handshake.
// Not where X-Forwarded-For may name another client than the peer.
func (s *Server) dropsClient(client netip.Addr) bool {
	if s.doh != nil && len(s.doh.trusted) > 0 {
		return false
	}
	return s.Chain.DropsClient(client)
}

// countIn counts c in as one of s's connections, and makes s its owner;
// countOut counts it out. s.mu is held.
func (s *Server) countIn(c *conn) {
	s.conns[c] = struct{}{}
	s.perClient[c.client.Addr()]++
	c.srv.Store(s)
}

func (s *Server) countOut(c *conn) {
	delete(s.conns, c)
	if n := s.perClient[c.client.Addr()] - 1; n > 0 {
		s.perClient[c.client.Addr()] = n
	} else {
		delete(s.perClient, c.client.Addr())
	}
}

// adopt takes over a connection from the server this one replaces.
func (s *Server) adopt(from *Server, c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return false
	}
	from.mu.Lock()
	defer from.mu.Unlock()
	if _, ok := from.conns[c]; !ok {
		return false // closed meanwhile
	}
	from.countOut(c)
	s.countIn(c)
	return true
}

// stop closes the listeners, hands each open connection to the server
// now live on its address (a reload: the client notices nothing), drains
// the others for the grace period, and waits for the queries this
// server's chain is answering.
func (s *Server) stop() {
	for i, ln := range s.listeners {
		// closing a listening socket resets the connections in its accept
		// queue (handshake done, not yet accepted: the accept goroutine may
		// not have run yet on a busy machine); take them first, so that
		// they are served and handed over like the others
		for _, raw := range acceptQueued(s.rawLns[i]) {
			s.serveNew(raw, s.keys[i])
		}
		_ = ln.Close()
	}
	s.acceptWG.Wait()

	s.mu.Lock()
	s.stopped = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()

	grace := s.set.grace
	deadline := time.Now().Add(grace)
	s.drainEnd.Store(deadline.UnixNano())
	handed := 0
	for _, c := range conns {
		if next := successor(c.key, s); next != nil && next.adopt(s, c) {
			handed++
			continue
		}
		c.wake() // a connection waiting for a query re-reads its deadline
	}
	for _, k := range s.keys {
		unregister(k, s)
	}
	if s.doh != nil {
		s.doh.stop(handed < len(conns))
	}
	if len(conns) > 0 {
		s.logger.Info(strings.ToLower(s.what())+" server stopping", zap.Int("connections_handed_over", handed),
			zap.Int("connections_draining", len(conns)-handed), zap.Duration("grace_period", grace))
	}

	// wait for the draining connections and the queries on our chain
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		s.mu.Lock()
		open := len(s.conns)
		s.mu.Unlock()
		if open == 0 && s.active.Load() == 0 {
			return
		}
		<-tick.C
	}
	s.mu.Lock()
	for c := range s.conns {
		c.abort()
	}
	s.mu.Unlock()
}
