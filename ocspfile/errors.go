package ocspfile

import "errors"

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
)
