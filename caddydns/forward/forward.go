package forward

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/miekg/dns"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/caddydns/dnswire"
)

func init() {
	caddy.RegisterModule(Forward{})
}

// Forward sends queries to upstream resolvers and returns their answers,
// as dnsdist and CoreDNS's forward do: over UDP (falling back to TCP when
// an answer is truncated), TCP or TLS, with connections reused and
// queries pipelined; a load-balancing policy; passive failure counting and
// optional active health checks; a per-try timeout and retries on another
// upstream. When no upstream answers, the client gets SERVFAIL.
//
// Upstreams are shared by every handler of every config that names them:
// their health and connections survive reloads.
type Forward struct {
	// To lists the upstreams: "udp://host:port", "tcp://host:port",
	// "tls://host:port" (DNS over TLS), or "host[:port]" for UDP. Ports
	// default to 53, or 853 for tls.
	To []string `json:"to,omitempty"`
	// TLSServerName is the name verified in tls upstreams' certificates.
	// Default: the upstream's host.
	TLSServerName string `json:"tls_server_name,omitempty"`
	// TLSCAFiles are PEM files of the CAs trusted for tls upstreams.
	// Default: the system's roots.
	TLSCAFiles []string `json:"tls_ca_files,omitempty"`
	// Policy chooses among healthy upstreams: least_outstanding (default),
	// round_robin, random, first, or hash (one upstream per query name:
	// rendezvous hashing, as dnsdist's chashed, for the upstreams'
	// caches).
	Policy string `json:"policy,omitempty"`
	// Weights give the upstreams of To, in order, their shares of the
	// queries (1 to 1000 each; default: all 1): random and round_robin
	// send each its share, hash gives each its share of the names, and
	// least_outstanding compares the queries in flight per unit of
	// weight (dnsdist's wrandom, whashed). Policy first takes none.
	Weights []int `json:"weights,omitempty"`
	// Timeout of one try. Default: 2s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// Tries is how many upstreams a query is sent to before SERVFAIL.
	// Default: the number of upstreams, at least 2 and at most 3.
	Tries int `json:"tries,omitempty"`
	// MaxConcurrent bounds the queries in flight to one upstream; past it
	// the next upstream is tried. Default: 1000.
	MaxConcurrent int `json:"max_concurrent,omitempty"`
	// MaxFails is how many failed queries in a row mark an upstream down
	// (passive health) for FailDuration. 0 means 3; -1 turns it off.
	MaxFails int `json:"max_fails,omitempty"`
	// FailDuration is how long a passively failed upstream stays down
	// (a passing active check ends it sooner). Default: 5s.
	FailDuration caddy.Duration `json:"fail_duration,omitempty"`
	// HealthCheck turns on active health checks.
	HealthCheck *HealthCheck `json:"health_check,omitempty"`
	// Disable0x20 turns off the random letter case of questions sent to
	// UDP upstreams (0x20). Default: on, and off by itself for an
	// upstream seen not to keep case.
	Disable0x20 bool `json:"disable_0x20,omitempty"`
	// ProxyProtocol sends each query with a PROXY protocol v2 header
	// naming its client and the address the client reached (dnsdist's
	// useProxyProtocol), for a backend that takes it (unbound's
	// proxy-protocol-port, PowerDNS Recursor's proxy-protocol-from): UDP
	// in each datagram; TCP and TLS (and UDP's fallback to TCP) on a
	// connection of the query's own, which the header opens. Not for
	// https:// upstreams.
	ProxyProtocol bool `json:"proxy_protocol,omitempty"`

	ups     []*upstream
	keys    []string
	weights weights
	policy  policy
	health  healthChecks
	timeout time.Duration
	tries   int
	maxConc int64
	logger  *zap.Logger
	bufPool *sync.Pool
}

// healthChecks are a forward's health settings, with defaults applied,
// as Caddy's reverse proxy has them: passive (its queries' failures) and
// active (a check query of its own).
type healthChecks struct {
	passive passiveHealth
	active  *healthConfig // nil: none
}

// CaddyModule returns the Caddy module information.
func (Forward) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "dns.handlers.forward", New: func() caddy.Module { return new(Forward) }}
}

// Provision sets up the upstreams (shared through a usage pool).
func (f *Forward) Provision(ctx caddy.Context) error {
	f.logger = ctx.Logger()
	registerMetrics(ctx)
	if len(f.To) == 0 {
		return errors.New("forward: no upstream in to")
	}
	f.timeout = time.Duration(f.Timeout)
	if f.timeout <= 0 {
		f.timeout = 2 * time.Second
	}
	f.tries = f.Tries
	if f.tries <= 0 {
		f.tries = min(max(len(f.To), 2), 3)
	}
	f.health.passive = newPassiveHealth(f.MaxFails, time.Duration(f.FailDuration))
	f.maxConc = int64(f.MaxConcurrent)
	if f.maxConc <= 0 {
		f.maxConc = 1000
	}
	var err error
	if f.policy, err = newPolicy(f.Policy); err != nil {
		return err
	}
	if err := f.checkWeights(); err != nil {
		return err
	}
	if f.HealthCheck != nil {
		if f.health.active, err = f.HealthCheck.compile(); err != nil {
			return fmt.Errorf("forward: %w", err)
		}
	}
	tlsCfg, err := f.tlsConfig()
	if err != nil {
		return err
	}
	repl := caddy.NewReplacer()
	for _, to := range f.To {
		spec, err := parseUpstream(repl.ReplaceAll(to, ""))
		if err != nil {
			return fmt.Errorf("forward: %w", err)
		}
		if f.ProxyProtocol && spec.proto == "https" {
			return fmt.Errorf("forward: proxy_protocol: %s is a DoH upstream: a PROXY header goes to udp://, tcp:// and tls:// upstreams", spec)
		}
		spec.proxy = f.ProxyProtocol
		tlsUp := spec.proto == "tls" || spec.proto == "https"
		if tlsUp {
			spec.serverName, spec.caFiles = f.TLSServerName, strings.Join(f.TLSCAFiles, ",")
		}
		var cfg *tls.Config
		if tlsUp {
			cfg = tlsCfg.Clone()
			if cfg.ServerName == "" {
				cfg.ServerName, _, _ = net.SplitHostPort(spec.addr)
			}
		}
		key := spec.key()
		v, _, err := upstreams.LoadOrNew(key, func() (caddy.Destructor, error) { return newUpstream(spec, cfg), nil })
		if err != nil {
			return err
		}
		u := v.(*upstream)
		u.useChecks(f.health.active, f.logger)
		u.useCaseRandomization(!f.Disable0x20)
		f.ups = append(f.ups, u)
		f.keys = append(f.keys, key)
	}
	f.weights.ups = f.ups
	f.bufPool = &sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}
	return nil
}

func (f *Forward) tlsConfig() (*tls.Config, error) {
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         f.TLSServerName,
		NextProtos:         []string{"dot"},
		ClientSessionCache: tls.NewLRUClientSessionCache(64),
	}
	if len(f.TLSCAFiles) > 0 {
		pool := x509.NewCertPool()
		for _, file := range f.TLSCAFiles {
			b, err := os.ReadFile(file)
			if err != nil {
				return nil, fmt.Errorf("forward: tls_ca_files: %w", err)
			}
			if !pool.AppendCertsFromPEM(b) {
				return nil, fmt.Errorf("forward: tls_ca_files: %s holds no PEM certificate", file)
			}
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// Cleanup releases the upstreams.
func (f *Forward) Cleanup() error {
	for _, k := range f.keys {
		_, _ = upstreams.Delete(k)
	}
	return nil
}

// ServeDNS forwards the query. Its frame, and those below it on the way
// to the upstream's socket, are kept small (cold paths in functions of
// their own): see dohhandler's ServeHTTP.
func (f *Forward) ServeDNS(ctx context.Context, r *caddydns.Request, _ caddydns.Next) (caddydns.Response, error) {
	bp := f.bufPool.Get().(*[]byte)
	packed, err := r.Msg.PackBuffer((*bp)[:cap(*bp)])
	if err != nil {
		f.bufPool.Put(bp)
		return caddydns.Response{}, packError(err)
	}
	// the flags a query has no use for (AA, RA, Z, which must be 0, and
	// an rcode) go upstream cleared, whatever the client set: RD, AD and
	// CD are the query's
	packed[2] &^= dnswire.FlagAA
	packed[3] &^= dnswire.FlagRA | dnswire.FlagZ | dnswire.MaskRcode
	if qopt := r.Msg.IsEdns0(); qopt == nil {
		// let the upstream answer more than 512 octets over UDP; the
		// client never sees this OPT (finish removes it)
		packed = dnswire.AppendOPT(packed, caddydns.AdvertisedUDPSize)
	} else if len(qopt.Option) > 0 || qopt.UDPSize() != caddydns.AdvertisedUDPSize {
		// the client's ECS goes on only when an ecs handler says so
		// (r.ECS): by default it is stripped, for the client's privacy;
		// the UDP size is ours (DNS Flag Day 2020's), whatever the
		// client's: no answer in IP fragments
		packed = dnswire.ForNextHop(packed, !r.ECS, caddydns.AdvertisedUDPSize)
	}
	a, err := f.send(ctx, r, packed)
	*bp = packed[:0]
	f.bufPool.Put(bp)
	return caddydns.Response{Wire: a}, err
}

// send tries the upstreams in the policy's order until one answers, and
// notes the one that did in r (the query log).
func (f *Forward) send(ctx context.Context, r *caddydns.Request, packed []byte) (*caddydns.Wire, error) {
	now := time.Now() // the first try's start, too: one clock reading fewer a query
	order := ordered(f.ups, now, f.policy, f.weights, r)
	var lastErr error
	for try := 0; try < f.tries; try++ {
		u := order[try%len(order)]
		if u.outstanding.Add(1) > f.maxConc {
			u.outstanding.Add(-1)
			lastErr = u.busy()
			continue
		}
		start := now
		if try > 0 {
			start = time.Now()
		}
		resp, err := u.query(ctx, r, start.Add(f.timeout), packed)
		u.outstanding.Add(-1)
		if err != nil && ctx.Err() != nil {
			// the client gave up first (a closed connection, a reset
			// stream): that says nothing of the upstream
			u.abandoned()
			lastErr = err
			break
		}
		now = time.Now()
		u.record(err, now.Sub(start), now, f.health.passive)
		if err == nil {
			r.Upstream = u.name
			return resp, nil
		}
		lastErr = err
		f.tryFailed(u, try, err)
	}
	return nil, noAnswer(lastErr)
}

// checkWeights checks Weights against To and the policy, and keeps them.
func (f *Forward) checkWeights() error {
	if len(f.Weights) == 0 {
		return nil
	}
	switch {
	case len(f.Weights) != len(f.To):
		return fmt.Errorf("forward: weights: %d given for %d upstreams (one each, in the order of to)", len(f.Weights), len(f.To))
	case f.Policy == "first":
		return errors.New("forward: weights: policy first takes none (it keeps the order written)")
	}
	for i, w := range f.Weights {
		if w < 1 || w > maxWeight {
			return fmt.Errorf("forward: weights[%d] %d: want 1 to %d", i, w, maxWeight)
		}
		f.weights.w = append(f.weights.w, uint32(w))
	}
	return nil
}

//go:noinline
func packError(err error) error { return fmt.Errorf("forward: packing query: %w", err) }

// noAnswer is forward's error when no upstream answered: its SERVFAIL
// carries the Extended DNS Error No Reachable Authority (RFC 8914 4.23)
// when the last try timed out or found no upstream to ask, Network Error
// (4.24) when it failed otherwise (refused, reset, a TLS failure).
//
//go:noinline
func noAnswer(lastErr error) error {
	if lastErr == nil {
		lastErr = errNoUpstream
	}
	code := dns.ExtendedErrorCodeNetworkError
	if errors.Is(lastErr, context.DeadlineExceeded) || errors.Is(lastErr, os.ErrDeadlineExceeded) ||
		errors.Is(lastErr, errNoUpstream) || errors.Is(lastErr, ErrUpstreamBusy) {
		code = dns.ExtendedErrorCodeNoReachableAuthority
	}
	return &caddydns.ExtendedError{Code: code, Err: fmt.Errorf("forward: no upstream answered: %w", lastErr)}
}

//go:noinline
func (f *Forward) tryFailed(u *upstream, try int, err error) {
	if ce := f.logger.Check(zapcore.DebugLevel, "upstream try failed"); ce != nil {
		ce.Write(zap.String("upstream", u.name), zap.Int("try", try+1), zap.Error(err))
	}
}

// Interface guards
var (
	_ caddydns.Handler      = (*Forward)(nil)
	_ caddy.Provisioner     = (*Forward)(nil)
	_ caddy.CleanerUpper    = (*Forward)(nil)
	_ caddyfile.Unmarshaler = (*Forward)(nil)
)
