package ocspfile

import (
	"crypto/x509"
	"encoding/asn1"
	"time"
)

// Status is the state of one staple, as GET /ocsp/ reports it.
type Status struct {
	Certificate string     `json:"certificate"`
	Subjects    []string   `json:"subjects"`
	Serial      string     `json:"serial"`
	Source      string     `json:"source"`
	Status      string     `json:"status"`
	MustStaple  bool       `json:"must_staple,omitempty"`
	ThisUpdate  *time.Time `json:"this_update,omitempty"`
	NextUpdate  *time.Time `json:"next_update,omitempty"`
	LastRefresh *time.Time `json:"last_refresh,omitempty"`
	LastResult  string     `json:"last_result,omitempty"`
	LastError   string     `json:"last_error,omitempty"`
	// WriteTo is the file the staple is written through to, if any.
	WriteTo string `json:"write_to,omitempty"`
	// LastWritten is when WriteTo last received the staple served (or,
	// when it already held it, its modification time).
	LastWritten *time.Time `json:"last_written,omitempty"`
	// WriteError is why the staple could not be written through to its
	// file (write_to); empty once a write succeeds.
	WriteError string `json:"write_error,omitempty"`
	// MadeBy is the instance that made the staple served, this one or
	// another sharing its storage (a fleet), and when; absent for a
	// staple read from a file.
	MadeBy *Maker `json:"made_by,omitempty"`
}

// Staple states in Status.Status.
const (
	StatusGood    = "good"    // a valid staple is served
	StatusNone    = "none"    // no valid staple: none is served
	StatusRevoked = "revoked" // the source says the certificate is revoked
)

func (e *entry) status(now time.Time) Status {
	s := e.slot
	s.mu.Lock()
	defer s.mu.Unlock()
	out := Status{
		Certificate: e.name,
		Subjects:    subjects(e.leaf),
		Serial:      e.labels[1],
		Source:      e.source.String(),
		Status:      StatusNone,
		MustStaple:  e.mustStaple,
		LastResult:  s.lastResult,
		LastError:   s.lastErr,
		WriteError:  s.writeErr,
	}
	if !s.lastRefresh.IsZero() {
		t := s.lastRefresh.UTC()
		out.LastRefresh = &t
	}
	if w, ok := e.source.(writeThrougher); ok && w.writePath() != "" {
		out.WriteTo = w.writePath()
		if s.writtenPath == out.WriteTo {
			t := s.writtenAt.UTC()
			out.LastWritten = &t
		}
	}
	if st := s.staple.Load(); st.ValidAt(now) {
		tu, nu := st.ThisUpdate().UTC(), st.NextUpdate().UTC()
		out.Status, out.ThisUpdate, out.NextUpdate = StatusGood, &tu, &nu
		if m := s.maker; m != nil {
			mb := *m
			id, _ := thisInstance()
			mb.Here = mb.Instance == id
			out.MadeBy = &mb
		}
	} else if s.revoked {
		out.Status = StatusRevoked // until a newer good response
	}
	return out
}

func subjects(leaf *x509.Certificate) []string {
	names := append([]string{}, leaf.DNSNames...)
	for _, ip := range leaf.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 && leaf.Subject.CommonName != "" {
		names = append(names, leaf.Subject.CommonName)
	}
	return names
}

func subjectName(leaf *x509.Certificate) string {
	if n := subjects(leaf); len(n) > 0 {
		return n[0]
	}
	return ""
}

var oidTLSFeature = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 1, 24}

// hasMustStaple reports whether leaf carries the TLS Feature extension
// (RFC 7633) with status_request (5).
func hasMustStaple(leaf *x509.Certificate) bool {
	for _, ext := range leaf.Extensions {
		if !ext.Id.Equal(oidTLSFeature) {
			continue
		}
		var features []int
		if _, err := asn1.Unmarshal(ext.Value, &features); err != nil {
			return false
		}
		for _, f := range features {
			if f == 5 {
				return true
			}
		}
	}
	return false
}
