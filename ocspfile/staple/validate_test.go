package staple

import (
	"encoding/pem"
	"errors"
	"math/big"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/dnsfront/dnsfront/internal/testpki"
)

func TestValidate(t *testing.T) {
	ca := testpki.NewCA(t, "Test CA", testpki.ECDSA)
	other := testpki.NewCA(t, "Other CA", testpki.ECDSA)
	// same subject name as ca, different key: only the key hash tells them apart
	twin := testpki.NewCA(t, "Test CA", testpki.ECDSA)
	leaf := ca.Issue(t, testpki.LeafOptions{}, "dns.example.test")
	otherLeaf := ca.Issue(t, testpki.LeafOptions{}, "other.example.test")
	delegate := ca.Issue(t, testpki.LeafOptions{Responder: true})
	notDelegate := ca.Issue(t, testpki.LeafOptions{}, "not-a-responder.example.test")
	foreignDelegate := other.Issue(t, testpki.LeafOptions{Responder: true})
	now := time.Now()

	good := ca.Response(t, leaf.Cert, ocsp.Response{Status: ocsp.Good}, nil)
	pemGood := pem.EncodeToMemory(&pem.Block{Type: "OCSP RESPONSE", Bytes: good})

	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"good", good, nil},
		{"good PEM", pemGood, nil},
		{"good by delegated responder", ca.Response(t, leaf.Cert, ocsp.Response{Status: ocsp.Good}, delegate), nil},
		{"empty", nil, ErrEmpty},
		{"garbage", []byte("this is not an OCSP response"), ErrMalformed},
		{"wrong PEM type", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: good}), ErrMalformed},
		{"trailing data", append(append([]byte{}, good...), 0), ErrMalformed},
		{"unsuccessful status", ocsp.TryLaterErrorResponse, ErrUnsuccessful},
		{"another certificate's serial", ca.Response(t, otherLeaf.Cert, ocsp.Response{Status: ocsp.Good}, nil), ErrWrongCertificate},
		{"same serial from another CA", other.Response(t, leaf.Cert, ocsp.Response{Status: ocsp.Good}, nil), ErrWrongIssuer},
		{"same serial and CA name, another CA key", twin.Response(t, leaf.Cert, ocsp.Response{Status: ocsp.Good}, nil), ErrWrongIssuer},
		{"responder without OCSPSigning", ca.Response(t, leaf.Cert, ocsp.Response{Status: ocsp.Good}, notDelegate), ErrBadSignature},
		{"responder of another CA", ca.Response(t, leaf.Cert, ocsp.Response{Status: ocsp.Good}, foreignDelegate), ErrBadSignature},
		{"revoked", ca.Response(t, leaf.Cert, ocsp.Response{Status: ocsp.Revoked, RevocationReason: ocsp.KeyCompromise}, nil), ErrRevoked},
		{"unknown", ca.Response(t, leaf.Cert, ocsp.Response{Status: ocsp.Unknown}, nil), ErrUnknownStatus},
		{"expired", ca.Response(t, leaf.Cert, ocsp.Response{Status: ocsp.Good, ThisUpdate: now.Add(-48 * time.Hour), NextUpdate: now.Add(-time.Hour)}, nil), ErrExpired},
		{"thisUpdate in the future", ca.Response(t, leaf.Cert, ocsp.Response{Status: ocsp.Good, ThisUpdate: now.Add(time.Hour)}, nil), ErrNotYetValid},
		{"nextUpdate after NotAfter", ca.Response(t, leaf.Cert, ocsp.Response{Status: ocsp.Good, NextUpdate: leaf.Cert.NotAfter.Add(time.Hour)}, nil), ErrOutlivesCertificate},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := Validate(tc.in, leaf.Cert, ca.Cert, now)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				if !st.ValidAt(now) || st.Response.SerialNumber.Cmp(leaf.Cert.SerialNumber) != 0 {
					t.Fatalf("staple not valid for the leaf: %+v", st.Response)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Validate error = %v, want %v", err, tc.want)
			}
			if st != nil {
				t.Fatalf("a refused response returned a staple")
			}
		})
	}
}

func TestValidateNamesBothSerials(t *testing.T) {
	ca := testpki.NewCA(t, "Test CA", testpki.RSA)
	leaf := ca.Issue(t, testpki.LeafOptions{Serial: big.NewInt(0x1f)}, "a.example.test")
	other := ca.Issue(t, testpki.LeafOptions{Serial: big.NewInt(0x20)}, "b.example.test")
	_, err := Validate(ca.Response(t, other.Cert, ocsp.Response{Status: ocsp.Good}, nil), leaf.Cert, ca.Cert, time.Now())
	want := "ocsp response is for another certificate: response is for serial 0x20, certificate has 0x1F"
	if err == nil || err.Error() != want {
		t.Fatalf("error = %v, want %q", err, want)
	}
}

func TestValidateMissingNextUpdate(t *testing.T) {
	ca := testpki.NewCA(t, "Test CA", testpki.ECDSA)
	leaf := ca.Issue(t, testpki.LeafOptions{}, "a.example.test")
	der, err := ocsp.CreateResponse(ca.Cert, ca.Cert, ocsp.Response{
		Status: ocsp.Good, SerialNumber: leaf.Cert.SerialNumber, ThisUpdate: time.Now().Add(-time.Minute),
	}, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Validate(der, leaf.Cert, ca.Cert, time.Now()); !errors.Is(err, ErrNoNextUpdate) {
		t.Fatalf("error = %v, want %v", err, ErrNoNextUpdate)
	}
}

func TestGenerate(t *testing.T) {
	for _, kt := range []testpki.KeyType{testpki.RSA, testpki.ECDSA} {
		ca := testpki.NewCA(t, "Gen CA", kt)
		leaf := ca.Issue(t, testpki.LeafOptions{KeyType: kt, NotAfter: time.Now().Add(72 * time.Hour)}, "a.example.test")
		now := time.Now()
		der, err := Generate(leaf.Cert, ca.Cert, ca.Key, GenerateOptions{Now: now})
		if err != nil {
			t.Fatal(err)
		}
		st, err := Validate(der, leaf.Cert, ca.Cert, now)
		if err != nil {
			t.Fatalf("generated response does not validate: %v", err)
		}
		// 7 days asked, the leaf ends in 3: clamped to NotAfter
		if !st.NextUpdate().Equal(leaf.Cert.NotAfter.UTC().Truncate(time.Second)) {
			t.Fatalf("nextUpdate %v, want the leaf's NotAfter %v", st.NextUpdate(), leaf.Cert.NotAfter)
		}
		if got := now.Sub(st.ThisUpdate()); got < DefaultBackdate || got > DefaultBackdate+2*time.Second {
			t.Fatalf("thisUpdate backdated by %v, want %v", got, DefaultBackdate)
		}
		short, err := Generate(leaf.Cert, ca.Cert, ca.Key, GenerateOptions{Now: now, Validity: time.Hour, Backdate: -1})
		if err != nil {
			t.Fatal(err)
		}
		st, err = Validate(short, leaf.Cert, ca.Cert, now)
		if err != nil {
			t.Fatal(err)
		}
		if d := st.NextUpdate().Sub(st.ThisUpdate()); d < time.Hour-time.Second || d > time.Hour+time.Second {
			t.Fatalf("validity %v, want 1h", d)
		}
	}
}

func TestGenerateRefusesWrongCA(t *testing.T) {
	ca := testpki.NewCA(t, "CA", testpki.ECDSA)
	other := testpki.NewCA(t, "Other", testpki.ECDSA)
	leaf := ca.Issue(t, testpki.LeafOptions{}, "a.example.test")
	if _, err := Generate(leaf.Cert, other.Cert, other.Key, GenerateOptions{}); err == nil {
		t.Fatal("generated a response for a certificate the CA did not issue")
	}
	if _, err := Generate(leaf.Cert, ca.Cert, other.Key, GenerateOptions{}); err == nil {
		t.Fatal("generated a response with a key that is not the CA's")
	}
}

func FuzzValidate(f *testing.F) {
	ca := testpki.NewCA(f, "Fuzz CA", testpki.ECDSA)
	leaf := ca.Issue(f, testpki.LeafOptions{}, "a.example.test")
	f.Add(ca.Response(f, leaf.Cert, ocsp.Response{Status: ocsp.Good}, nil))
	f.Add(ca.Response(f, leaf.Cert, ocsp.Response{Status: ocsp.Revoked}, ca.Issue(f, testpki.LeafOptions{Responder: true})))
	f.Add(ocsp.UnauthorizedErrorResponse)
	f.Add([]byte("-----BEGIN OCSP RESPONSE-----\nMAA=\n-----END OCSP RESPONSE-----\n"))
	now := time.Now()
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := Validate(b, leaf.Cert, ca.Cert, now)
		if err == nil && (st == nil || !st.ValidAt(now)) {
			t.Fatalf("accepted a response that is not valid now")
		}
	})
}

func TestRefreshAt(t *testing.T) {
	ca := testpki.NewCA(t, "CA", testpki.ECDSA)
	leaf := ca.Issue(t, testpki.LeafOptions{}, "a.example.test")
	now := time.Now()
	for _, tc := range []struct {
		validity, backdate time.Duration
		want               time.Duration // from now
	}{
		{7 * 24 * time.Hour, time.Hour, 7 * 24 * time.Hour / 2}, // half of what was left, past the window's middle
		{10 * time.Second, time.Hour, 5 * time.Second},          // half of what was left
	} {
		der, err := Generate(leaf.Cert, ca.Cert, ca.Key, GenerateOptions{Now: now, Validity: tc.validity, Backdate: tc.backdate})
		if err != nil {
			t.Fatal(err)
		}
		st, err := Validate(der, leaf.Cert, ca.Cert, now)
		if err != nil {
			t.Fatal(err)
		}
		if got := st.RefreshAt().Sub(now); got < tc.want-2*time.Second || got > tc.want+2*time.Second {
			t.Errorf("validity %v backdate %v: refresh in %v, want %v", tc.validity, tc.backdate, got, tc.want)
		}
	}
}
