// Package testpki makes throw-away CAs, certificates and OCSP responses for
// tests, and writes them as the PEM files an operator would have.
package testpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"
)

// KeyType selects the key algorithm of a generated certificate.
type KeyType int

// Key algorithms.
const (
	ECDSA KeyType = iota
	RSA
)

// NewKey makes a private key of type kt.
func NewKey(t testing.TB, kt KeyType) crypto.Signer {
	t.Helper()
	var k crypto.Signer
	var err error
	if kt == RSA {
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	} else {
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// CA is a certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// nextSerial returns a random positive 63-bit serial, as CAs do.
func nextSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 63))
	if err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return n.Add(n, big.NewInt(1))
}

// NewCA makes a self-signed root CA.
func NewCA(t testing.TB, name string, kt KeyType) *CA {
	t.Helper()
	key := NewKey(t, kt)
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"dnsfront tests"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{Cert: c, Key: key}
}

// LeafOptions tune Issue.
type LeafOptions struct {
	KeyType    KeyType
	Serial     *big.Int
	NotAfter   time.Time
	OCSPServer string
	MustStaple bool
	// Responder makes an OCSP signing certificate instead of a TLS server one.
	Responder bool
}

// Leaf is an issued certificate with its key.
type Leaf struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

var oidTLSFeature = []int{1, 3, 6, 1, 5, 5, 7, 1, 24}

// Issue makes a certificate for names (DNS names or IP addresses) signed by ca.
func (ca *CA) Issue(t testing.TB, opts LeafOptions, names ...string) *Leaf {
	t.Helper()
	key := NewKey(t, opts.KeyType)
	sn := opts.Serial
	if sn == nil {
		sn = nextSerial()
	}
	notAfter := opts.NotAfter
	if notAfter.IsZero() {
		notAfter = time.Now().Add(90 * 24 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: "leaf"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if len(names) > 0 {
		tmpl.Subject.CommonName = names[0]
	}
	if opts.Responder {
		tmpl.Subject.CommonName = "ocsp responder"
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning}
	}
	if opts.KeyType == RSA {
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	if opts.OCSPServer != "" {
		tmpl.OCSPServer = []string{opts.OCSPServer}
	}
	if opts.MustStaple {
		// TLS Feature extension (RFC 7633) with status_request (5)
		tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, pkix.Extension{Id: oidTLSFeature, Value: []byte{0x30, 0x03, 0x02, 0x01, 0x05}})
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &Leaf{Cert: c, Key: key}
}

// Response makes an OCSP response for leaf signed by ca (or by responder,
// embedding it, when it is not nil) from tmpl; zero times default to a
// response valid from an hour ago for a day.
func (ca *CA) Response(t testing.TB, leaf *x509.Certificate, tmpl ocsp.Response, responder *Leaf) []byte {
	t.Helper()
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = leaf.SerialNumber
	}
	if tmpl.ThisUpdate.IsZero() {
		tmpl.ThisUpdate = time.Now().Add(-time.Hour)
	}
	if tmpl.NextUpdate.IsZero() {
		tmpl.NextUpdate = time.Now().Add(24 * time.Hour)
	}
	if tmpl.Status == ocsp.Revoked && tmpl.RevokedAt.IsZero() {
		tmpl.RevokedAt = time.Now().Add(-time.Minute)
	}
	signerCert, signerKey := ca.Cert, ca.Key
	if responder != nil {
		signerCert, signerKey = responder.Cert, responder.Key
		tmpl.Certificate = responder.Cert
	}
	der, err := ocsp.CreateResponse(ca.Cert, signerCert, tmpl, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// WritePEM writes certificates as a PEM file.
func WritePEM(t testing.TB, path string, certs ...*x509.Certificate) string {
	t.Helper()
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	WriteFile(t, path, b)
	return path
}

// WriteKey writes a private key as PKCS#8 PEM with mode 0600.
func WriteKey(t testing.TB, path string, key crypto.Signer) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	WriteFile(t, path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	return path
}

// WriteFile writes b to path, creating its directory.
func WriteFile(t testing.TB, path string, b []byte) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
