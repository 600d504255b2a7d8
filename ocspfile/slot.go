package ocspfile

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap/zapcore"

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
	// maker made the staple served, when the app made it here or another
	// instance of the fleet did (nil for a file's)
	maker *Maker
	// storedSeen is a response in storage that was refused, so that it
	// is logged once (fleet.go)
	storedSeen []byte
	// loadErr is why storage could not be read at the last look ("" when
	// it could), so that an unreachable storage is logged once
	loadErr string
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

// failed notes a failure of a refresh or of a write-through: the next
// try waits twice as long as the last (minBackoff to maxBackoff). It
// returns the level to log the failure at: error when its reason has
// changed, debug when it is the one logged last (logged once per change
// of reason). s.mu is held.
func (s *slot) failed(changed bool) zapcore.Level {
	s.backoff = min(max(2*s.backoff, minBackoff), maxBackoff)
	if changed {
		return zapcore.ErrorLevel
	}
	return zapcore.DebugLevel
}

// Destruct implements caddy.Destructor: the last config that used the
// certificate is gone.
func (s *slot) Destruct() error {
	slotIndex.CompareAndDelete(s.key, s)
	return nil
}
