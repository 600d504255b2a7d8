package staple

import (
	"cmp"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"golang.org/x/crypto/ocsp"
)

// Defaults for generated responses.
const (
	DefaultValidity = 7 * 24 * time.Hour
	DefaultBackdate = time.Hour
)

// GenerateOptions shape a generated response.
type GenerateOptions struct {
	// Validity is nextUpdate - now; DefaultValidity when zero.
	Validity time.Duration
	// Backdate moves thisUpdate into the past to absorb clock skew;
	// DefaultBackdate when zero, none when negative.
	Backdate time.Duration
	// Now is the generation time; time.Now when zero.
	Now time.Time
	// Hash is the CertID's hash algorithm: crypto.SHA1 (the default when
	// zero; what RFC 5019 clients expect) or crypto.SHA256 (what
	// dnsdist's generator writes; `openssl ocsp -sha256` looks for it).
	Hash crypto.Hash
}

// ParseCertIDHash reads a CertID hash name as the configuration and the
// command line give it: "sha1" (also "") or "sha256".
func ParseCertIDHash(name string) (crypto.Hash, error) {
	switch name {
	case "", "sha1":
		return crypto.SHA1, nil
	case "sha256":
		return crypto.SHA256, nil
	}
	return 0, fmt.Errorf("CertID hash %q: want sha1 or sha256", name)
}

// Generate makes a good-status OCSP response for leaf, signed directly by
// its issuer with key (RSA or ECDSA), the way dnsdist's
// generateOCSPResponse does. The response's nextUpdate never passes the
// leaf's NotAfter, so it always passes Validate.
func Generate(leaf, issuer *x509.Certificate, key crypto.Signer, opts GenerateOptions) ([]byte, error) {
	if leaf == nil || issuer == nil || key == nil {
		return nil, errors.New("generating ocsp response: certificate, issuer and key are required")
	}
	switch key.Public().(type) {
	case *rsa.PublicKey, *ecdsa.PublicKey:
	default:
		return nil, fmt.Errorf("generating ocsp response: CA key type %T is not supported (RSA or ECDSA only)", key.Public())
	}
	if !KeyMatches(key, issuer) {
		return nil, fmt.Errorf("generating ocsp response: CA key does not belong to CA certificate %q", issuer.Subject.String())
	}
	if err := leaf.CheckSignatureFrom(issuer); err != nil {
		return nil, fmt.Errorf("generating ocsp response: certificate %s (%q) was not issued by CA %q: %w",
			FormatSerial(leaf.SerialNumber), leaf.Subject.String(), issuer.Subject.String(), err)
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	validity := opts.Validity
	if validity <= 0 {
		validity = DefaultValidity
	}
	backdate := opts.Backdate
	if backdate == 0 {
		backdate = DefaultBackdate
	} else if backdate < 0 {
		backdate = 0
	}
	next := now.Add(validity)
	if next.After(leaf.NotAfter) {
		next = leaf.NotAfter
	}
	if !next.After(now) {
		return nil, fmt.Errorf("generating ocsp response: certificate %s expired at %s",
			FormatSerial(leaf.SerialNumber), FormatTime(leaf.NotAfter))
	}
	der, err := ocsp.CreateResponse(issuer, issuer, ocsp.Response{
		Status:       ocsp.Good,
		SerialNumber: leaf.SerialNumber,
		ThisUpdate:   now.Add(-backdate).UTC().Truncate(time.Second),
		NextUpdate:   next.UTC().Truncate(time.Second),
		IssuerHash:   cmp.Or(opts.Hash, crypto.SHA1),
	}, key)
	if err != nil {
		return nil, fmt.Errorf("generating ocsp response: %w", err)
	}
	return der, nil
}

// KeyMatches reports whether key is the private key of cert.
func KeyMatches(key crypto.Signer, cert *x509.Certificate) bool {
	k, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(cert.PublicKey)
}
