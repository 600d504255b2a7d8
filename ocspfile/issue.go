package ocspfile

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"path"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddypki"
	"github.com/caddyserver/certmagic"
)

// DefaultIssueLifetime is the lifetime of a certificate the app issues.
const DefaultIssueLifetime = 7 * 24 * time.Hour

// issuer issues server certificates from a CA of Caddy's pki app, as
// `tls internal` does, but with the first name as the subject's common
// name: clients built on GnuTLS (kdig among them) refuse the subjectless
// certificates `tls internal` makes. Certificates are kept in Caddy's
// storage and issued again at two thirds of their lifetime.
type issuer struct {
	names    []string
	caID     string
	ca       *caddypki.CA
	lifetime time.Duration
}

func (is *issuer) storageKey() string {
	return path.Join("dnsfront", "issued", certmagic.StorageKeys.Safe(is.caID), certmagic.StorageKeys.Safe(is.names[0])+".pem")
}

// lockName is the storage lock held while the certificate is issued.
func (is *issuer) lockName() string {
	return "dnsfront_issue_" + certmagic.StorageKeys.Safe(is.caID) + "_" + certmagic.StorageKeys.Safe(is.names[0])
}

// renewAt is when a certificate is issued again.
func renewAt(leaf *x509.Certificate) time.Time {
	return leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) * 2 / 3)
}

// certificate returns the stored certificate while it is fresh and still
// chains to the CA, or issues and stores a new one.
func (is *issuer) certificate(ctx context.Context, stor certmagic.Storage, now time.Time) (tls.Certificate, error) {
	if stor != nil {
		// issued once per fleet: whoever waited for the lock finds the
		// holder's certificate in storage
		unlock, err := lockStorage(ctx, stor, is.lockName())
		if err != nil {
			return tls.Certificate{}, err
		}
		defer unlock()
	}
	if stor != nil {
		if b, err := stor.Load(ctx, is.storageKey()); err == nil {
			if c, err := tls.X509KeyPair(b, b); err == nil && is.usable(c.Leaf, now) {
				return c, nil
			}
		}
	}
	c, pemBytes, err := is.issue(now)
	if err != nil {
		return tls.Certificate{}, err
	}
	if stor != nil {
		if err := stor.Store(ctx, is.storageKey(), pemBytes); err != nil {
			return tls.Certificate{}, fmt.Errorf("storing issued certificate: %w", err)
		}
	}
	return c, nil
}

func (is *issuer) usable(leaf *x509.Certificate, now time.Time) bool {
	if leaf == nil || !now.Before(renewAt(leaf)) {
		return false
	}
	want := slices.Clone(is.names)
	have := subjects(leaf)
	slices.Sort(want)
	slices.Sort(have)
	if !slices.Equal(want, have) {
		return false
	}
	chain := is.ca.IntermediateCertificateChain()
	return len(chain) > 0 && leaf.CheckSignatureFrom(chain[0]) == nil
}

// issue signs a new P-256 certificate with the CA's intermediate.
func (is *issuer) issue(now time.Time) (tls.Certificate, []byte, error) {
	chain := is.ca.IntermediateCertificateChain()
	if len(chain) == 0 {
		return tls.Certificate{}, nil, fmt.Errorf("pki CA %q has no intermediate certificate", is.caID)
	}
	inter := chain[0]
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	notAfter := now.Add(is.lifetime)
	if notAfter.After(inter.NotAfter) {
		notAfter = inter.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: is.names[0]},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range is.names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, inter, key.Public(), is.ca.IntermediateKey())
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("issuing certificate for %v: %w", is.names, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	var buf bytes.Buffer
	_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	for _, c := range chain {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	_ = pem.Encode(&buf, &pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	c, err := tls.X509KeyPair(buf.Bytes(), buf.Bytes())
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	return c, buf.Bytes(), nil
}
