package forward

import (
	"math/rand/v2"
	"time"

	"go.uber.org/zap"
)

// caseMissLimit is how many answers in a row that do not keep the 0x20
// case (each then asked again over TCP, and answered there) turn 0x20
// off for an upstream, for caseRetry; an answer that keeps it resets the
// count. Forged answers cannot do it: each must hit a batch's random
// port with the right random ID.
const (
	caseMissLimit = 3
	caseRetry     = time.Hour
)

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
