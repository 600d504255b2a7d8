package ocspfile

import (
	"bytes"
	"context"
	"errors"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/dnsfront/dnsfront/internal/atomicfile"
	"github.com/dnsfront/dnsfront/ocspfile/staple"
)

// refresh asks the source for a new staple, validates it, and swaps it in.
// Unless forced (forced is when a new staple was asked for, zero when
// none was), a staple made by the app that has not reached its half-life
// is kept (after a reload it need not be made again). Failures keep the
// previous staple while it is valid, and are logged once per change of
// reason. A staple the app makes (not a file's) is made once per fleet:
// under the certificate's storage lock, and taken from storage when
// another instance stored a fresh one or, when forced, one made since
// (fleet.go).
func (a *App) refresh(ctx context.Context, e *entry, forced time.Time) {
	s := e.slot
	s.mu.Lock()
	defer s.mu.Unlock()
	defer e.reschedule()
	// whatever happens, the write_to file ends holding the staple served
	defer a.writeThrough(e)
	force := !forced.IsZero()
	asked := forced
	if !force {
		asked = time.Now()
	}
	cur := s.staple.Load()
	_, polled := e.source.(Poller)

	// a fresh staple is kept, unless the last attempt failed: then the
	// back-off retries until the source answers again
	if !force && !polled && s.lastResult != resultFailed && cur.ValidAt(asked) && asked.Before(cur.RefreshAt()) {
		return
	}
	if !polled {
		defer a.lockStaple(ctx, e)()
		if ctx.Err() != nil {
			return // stopping while waiting for the lock
		}
		now := time.Now()
		if in, ok := a.loadStored(ctx, e, now); ok {
			if force && in.rec != nil && in.rec.MadeAt.After(asked) {
				a.take(e, in, now, "ocsp staple taken from storage (made by the fleet since it was asked for)")
				return
			}
			if !force && now.Before(in.freshUntil()) {
				a.take(e, in, now, "ocsp staple loaded from storage")
				return
			}
		}
		if force && s.maker != nil && s.maker.At.After(asked) {
			return // the one served was made since (taken by pickUp)
		}
		cur = s.staple.Load() // a stored revoked response drops it
	}

	now := time.Now()
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
			if !polled {
				// the fleet learns of the revocation from storage
				a.store(ctx, e, raw)
			}
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
	s.lastResult, s.lastErr = resultUpdated, ""
	s.maker = nil
	if !polled {
		a.store(ctx, e, st.DER)
	}
	a.swapIn(e, st, resultUpdated, "ocsp staple updated")
}

// swapIn serves st from now on, and says so (metrics, log, event).
// e.slot.mu is held.
func (a *App) swapIn(e *entry, st *staple.Staple, result, msg string) {
	e.slot.staple.Store(st)
	refreshes.WithLabelValues(e.labels[0], e.labels[1], result).Inc()
	nextUpdate.WithLabelValues(e.labels[0], e.labels[1]).Set(float64(st.NextUpdate().Unix()))
	fields := e.logFields(st)
	if m := e.slot.maker; m != nil {
		fields = append(fields, zap.String("made_by", m.Host+" "+m.Instance), zap.Time("made_at", m.At))
	}
	a.logger.Info(msg, fields...)
	a.emit("ocsp_staple_updated", e, st, nil)
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
	refreshes.WithLabelValues(e.labels[0], e.labels[1], result).Inc()
	if cur == nil {
		nextUpdate.WithLabelValues(e.labels[0], e.labels[1]).Set(0)
	}
	msg := e.source.String() + ": " + err.Error()
	changed := msg != s.lastErr || result != s.lastResult
	s.lastResult, s.lastErr = result, msg
	level := s.failed(changed)
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
	level := s.failed(err.Error() != s.writeErr)
	s.writeErr = err.Error()
	if c := a.logger.Check(level, "writing ocsp staple through to file"); c != nil {
		c.Write(zap.String("certificate", e.name), zap.String("file", path), zap.Error(err),
			zap.Duration("retry_in", s.backoff))
	}
}
