package ocspfile

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"os"
	"path"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/dnsfront/dnsfront/internal/atomicfile"
	"github.com/dnsfront/dnsfront/ocspfile/staple"
)

// slots holds the staple of each certificate across config reloads,
// keyed by the SHA-256 of the leaf; slotIndex finds a slot without
// taking a reference (for lookups on the handshake path).
var (
	slots     = caddy.NewUsagePool()
	slotIndex sync.Map // key -> *slot
)

// slot is the staple of one certificate and the record of its refreshes.
type slot struct {
	key    string
	staple atomic.Pointer[staple.Staple]

	mu          sync.Mutex // serialises refreshes; guards the fields below
	lastRefresh time.Time
	lastResult  string
	lastErr     string
	backoff     time.Duration
	writeErr    string // the last write-through failure; "" when it succeeded
	// writtenPath holds the served staple since writtenAt (write_to)
	writtenPath string
	writtenAt   time.Time
	// newest is the latest thisUpdate accepted for the certificate, of a
	// good response or, when revoked is set, of a revoked one: an older
	// response is a replay (rollback protection)
	newest  time.Time
	revoked bool
}

// admit checks a validated response's thisUpdate against the newest one
// seen: a response older than it, or a good one not newer than a revoked
// one, is refused. s.mu is held.
func (s *slot) admit(thisUpdate time.Time, revoked bool) error {
	switch {
	case thisUpdate.Before(s.newest):
		what := "the current staple's"
		if s.revoked {
			what = "the revoked response's"
		}
		return fmt.Errorf("%w: thisUpdate %s is before %s thisUpdate %s", staple.ErrRollback,
			staple.FormatTime(thisUpdate), what, staple.FormatTime(s.newest))
	case s.revoked && !revoked && !thisUpdate.After(s.newest):
		return fmt.Errorf("%w: thisUpdate %s is not after %s, when the certificate was seen revoked", staple.ErrRollback,
			staple.FormatTime(thisUpdate), staple.FormatTime(s.newest))
	}
	return nil
}

// accepted records a response that admit let in.
func (s *slot) accepted(thisUpdate time.Time, revoked bool) {
	if thisUpdate.After(s.newest) {
		s.newest = thisUpdate
	}
	s.revoked = revoked
}

func newSlot(key string) *slot {
	s := &slot{key: key}
	slotIndex.Store(key, s)
	return s
}

func lookupSlot(key string) *slot {
	if v, ok := slotIndex.Load(key); ok {
		return v.(*slot)
	}
	return nil
}

// Destruct implements caddy.Destructor: the last config that used the
// certificate is gone.
func (s *slot) Destruct() error {
	slotIndex.CompareAndDelete(s.key, s)
	return nil
}

// entry is one certificate in one config: its source and its slot.
type entry struct {
	name       string // the certificate file, or the managed subject
	cert       tls.Certificate
	leaf       *x509.Certificate
	issuer     *x509.Certificate
	source     Source
	tags       []string // for connection policies' certificate_selection
	slot       *slot
	mustStaple bool
	labels     [2]string // metric labels: certificate, serial
	// storageHash is certmagic's hash of the PEM chain, which names the
	// certificate's staple in storage (ocsp/<name>-<hash>)
	storageHash string
	// reissue makes the certificate again at renewAt (issued entries)
	reissue *issuer
	renewAt time.Time
	// rescheduled wakes the refresh loop after a refresh it did not run
	// (POST /ocsp/reload), so that a failure starts the back-off at once
	rescheduled chan struct{}
}

// Results of a refresh, as they appear in the admin API and metrics.
const (
	resultUpdated   = "updated"
	resultUnchanged = "unchanged"
	resultFailed    = "failed"
	resultRevoked   = "revoked"
)

const (
	minRefreshDelay = time.Second
	minBackoff      = 2 * time.Second
	maxBackoff      = 10 * time.Minute
)

// serve returns a copy of the certificate carrying the current staple, if
// it is still valid at now.
func (e *entry) serve(now time.Time) *tls.Certificate {
	c := e.cert
	c.OCSPStaple = nil
	if st := e.slot.staple.Load(); st.ValidAt(now) {
		c.OCSPStaple = st.DER
	}
	return &c
}

func (e *entry) reschedule() {
	select {
	case e.rescheduled <- struct{}{}:
	default:
	}
}

// nextRefresh says when the source should be asked again.
func (e *entry) nextRefresh() time.Time {
	e.slot.mu.Lock()
	defer e.slot.mu.Unlock()
	now := time.Now()
	if p, ok := e.source.(Poller); ok {
		return now.Add(p.PollInterval())
	}
	st := e.slot.staple.Load()
	if e.slot.lastResult == resultFailed || e.slot.lastResult == resultRevoked || st == nil || e.slot.writeErr != "" {
		return now.Add(max(e.slot.backoff, minBackoff))
	}
	return st.RefreshAt()
}

// refresh asks the source for a new staple, validates it, and swaps it in.
// When force is false a staple made by the app that has not reached its
// half-life is kept (after a reload it need not be made again). Failures
// keep the previous staple while it is valid, and are logged once per
// change of reason.
func (a *App) refresh(ctx context.Context, e *entry, force bool) {
	s := e.slot
	s.mu.Lock()
	defer s.mu.Unlock()
	defer e.reschedule()
	// whatever happens, the write_to file ends holding the staple served
	defer a.writeThrough(e)
	now := time.Now()
	cur := s.staple.Load()
	_, polled := e.source.(Poller)

	// a fresh staple is kept, unless the last attempt failed: then the
	// back-off retries until the source answers again
	if !force && !polled && s.lastResult != resultFailed {
		if cur.ValidAt(now) && now.Before(cur.RefreshAt()) {
			return
		}
		// a staple another server of the fleet (or this one before a
		// restart) stored may still be fresh
		if st := a.loadStored(ctx, e, now); st != nil {
			s.staple.Store(st)
			s.accepted(st.ThisUpdate(), false)
			s.lastRefresh, s.lastResult, s.lastErr, s.backoff = now, resultUpdated, "", 0
			a.logger.Info("ocsp staple loaded from storage", e.logFields(st)...)
			return
		}
	}

	raw, err := e.source.Obtain(ctx, Subject{Leaf: e.leaf, Issuer: e.issuer})
	var st *staple.Staple
	if err == nil {
		st, err = staple.Validate(raw, e.leaf, e.issuer, now)
	}
	var rev *staple.RevokedError
	switch {
	case err == nil:
		err = s.admit(st.ThisUpdate(), false)
	case errors.As(err, &rev):
		if rb := s.admit(rev.ThisUpdate, true); rb != nil {
			err = rb // an older revoked response: a replay like any other
		} else {
			s.accepted(rev.ThisUpdate, true)
		}
	}
	s.lastRefresh = now
	if err != nil {
		a.refreshFailed(ctx, e, cur, err, now)
		return
	}
	s.backoff = 0
	s.accepted(st.ThisUpdate(), false)
	if cur != nil && bytes.Equal(cur.DER, st.DER) {
		s.lastResult, s.lastErr = resultUnchanged, ""
		refreshes.WithLabelValues(e.labels[0], e.labels[1], resultUnchanged).Inc()
		return
	}
	s.staple.Store(st)
	s.lastResult, s.lastErr = resultUpdated, ""
	refreshes.WithLabelValues(e.labels[0], e.labels[1], resultUpdated).Inc()
	nextUpdate.WithLabelValues(e.labels[0], e.labels[1]).Set(float64(st.NextUpdate().Unix()))
	a.logger.Info("ocsp staple updated", e.logFields(st)...)
	a.emit("ocsp_staple_updated", e, st, nil)
	if !polled {
		a.store(ctx, e, st)
	}
}

func (a *App) refreshFailed(ctx context.Context, e *entry, cur *staple.Staple, err error, now time.Time) {
	s := e.slot
	result := resultFailed
	if errors.Is(err, staple.ErrRevoked) {
		// a revoked certificate's earlier "good" staple must not be served
		result = resultRevoked
		s.staple.Store(nil)
		cur = nil
	} else if cur != nil && !cur.ValidAt(now) {
		s.staple.Store(nil)
		cur = nil
	}
	s.backoff = min(max(2*s.backoff, minBackoff), maxBackoff)
	refreshes.WithLabelValues(e.labels[0], e.labels[1], result).Inc()
	if cur == nil {
		nextUpdate.WithLabelValues(e.labels[0], e.labels[1]).Set(0)
	}
	msg := e.source.String() + ": " + err.Error()
	changed := msg != s.lastErr || result != s.lastResult
	s.lastResult, s.lastErr = result, msg
	level := zapcore.ErrorLevel
	if !changed {
		level = zapcore.DebugLevel // logged once per change of reason
	}
	if c := a.logger.Check(level, "ocsp staple refused"); c != nil {
		fields := []zap.Field{
			zap.String("certificate", e.name),
			zap.String("serial", e.labels[1]),
			zap.String("source", e.source.String()),
			zap.Error(err),
			zap.Bool("serving_previous", cur != nil),
		}
		if cur != nil {
			fields = append(fields, zap.Time("previous_next_update", cur.NextUpdate()))
		}
		c.Write(fields...)
	}
	if e.mustStaple && cur == nil {
		a.logger.Error("must-staple certificate has no valid ocsp staple: clients will refuse it",
			zap.String("certificate", e.name), zap.String("serial", e.labels[1]))
	}
	if changed {
		name := "ocsp_staple_failed"
		if result == resultRevoked {
			name = "ocsp_staple_revoked"
		}
		a.emit(name, e, cur, err)
	}
}

func (e *entry) logFields(st *staple.Staple) []zap.Field {
	return []zap.Field{
		zap.String("certificate", e.name),
		zap.Strings("subjects", subjects(e.leaf)),
		zap.String("serial", e.labels[1]),
		zap.String("source", e.source.String()),
		zap.Time("this_update", st.ThisUpdate()),
		zap.Time("next_update", st.NextUpdate()),
	}
}

func (a *App) emit(name string, e *entry, st *staple.Staple, err error) {
	if a.events == nil || !a.events.ShouldEmit(name) {
		return
	}
	data := map[string]any{
		"certificate": e.name,
		"subjects":    subjects(e.leaf),
		"serial":      e.labels[1],
		"source":      e.source.String(),
	}
	if st != nil {
		data["next_update"] = st.NextUpdate()
	}
	if err != nil {
		data["error"] = err.Error()
	}
	a.events.Emit(a.ctx, name, data)
}

// storageKey is where a generated or fetched staple is kept in Caddy's
// storage, so that a fleet on one storage backend shares it.
func (e *entry) storageKey() string { return path.Join("dnsfront", "ocsp", e.slot.key+".der") }

func (a *App) loadStored(ctx context.Context, e *entry, now time.Time) *staple.Staple {
	stor := a.ctx.Storage()
	if stor == nil {
		return nil
	}
	b, err := stor.Load(ctx, e.storageKey())
	if err != nil {
		return nil
	}
	st, err := staple.Validate(b, e.leaf, e.issuer, now)
	if err != nil || !now.Before(st.HalfLife()) || e.slot.admit(st.ThisUpdate(), false) != nil {
		return nil
	}
	return st
}

// store keeps a made staple in Caddy's storage. A failure is logged; the
// staple is served all the same.
func (a *App) store(ctx context.Context, e *entry, st *staple.Staple) {
	if stor := a.ctx.Storage(); stor != nil {
		if err := stor.Store(ctx, e.storageKey(), st.DER); err != nil {
			a.logger.Error("storing ocsp staple", zap.String("certificate", e.name), zap.String("key", e.storageKey()), zap.Error(err))
		}
	}
}

// writeThrough makes the source's write_to file, if it names one, hold
// the staple being served: after every refresh, so a staple carried over
// a reload or restart, loaded from storage, or kept while the file was
// deleted or write_to changed, reaches the file as a new one does. The
// file is read first and written (atomically) only when it differs. A
// failure (a read-only directory, a full disk) is logged once per change
// of reason and counted; the slot then retries with back-off until a
// write succeeds, which is logged too. e.slot.mu is held.
func (a *App) writeThrough(e *entry) {
	w, ok := e.source.(writeThrougher)
	if !ok || w.writePath() == "" {
		return
	}
	s, path := e.slot, w.writePath()
	st := s.staple.Load()
	if !st.ValidAt(time.Now()) {
		return
	}
	if b, err := os.ReadFile(path); err == nil && bytes.Equal(b, st.DER) {
		if s.writtenPath != path {
			// it already holds it (written before a restart, or by
			// another server): say since when
			if fi, err := os.Stat(path); err == nil {
				s.writtenPath, s.writtenAt = path, fi.ModTime()
			}
		}
		return
	}
	err := atomicfile.Write(path, st.DER, 0o644)
	if err == nil {
		s.writtenPath, s.writtenAt = path, time.Now()
		writes.WithLabelValues(e.labels[0], e.labels[1], "ok").Inc()
		if s.writeErr != "" {
			a.logger.Info("ocsp staple written through to file again", zap.String("certificate", e.name),
				zap.String("file", path))
			s.writeErr, s.backoff = "", 0
		}
		return
	}
	writes.WithLabelValues(e.labels[0], e.labels[1], "failed").Inc()
	s.backoff = min(max(2*s.backoff, minBackoff), maxBackoff)
	level := zapcore.ErrorLevel
	if err.Error() == s.writeErr {
		level = zapcore.DebugLevel // logged once per change of reason
	}
	s.writeErr = err.Error()
	if c := a.logger.Check(level, "writing ocsp staple through to file"); c != nil {
		c.Write(zap.String("certificate", e.name), zap.String("file", path), zap.Error(err),
			zap.Duration("retry_in", s.backoff))
	}
}

// Status is the state of one staple, as GET /ocsp/ reports it.
type Status struct {
	Certificate string     `json:"certificate"`
	Subjects    []string   `json:"subjects"`
	Serial      string     `json:"serial"`
	Source      string     `json:"source"`
	Status      string     `json:"status"`
	MustStaple  bool       `json:"must_staple,omitempty"`
	ThisUpdate  *time.Time `json:"this_update,omitempty"`
	NextUpdate  *time.Time `json:"next_update,omitempty"`
	LastRefresh *time.Time `json:"last_refresh,omitempty"`
	LastResult  string     `json:"last_result,omitempty"`
	LastError   string     `json:"last_error,omitempty"`
	// WriteTo is the file the staple is written through to, if any.
	WriteTo string `json:"write_to,omitempty"`
	// LastWritten is when WriteTo last received the staple served (or,
	// when it already held it, its modification time).
	LastWritten *time.Time `json:"last_written,omitempty"`
	// WriteError is why the staple could not be written through to its
	// file (write_to); empty once a write succeeds.
	WriteError string `json:"write_error,omitempty"`
}

// staple.Staple states in Status.Status.
const (
	StatusGood    = "good"    // a valid staple is served
	StatusNone    = "none"    // no valid staple: none is served
	StatusRevoked = "revoked" // the source says the certificate is revoked
)

func (e *entry) status(now time.Time) Status {
	s := e.slot
	s.mu.Lock()
	defer s.mu.Unlock()
	out := Status{
		Certificate: e.name,
		Subjects:    subjects(e.leaf),
		Serial:      e.labels[1],
		Source:      e.source.String(),
		Status:      StatusNone,
		MustStaple:  e.mustStaple,
		LastResult:  s.lastResult,
		LastError:   s.lastErr,
		WriteError:  s.writeErr,
	}
	if !s.lastRefresh.IsZero() {
		t := s.lastRefresh.UTC()
		out.LastRefresh = &t
	}
	if w, ok := e.source.(writeThrougher); ok && w.writePath() != "" {
		out.WriteTo = w.writePath()
		if s.writtenPath == out.WriteTo {
			t := s.writtenAt.UTC()
			out.LastWritten = &t
		}
	}
	if st := s.staple.Load(); st.ValidAt(now) {
		tu, nu := st.ThisUpdate().UTC(), st.NextUpdate().UTC()
		out.Status, out.ThisUpdate, out.NextUpdate = StatusGood, &tu, &nu
	} else if s.revoked {
		out.Status = StatusRevoked // until a newer good response
	}
	return out
}

func subjects(leaf *x509.Certificate) []string {
	names := append([]string{}, leaf.DNSNames...)
	for _, ip := range leaf.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 && leaf.Subject.CommonName != "" {
		names = append(names, leaf.Subject.CommonName)
	}
	return names
}

func subjectName(leaf *x509.Certificate) string {
	if n := subjects(leaf); len(n) > 0 {
		return n[0]
	}
	return ""
}

var oidTLSFeature = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 1, 24}

// hasMustStaple reports whether leaf carries the TLS Feature extension
// (RFC 7633) with status_request (5).
func hasMustStaple(leaf *x509.Certificate) bool {
	for _, ext := range leaf.Extensions {
		if !ext.Id.Equal(oidTLSFeature) {
			continue
		}
		var features []int
		if _, err := asn1.Unmarshal(ext.Value, &features); err != nil {
			return false
		}
		for _, f := range features {
			if f == 5 {
				return true
			}
		}
	}
	return false
}
