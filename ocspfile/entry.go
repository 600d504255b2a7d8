package ocspfile

import (
	"crypto/tls"
	"crypto/x509"
	"time"
)

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
	// a response another instance (or a hand) put in storage failed
	// validation; the staple served stays
	resultRefusedStored = "refused_stored"
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
