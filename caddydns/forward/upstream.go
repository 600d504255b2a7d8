package forward

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/caddydns/dnswire"
)

// upstreams are shared by every forward handler of every config that
// names the same upstream, so health and connections survive reloads.
var upstreams = caddy.NewUsagePool()

// Errors of an exchange with an upstream.
var (
	ErrUpstreamBusy   = errors.New("upstream has too many queries in flight")
	ErrUpstreamClosed = errors.New("upstream connection closed")
	errNoUpstream     = errors.New("no upstream")
	errBadQuery       = errors.New("query without a question")
	// errCaseMismatch: the answer did not echo the 0x20 case of the
	// question
	errCaseMismatch = errors.New("answer does not keep the letter case of the question (0x20)")
	// errQuestionless: an error answer without a question came over UDP
	// with 0x20 on, where its lack of a question leaves the letter case
	// unchecked; it is asked again over TCP
	errQuestionless = errors.New("error answer without a question over UDP")
)

// upstream is one upstream server with its clients and health.
type upstream struct {
	spec    upstreamSpec
	name    string
	hashKey uint64        // its name's hash, for the hash policy
	udp     *udpClient    // nil unless proto is udp
	stream  *streamClient // tcp or tls; for udp, the TC=1 fallback
	doh     *dohClient    // nil unless proto is https

	outstanding atomic.Int64

	// passive health: consecutive failures of real queries
	fails     atomic.Int32
	downUntil atomic.Int64 // unix nanos
	// active health
	activeDown     atomic.Bool
	checks         atomic.Pointer[healthConfig] // nil: no active checks
	checkerMu      sync.Mutex
	checkerRunning bool
	checkerKick    chan struct{}
	checkerStop    chan struct{}
	checkerDone    chan struct{}
	healthLogger   atomic.Pointer[zap.Logger]
	// upAgain sets the healthy gauge back when a passive mark-down ends
	upAgain *time.Timer

	// 0x20 (UDP): the question's letters in random case, echoed exactly
	// by the answer or the answer is dropped
	caseOff      atomic.Bool  // the config turned it off
	caseOffUntil atomic.Int64 // unix nanos: seen not to keep case, off until then
	caseMisses   atomic.Int32 // answers in a row that did not keep case

	failLogged    atomic.Int64 // unix nanos of the last failure logged
	failsUnlogged atomic.Int64

	queries    prometheus.Counter
	errors     prometheus.Counter
	duration   prometheus.Observer
	healthy    prometheus.Gauge
	forged     forgedCounters
	randomized prometheus.Gauge
}

func newUpstream(spec upstreamSpec, tlsCfg *tls.Config) *upstream {
	name := spec.String()
	u := &upstream{
		spec:        spec,
		name:        name,
		hashKey:     fnv64Lower(name),
		checkerKick: make(chan struct{}, 1),
		checkerStop: make(chan struct{}),
		checkerDone: make(chan struct{}),
		queries:     upstreamQueries.WithLabelValues(name),
		errors:      upstreamErrors.WithLabelValues(name),
		duration:    upstreamDuration.WithLabelValues(name),
		healthy:     upstreamHealthy.WithLabelValues(name),
		randomized:  upstreamCaseRandomized.WithLabelValues(name),
	}
	for i := range u.forged {
		u.forged[i] = upstreamForged.WithLabelValues(name, forgedReasonNames[i])
	}
	u.healthy.Set(1)
	u.upAgain = time.AfterFunc(time.Hour, func() { u.updateGauge(time.Now()) })
	u.upAgain.Stop()
	switch spec.proto {
	case "udp":
		u.randomized.Set(1)
		u.udp = newUDPClient(spec.addr, &u.forged)
		u.stream = newStreamClient(spec.addr, nil)
	case "tcp":
		u.stream = newStreamClient(spec.addr, nil)
	case "tls":
		u.stream = newStreamClient(spec.addr, tlsCfg)
	case "https":
		u.doh = newDoHClient(spec.url(), tlsCfg)
	}
	// what a Tap is told of the far end: its address, and the transport
	addr, _ := netip.ParseAddrPort(spec.addr) // invalid for a host name
	if u.doh != nil {
		u.doh.hop = caddydns.Hop{Addr: addr, Transport: spec.proto}
		return u
	}
	u.stream.hop = caddydns.Hop{Addr: addr, Transport: spec.proto}
	if u.udp != nil {
		u.udp.hop, u.stream.hop.Transport = u.stream.hop, "tcp"
	}
	return u
}

// Destruct implements caddy.Destructor: the last user is gone.
func (u *upstream) Destruct() error {
	u.upAgain.Stop()
	close(u.checkerStop)
	u.checkerMu.Lock()
	running := u.checkerRunning
	u.checkerMu.Unlock()
	if running {
		<-u.checkerDone
	}
	if u.udp != nil {
		u.udp.close()
	}
	if u.doh != nil {
		u.doh.close()
		return nil
	}
	u.stream.close()
	return nil
}

// busy is the error of a try skipped because u has max_concurrent
// queries in flight.
//
//go:noinline
func (u *upstream) busy() error { return fmt.Errorf("%s: %w", u.name, ErrUpstreamBusy) }

// isHealthy reports whether queries should be sent to u.
func (u *upstream) isHealthy(now time.Time) bool {
	return !u.activeDown.Load() && now.UnixNano() >= u.downUntil.Load()
}

// query sends packed, under an ID of the client's choosing (its own ID
// is overwritten), and returns the answer, or an error once deadline
// passes. Over UDP the question goes in random letter case (0x20) when
// that is on, and a truncated answer, or one that does not keep the
// case, is asked again over TCP. r (nil for a health check) is the
// client's query, whose Tap sees each message.
func (u *upstream) query(ctx context.Context, r *caddydns.Request, deadline time.Time, packed []byte) (*caddydns.Wire, error) {
	q := dnswire.Question(packed)
	if q == nil {
		return nil, errBadQuery
	}
	if u.doh != nil {
		return u.doh.exchange(ctx, r, deadline, q, packed)
	}
	var hdr []byte // the PROXY header, with proxy_protocol
	if u.spec.proxy {
		var err error
		if hdr, err = proxyHeader(r); err != nil {
			return nil, fmt.Errorf("%s: PROXY header: %w", u.name, err)
		}
	}
	if u.udp == nil {
		return u.stream.exchangeWith(ctx, r, deadline, q, packed, hdr)
	}
	var orig [255 + 4]byte // the question in its own case (a name is at most 255 octets)
	copy(orig[:], q)
	exact := u.randomizeCase(q)
	a, err := u.udp.exchange(ctx, r, deadline, q, packed, hdr, exact)
	if exact {
		// the question's own case again: in the answer, which echoed
		// the random case octet for octet (so that its names decode in
		// the client's case: the JSON API and handlers that decode it
		// show them), and for a query asked again over TCP
		if err == nil {
			dnswire.RestoreCase(a.Bytes(), a.Layout(), q, orig[:len(q)])
		}
		copy(q, orig[:len(q)])
	}
	switch {
	case err == nil:
		if exact && u.caseMisses.Load() != 0 {
			u.caseMisses.Store(0)
		}
		if a.Truncated() {
			a.Release()
			a, err = u.stream.exchangeWith(ctx, r, deadline, q, packed, hdr)
		}
	case errors.Is(err, errCaseMismatch):
		// forged, or an upstream that does not keep case: ask over TCP,
		// where no off-path answer gets in (unbound's caps fallback)
		u.caseMissed()
		a, err = u.stream.exchangeWith(ctx, r, deadline, q, packed, hdr)
	case errors.Is(err, errQuestionless):
		// an error without a question: nothing for 0x20 to check, so an
		// off-path forger would need only the port and ID; TCP confirms it
		a, err = u.stream.exchangeWith(ctx, r, deadline, q, packed, hdr)
	}
	return a, err
}

// tapQuery and tapResponse tell r's Tap, if any, of a message to or from
// an upstream, as it went on the wire; r is nil for a health check.
func tapQuery(r *caddydns.Request, to caddydns.Hop, packed []byte) {
	if r != nil && r.Tap != nil {
		r.Tap.ForwarderQuery(r, to, packed)
	}
}

func tapResponse(r *caddydns.Request, from caddydns.Hop, a *caddydns.Wire) {
	if r != nil && r.Tap != nil {
		r.Tap.ForwarderResponse(r, from, a.Bytes())
	}
}

// abandoned notes a query whose client gave up before the upstream
// answered: sent, but neither a success nor a failure of the upstream.
func (u *upstream) abandoned() { u.queries.Inc() }

// record notes the outcome of a real query for passive health checking:
// only the upstream's own failures count (its timeout against the
// forward's deadline, a refused or broken connection, no usable answer).
// It took d, and ended at now.
func (u *upstream) record(err error, d time.Duration, now time.Time, ph passiveHealth) {
	u.queries.Inc()
	if err == nil {
		u.duration.Observe(d.Seconds())
		u.fails.Store(0)
		u.updateGauge(now)
		return
	}
	u.errors.Inc()
	u.failureSeen(err)
	if ph.maxFails > 0 && int(u.fails.Add(1)) >= ph.maxFails {
		u.fails.Store(0)
		u.downUntil.Store(time.Now().Add(ph.failDuration).UnixNano())
		if l := u.healthLogger.Load(); l != nil {
			l.Warn("upstream marked down after failed queries", zap.String("upstream", u.name),
				zap.Int("failures", ph.maxFails), zap.Stringer("for", ph.failDuration), zap.Error(err))
		}
		u.healthy.Set(0)
		// the gauge says what the forward does: up again once the
		// mark-down ends (a later mark-down moves this on)
		u.upAgain.Reset(ph.failDuration)
	}
}

// failLogEvery bounds how often an upstream's failed queries are logged
// at warn level (the count is in dnsfront_upstream_errors_total).
const failLogEvery = 10 * time.Second

// failureSeen logs a failed query to u at warn level: the first one, and
// then at most one every failLogEvery, with how many failed between.
func (u *upstream) failureSeen(err error) {
	u.failsUnlogged.Add(1)
	now := time.Now().UnixNano()
	last := u.failLogged.Load()
	if now-last < int64(failLogEvery) || !u.failLogged.CompareAndSwap(last, now) {
		return
	}
	if l := u.healthLogger.Load(); l != nil {
		l.Warn("upstream query failed", zap.String("upstream", u.name), zap.Error(err),
			zap.Int64("failures_since_last_logged", u.failsUnlogged.Swap(0)))
	}
}

func (u *upstream) updateGauge(now time.Time) {
	if u.isHealthy(now) {
		u.healthy.Set(1)
	} else {
		u.healthy.Set(0)
	}
}
