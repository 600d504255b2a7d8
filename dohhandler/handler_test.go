package dohhandler

import (
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/miekg/dns"
	"go.uber.org/zap"

	"github.com/dnsfront/dnsfront/caddydns"
	_ "github.com/dnsfront/dnsfront/caddydns/zone" // the zone handler the tests answer from
)

// newTestHandler provisions a handler whose chain answers from a zone.
func newTestHandler(t testing.TB) *Handler {
	t.Helper()
	ctx, err := caddy.ProvisionContext(&caddy.Config{}) // a config of its own: the handler loads the events app
	if err != nil {
		t.Fatal(err)
	}
	h := &Handler{Chain: caddydns.Chain{HandlersRaw: nil}}
	zone := `{"handler":"zone","origin":"example.org.","records":["@ 3600 IN SOA ns1 host 1 7200 3600 1209600 300","www 60 IN A 192.0.2.80"]}`
	h.HandlersRaw = append(h.HandlersRaw, []byte(zone))
	if err = h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	return h
}

func serve(t testing.TB, h *Handler, r *http.Request) *httptest.ResponseRecorder {
	t.Helper()
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, nil); err != nil {
		t.Fatal(err)
	}
	return w
}

func TestHandlerLimits(t *testing.T) {
	h := newTestHandler(t)
	huge := base64.RawURLEncoding.EncodeToString(make([]byte, 70000))
	w := serve(t, h, httptest.NewRequest("GET", "/dns-query?dns="+huge, nil))
	if w.Code != http.StatusRequestURITooLong || !strings.Contains(w.Body.String(), "65535") {
		t.Fatalf("GET over 65535: %d %q", w.Code, w.Body.String())
	}
	r := httptest.NewRequest("POST", "/dns-query", bytes.NewReader(make([]byte, 65536)))
	r.Header.Set("Content-Type", MessageType)
	if w := serve(t, h, r); w.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("POST over 65535: %d", w.Code)
	}
	q := new(dns.Msg)
	q.SetQuestion("www.example.org.", dns.TypeA)
	b, _ := q.Pack()
	w = serve(t, h, httptest.NewRequest("GET", "/dns-query?dns="+base64.RawURLEncoding.EncodeToString(b), nil))
	if w.Code != 200 || w.Header().Get("Cache-Control") != "max-age=60" {
		t.Fatalf("GET: %d %v", w.Code, w.Header())
	}
	w = serve(t, h, httptest.NewRequest("GET", "/dns-query?name=www.example.org&type=A", nil))
	if w.Code != 200 || !strings.Contains(w.Body.String(), `"data":"192.0.2.80"`) || w.Header().Get("Content-Type") != "application/json" ||
		!strings.HasSuffix(w.Body.String(), "}\n") || w.Header().Get("Content-Length") != strconv.Itoa(w.Body.Len()) {
		t.Fatalf("JSON: %d %q %v (want it to end with a newline, counted in Content-Length)", w.Code, w.Body.String(), w.Header())
	}
	jr := httptest.NewRequest("GET", "/dns-query?name=www.example.org&type=A", nil)
	jr.Header.Set("Accept", "application/dns-json")
	if w = serve(t, h, jr); w.Header().Get("Content-Type") != "application/dns-json" {
		t.Fatalf("JSON asked with Accept: application/dns-json: Content-Type %q", w.Header().Get("Content-Type"))
	}
	w = serve(t, h, httptest.NewRequest("GET", "/dns-query?name=www.example.org&type=BOGUS", nil))
	if w.Code != 400 {
		t.Fatalf("JSON with a bad type: %d", w.Code)
	}
}

// TestHandlerPOSTBody: a POST body is read by its Content-Length when it
// has one, and to EOF when it has none (HTTP/1.1 chunked); a length over
// 65535 is refused unread, and a body shorter than its length is a 400.
func TestHandlerPOSTBody(t *testing.T) {
	h := newTestHandler(t)
	q := new(dns.Msg)
	q.SetQuestion("www.example.org.", dns.TypeA)
	wire, _ := q.Pack()
	post := func(body io.Reader, length int64) *httptest.ResponseRecorder {
		r := httptest.NewRequest("POST", "/dns-query", body)
		r.Header.Set("Content-Type", MessageType)
		r.ContentLength = length
		return serve(t, h, r)
	}
	for _, tc := range []struct {
		name   string
		body   io.Reader
		length int64
		code   int
		text   string
	}{
		{"with its length", bytes.NewReader(wire), int64(len(wire)), 200, ""},
		{"no length (chunked)", io.MultiReader(bytes.NewReader(wire[:5]), bytes.NewReader(wire[5:])), -1, 200, ""},
		{"no length, over 65535", bytes.NewReader(make([]byte, 70000)), -1, 413, "65535"},
		{"length over 65535", strings.NewReader("x"), 70000, 413, "65535"},
		{"shorter than its length", bytes.NewReader(wire), int64(len(wire)) + 10, 400, "reading body: unexpected EOF"},
	} {
		w := post(tc.body, tc.length)
		if w.Code != tc.code || !strings.Contains(w.Body.String(), tc.text) {
			t.Errorf("%s: %d %q, want %d with %q", tc.name, w.Code, w.Body.String(), tc.code, tc.text)
			continue
		}
		if tc.code == 200 {
			m := new(dns.Msg)
			if err := m.Unpack(w.Body.Bytes()); err != nil || len(m.Answer) != 1 {
				t.Errorf("%s: answer %v (%v), want the A record", tc.name, m, err)
			}
		}
	}
}

// deadlineRecorder is an HTTP/2 response writer as Caddy's idle-timeout
// writer sees it: it records each write deadline set on the stream.
type deadlineRecorder struct {
	*httptest.ResponseRecorder
	deadlines []time.Time
}

func (d *deadlineRecorder) SetWriteDeadline(t time.Time) error {
	d.deadlines = append(d.deadlines, t)
	return nil
}

// TestWriteDeadlineArmedOnce checks that an answer written under Caddy's
// HTTP/2 idle-timeout writer arms the stream's write deadline once, to
// the idle timeout, and leaves it armed for the flush after the handler
// returns (not armed, cleared and armed again); and that the writer is
// given back as it was. With a minimum rate, Caddy's writer works as it
// is: armed, cleared, armed on return.
func TestWriteDeadlineArmedOnce(t *testing.T) {
	h := newTestHandler(t)
	q := new(dns.Msg)
	q.SetQuestion("www.example.org.", dns.TypeA)
	wire, _ := q.Pack()
	t.Run("minimum rate", func(t *testing.T) {
		rec := &deadlineRecorder{ResponseRecorder: httptest.NewRecorder()}
		idle := &caddyhttp.IdleTimeoutWriter{
			ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: rec},
			Ctrl:                  http.NewResponseController(rec),
			Deadline:              caddyhttp.IdleDeadline{Start: time.Now(), Timeout: time.Minute, MinRate: 10},
			Logger:                zap.NewNop(),
			ClearBetweenWrites:    true,
		}
		r := httptest.NewRequest("GET", "/dns-query?dns="+base64.RawURLEncoding.EncodeToString(wire), nil)
		r.ProtoMajor = 2
		if err := h.ServeHTTP(idle, r, nil); err != nil {
			t.Fatal(err)
		}
		idle.HandlerDone()
		if d := rec.deadlines; len(d) != 3 || !d[1].IsZero() || d[2].IsZero() {
			t.Fatalf("write deadlines set %v, want Caddy's: armed, cleared, armed again", d)
		}
	})
	for _, proto := range []int{2, 1} {
		rec := &deadlineRecorder{ResponseRecorder: httptest.NewRecorder()}
		idle := &caddyhttp.IdleTimeoutWriter{
			ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: rec},
			Ctrl:                  http.NewResponseController(rec),
			Deadline:              caddyhttp.IdleDeadline{Start: time.Now(), Timeout: time.Minute},
			Logger:                zap.NewNop(),
			ClearBetweenWrites:    proto == 2,
		}
		r := httptest.NewRequest("GET", "/dns-query?dns="+base64.RawURLEncoding.EncodeToString(wire), nil)
		r.ProtoMajor = proto
		before := time.Now()
		if err := h.ServeHTTP(idle, r, nil); err != nil {
			t.Fatal(err)
		}
		idle.HandlerDone() // what Caddy's server does when the handler returns
		m := new(dns.Msg)
		if err := m.Unpack(rec.Body.Bytes()); err != nil || len(m.Answer) != 1 {
			t.Fatalf("HTTP/%d: answer %v (%v)", proto, m, err)
		}
		if idle.ClearBetweenWrites != (proto == 2) {
			t.Errorf("HTTP/%d: ClearBetweenWrites left %v", proto, idle.ClearBetweenWrites)
		}
		// HTTP/1 does not clear between writes: one deadline either way
		if len(rec.deadlines) != 1 {
			t.Fatalf("HTTP/%d: write deadlines set %v, want one", proto, rec.deadlines)
		}
		if d := rec.deadlines[0]; d.Before(before.Add(time.Minute)) || d.After(time.Now().Add(time.Minute)) {
			t.Errorf("HTTP/%d: write deadline %v, want the idle timeout from the write (1m after %v)", proto, d, before)
		}
	}
}

// BenchmarkHandler measures the handler's own cost per request (decode,
// chain, encode), without the HTTP stack.
func BenchmarkHandler(b *testing.B) {
	h := newTestHandler(b)
	q := new(dns.Msg)
	q.SetQuestion("www.example.org.", dns.TypeA)
	wire, _ := q.Pack()
	get := "/dns-query?dns=" + base64.RawURLEncoding.EncodeToString(wire)
	b.Run("GET", func(b *testing.B) {
		r := httptest.NewRequest("GET", get, nil)
		b.ReportAllocs()
		for b.Loop() {
			w := discard{h: http.Header{}}
			_ = h.ServeHTTP(&w, r, nil)
		}
	})
	b.Run("POST", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r := httptest.NewRequest("POST", "/dns-query", bytes.NewReader(wire))
			r.Header.Set("Content-Type", MessageType)
			w := discard{h: http.Header{}}
			_ = h.ServeHTTP(&w, r, nil)
		}
	})
}

type discard struct{ h http.Header }

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) Write(p []byte) (int, error) { return len(p), nil }
func (d *discard) WriteHeader(int)             {}

func FuzzRequest(f *testing.F) {
	h := newTestHandler(f)
	q := new(dns.Msg)
	q.SetQuestion("www.example.org.", dns.TypeA)
	wire, _ := q.Pack()
	f.Add("GET", "dns="+base64.RawURLEncoding.EncodeToString(wire), []byte(nil))
	f.Add("POST", "", wire)
	f.Add("GET", "name=www.example.org&type=AAAA&do=1", []byte(nil))
	f.Fuzz(func(t *testing.T, method, query string, body []byte) {
		if method != "GET" && method != "POST" && method != "HEAD" {
			method = "POST"
		}
		r, err := http.NewRequest(method, "https://dns.example.org/dns-query?"+query, bytes.NewReader(body))
		if err != nil {
			return
		}
		r.Header.Set("Content-Type", MessageType)
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, r, nil); err != nil {
			t.Fatal(err)
		}
		if w.Code == 200 && w.Header().Get("Content-Type") == MessageType {
			m := new(dns.Msg)
			if err := m.Unpack(w.Body.Bytes()); err != nil && method != "HEAD" {
				t.Fatalf("200 with an answer that does not unpack: %v", err)
			}
		}
	})
}

// TestIsMessageType: the media type as RFC 8484 names it, in any case and
// with parameters; nothing else.
func TestIsMessageType(t *testing.T) {
	for ct, want := range map[string]bool{
		"application/dns-message":               true,
		"Application/DNS-Message":               true,
		"application/dns-message; charset=utf8": true,
		"application/dns-messages":              false,
		"application/dns-json":                  false,
		"text/plain":                            false,
		"":                                      false,
	} {
		if got := isMessageType(ct); got != want {
			t.Errorf("isMessageType(%q) = %v, want %v", ct, got, want)
		}
	}
}

// TestLocalAddr: the server's address a request reached, from the
// connection's (TCP; UDP over HTTP/3), IPv4-mapped addresses unmapped;
// none when the server gives none.
func TestLocalAddr(t *testing.T) {
	for _, c := range []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 443}, "127.0.0.1:443"},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.1"), Port: 8443}, "192.0.2.1:8443"},
		{&net.UDPAddr{IP: net.ParseIP("2001:db8::53"), Port: 443}, "[2001:db8::53]:443"},
		{nil, "invalid AddrPort"},
	} {
		r := httptest.NewRequest("GET", "/dns-query", nil)
		if c.addr != nil {
			r = r.WithContext(context.WithValue(r.Context(), http.LocalAddrContextKey, c.addr))
		}
		if got := localAddr(r).String(); got != c.want {
			t.Errorf("%v: %s, want %s", c.addr, got, c.want)
		}
	}
}
