// Package staple is the core of dnsfront's OCSP stapling, free of Caddy:
// it decodes OCSP responses and validates them in full (RFC 6960) against
// the certificate they are served with (Validate), generates them from a
// CA's key (Generate), fetches them from responders (FetchResponse),
// reads their CertIDs, and names what is wrong with one by an error value
// (ErrExpired, RevokedError, ...). The `ocsp` app (package ocspfile), its
// sources, its command line and the tests use it.
package staple

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"

	"golang.org/x/crypto/ocsp"
)

// DefaultSkew is how far in the future a response's thisUpdate may be
// before it is refused, to tolerate clocks that are slightly apart.
const DefaultSkew = 5 * time.Minute

// Staple is an OCSP response that passed validation for one certificate.
type Staple struct {
	// DER is the response exactly as it is stapled.
	DER []byte
	// Response is the parsed entry for the certificate.
	Response *ocsp.Response
	// Validated is when the staple was validated (obtained).
	Validated time.Time
}

// ThisUpdate and NextUpdate are shorthands for the response's times.
func (s *Staple) ThisUpdate() time.Time { return s.Response.ThisUpdate }

// NextUpdate is when the response stops being valid.
func (s *Staple) NextUpdate() time.Time { return s.Response.NextUpdate }

// ValidAt reports whether the staple may be served at t.
func (s *Staple) ValidAt(t time.Time) bool {
	return s != nil && t.Before(s.Response.NextUpdate)
}

// HalfLife is the middle of the response's validity window: past it a
// stored response is no longer worth loading (certmagic's freshness rule).
func (s *Staple) HalfLife() time.Time {
	r := s.Response
	return r.ThisUpdate.Add(r.NextUpdate.Sub(r.ThisUpdate) / 2)
}

// RefreshAt is when a new staple should be obtained: half-way through the
// life the staple had left when it was validated, and never before its
// HalfLife. (A backdated thisUpdate must not make a short-lived staple
// look half-spent the moment it is made.)
func (s *Staple) RefreshAt() time.Time {
	rest := s.Validated.Add(s.Response.NextUpdate.Sub(s.Validated) / 2)
	if h := s.HalfLife(); h.After(rest) {
		return h
	}
	return rest
}

// DecodeResponse returns the DER bytes of an OCSP response given as DER or
// as PEM (a block of type "OCSP RESPONSE", as some tools write it).
func DecodeResponse(b []byte) ([]byte, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, ErrEmpty
	}
	trimmed := bytes.TrimLeft(b, " \t\r\n")
	if bytes.HasPrefix(trimmed, []byte("-----BEGIN")) {
		block, _ := pem.Decode(trimmed)
		if block == nil {
			return nil, fmt.Errorf("%w: PEM block does not decode", ErrMalformed)
		}
		if block.Type != "OCSP RESPONSE" {
			return nil, fmt.Errorf("%w: PEM block is %q, want \"OCSP RESPONSE\"", ErrMalformed, block.Type)
		}
		return block.Bytes, nil
	}
	return b, nil
}

// Validate parses an OCSP response (DER or PEM) and checks everything that
// must hold before it is stapled with leaf: the response status is
// successful; it holds an entry for exactly this certificate (serial, issuer
// name hash and issuer key hash); it is signed by issuer, or by a delegated
// responder certificate that issuer signed and that carries
// id-kp-OCSPSigning; the certificate status is good; thisUpdate is not
// after now+skew; nextUpdate is present, after now, and not after the
// leaf's NotAfter. The error says which check failed and with what values.
func Validate(b []byte, leaf, issuer *x509.Certificate, now time.Time) (*Staple, error) {
	if leaf == nil || issuer == nil {
		return nil, errors.New("validating ocsp response: certificate and issuer are required")
	}
	der, err := DecodeResponse(b)
	if err != nil {
		return nil, err
	}

	ids, err := CertIDs(der)
	if err != nil {
		return nil, err
	}
	var id *CertID
	for i := range ids {
		if ids[i].SerialNumber != nil && ids[i].SerialNumber.Cmp(leaf.SerialNumber) == 0 {
			id = &ids[i]
			break
		}
	}
	if id == nil {
		return nil, fmt.Errorf("%w: response is for %s, certificate has %s",
			ErrWrongCertificate, serials(ids), FormatSerial(leaf.SerialNumber))
	}
	if err := id.CheckIssuer(issuer); err != nil {
		return nil, err
	}

	// the signature of an embedded responder certificate over the response
	// is checked here; which key may sign is checked below
	resp, err := ocsp.ParseResponseForCert(der, leaf, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if err := checkSigner(resp, issuer, now); err != nil {
		return nil, err
	}

	switch resp.Status {
	case ocsp.Good:
	case ocsp.Revoked:
		return nil, &RevokedError{Serial: FormatSerial(leaf.SerialNumber), RevokedAt: resp.RevokedAt,
			Reason: resp.RevocationReason, ThisUpdate: resp.ThisUpdate}
	case ocsp.Unknown:
		return nil, fmt.Errorf("%w: responder does not know certificate %s", ErrUnknownStatus, FormatSerial(leaf.SerialNumber))
	default:
		return nil, fmt.Errorf("%w: certificate status %d", ErrUnknownStatus, resp.Status)
	}

	if resp.ThisUpdate.After(now.Add(DefaultSkew)) {
		return nil, fmt.Errorf("%w: thisUpdate %s is in the future (now %s)", ErrNotYetValid,
			FormatTime(resp.ThisUpdate), FormatTime(now))
	}
	if resp.NextUpdate.IsZero() {
		return nil, fmt.Errorf("%w: a staple without one never goes stale, so clients cannot tell an old one from a new one", ErrNoNextUpdate)
	}
	if !now.Before(resp.NextUpdate) {
		return nil, fmt.Errorf("%w: nextUpdate %s has passed (now %s)", ErrExpired,
			FormatTime(resp.NextUpdate), FormatTime(now))
	}
	if resp.NextUpdate.After(leaf.NotAfter) {
		return nil, fmt.Errorf("%w: nextUpdate %s is after the certificate's NotAfter %s",
			ErrOutlivesCertificate, FormatTime(resp.NextUpdate), FormatTime(leaf.NotAfter))
	}
	return &Staple{DER: der, Response: resp, Validated: now}, nil
}

// checkSigner makes sure the response was signed by the issuer itself or by
// a responder certificate the issuer delegated OCSP signing to.
func checkSigner(resp *ocsp.Response, issuer *x509.Certificate, now time.Time) error {
	signer := resp.Certificate
	if signer == nil || bytes.Equal(signer.Raw, issuer.Raw) {
		if err := resp.CheckSignatureFrom(issuer); err != nil {
			return fmt.Errorf("%w: not signed by issuer %q: %w", ErrBadSignature, issuer.Subject.String(), err)
		}
		return nil
	}
	// a delegated responder (RFC 6960 4.2.2.2): issued by the CA directly
	if err := signer.CheckSignatureFrom(issuer); err != nil {
		return fmt.Errorf("%w: responder certificate %q is not issued by %q: %w", ErrBadSignature,
			signer.Subject.String(), issuer.Subject.String(), err)
	}
	hasOCSPSigning := false
	for _, eku := range signer.ExtKeyUsage {
		if eku == x509.ExtKeyUsageOCSPSigning {
			hasOCSPSigning = true
		}
	}
	if !hasOCSPSigning {
		return fmt.Errorf("%w: responder certificate %q lacks id-kp-OCSPSigning", ErrBadSignature, signer.Subject.String())
	}
	if now.Before(signer.NotBefore) || now.After(signer.NotAfter) {
		return fmt.Errorf("%w: responder certificate %q is valid %s to %s, not now", ErrBadSignature,
			signer.Subject.String(), FormatTime(signer.NotBefore), FormatTime(signer.NotAfter))
	}
	// ParseResponseForCert checked the response signature against signer
	return nil
}

// CheckIssuer compares the CertID's issuer name and key hashes with
// issuer (RFC 6960 4.1.1), the CA that signed the served certificate: a
// response for the same serial from another CA must not pass. The error
// wraps ErrWrongIssuer, or ErrMalformed for a hash it cannot compute.
func (id *CertID) CheckIssuer(issuer *x509.Certificate) error {
	h, ok := id.Hash()
	if !ok {
		return fmt.Errorf("%w: unsupported CertID hash algorithm %s", ErrMalformed, id.HashAlgorithm.Algorithm)
	}
	nameHash, keyHash, err := issuerHashes(issuer, h)
	if err != nil {
		return err
	}
	if !bytes.Equal(id.NameHash, nameHash) {
		return fmt.Errorf("%w: issuer name hash %X does not match issuer %q (%X)", ErrWrongIssuer,
			id.NameHash, issuer.Subject.String(), nameHash)
	}
	if !bytes.Equal(id.IssuerKeyHash, keyHash) {
		return fmt.Errorf("%w: issuer key hash %X does not match the key of issuer %q (%X)", ErrWrongIssuer,
			id.IssuerKeyHash, issuer.Subject.String(), keyHash)
	}
	return nil
}

// issuerHashes returns the CertID hashes (RFC 6960 4.1.1) of issuer.
func issuerHashes(issuer *x509.Certificate, h crypto.Hash) (name, key []byte, err error) {
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(issuer.RawSubjectPublicKeyInfo, &spki); err != nil {
		return nil, nil, fmt.Errorf("issuer public key: %w", err)
	}
	hn := h.New()
	hn.Write(issuer.RawSubject)
	hk := h.New()
	hk.Write(spki.PublicKey.RightAlign())
	return hn.Sum(nil), hk.Sum(nil), nil
}

var hashOIDs = []struct {
	oid  asn1.ObjectIdentifier
	hash crypto.Hash
}{
	{asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}, crypto.SHA1},
	{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}, crypto.SHA256},
	{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 2}, crypto.SHA384},
	{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 3}, crypto.SHA512},
}

// Hash is the hash algorithm of the CertID's issuer hashes; false when
// it is not one of SHA-1 and the SHA-2 family, or not linked in.
func (id *CertID) Hash() (crypto.Hash, bool) {
	for _, h := range hashOIDs {
		if h.oid.Equal(id.HashAlgorithm.Algorithm) {
			return h.hash, h.hash.Available()
		}
	}
	return 0, false
}

// CertID identifies the certificate a single response is about (RFC
// 6960 4.1.1): x/crypto/ocsp reads only its serial.
type CertID struct {
	HashAlgorithm pkix.AlgorithmIdentifier
	NameHash      []byte
	IssuerKeyHash []byte
	SerialNumber  *big.Int
}

// The parts of the RFC 6960 ASN.1 needed to read every CertID of a
// response; x/crypto/ocsp keeps them unexported.
type (
	responseData struct {
		Raw       asn1.RawContent
		Version   int `asn1:"optional,default:0,explicit,tag:0"`
		Responder asn1.RawValue
		Produced  time.Time `asn1:"generalized"`
		Responses []asn1.RawValue
	}
	basicResponse struct {
		TBSResponseData    responseData
		SignatureAlgorithm pkix.AlgorithmIdentifier
		Signature          asn1.BitString
		Certificates       []asn1.RawValue `asn1:"explicit,tag:0,optional"`
	}
	responseBytes struct {
		ResponseType asn1.ObjectIdentifier
		Response     []byte
	}
	ocspResponse struct {
		Status   asn1.Enumerated
		Response responseBytes `asn1:"explicit,tag:0,optional"`
	}
)

var oidOCSPBasic = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 1}

// certIDs returns the CertID of every single response in der, after
// checking the outer response status.
func CertIDs(der []byte) ([]CertID, error) {
	var resp ocspResponse
	rest, err := asn1.Unmarshal(der, &resp)
	if err != nil {
		return nil, fmt.Errorf("%w: not a DER OCSP response: %w", ErrMalformed, err)
	}
	if len(rest) > 0 {
		return nil, fmt.Errorf("%w: %d bytes of trailing data", ErrMalformed, len(rest))
	}
	if status := ocsp.ResponseStatus(resp.Status); status != ocsp.Success {
		return nil, fmt.Errorf("%w: response status %s (%d)", ErrUnsuccessful, status, int(status))
	}
	if !resp.Response.ResponseType.Equal(oidOCSPBasic) {
		return nil, fmt.Errorf("%w: response type %s is not id-pkix-ocsp-basic", ErrMalformed, resp.Response.ResponseType)
	}
	var basic basicResponse
	if _, err := asn1.Unmarshal(resp.Response.Response, &basic); err != nil {
		return nil, fmt.Errorf("%w: basic response: %w", ErrMalformed, err)
	}
	if len(basic.TBSResponseData.Responses) == 0 {
		return nil, fmt.Errorf("%w: response holds no certificate status", ErrMalformed)
	}
	ids := make([]CertID, 0, len(basic.TBSResponseData.Responses))
	for i, raw := range basic.TBSResponseData.Responses {
		// a SingleResponse starts with its CertID; the rest is read by x/crypto
		var id CertID
		if _, err := asn1.Unmarshal(raw.Bytes, &id); err != nil {
			return nil, fmt.Errorf("%w: single response %d: %w", ErrMalformed, i, err)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// FormatSerial writes a serial number the way openssl does in its errors:
// 0x followed by upper-case hex.
func FormatSerial(n *big.Int) string {
	if n == nil {
		return "<none>"
	}
	return fmt.Sprintf("0x%X", n)
}

func serials(ids []CertID) string {
	if len(ids) == 1 {
		return "serial " + FormatSerial(ids[0].SerialNumber)
	}
	s := "serials"
	for i, id := range ids {
		if i > 0 {
			s += ","
		}
		s += " " + FormatSerial(id.SerialNumber)
	}
	return s
}

// FormatTime writes a time as the errors and the CLI do: RFC 3339, UTC.
func FormatTime(t time.Time) string { return t.UTC().Format(time.RFC3339) }
