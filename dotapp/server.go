package dotapp

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"go.uber.org/zap"

	"github.com/dnsfront/dnsfront/caddydns"
)

// Defaults of a DoT server.
const (
	DefaultIdleTimeout      = 10 * time.Second
	DefaultReadTimeout      = 5 * time.Second
	DefaultHandshakeTimeout = 5 * time.Second
	DefaultWriteTimeout     = 10 * time.Second
	DefaultGracePeriod      = 5 * time.Second
	DefaultMaxInFlight      = 100
	// drainIdle is the idle timeout of a connection whose server stops
	// with no successor: it is closed once it goes quiet this long.
	drainIdle = 200 * time.Millisecond
)

// Server is one DNS over TLS server.
type Server struct {
	// Listen are Caddy network addresses, e.g. "tcp/127.0.0.1:853" or
	// ":853". Default port: 853.
	Listen []string `json:"listen,omitempty"`
	// ServerNames are the names the server's certificate is for: the tls
	// app manages certificates for them (so `tls internal`, ACME and loaded
	// files all work), and the first is the name used for clients that
	// send no SNI (`kdig +tls @127.0.0.1`).
	ServerNames []string `json:"server_names,omitempty"`
	// TLSConnPolicies are the tls app's connection policies for this
	// server. Default: one policy with ALPN "dot". Certificates listed in
	// the ocsp app are served with their staples before any other; a
	// policy's certificate_selection (any_tag, all_tags, serial_number...)
	// picks among them, and its default_sni (default: the first of
	// ServerNames) names the certificate for clients without SNI.
	TLSConnPolicies caddytls.ConnectionPolicies `json:"tls_connection_policies,omitempty"`

	caddydns.Chain

	// IdleTimeout closes a connection with no query for this long; each
	// query starts it anew (RFC 7766 6.2.3). Default: 10s.
	IdleTimeout caddy.Duration `json:"idle_timeout,omitempty"`
	// ReadTimeout bounds the reading of a query once its first octet has
	// arrived (against clients that send slowly). Default: 5s.
	ReadTimeout caddy.Duration `json:"read_timeout,omitempty"`
	// HandshakeTimeout bounds the TLS handshake. Default: 5s.
	HandshakeTimeout caddy.Duration `json:"handshake_timeout,omitempty"`
	// MaxInFlight is how many queries of one connection are answered at
	// once; reading waits past it. Default: 100.
	MaxInFlight int `json:"max_in_flight,omitempty"`
	// MaxQueries per connection, after which it is closed once answered.
	// Default: 0, unlimited.
	MaxQueries int `json:"max_queries,omitempty"`
	// MaxConnections open at once; past it new connections are closed at
	// once. Default: 0, unlimited.
	MaxConnections int `json:"max_connections,omitempty"`
	// MaxConnectionsPerClient open at once from one IP address. Default:
	// 0, unlimited.
	MaxConnectionsPerClient int `json:"max_connections_per_client,omitempty"`
	// GracePeriod is how long connections are served after the server
	// stops with no successor on its address. Default: 5s.
	GracePeriod caddy.Duration `json:"grace_period,omitempty"`

	name      string
	logger    *zap.Logger
	ctx       caddy.Context
	addrs     []caddy.NetworkAddress
	tlsCfg    *tls.Config
	listeners []net.Listener
	rawLns    []syscall.RawConn // each listener's socket, when Caddy let us see it
	keys      []string          // listener keys in the live registry
	acceptWG  sync.WaitGroup
	metrics   *dotMetrics

	mu        sync.Mutex
	conns     map[*conn]struct{}
	perClient map[netip.Addr]int
	stopped   bool
	drainEnd  atomic.Int64 // unix nanos; 0 while not draining

	active atomic.Int64 // queries being answered with this server's chain

	quietPark time.Duration // parkAfter unless a test sets it
}

func (s *Server) provision(ctx caddy.Context, name string, logger *zap.Logger) error {
	s.name, s.logger, s.ctx = name, logger, ctx
	s.conns = make(map[*conn]struct{})
	s.perClient = make(map[netip.Addr]int)
	if len(s.Listen) == 0 {
		return errors.New("no listen address")
	}
	for _, l := range s.Listen {
		na, err := caddy.ParseNetworkAddressWithDefaults(caddy.NewReplacer().ReplaceAll(l, ""), "tcp", 853)
		if err != nil {
			return fmt.Errorf("listen %q: %w", l, err)
		}
		switch na.Network {
		case "tcp", "tcp4", "tcp6":
		default:
			return fmt.Errorf("listen %q: DNS over TLS listens on tcp, not %s", l, na.Network)
		}
		s.addrs = append(s.addrs, na)
	}
	if err := s.Chain.Provision(ctx, name, "dot"); err != nil {
		return err
	}
	if err := s.provisionTLS(ctx); err != nil {
		return err
	}
	s.metrics = newDotMetrics(ctx, name)
	return nil
}

func (s *Server) provisionTLS(ctx caddy.Context) error {
	if len(s.TLSConnPolicies) == 0 {
		s.TLSConnPolicies = caddytls.ConnectionPolicies{new(caddytls.ConnectionPolicy)}
	}
	for _, p := range s.TLSConnPolicies {
		if p.ALPN == nil {
			p.ALPN = []string{"dot"}
		}
		if p.DefaultSNI == "" && len(s.ServerNames) > 0 {
			p.DefaultSNI = s.ServerNames[0]
		}
	}
	if err := s.TLSConnPolicies.Provision(ctx); err != nil {
		return fmt.Errorf("tls connection policies: %w", err)
	}
	st, err := staplerOf(ctx)
	if err != nil {
		return fmt.Errorf("ocsp staples: %w", err)
	}
	if st != nil {
		st.StapleConnectionPolicies(s.TLSConnPolicies)
	}
	s.warnMissingCertificates()
	s.tlsCfg = s.TLSConnPolicies.TLSConfig(ctx)
	if !s.mayHaveCertificate(ctx, st) {
		return errors.New("no certificate to serve: list one in the ocsp app (certificate, or issue <name>), " +
			"give the server a server_name (the tls app then manages its certificate), or load one in the tls app")
	}
	return nil
}

// maxWarnedNames bounds the server names a server warns about (a client
// chooses them: the set must not grow without end).
const maxWarnedNames = 64

// warnMissingCertificates makes a handshake that finds no certificate for
// its server name say so at warn level, once per name (the handshake's own
// failure is logged at debug level, per connection).
func (s *Server) warnMissingCertificates() {
	var mu sync.Mutex
	warned := make(map[string]bool)
	for _, p := range s.TLSConnPolicies {
		if p.TLSConfig == nil || p.TLSConfig.GetCertificate == nil {
			continue
		}
		next := p.TLSConfig.GetCertificate
		p.TLSConfig.GetCertificate = func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			c, err := next(hello)
			if err == nil && c != nil {
				return c, nil
			}
			mu.Lock()
			first := !warned[hello.ServerName] && len(warned) < maxWarnedNames
			if first {
				warned[hello.ServerName] = true
			}
			last := first && len(warned) == maxWarnedNames
			mu.Unlock()
			if first {
				s.logger.Warn("no certificate for this server name: its handshakes fail (logged once a name)",
					zap.String("server_name", hello.ServerName), zap.Strings("server_names", s.ServerNames), zap.Error(err),
					zap.Bool("last_name_logged", last))
			}
			return c, err
		}
	}
}

// mayHaveCertificate reports whether any certificate can reach this
// server's handshakes; false means every handshake would fail. Any
// source counts: the ocsp app's certificates, server_name, the tls app's
// loaded certificates or automation (subjects, get_certificate managers,
// on-demand), or an http app (its sites' certificates, managed by the
// tls app at start).
func (s *Server) mayHaveCertificate(ctx caddy.Context, st Stapler) bool {
	if len(s.ServerNames) > 0 || (st != nil && st.HasCertificates()) {
		return true
	}
	if _, err := ctx.AppIfConfigured("http"); !errors.Is(err, caddy.ErrNotConfigured) {
		return true // configured (an http app that fails says why itself)
	}
	tlsIface, err := ctx.AppIfConfigured("tls")
	if err != nil {
		return false
	}
	t := tlsIface.(*caddytls.TLS)
	if len(t.CertificatesRaw) > 0 {
		return true
	}
	if t.Automation != nil {
		if t.Automation.OnDemand != nil {
			return true
		}
		for _, p := range t.Automation.Policies {
			if len(p.SubjectsRaw) > 0 || len(p.ManagersRaw) > 0 || len(p.Managers) > 0 || p.OnDemand {
				return true
			}
		}
	}
	return false
}

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
			ln, err := na.Listen(s.ctx, port-na.StartPort, net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
				raw = c // Caddy wraps the listener; this is its socket (see stop)
				return nil
			}})
			if err != nil {
				return fmt.Errorf("listen on %s: %w", na.JoinHostPort(port-na.StartPort), err)
			}
			l, ok := ln.(net.Listener)
			if !ok {
				return fmt.Errorf("listen on %s: not a stream listener", na.JoinHostPort(port-na.StartPort))
			}
			key := na.Network + "/" + na.JoinHostPort(port-na.StartPort)
			s.listeners = append(s.listeners, l)
			s.rawLns = append(s.rawLns, raw)
			s.keys = append(s.keys, key)
			reloaded := register(key, s)
			s.acceptWG.Add(1)
			go s.accept(l, key)
			if reloaded {
				continue // said when the address first opened
			}
			s.logger.Info("dns over tls server listening", zap.String("address", l.Addr().String()),
				zap.Strings("server_names", s.ServerNames))
			host, port, _ := net.SplitHostPort(l.Addr().String())
			s.logger.Info("try it",
				zap.String("query", fmt.Sprintf("kdig +tls @%s -p %s %s", host, port, s.Chain.ExampleQuery())),
				zap.String("staple", fmt.Sprintf("openssl s_client -connect %s -alpn dot -status < /dev/null 2>/dev/null | grep -A3 'OCSP Response Status'", l.Addr())))
		}
	}
	return nil
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

// serveNew admits a connection just accepted and serves it.
func (s *Server) serveNew(raw net.Conn, key string) {
	c := newConn(raw, key)
	if reason := s.admit(c); reason != "" {
		s.metrics.refused.WithLabelValues(reason).Inc()
		raw.Close()
		return
	}
	go c.serve(s)
}

// admit counts the connection in, or says which limit refuses it.
func (s *Server) admit(c *conn) string {
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
	s.conns[c] = struct{}{}
	s.perClient[c.client.Addr()]++
	c.srv.Store(s)
	return ""
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
		delete(s.conns, c)
		if n := s.perClient[c.client.Addr()] - 1; n > 0 {
			s.perClient[c.client.Addr()] = n
		} else {
			delete(s.perClient, c.client.Addr())
		}
		s.mu.Unlock()
		return
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
	delete(from.conns, c)
	if n := from.perClient[c.client.Addr()] - 1; n > 0 {
		from.perClient[c.client.Addr()] = n
	} else {
		delete(from.perClient, c.client.Addr())
	}
	s.conns[c] = struct{}{}
	s.perClient[c.client.Addr()]++
	c.srv.Store(s)
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

	grace := time.Duration(s.GracePeriod)
	if grace <= 0 {
		grace = DefaultGracePeriod
	}
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
	if len(conns) > 0 {
		s.logger.Info("dns over tls server stopping", zap.Int("connections_handed_over", handed),
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

// idleDeadline is when a connection that has waited for its next query
// since the given time gives up.
func (s *Server) idleDeadline(since time.Time) time.Time {
	deadline := since.Add(s.idleTimeout())
	if end := s.drainEnd.Load(); end != 0 {
		// draining: a connection that goes quiet for a moment is closed
		deadline = minTime(deadline, minTime(time.Now().Add(drainIdle), time.Unix(0, end)))
	}
	return deadline
}

// keepalive is the idle timeout an answer announces to a query with an
// edns-tcp-keepalive option (RFC 7828): the server's, or
// caddydns.KeepaliveClose (RFC 7828 3.3.2: a server that wants its
// clients to close their connections announces 0) while it drains and
// to the last query of a connection (max_queries).
func (s *Server) keepalive(last bool) time.Duration {
	if last || s.drainEnd.Load() != 0 {
		return caddydns.KeepaliveClose
	}
	return s.idleTimeout()
}

func (s *Server) idleTimeout() time.Duration {
	if s.IdleTimeout > 0 {
		return time.Duration(s.IdleTimeout)
	}
	return DefaultIdleTimeout
}

func (s *Server) parkAfter() time.Duration {
	if s.quietPark > 0 {
		return s.quietPark
	}
	return parkAfter
}

func (s *Server) readTimeout() time.Duration {
	if s.ReadTimeout > 0 {
		return time.Duration(s.ReadTimeout)
	}
	return DefaultReadTimeout
}

func (s *Server) handshakeTimeout() time.Duration {
	if s.HandshakeTimeout > 0 {
		return time.Duration(s.HandshakeTimeout)
	}
	return DefaultHandshakeTimeout
}

func (s *Server) maxInFlight() int {
	if s.MaxInFlight > 0 {
		return s.MaxInFlight
	}
	return DefaultMaxInFlight
}

// The live registry maps a listener address to the server running on it,
// so that a stopping server finds the one that replaces it.
var live = struct {
	sync.Mutex
	m map[string]*Server
}{m: make(map[string]*Server)}

// register makes s the server of key, and reports whether another
// server had it (a reload).
func register(key string, s *Server) (replaced bool) {
	live.Lock()
	_, replaced = live.m[key]
	live.m[key] = s
	live.Unlock()
	return replaced
}

func unregister(key string, s *Server) {
	live.Lock()
	if live.m[key] == s {
		delete(live.m, key)
	}
	live.Unlock()
}

func successor(key string, s *Server) *Server {
	live.Lock()
	defer live.Unlock()
	if next := live.m[key]; next != s {
		return next
	}
	return nil
}
