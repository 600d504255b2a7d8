package forward

import (
	"context"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns"
)

// dohUpstream is an RFC 8484 server over TLS (HTTP/2), answering A
// queries with 192.0.2.53, and misbehaving for some names. It returns
// the forward upstream's URL and config, and counts connections and
// requests.
type dohUpstream struct {
	url      string
	cfg      map[string]any
	conns    atomic.Int32
	requests atomic.Int32
	protos   sync.Map // "HTTP/2.0": true
}

func newDoHUpstream(t *testing.T) *dohUpstream {
	t.Helper()
	u := new(dohUpstream)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.requests.Add(1)
		u.protos.Store(r.Proto, true)
		body, _ := io.ReadAll(r.Body)
		q := new(dns.Msg)
		if r.Method != http.MethodPost || r.URL.Path != "/custom-path" || r.Header.Get("Content-Type") != "application/dns-message" ||
			q.Unpack(body) != nil || q.Id != 0 || len(q.Question) != 1 {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		m := new(dns.Msg)
		m.SetReply(q)
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 53)})
		ctype := "application/dns-message"
		switch q.Question[0].Name {
		case "status.test.":
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		case "ctype.test.":
			ctype = "text/plain"
		case "other.test.":
			m.Question[0].Name = "another.test."
		case "id.test.":
			m.Id = 7
		case "big.test.":
			w.Header().Set("Content-Type", ctype)
			_, _ = w.Write(make([]byte, 70000))
			return
		case "redirect.test.":
			http.Redirect(w, r, "/elsewhere", http.StatusTemporaryRedirect)
			return
		}
		b, _ := m.Pack()
		w.Header().Set("Content-Type", ctype)
		_, _ = w.Write(b)
	}))
	srv.EnableHTTP2 = true
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			u.conns.Add(1)
		}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	u.url = srv.URL + "/custom-path"
	u.cfg = map[string]any{"tries": 1, "tls_ca_files": []string{ca}, "tls_server_name": "example.com"}
	return u
}

// TestDoHUpstream: queries go to a DoH upstream as RFC 8484 POSTs with
// ID 0 over one HTTP/2 connection, and come back with the client's ID;
// an answer that is not 200 with a DNS answer to the question (a status,
// a Content-Type, another question or ID, an oversized body, a
// redirect) fails the query.
func TestDoHUpstream(t *testing.T) {
	up := newDoHUpstream(t)
	f := forwardTo(t, up.url, up.cfg)
	c := caddydns.NewChain("test", "test", f)
	ask := func(name string) *dns.Msg {
		q := query(name, dns.TypeA)
		q.Id = 4242
		return serveMsg(context.Background(), c, &caddydns.Request{Msg: q, Transport: "test", Size: caddydns.MaxMessage})
	}
	if m := ask("www.example.org."); m == nil || m.Id != 4242 || m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != "192.0.2.53" {
		t.Fatalf("first query: %v", m)
	}
	var wg sync.WaitGroup
	var bad atomic.Int32
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if m := ask("a.example.org."); m == nil || m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
				bad.Add(1)
			}
		}()
	}
	wg.Wait()
	if bad.Load() != 0 {
		t.Fatalf("%d of 50 parallel queries failed", bad.Load())
	}
	if n := up.conns.Load(); n != 1 {
		t.Errorf("%d connections to the upstream, want 1 (HTTP/2 carries them all)", n)
	}
	if _, ok := up.protos.Load("HTTP/2.0"); !ok {
		t.Errorf("no HTTP/2 request")
	}
	for _, name := range []string{"status.test.", "ctype.test.", "other.test.", "id.test.", "big.test.", "redirect.test."} {
		if m := ask(name); m == nil || m.Rcode != dns.RcodeServerFailure || len(m.Answer) != 0 {
			t.Errorf("%s: %v, want SERVFAIL", name, m)
		}
	}
	if n := up.requests.Load(); n != 57 {
		t.Errorf("%d requests at the upstream, want 57 (no redirect followed)", n)
	}
}

// TestParseDoHUpstream: the https upstream's URL forms.
func TestParseDoHUpstream(t *testing.T) {
	for in, want := range map[string]string{
		"https://dns.example":                 "https://dns.example/dns-query",
		"https://dns.example/":                "https://dns.example/dns-query",
		"https://dns.example:8443/q":          "https://dns.example:8443/q",
		"https://[2001:db8::1]/dns-query":     "https://[2001:db8::1]/dns-query",
		"https://[2001:db8::1]:444/dns-query": "https://[2001:db8::1]:444/dns-query",
	} {
		spec, err := parseUpstream(in)
		if err != nil || spec.url() != want || spec.proto != "https" {
			t.Errorf("%s: %v %s, want %s", in, err, spec.url(), want)
		}
	}
	for in, msg := range map[string]string{
		"https://dns.example/dns-query?dns={dns}": "only https://host[:port][/path] is allowed",
		"https://dns.example/dns-query{?dns}":     "only https://host[:port][/path] is allowed",
		"https://user@dns.example/":               "only https://host[:port][/path] is allowed",
		"http://dns.example":                      `unsupported scheme "http" (udp, tcp, tls or https)`,
		"tls://dns.example/path":                  "only scheme://host:port is allowed",
	} {
		if _, err := parseUpstream(in); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: %v, want %q", in, err, msg)
		}
	}
}
