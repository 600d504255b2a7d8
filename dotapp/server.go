package dotapp

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"math"
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
	"github.com/dnsfront/dnsfront/internal/clientrate"
)

// Defaults of a DoT server.
const (
	DefaultIdleTimeout      = 10 * time.Second
	DefaultReadTimeout      = 5 * time.Second
	DefaultHandshakeTimeout = 5 * time.Second
	DefaultWriteTimeout     = 10 * time.Second
	DefaultGracePeriod      = 5 * time.Second
	DefaultMaxInFlight      = 100
	// connRateClients bounds the clients max_connection_rate_per_client
	// keeps a bucket for (about 140 octets each); past it the least
	// active are forgotten first.
	connRateClients = 100_000
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

	// ListenerWrappersRaw wrap each listener, in order, as an HTTP
	// server's do: `proxy_protocol` (with its `allow` list of trusted
	// senders) gives each connection the address a load balancer's PROXY
	// header carries, and the handlers see that client. TLS is the
	// server's own, after the wrappers.
	ListenerWrappersRaw []json.RawMessage `json:"listener_wrappers,omitempty" caddy:"namespace=caddy.listeners inline_key=wrapper"`

	caddydns.Chain

	// IdleTimeout closes a connection with no query for this long; each
	// query starts it anew (RFC 7766 6.2.3). Default: 10s.
	IdleTimeout caddy.Duration `json:"idle_timeout,omitempty"`
	// ReadTimeout bounds the reading of a query once its first octet has
	// arrived (against clients that send slowly). Default: 5s.
	ReadTimeout caddy.Duration `json:"read_timeout,omitempty"`
	// HandshakeTimeout bounds the TLS handshake. Default: 5s.
	HandshakeTimeout caddy.Duration `json:"handshake_timeout,omitempty"`
	// WriteTimeout bounds each write of answers to a client: one that
	// does not read for this long is disconnected. On HTTP/2 it also
	// bounds how long answers may wait for a client's flow-control
	// window. Default: 10s.
	WriteTimeout caddy.Duration `json:"write_timeout,omitempty"`
	// MaxInFlight is how many queries of one connection are answered at
	// once; reading waits past it. Default: 100.
	MaxInFlight int `json:"max_in_flight,omitempty"`
	// MaxQueries per connection, after which it is closed once answered.
	// Default: 0, unlimited.
	MaxQueries int `json:"max_queries,omitempty"`
	// MaxConnectionDuration bounds a connection's life: past it, a DoT
	// connection is closed once its queries in progress are answered
	// (the last answers announce keepalive 0), an HTTP/2 one gets GOAWAY
	// and ends once its streams are answered, an HTTP/1.1 one is closed
	// after its next answer (Connection: close). Long-lived connections
	// then spread again over the servers behind a load balancer.
	// Default: 0, unlimited.
	MaxConnectionDuration caddy.Duration `json:"max_connection_duration,omitempty"`
	// MaxConnections open at once; past it new connections are closed at
	// once. Default: 0, unlimited.
	MaxConnections int `json:"max_connections,omitempty"`
	// MaxConnectionsPerClient open at once from one IP address. Default:
	// 0, unlimited.
	MaxConnectionsPerClient int `json:"max_connections_per_client,omitempty"`
	// MaxConnectionRatePerClient bounds the new connections a second
	// from one client (an IPv4 address, an IPv6 /64), with bursts of a
	// second's worth: each costs the server a TLS handshake. Past it new
	// connections are closed at once. Default: 0, unlimited.
	MaxConnectionRatePerClient float64 `json:"max_connection_rate_per_client,omitempty"`
	// TCPFastOpen, when above 0, turns on TCP Fast Open (RFC 7413) on the
	// listening sockets, with a queue of that many connections whose
	// handshake is not complete: a client that has been here before
	// (kdig +fastopen) sends its ClientHello in its SYN, and the
	// connection's first answer comes a round trip sooner. Linux only,
	// and only where the kernel allows it for servers (net.ipv4.tcp_fastopen
	// with its server flag, 0x2, as in 3; the default, 1, lacks it).
	// Default: 0, off.
	TCPFastOpen int `json:"tcp_fast_open,omitempty"`
	// GracePeriod is how long connections are served after the server
	// stops with no successor on its address. Default: 5s.
	GracePeriod caddy.Duration `json:"grace_period,omitempty"`

	name      string
	logger    *zap.Logger
	ctx       caddy.Context
	addrs     []caddy.NetworkAddress
	tlsCfg    *tls.Config
	listeners []net.Listener
	wrappers  []caddy.ListenerWrapper
	rawLns    []syscall.RawConn // each listener's socket, when Caddy let us see it
	keys      []string          // listener keys in the live registry
	acceptWG  sync.WaitGroup
	metrics   *dotMetrics

	mu        sync.Mutex
	conns     map[*conn]struct{}
	perClient map[netip.Addr]int
	connRate  *clientrate.Limiter // with MaxConnectionRatePerClient
	cleanups  []func()            // run by the app's Cleanup (onCleanup)
	stopped   bool
	drainEnd  atomic.Int64 // unix nanos; 0 while not draining

	active atomic.Int64 // queries being answered with this server's chain

	quietPark time.Duration // parkAfter unless a test sets it
	set       settings

	doh *dohSide // a server of the doh app: DNS over HTTPS
}

// connRates are the max_connection_rate_per_client limiters, by server
// and rate.
var connRates = caddy.NewUsagePool()

// connRate is a limiter in connRates.
type connRate struct{ *clientrate.Limiter }

// Destruct implements caddy.Destructor: the last config using it is gone.
func (c connRate) Destruct() error {
	c.Close()
	return nil
}

func (s *Server) provision(ctx caddy.Context, name string, logger *zap.Logger) error {
	s.name, s.logger, s.ctx = name, logger, ctx
	s.conns = make(map[*conn]struct{})
	s.perClient = make(map[netip.Addr]int)
	s.applyDefaults()
	if len(s.Listen) == 0 {
		return errors.New("no listen address")
	}
	if s.MaxConnectionDuration < 0 {
		return fmt.Errorf("max_connection_duration %v: want a duration above 0, or 0 for none", time.Duration(s.MaxConnectionDuration))
	}
	if r := s.MaxConnectionRatePerClient; r < 0 || math.IsInf(r, 0) || math.IsNaN(r) || r > 1e9 {
		return fmt.Errorf("max_connection_rate_per_client %v: want a rate above 0, or 0 for none", r)
	} else if r > 0 {
		// one limiter per server and rate, kept across reloads (a client
		// may not reopen its connections the moment a config changes)
		key := fmt.Sprintf("%s %s %v", s.transport(), name, r)
		v, _, err := connRates.LoadOrNew(key, func() (caddy.Destructor, error) {
			lim, err := clientrate.New(r, int(math.Ceil(r)), 32, 64, connRateClients)
			return connRate{lim}, err
		})
		if err != nil {
			return fmt.Errorf("max_connection_rate_per_client: %w", err)
		}
		s.connRate = v.(connRate).Limiter
		s.onCleanup(func() { _, _ = connRates.Delete(key) })
	}
	if s.TCPFastOpen < 0 || s.TCPFastOpen > maxFastOpenQueue {
		return fmt.Errorf("tcp_fast_open %d: want a queue length of 1 to %d, or 0 for off", s.TCPFastOpen, maxFastOpenQueue)
	}
	if s.TCPFastOpen > 0 {
		if err := fastOpenUsable(); err != nil {
			// the sockets take the option all the same, and the kernel
			// reads the setting at each SYN: set, it serves at once
			logger.Warn("tcp_fast_open: no client gets it yet", zap.Error(err))
		}
	}
	for _, l := range s.Listen {
		na, err := caddy.ParseNetworkAddressWithDefaults(caddy.NewReplacer().ReplaceAll(l, ""), "tcp", s.defaultPort())
		if err != nil {
			return fmt.Errorf("listen %q: %w", l, err)
		}
		switch na.Network {
		case "tcp", "tcp4", "tcp6":
		default:
			return fmt.Errorf("listen %q: %s listens on tcp, not %s", l, s.what(), na.Network)
		}
		s.addrs = append(s.addrs, na)
	}
	if s.ListenerWrappersRaw != nil {
		mods, err := ctx.LoadModule(s, "ListenerWrappersRaw")
		if err != nil {
			return fmt.Errorf("loading listener wrappers: %w", err)
		}
		for _, m := range mods.([]any) {
			lw := m.(caddy.ListenerWrapper)
			if m.(caddy.Module).CaddyModule().ID == "caddy.listeners.tls" {
				return errors.New("listener_wrappers: tls is the DoT server's own, after the wrappers: leave it out")
			}
			s.wrappers = append(s.wrappers, lw)
		}
	}
	if err := s.Chain.Provision(ctx, name, s.transport()); err != nil {
		return err
	}
	if s.cleartext() {
		if len(s.TLSConnPolicies) > 0 || len(s.ServerNames) > 0 {
			return errors.New("cleartext: a server without TLS has no use for tls_connection_policies (connection_policy) or server_names: leave them out")
		}
		s.warnCleartext()
	} else if err := s.provisionTLS(ctx); err != nil {
		return err
	}
	vecs := dotVecs
	if s.doh != nil {
		vecs = dohVecs
		s.doh.provision(ctx, s)
	}
	s.metrics = newDotMetrics(ctx, vecs, name)
	return nil
}

// transport is the server's name for its protocol: "dot" or "doh" (the
// transport label of metrics, logs and dnstap).
// onCleanup has f run when the server's config is unloaded (the app's
// Cleanup). Not caddy.Context.OnCancel: on the copy of the context a
// module is provisioned with, what it registers never runs.
func (s *Server) onCleanup(f func()) { s.cleanups = append(s.cleanups, f) }

// cleanup runs what onCleanup registered, once.
func (s *Server) cleanup() {
	for _, f := range s.cleanups {
		f()
	}
	s.cleanups = nil
}

func (s *Server) transport() string {
	if s.doh != nil {
		return "doh"
	}
	return "dot"
}

// what names the server's protocol in messages.
func (s *Server) what() string {
	if s.doh != nil {
		return "DNS over HTTPS"
	}
	return "DNS over TLS"
}

func (s *Server) defaultPort() uint {
	switch {
	case s.cleartext():
		return 80
	case s.doh != nil:
		return 443
	}
	return 853
}

// cleartext says the server speaks DoH without TLS.
func (s *Server) cleartext() bool { return s.doh != nil && s.doh.cleartext }

// warnCleartext warns of each listen address of a cleartext server that
// is not on loopback or a private network: what it serves can be read
// and changed on the way.
func (s *Server) warnCleartext() {
	for _, na := range s.addrs {
		if a, err := netip.ParseAddr(na.Host); err == nil && (a.IsLoopback() || a.IsPrivate()) {
			continue
		}
		s.logger.Warn("cleartext DoH listens beyond loopback and private networks: queries and answers cross them unencrypted; put a TLS-terminating proxy in front",
			zap.String("listen", na.String()))
	}
}

// idleDeadline is when a connection that has waited for its next query
// since the given time gives up.
func (s *Server) idleDeadline(since time.Time) time.Time {
	deadline := since.Add(s.set.idle)
	if end := s.drainEnd.Load(); end != 0 {
		// draining: a connection that goes quiet for a moment is closed
		deadline = minTime(deadline, minTime(time.Now().Add(drainIdle), time.Unix(0, end)))
	}
	return deadline
}

// idleDeadline is when c, waiting for its next query since since,
// is closed: the server's idle deadline, or the end of the connection's
// max_connection_duration if that comes first.
func (c *conn) idleDeadline(srv *Server, since time.Time) time.Time {
	d := srv.idleDeadline(since)
	if srv.set.maxDuration > 0 {
		d = minTime(d, c.accepted.Time().Add(srv.set.maxDuration))
	}
	return d
}

// expired says c has lived past max_connection_duration: it takes no
// more queries.
func (c *conn) expired(srv *Server) bool {
	return srv.set.maxDuration > 0 && monoNow() >= c.accepted+monoTime(srv.set.maxDuration)
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
	return s.set.idle
}

// settings are a server's timeouts and limits with their defaults
// applied, once, at provision.
type settings struct {
	idle, read, handshake, grace time.Duration
	write                        time.Duration
	parkAfter                    time.Duration
	maxDuration                  time.Duration // 0: unlimited
	maxInFlight                  int
}

// applyDefaults fills s.set from the config and the defaults.
func (s *Server) applyDefaults() {
	or := func(d caddy.Duration, def time.Duration) time.Duration {
		if d > 0 {
			return time.Duration(d)
		}
		return def
	}
	s.set = settings{
		idle:        or(s.IdleTimeout, DefaultIdleTimeout),
		read:        or(s.ReadTimeout, DefaultReadTimeout),
		handshake:   or(s.HandshakeTimeout, DefaultHandshakeTimeout),
		write:       or(s.WriteTimeout, DefaultWriteTimeout),
		grace:       or(s.GracePeriod, DefaultGracePeriod),
		parkAfter:   or(caddy.Duration(s.quietPark), parkAfter),
		maxDuration: time.Duration(max(s.MaxConnectionDuration, 0)),
		maxInFlight: DefaultMaxInFlight,
	}
	if s.MaxInFlight > 0 {
		s.set.maxInFlight = s.MaxInFlight
	}
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
