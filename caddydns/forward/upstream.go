package forward

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"
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
)

// upstreamSpec says what an upstream is; it is the key of the pool.
type upstreamSpec struct {
	proto      string // udp, tcp, tls
	addr       string // host:port
	serverName string // tls
	caFiles    string // tls: comma-joined PEM files, "" = system roots
}

func (s upstreamSpec) key() string {
	return s.proto + "://" + s.addr + "|" + s.serverName + "|" + s.caFiles
}

// String is the upstream's name in metrics and logs.
func (s upstreamSpec) String() string { return s.proto + "://" + s.addr }

// parseUpstream reads "udp://host:port", "tcp://...", "tls://..." or a
// bare "host[:port]" (UDP). Ports default to 53, or 853 for tls.
func parseUpstream(s string) (upstreamSpec, error) {
	spec := upstreamSpec{proto: "udp"}
	rest := s
	if i := strings.Index(s, "://"); i >= 0 {
		u, err := url.Parse(s)
		if err != nil {
			return spec, fmt.Errorf("upstream %q: %w", s, err)
		}
		if u.Path != "" || u.RawQuery != "" || u.User != nil {
			return spec, fmt.Errorf("upstream %q: only scheme://host:port is allowed", s)
		}
		spec.proto, rest = u.Scheme, u.Host
	}
	port := "53"
	switch spec.proto {
	case "udp", "tcp", "dns":
		if spec.proto == "dns" {
			spec.proto = "udp"
		}
	case "tls":
		port = "853"
	default:
		return spec, fmt.Errorf("upstream %q: unsupported scheme %q (udp, tcp or tls)", s, spec.proto)
	}
	host, p, err := net.SplitHostPort(rest)
	if err != nil {
		host, p = strings.Trim(rest, "[]"), port
	}
	if host == "" {
		return spec, fmt.Errorf("upstream %q: no host", s)
	}
	spec.addr = net.JoinHostPort(host, p)
	return spec, nil
}

// upstream is one upstream server with its clients and health.
type upstream struct {
	spec   upstreamSpec
	name   string
	udp    *udpClient    // nil unless proto is udp
	stream *streamClient // tcp or tls; for udp, the TC=1 fallback

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

// caseMissLimit is how many answers in a row that do not keep the 0x20
// case (each then asked again over TCP, and answered there) turn 0x20
// off for an upstream, for caseRetry; an answer that keeps it resets the
// count. Forged answers cannot do it: each must hit a batch's random
// port with the right random ID.
const (
	caseMissLimit = 3
	caseRetry     = time.Hour
)

func newUpstream(spec upstreamSpec, tlsCfg *tls.Config) *upstream {
	name := spec.String()
	u := &upstream{
		spec:        spec,
		name:        name,
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
	u.upAgain = time.AfterFunc(time.Hour, u.updateGauge)
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

// query sends packed (with the ID to use) and returns the answer, or an
// error once deadline passes; over UDP a truncated answer is asked again
// over TCP.
func (u *upstream) query(ctx context.Context, deadline time.Time, packed []byte) (*caddydns.Wire, error) {
	q := dnswire.Question(packed)
	if q == nil {
		return nil, errBadQuery
	}
	if u.udp == nil {
		return u.stream.exchange(ctx, deadline, q, packed)
	}
	exact := u.randomizeCase(q)
	a, err := u.udp.exchange(ctx, deadline, q, packed, exact)
	switch {
	case err == nil:
		if exact && u.caseMisses.Load() != 0 {
			u.caseMisses.Store(0)
		}
		if a.Truncated() {
			a.Release()
			a, err = u.stream.exchange(ctx, deadline, q, packed)
		}
	case errors.Is(err, errCaseMismatch):
		// forged, or an upstream that does not keep case: ask over TCP,
		// where no off-path answer gets in (unbound's caps fallback)
		u.caseMissed()
		a, err = u.stream.exchange(ctx, deadline, q, packed)
	}
	return a, err
}

// randomizeCase puts the letters of the packed question q in random
// case (0x20, draft-vixie-dnsext-dns0x20) unless it is off for u, and
// reports whether it did. The random bits come from a ChaCha8 generator
// seeded by the system: unpredictable off the path. The client gets its
// own case back (finishWire writes its question).
func (u *upstream) randomizeCase(q []byte) bool {
	if u.caseOff.Load() {
		return false
	}
	if until := u.caseOffUntil.Load(); until != 0 {
		if time.Now().UnixNano() < until {
			return false
		}
		u.caseOffUntil.Store(0) // try again
		u.randomized.Set(1)
	}
	var bits uint64
	for i, c := range q[:len(q)-4] {
		if i%64 == 0 {
			bits = rand.Uint64()
		}
		if l := c | 0x20; l >= 'a' && l <= 'z' {
			q[i] = c&^0x20 | byte(bits&1)<<5
			bits >>= 1
		}
	}
	return true
}

// caseMissed notes an answer that did not keep the 0x20 case; after
// caseMissLimit in a row 0x20 is off for u for caseRetry.
func (u *upstream) caseMissed() {
	if u.caseMisses.Add(1) < caseMissLimit {
		return
	}
	u.caseMisses.Store(0)
	if u.caseOffUntil.Swap(time.Now().Add(caseRetry).UnixNano()) == 0 {
		u.randomized.Set(0)
		if l := u.healthLogger.Load(); l != nil {
			l.Warn("upstream does not keep the letter case of questions: 0x20 off for it", zap.String("upstream", u.name),
				zap.Int("answers_in_a_row", caseMissLimit), zap.Stringer("retry_in", caseRetry))
		}
	}
}

// useCaseRandomization applies the config's 0x20 setting (the latest
// config to load the upstream wins).
func (u *upstream) useCaseRandomization(on bool) {
	u.caseOff.Store(!on)
	if u.udp != nil {
		if on && u.caseOffUntil.Load() == 0 {
			u.randomized.Set(1)
		} else {
			u.randomized.Set(0)
		}
	}
}

// abandoned notes a query whose client gave up before the upstream
// answered: sent, but neither a success nor a failure of the upstream.
func (u *upstream) abandoned() { u.queries.Inc() }

// record notes the outcome of a real query for passive health checking:
// only the upstream's own failures count (its timeout against the
// forward's deadline, a refused or broken connection, no usable answer).
func (u *upstream) record(err error, d time.Duration, maxFails int, failDuration time.Duration) {
	u.queries.Inc()
	if err == nil {
		u.duration.Observe(d.Seconds())
		u.fails.Store(0)
		u.updateGauge()
		return
	}
	u.errors.Inc()
	u.failureSeen(err)
	if maxFails > 0 && int(u.fails.Add(1)) >= maxFails {
		u.fails.Store(0)
		u.downUntil.Store(time.Now().Add(failDuration).UnixNano())
		if l := u.healthLogger.Load(); l != nil {
			l.Warn("upstream marked down after failed queries", zap.String("upstream", u.name),
				zap.Int("failures", maxFails), zap.Stringer("for", failDuration), zap.Error(err))
		}
		u.healthy.Set(0)
		// the gauge says what the forward does: up again once the
		// mark-down ends (a later mark-down moves this on)
		u.upAgain.Reset(failDuration)
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

func (u *upstream) updateGauge() {
	if u.isHealthy(time.Now()) {
		u.healthy.Set(1)
	} else {
		u.healthy.Set(0)
	}
}

// call is one query waiting for its answer. Calls are pooled with their
// channel and timer, so waiting allocates nothing.
type call struct {
	question []byte              // as packed in the query; read under the pending map's lock
	exact    bool                // the answer must echo the question's letter case (0x20)
	resp     chan *caddydns.Wire // buffered 1; nil is sent when the connection dies
	err      error               // why, when the connection says (set before nil is sent)
	timer    *time.Timer         // stopped while the call is pooled
}

var callPool = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &call{resp: make(chan *caddydns.Wire, 1), timer: t}
}}

func newCall(question []byte) *call {
	cl := callPool.Get().(*call)
	cl.question = question
	return cl
}

// release returns cl to the pool. The caller has taken it out of its
// pending map, under the map's lock, so nothing sends on it any more; an
// answer that came as the wait ended is dropped.
func (cl *call) release() {
	select {
	case a := <-cl.resp:
		if a != nil {
			a.Release()
		}
	default:
	}
	cl.question, cl.err, cl.exact = nil, nil, false
	callPool.Put(cl)
}

// wait blocks until the answer comes (nil: the connection closed first),
// deadline passes, or ctx ends. The timer is a pooled one, not a context
// of its own: a context per try cost a tenth of a forwarded DoH request's
// CPU (its timer, its Done channel and the parent's, and its registration
// as the request context's child).
func (cl *call) wait(ctx context.Context, deadline time.Time) (*caddydns.Wire, error) {
	cl.timer.Reset(time.Until(deadline))
	select {
	case a := <-cl.resp:
		cl.timer.Stop()
		return a, nil
	case <-cl.timer.C:
		return nil, context.DeadlineExceeded
	case <-ctx.Done():
		cl.timer.Stop()
		return nil, ctx.Err()
	}
}

// Why an answer read from an upstream was not handed to a query: not an
// answer to any query waiting there, or (forged, or from an upstream
// that does not keep case) not to its question.
const (
	forgedID       = iota // no query waits under its ID (also an answer that came after its query gave up)
	forgedQuestion        // the ID's query asked another question
	forgedCase            // the question differs only in the letter case 0x20 chose
	forgedReasons
)

var forgedReasonNames = [forgedReasons]string{"id", "question", "case"}

// forgedCounters count the answers of one upstream that were not handed
// over, by reason.
type forgedCounters [forgedReasons]prometheus.Counter

func (f *forgedCounters) count(reason int) {
	if f != nil {
		f[reason].Inc()
	}
}

// deliver hands msg, an answer read by a connection's reader, to the
// query in pending (guarded by mu) that it answers, as a copy: the
// reader's buffer is reused. An answer that is not well formed, or to no
// pending query, or not to that query's question, is dropped (and
// counted in forged) and the query goes on waiting for the real one
// (anti-spoofing).
func deliver(mu *sync.Mutex, pending map[uint16]*call, msg []byte, forged *forgedCounters) {
	l, ok := answerLayout(msg)
	if !ok {
		return
	}
	mu.Lock()
	reason := handOver(pending, msg, &l)
	mu.Unlock()
	if reason >= 0 {
		forged.count(reason)
	}
}

// deliverAll delivers msgs, read together, under one hold of the lock.
func deliverAll(mu *sync.Mutex, pending map[uint16]*call, msgs [][]byte, forged *forgedCounters) {
	var ls [readBatch]dnswire.Layout
	var oks [readBatch]bool
	var reasons [readBatch]int
	n := min(len(msgs), readBatch)
	for i, msg := range msgs[:n] {
		ls[i], oks[i] = answerLayout(msg)
	}
	mu.Lock()
	for i, msg := range msgs[:n] {
		reasons[i] = -1
		if oks[i] {
			reasons[i] = handOver(pending, msg, &ls[i])
		}
	}
	mu.Unlock()
	for _, r := range reasons[:n] {
		if r >= 0 {
			forged.count(r)
		}
	}
	for _, msg := range msgs[n:] {
		deliver(mu, pending, msg, forged)
	}
}

// answerLayout lays out msg if it is a well-formed response.
func answerLayout(msg []byte) (dnswire.Layout, bool) {
	if len(msg) < dnswire.HeaderLen || msg[2]&dnswire.FlagQR == 0 {
		return dnswire.Layout{}, false
	}
	return dnswire.Walk(msg)
}

// handOver gives msg to the pending query it answers and returns -1, or
// says why it does not answer one; the caller holds pending's lock. An
// answer that differs from its query's 0x20 question only in case ends
// that query with errCaseMismatch (it goes again over TCP): a forged
// answer, or an upstream that does not keep case.
func handOver(pending map[uint16]*call, msg []byte, l *dnswire.Layout) int {
	id := uint16(msg[0])<<8 | uint16(msg[1])
	cl := pending[id]
	if cl == nil {
		return forgedID
	}
	switch dnswire.Answers(msg, l, cl.question) {
	case dnswire.SameQuestion:
	case dnswire.SameButCase:
		if cl.exact {
			delete(pending, id)
			cl.err = errCaseMismatch
			cl.resp <- nil
			return forgedCase
		}
	default:
		return forgedQuestion
	}
	delete(pending, id)
	cl.resp <- caddydns.NewWire(msg, l)
	return -1
}

// queryID returns a random message ID (ChaCha8, unpredictable to an
// off-path attacker).
func queryID() uint16 { return uint16(rand.Uint32()) }

// reserveID registers cl under a random ID that no query in pending
// uses; the caller holds pending's lock. (Queries in flight are bounded
// by max_concurrent, far below 65536.)
func reserveID(pending map[uint16]*call, cl *call) uint16 {
	for {
		id := queryID()
		if _, busy := pending[id]; !busy {
			pending[id] = cl
			return id
		}
	}
}
