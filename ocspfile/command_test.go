package ocspfile

import (
	"bytes"
	"crypto"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/dnsfront/dnsfront/internal/testpki"
	"github.com/dnsfront/dnsfront/ocspfile/staple"
)

// TestDescribeSigner: `caddy ocsp inspect` says who signed a response:
// the issuer itself, whether its certificate is embedded or not, or a
// delegated responder, with or without id-kp-OCSPSigning.
func TestDescribeSigner(t *testing.T) {
	ca := testpki.NewCA(t, "Signer CA", testpki.ECDSA)
	leaf := ca.Issue(t, testpki.LeafOptions{}, "a.example.test")
	delegate := ca.Issue(t, testpki.LeafOptions{Responder: true})
	notDelegate := ca.Issue(t, testpki.LeafOptions{}, "not-a-responder.example.test")
	good := ocsp.Response{Status: ocsp.Good}
	for _, tc := range []struct {
		name        string
		der         []byte
		want, avoid string
	}{
		{"issuer, embedded", ca.Response(t, leaf.Cert, good, &testpki.Leaf{Cert: ca.Cert, Key: ca.Key}),
			`signed by:  the issuer itself, "` + ca.Cert.Subject.String() + `"`, "delegated"},
		{"issuer, not embedded", ca.Response(t, leaf.Cert, good, nil),
			"no certificate embedded", "delegated"},
		{"delegated responder", ca.Response(t, leaf.Cert, good, delegate),
			`delegated responder "` + delegate.Cert.Subject.String() + `", issued by "` + ca.Cert.Subject.String() + `", with id-kp-OCSPSigning`, "issuer itself"},
		{"not a responder", ca.Response(t, leaf.Cert, good, notDelegate),
			"lacks id-kp-OCSPSigning", "issuer itself"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := describe(&out, tc.der); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out.String(), tc.want) || strings.Contains(out.String(), tc.avoid) {
				t.Fatalf("inspect says\n%s\nwant %q and not %q", out.String(), tc.want, tc.avoid)
			}
		})
	}
}

// TestGenerateCertIDHash: responses are generated with a SHA-1 or
// SHA-256 CertID as asked, and either validates.
func TestGenerateCertIDHash(t *testing.T) {
	ca := testpki.NewCA(t, "Hash CA", testpki.RSA)
	leaf := ca.Issue(t, testpki.LeafOptions{KeyType: testpki.RSA}, "a.example.test")
	for _, tc := range []struct {
		name string
		want crypto.Hash
	}{{"", crypto.SHA1}, {"sha1", crypto.SHA1}, {"sha256", crypto.SHA256}} {
		h, err := staple.ParseCertIDHash(tc.name)
		if err != nil || h != tc.want {
			t.Fatalf("staple.ParseCertIDHash(%q) = %v, %v", tc.name, h, err)
		}
		der, err := staple.Generate(leaf.Cert, ca.Cert, ca.Key, staple.GenerateOptions{Hash: h})
		if err != nil {
			t.Fatal(err)
		}
		ids, err := staple.CertIDs(der)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := ids[0].Hash(); got != tc.want {
			t.Fatalf("hash %q: CertID uses %v, want %v", tc.name, got, tc.want)
		}
		if _, err := staple.Validate(der, leaf.Cert, ca.Cert, time.Now()); err != nil {
			t.Fatalf("hash %q: %v", tc.name, err)
		}
	}
	if _, err := staple.ParseCertIDHash("md5"); err == nil || !strings.Contains(err.Error(), `"md5"`) {
		t.Fatalf("staple.ParseCertIDHash(md5) = %v, want an error naming it", err)
	}
}
