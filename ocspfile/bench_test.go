package ocspfile

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/dnsfront/dnsfront/internal/testpki"
	"github.com/dnsfront/dnsfront/ocspfile/staple"
)

// BenchmarkValidate is the full check a staple gets before it is served
// (parse, signature, CertID hashes, status, times).
func BenchmarkValidate(b *testing.B) {
	for _, kt := range []struct {
		name string
		kt   testpki.KeyType
	}{{"ECDSA", testpki.ECDSA}, {"RSA", testpki.RSA}} {
		b.Run(kt.name, func(b *testing.B) {
			ca := testpki.NewCA(b, "Bench CA", kt.kt)
			leaf := ca.Issue(b, testpki.LeafOptions{KeyType: kt.kt}, "dns.example.test")
			der := ca.Response(b, leaf.Cert, ocsp.Response{Status: ocsp.Good}, nil)
			now := time.Now()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := staple.Validate(der, leaf.Cert, ca.Cert, now); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkStapleLookup is what a handshake costs the app: choosing the
// certificate for a ClientHello and attaching its current staple
// (GetCertificate, for `get_certificate ocsp` and DoT), and finding the
// staple of a certificate Caddy picked (StapleFor).
func BenchmarkStapleLookup(b *testing.B) {
	ca := testpki.NewCA(b, "Bench CA", testpki.ECDSA)
	rsaLeaf := ca.Issue(b, testpki.LeafOptions{KeyType: testpki.RSA}, "dns.example.test")
	ecLeaf := ca.Issue(b, testpki.LeafOptions{}, "dns.example.test")
	a := &App{entries: new(atomic.Pointer[[]*entry])}
	var entries []*entry
	for _, l := range []*testpki.Leaf{rsaLeaf, ecLeaf} {
		st, err := staple.Validate(ca.Response(b, l.Cert, ocsp.Response{Status: ocsp.Good}, nil), l.Cert, ca.Cert, time.Now())
		if err != nil {
			b.Fatal(err)
		}
		sum := sha256.Sum256(l.Cert.Raw)
		e := &entry{cert: tls.Certificate{Certificate: [][]byte{l.Cert.Raw}, PrivateKey: l.Key, Leaf: l.Cert},
			leaf: l.Cert, slot: newSlot(hex.EncodeToString(sum[:]))}
		b.Cleanup(func() { _ = e.slot.Destruct() })
		e.slot.staple.Store(st)
		entries = append(entries, e)
	}
	a.entries.Store(&entries)
	// a TLS 1.3 client that only takes ECDSA: the second entry fits
	hello := &tls.ClientHelloInfo{
		ServerName:        "dns.example.test",
		SupportedVersions: []uint16{tls.VersionTLS13},
		CipherSuites:      []uint16{tls.TLS_AES_128_GCM_SHA256},
		SupportedCurves:   []tls.CurveID{tls.X25519, tls.CurveP256},
		SignatureSchemes:  []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256},
	}
	b.Run("GetCertificate", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c, err := a.GetCertificate(hello)
			if err != nil || len(c.OCSPStaple) == 0 || c.Leaf != ecLeaf.Cert {
				b.Fatalf("GetCertificate: %v", err)
			}
		}
	})
	b.Run("StapleFor", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if a.StapleFor(ecLeaf.Cert) == nil {
				b.Fatal("no staple")
			}
		}
	})
}
