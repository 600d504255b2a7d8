package staple

import (
	"errors"
	"fmt"
	"time"
)

// Reasons a staple is refused. Each error returned by Validate wraps one of
// these, with the values that did not match.
var (
	ErrEmpty               = errors.New("ocsp response is empty")
	ErrMalformed           = errors.New("malformed ocsp response")
	ErrUnsuccessful        = errors.New("ocsp response is not successful")
	ErrWrongCertificate    = errors.New("ocsp response is for another certificate")
	ErrWrongIssuer         = errors.New("ocsp response is for another issuer")
	ErrBadSignature        = errors.New("ocsp response signature is not valid")
	ErrRevoked             = errors.New("certificate is revoked")
	ErrUnknownStatus       = errors.New("certificate status is unknown")
	ErrNotYetValid         = errors.New("ocsp response is not yet valid")
	ErrNoNextUpdate        = errors.New("ocsp response has no nextUpdate")
	ErrExpired             = errors.New("ocsp response has expired")
	ErrOutlivesCertificate = errors.New("ocsp response outlives the certificate")
	// ErrRollback is the app's, not Validate's: a response older (by
	// thisUpdate) than one already accepted for the certificate, or not
	// newer than the revoked one last seen: a replay.
	ErrRollback = errors.New("ocsp response is older than one already seen")
)

// RevokedError is Validate's error for a response that says the
// certificate is revoked; it wraps ErrRevoked.
type RevokedError struct {
	Serial     string
	RevokedAt  time.Time
	Reason     int
	ThisUpdate time.Time // of the response
}

func (e *RevokedError) Error() string {
	return fmt.Sprintf("%v: certificate %s revoked at %s (reason %d)", ErrRevoked, e.Serial,
		e.RevokedAt.UTC().Format(time.RFC3339), e.Reason)
}

func (e *RevokedError) Unwrap() error { return ErrRevoked }
