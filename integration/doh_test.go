package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/quic-go/quic-go/http3"
	"golang.org/x/crypto/ocsp"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/dnsfront/dnsfront/internal/testpki"
)

const dohSite = `{
	ocsp {
		issue dns.example.test 127.0.0.1
	}
}
https://:{{.Port}} {
	tls {
		get_certificate ocsp
	}
	doh /dns-query {
		zone example.test {{.Zone}}
		forward udp://{{.Up}} {
			timeout 500ms
			tries 1
		}
	}
	respond "not a DoH path" 404
}
`

// dohServerSite is dohSite's config for the dedicated DoH server (the
// doh app).
const dohServerSite = `{
	ocsp {
		issue dns.example.test 127.0.0.1
	}
	doh :{{.Port}} {
		zone example.test {{.Zone}}
		forward udp://{{.Up}} {
			timeout 500ms
			tries 1
		}
	}
}
`

// dohKinds are the two ways dnsfront serves DoH: the handler in a Caddy
// site, and the dedicated server; label is its metrics' server label.
var dohKinds = []struct{ name, site, label string }{
	{"handler", dohSite, "doh"},
	{"server", dohServerSite, "doh0"},
}

// forEachDoH runs test against each kind of DoH server, as subtests.
func forEachDoH(t *testing.T, test func(t *testing.T, env *dohEnv)) {
	for _, k := range dohKinds {
		t.Run(k.name, func(t *testing.T) {
			env := startDoHSite(t, k.site)
			env.kind, env.label = k.name, k.label
			test(t, env)
		})
	}
}

type dohEnv struct {
	kind  string // handler or server
	label string
	c     *caddyProc
	addr  string
	url   string // https://dns.example.test:PORT/dns-query
	root  string
	up    *testUpstream
	http  *http.Client // HTTP/2, trusting Caddy's root, dialing addr
}

func startDoH(t *testing.T) *dohEnv {
	t.Helper()
	return startDoHSite(t, dohSite)
}

// startDoHSite starts Caddy with site, a variant of dohSite.
func startDoHSite(t *testing.T, site string) *dohEnv {
	t.Helper()
	dir := t.TempDir()
	env := &dohEnv{up: newTestUpstream(t, 1)}
	port := freePort(t)
	env.addr = fmt.Sprintf("127.0.0.1:%d", port)
	env.url = fmt.Sprintf("https://dns.example.test:%d/dns-query", port)
	env.c = startCaddy(t, dir, site, Vars{"Port": port, "Zone": exampleZone(t), "Up": env.up.addr})
	waitListen(t, env.addr)
	env.root = filepath.Join(dir, "data", "caddy", "pki", "authorities", "local", "root.crt")
	env.http = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   env.tlsConfig(t),
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, env.addr)
		},
	}}
	t.Cleanup(env.http.CloseIdleConnections)
	return env
}

// dohSiteWith is dohSite with insert placed before its one line starting
// with at: a global option before "\tocsp {", a directive before
// "\tdoh /dns-query {".
func dohSiteWith(t testing.TB, at, insert string) string {
	t.Helper()
	if strings.Count(dohSite, at) != 1 {
		t.Fatalf("dohSite has %d %q, want one", strings.Count(dohSite, at), at)
	}
	return strings.Replace(dohSite, at, insert+at, 1)
}

func (env *dohEnv) tlsConfig(t testing.TB) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(env.root)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509NewPool(t, pem)
	return &tls.Config{RootCAs: pool, ServerName: "dns.example.test"}
}

func packQuery(t testing.TB, name string, qtype uint16, edit func(*dns.Msg)) []byte {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	q.Id = 0 // RFC 8484 4.1: cache-friendly
	if edit != nil {
		edit(q)
	}
	b, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (env *dohEnv) get(t testing.TB, wire []byte) *http.Response {
	t.Helper()
	resp, err := env.http.Get(env.url + "?dns=" + base64.RawURLEncoding.EncodeToString(wire))
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func (env *dohEnv) post(t testing.TB, wire []byte) *http.Response {
	t.Helper()
	resp, err := env.http.Post(env.url, "application/dns-message", bytes.NewReader(wire))
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// answer reads a 200 application/dns-message response.
func answer(t testing.TB, resp *http.Response) (*dns.Msg, []byte) {
	t.Helper()
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/dns-message" ||
		resp.Header.Get("Content-Length") != fmt.Sprint(len(body)) {
		t.Fatalf("status %d, content-type %q, content-length %q for %d octets: %s", resp.StatusCode,
			resp.Header.Get("Content-Type"), resp.Header.Get("Content-Length"), len(body), body)
	}
	m := new(dns.Msg)
	if err := m.Unpack(body); err != nil {
		t.Fatal(err)
	}
	return m, body
}

// TestDoHClients: kdig, dig and curl (HTTP/1.1 and HTTP/2, GET and POST)
// and an HTTP/3 client get right answers with the RFC 8484 headers.
func TestDoHClients(t *testing.T) { forEachDoH(t, testDoHClients) }

func testDoHClients(t *testing.T, env *dohEnv) {
	host, port, _ := net.SplitHostPort(env.addr)
	tlsArgs := []string{"+tls-ca=" + env.root, "+tls-hostname=dns.example.test"}
	for _, tc := range []struct {
		tool string
		args []string
		want string
	}{
		{"kdig", append([]string{"+https=/dns-query", "@" + host, "-p", port, "www.example.test", "A"}, tlsArgs...), "192.0.2.80"},
		{"kdig", append([]string{"+https=/dns-query", "+https-get", "@" + host, "-p", port, "x.up.test", "A"}, tlsArgs...), "198.51.100.1"},
		{"kdig", append([]string{"+https=/dns-query", "+tls-ocsp-stapling", "@" + host, "-p", port, "mail.example.test", "A"}, tlsArgs...), "192.0.2.25"},
		{"dig", append([]string{"+https=/dns-query", "@" + host, "-p", port, "www.example.test", "AAAA", "+short"}, tlsArgs...), "2001:db8::80"},
		{"dig", append([]string{"+https-get=/dns-query", "@" + host, "-p", port, "big.up.test", "TXT", "+short"}, tlsArgs...), `"record 39 padding`},
	} {
		t.Run(tc.tool+" "+strings.Join(tc.args[:3], " "), func(t *testing.T) {
			out, _ := run(t, true, need(t, tc.tool), tc.args...)
			if !strings.Contains(out, tc.want) || strings.Contains(out, ";; ERROR") {
				t.Fatalf("%s %s: want %q\n%s", tc.tool, strings.Join(tc.args, " "), tc.want, out)
			}
		})
	}
	// HTTP manages DoH's connections: a keepalive option (RFC 7828) is
	// ignored, and none comes back
	out, _ := run(t, true, need(t, "dig"), append([]string{"+https=/dns-query", "+keepalive", "@" + host, "-p", port, "www.example.test", "A"}, tlsArgs...)...)
	if !strings.Contains(out, "192.0.2.80") || strings.Contains(out, "KEEPALIVE") {
		t.Fatalf("dig +https +keepalive: want the answer and no keepalive option\n%s", out)
	}

	curl := need(t, "curl")
	wire := packQuery(t, "api.example.test.", dns.TypeA, nil)
	dir := t.TempDir()
	qfile := filepath.Join(dir, "q.bin")
	if err := os.WriteFile(qfile, wire, 0o644); err != nil {
		t.Fatal(err)
	}
	common := []string{"-s", "--cacert", env.root, "--resolve", "dns.example.test:" + port + ":127.0.0.1", "-D", "-", "-o", filepath.Join(dir, "body")}
	for _, tc := range []struct {
		name string
		args []string
		ver  string
	}{
		{"GET HTTP/2", []string{"--http2", env.url + "?dns=" + base64.RawURLEncoding.EncodeToString(wire)}, "HTTP/2 200"},
		{"POST HTTP/2", []string{"--http2", "-H", "Content-Type: application/dns-message", "--data-binary", "@" + qfile, env.url}, "HTTP/2 200"},
		{"GET HTTP/1.1", []string{"--http1.1", env.url + "?dns=" + base64.RawURLEncoding.EncodeToString(wire)}, "HTTP/1.1 200"},
		{"POST HTTP/1.1", []string{"--http1.1", "-H", "Content-Type: application/dns-message", "--data-binary", "@" + qfile, env.url}, "HTTP/1.1 200"},
	} {
		t.Run("curl "+tc.name, func(t *testing.T) {
			headers, err := run(t, true, curl, append(common, tc.args...)...)
			if err != nil || !strings.HasPrefix(headers, tc.ver) {
				t.Fatalf("curl %s: %v\n%s", tc.name, err, headers)
			}
			lower := strings.ToLower(headers)
			for _, h := range []string{"content-type: application/dns-message", "cache-control: max-age=60", "content-length: "} {
				if !strings.Contains(lower, h) {
					t.Fatalf("curl %s: no %q in\n%s", tc.name, h, headers)
				}
			}
			body, _ := os.ReadFile(filepath.Join(dir, "body"))
			m := new(dns.Msg)
			if err := m.Unpack(body); err != nil || len(m.Answer) != 1 || !strings.Contains(m.Answer[0].String(), "192.0.2.81") || m.Id != 0 {
				t.Fatalf("curl %s: answer %v %v", tc.name, m, err)
			}
		})
	}

	// a body over 65535 octets: 413, which curl shows only once it has
	// sent the whole body (the server drops the rest rather than reset
	// the stream at once)
	huge := filepath.Join(dir, "huge.bin")
	if err := os.WriteFile(huge, make([]byte, 70000), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, proto := range []string{"--http2", "--http1.1"} {
		t.Run("curl POST over 65535 "+proto, func(t *testing.T) {
			headers, err := run(t, true, curl, append(common, proto, "-H", "Content-Type: application/dns-message", "--data-binary", "@"+huge, env.url)...)
			if err != nil || !regexp.MustCompile(`^HTTP/[12.]+ 413`).MatchString(headers) {
				t.Fatalf("curl %s, 70,000 octets: %v\n%s", proto, err, headers)
			}
		})
	}

	// an answer larger than the HTTP/2 server's 4 KB response buffer is
	// written through it, not buffered whole: it still comes whole, with
	// its length
	t.Run("curl GET HTTP/2, 6 KB answer", func(t *testing.T) {
		wire := packQuery(t, "huge.up.test.", dns.TypeTXT, nil)
		headers, err := run(t, true, curl, append(common, "--http2", env.url+"?dns="+base64.RawURLEncoding.EncodeToString(wire))...)
		if err != nil || !strings.HasPrefix(headers, "HTTP/2 200") {
			t.Fatalf("curl: %v\n%s", err, headers)
		}
		body, _ := os.ReadFile(filepath.Join(dir, "body"))
		m := new(dns.Msg)
		if err := m.Unpack(body); err != nil || len(m.Answer) != 120 || len(body) <= 4096 {
			t.Fatalf("answer of %d octets: %d records (%v), want 120 in over 4096 octets", len(body), len(m.Answer), err)
		}
		if want := fmt.Sprintf("content-length: %d\r\n", len(body)); !strings.Contains(strings.ToLower(headers), want) {
			t.Fatalf("no %q in\n%s", want, headers)
		}
	})

	t.Run("HTTP/3", func(t *testing.T) {
		if env.kind == "server" {
			t.Skip("HTTP/3 is the Caddy handler's (docs/doh.md)")
		}
		tr := &http3.Transport{TLSClientConfig: env.tlsConfig(t)}
		defer tr.Close()
		c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		url := strings.Replace(env.url, "dns.example.test", "127.0.0.1", 1)
		req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(wire))
		req.Header.Set("Content-Type", "application/dns-message")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("HTTP/3 POST: %v", err)
		}
		if resp.ProtoMajor != 3 {
			t.Fatalf("answered over %s", resp.Proto)
		}
		m, _ := answer(t, resp)
		if len(m.Answer) != 1 || !strings.Contains(m.Answer[0].String(), "192.0.2.81") {
			t.Fatalf("HTTP/3 answer: %v", m)
		}
	})
}

// TestDoHErrors: each bad request gets its status and a text saying why;
// a DNS failure is a SERVFAIL answer with 200.
func TestDoHErrors(t *testing.T) { forEachDoH(t, testDoHErrors) }

func testDoHErrors(t *testing.T, env *dohEnv) {
	// every row over HTTP/2 and HTTP/1.1
	h1 := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: env.tlsConfig(t),
		TLSNextProto:    map[string]func(string, *tls.Conn) http.RoundTripper{},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, env.addr)
		},
	}}
	t.Cleanup(h1.CloseIdleConnections)
	_, port, _ := net.SplitHostPort(env.addr)
	do := func(t *testing.T, proto, method, url, ctype string, body []byte, extra []string) (int, string, http.Header) {
		req, _ := http.NewRequest(method, url, bytes.NewReader(body))
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		for i := 0; i+1 < len(extra); i += 2 {
			req.Header.Set(extra[i], extra[i+1])
		}
		client := env.http
		if proto == "HTTP/1.1" {
			client = h1
		}
		resp, err := client.Do(req)
		if err != nil && proto == "HTTP/2" && strings.Contains(err.Error(), "larger than peer's advertised limit") {
			// Go's client (and curl) will not send a header list past the
			// server's limit: the frame-level client does
			c := dialH2(t, env.addr, env.tlsConfig(t))
			if err := c.headers(1, true, c.block(method, strings.TrimPrefix(url, "https://dns.example.test:"+port), extra...)); err != nil {
				t.Fatal(err)
			}
			e := c.await(1, 10*time.Second)
			if e.status == 0 && env.kind == "handler" {
				t.Skipf("Caddy's HTTP/2 server ends the connection (GOAWAY %v, closed %v) for a header list past its limit: no status to check", e.code, e.closed)
			}
			return e.status, string(e.body), nil
		}
		if err != nil {
			t.Fatalf("%s %s %.80s...: %v", proto, method, url, errors.Unwrap(err))
		}
		defer resp.Body.Close()
		if want := map[string]int{"HTTP/2": 2, "HTTP/1.1": 1}[proto]; resp.ProtoMajor != want {
			t.Errorf("answered over %s, want %s", resp.Proto, proto)
		}
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}
	good := packQuery(t, "www.example.test.", dns.TypeA, nil)
	huge := bytes.Repeat([]byte{0}, 70000)
	// Caddy's request header limit answers a GET of over 65535 octets
	// before the handler (which says 414 when a raised max_header_size
	// lets the request in); the server's header list limit lets in a GET
	// of any DNS message, and says 414 past 65535 octets
	overStatus, overText := 431, "Request Header Fields Too Large"
	if env.kind == "server" {
		overStatus, overText = 414, "more than 65535"
	}
	// two fields of 60,000 octets: past the header list limits (the
	// server's 96 KiB), each under the longest field a server takes
	pad := strings.Repeat("a", 60_000)
	for _, tc := range []struct {
		name, method, query, ctype string
		body                       []byte
		status                     int
		text                       string
		extra                      []string
	}{
		{"missing dns", "GET", "", "", nil, 400, "missing dns parameter", nil},
		{"dns not base64url", "GET", "?dns=!!!not*base64", "", nil, 400, "not base64url", nil},
		{"dns not DNS (GET)", "GET", "?dns=" + base64.RawURLEncoding.EncodeToString([]byte("hello")), "", nil, 400, "not a DNS message", nil},
		{"body not DNS (POST)", "POST", "", "application/dns-message", []byte("hello, this is not DNS"), 400, "not a DNS message", nil},
		{"wrong content type", "POST", "", "application/json", good, 415, "must be application/dns-message", nil},
		{"no content type", "POST", "", "", good, 415, "must be application/dns-message", nil},
		{"PUT", "PUT", "", "application/dns-message", good, 405, "not allowed", nil},
		{"DELETE", "DELETE", "", "", nil, 405, "not allowed", nil},
		{"body over 65535", "POST", "", "application/dns-message", huge, 413, "more than 65535", nil},
		{"GET over 65535", "GET", "?dns=" + base64.RawURLEncoding.EncodeToString(huge), "", nil, overStatus, overText, nil},
		{"header list over the limit", "GET", "?dns=" + base64.RawURLEncoding.EncodeToString(good), "", nil, 431, "Request Header Fields Too Large",
			[]string{"x-pad-1", pad, "x-pad-2", pad}},
	} {
		for _, proto := range []string{"HTTP/2", "HTTP/1.1"} {
			t.Run(tc.name+" "+proto, func(t *testing.T) {
				status, body, hdr := do(t, proto, tc.method, env.url+tc.query, tc.ctype, tc.body, tc.extra)
				if status != tc.status || !strings.Contains(body, tc.text) {
					t.Fatalf("%s: %d %.200q, want %d with %q", tc.name, status, body, tc.status, tc.text)
				}
				if status == 405 && hdr != nil && hdr.Get("Allow") != "GET, HEAD, POST" {
					t.Fatalf("405 without Allow: %v", hdr)
				}
			})
		}
	}
	t.Run("a response where a query belongs: FORMERR", func(t *testing.T) {
		// DESIGN's query validation: QR set -> FORMERR, a DNS answer
		// (200), over GET and POST
		response := bytes.Clone(good)
		response[2] |= 0x80
		for _, resp := range []*http.Response{env.get(t, response), env.post(t, response)} {
			m, _ := answer(t, resp)
			if m.Rcode != dns.RcodeFormatError || m.Id != binary.BigEndian.Uint16(good) {
				t.Fatalf("QR set: %v, want FORMERR with the query's ID", m)
			}
		}
	})
	t.Run("records no query has, or a meta-type: FORMERR", func(t *testing.T) {
		// what no honest client sends: a DNS answer FORMERR (200), over
		// GET and POST, as on DoT
		for i, f := range []func(q *dns.Msg){
			func(q *dns.Msg) { q.Answer = []dns.RR{rr(t, "www.example.test. 60 IN A 192.0.2.66")} },
			func(q *dns.Msg) { q.Extra = []dns.RR{rr(t, "ns.example.test. 60 IN A 192.0.2.66")} },
			func(q *dns.Msg) { q.Question[0].Qtype = dns.TypeTSIG },
		} {
			q := new(dns.Msg)
			q.SetQuestion("www.example.test.", dns.TypeA)
			q.Id = uint16(300 + i)
			f(q)
			b, err := q.Pack()
			if err != nil {
				t.Fatal(err)
			}
			for _, resp := range []*http.Response{env.get(t, b), env.post(t, b)} {
				if m, _ := answer(t, resp); m.Rcode != dns.RcodeFormatError || m.Id != q.Id || len(m.Answer) != 0 {
					t.Fatalf("query %d: %v, want FORMERR with its ID", i, m)
				}
			}
		}
	})
	t.Run("padding tolerated in GET", func(t *testing.T) {
		resp, err := env.http.Get(env.url + "?dns=" + base64.URLEncoding.EncodeToString(good))
		if err != nil {
			t.Fatal(err)
		}
		if m, _ := answer(t, resp); len(m.Answer) != 1 {
			t.Fatalf("padded base64: %v", m)
		}
	})
	t.Run("HEAD", func(t *testing.T) {
		req, _ := http.NewRequest("HEAD", env.url+"?dns="+base64.RawURLEncoding.EncodeToString(good), nil)
		resp, err := env.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/dns-message" || resp.Header.Get("Content-Length") == "" {
			t.Fatalf("HEAD: %d %v", resp.StatusCode, resp.Header)
		}
	})
	t.Run("metrics by HTTP status", func(t *testing.T) {
		metrics := string(env.c.api("GET", "/metrics"))
		for _, want := range []string{
			`dnsfront_doh_responses_total{code="415",server="` + env.label + `"} 4`,
			`dnsfront_doh_responses_total{code="405",server="` + env.label + `"} 4`,
			`dnsfront_doh_responses_total{code="200",server="` + env.label + `"}`,
			`dnsfront_queries_total{rcode="NOERROR",server="` + env.label + `",transport="doh"}`,
		} {
			if !strings.Contains(metrics, want) {
				t.Errorf("/metrics has no %s", want)
			}
		}
	})
	t.Run("upstream down: SERVFAIL with 200", func(t *testing.T) {
		env.up.stop()
		m, _ := answer(t, env.post(t, packQuery(t, "q.up.test.", dns.TypeA, nil)))
		if m.Rcode != dns.RcodeServerFailure {
			t.Fatalf("rcode %s, want SERVFAIL", dns.RcodeToString[m.Rcode])
		}
	})
}

// TestDoHCachingAndPadding: Cache-Control follows the TTLs (the SOA's
// negative TTL for NXDOMAIN); padding is to 468 octets when asked only;
// the DNS ID is the client's (0 when it sent 0).
func TestDoHCachingAndPadding(t *testing.T) { forEachDoH(t, testDoHCachingAndPadding) }

func testDoHCachingAndPadding(t *testing.T, env *dohEnv) {
	for _, tc := range []struct {
		name  string
		qtype uint16
		cache string
	}{
		{"www.example.test.", dns.TypeA, "max-age=3600"},
		{"api.example.test.", dns.TypeA, "max-age=60"},
		{"nope.example.test.", dns.TypeA, "max-age=300"}, // SOA minimum
		{"www.example.test.", dns.TypeMX, "max-age=300"}, // NODATA
	} {
		resp := env.get(t, packQuery(t, tc.name, tc.qtype, nil))
		if got := resp.Header.Get("Cache-Control"); got != tc.cache {
			t.Errorf("%s %s: Cache-Control %q, want %q", tc.name, dns.TypeToString[tc.qtype], got, tc.cache)
		}
		answer(t, resp)
	}
	env.up.stop()
	if resp := env.get(t, packQuery(t, "x.up.test.", dns.TypeA, nil)); resp.Header.Get("Cache-Control") != "" {
		t.Errorf("SERVFAIL cached: %q", resp.Header.Get("Cache-Control"))
	}

	padded := packQuery(t, "www.example.test.", dns.TypeA, func(q *dns.Msg) {
		q.SetEdns0(1232, false)
		q.IsEdns0().Option = append(q.IsEdns0().Option, &dns.EDNS0_PADDING{Padding: make([]byte, 64)})
	})
	m, body := answer(t, env.post(t, padded))
	if len(body)%468 != 0 {
		t.Fatalf("padded answer is %d octets, not a multiple of 468", len(body))
	}
	plain := packQuery(t, "www.example.test.", dns.TypeA, func(q *dns.Msg) { q.SetEdns0(1232, false); q.Id = 4321 })
	m, _ = answer(t, env.post(t, plain))
	for _, o := range m.IsEdns0().Option {
		if o.Option() == dns.EDNS0PADDING {
			t.Fatal("padded without being asked")
		}
	}
	if m.Id != 4321 {
		t.Fatalf("ID %d, want the client's 4321", m.Id)
	}
}

// TestDoHStapleReload: the DoH port staples; after the staple file is
// replaced and Caddy reloaded (--force), the next handshake carries the
// new one.
func TestDoHStapleReload(t *testing.T) {
	dir := t.TempDir()
	pk := newPKI(t, dir, "server", testpki.ECDSA, testpki.LeafOptions{}, "dns.example.test", "127.0.0.1")
	first := pk.response(t, ocsp.Good, 2*time.Hour)
	pk.writeStaple(t, first)
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	c := startCaddy(t, dir, `{
	ocsp {
		certificate {{.Cert}} {{.Key}} {
			staple file {{.Staple}}
		}
	}
}
https://:{{.Port}} {
	tls {
		get_certificate ocsp
	}
	doh /dns-query {
		zone example.test {{.Zone}}
	}
}
`, Vars{"Cert": pk.certFile, "Key": pk.keyFile, "Staple": pk.stapleFile, "Port": port, "Zone": exampleZone(t)})
	waitListen(t, addr)
	if out := sClient(t, addr, "dns.example.test"); !strings.Contains(out, "OCSP Response Status: successful") {
		t.Fatalf("openssl s_client -status on the DoH port:\n%s", out)
	}
	second := pk.response(t, ocsp.Good, time.Hour)
	pk.writeStaple(t, second)
	if err := c.reload("", nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := stapleGo(t, addr, "dns.example.test", nil); !bytes.Equal(got, second) {
		t.Fatal("after the reload the DoH handshake does not carry the new staple")
	}
	out := sClient(t, addr, "")
	r, _ := ocsp.ParseResponse(second, nil)
	if !strings.Contains(out, "OCSP Response Status: successful") || !strings.Contains(out, r.ThisUpdate.UTC().Format("Jan _2 15:04:05 2006")) {
		t.Fatalf("openssl does not see the new staple (thisUpdate %v):\n%s", r.ThisUpdate, out)
	}
}

// TestDoHReloadUnderLoad: five `caddy reload --force` during a DoH load
// run fail no request.
func TestDoHReloadUnderLoad(t *testing.T) { forEachDoH(t, testDoHReloadUnderLoad) }

func testDoHReloadUnderLoad(t *testing.T, env *dohEnv) {
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	names := []string{"www.example.test.", "mail.example.test.", "x.up.test."}
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				wire := packQuery(t, names[(w+i)%len(names)], dns.TypeA, nil)
				resp, err := env.http.Post(env.url, "application/dns-message", bytes.NewReader(wire))
				if err == nil {
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					m := new(dns.Msg)
					if resp.StatusCode == 200 && m.Unpack(body) == nil && m.Rcode == dns.RcodeSuccess {
						ok.Add(1)
						continue
					}
					err = fmt.Errorf("status %d, %d octets", resp.StatusCode, len(body))
				}
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
			}
		}(w)
	}
	for i := 0; i < 5; i++ {
		n := ok.Load()
		if err := eventually(10*time.Second, func() bool { return ok.Load() > n+200 }); err != nil {
			t.Fatal("load stalled")
		}
		if err := env.c.reload("", nil); err != nil {
			t.Fatal(err)
		}
	}
	n := ok.Load()
	if err := eventually(10*time.Second, func() bool { return ok.Load() > n+200 }); err != nil {
		t.Fatal("load stalled after the reloads")
	}
	close(stop)
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed across 5 reloads; first: %v", failed.Load(), failed.Load()+ok.Load(), firstErr.Load())
	}
	t.Logf("%d DoH requests across 5 reloads, none failed", ok.Load())
}

// TestDoHStalledBody: a POST whose body never comes (the client sends its
// headers and then nothing) is answered 408 once the server's
// read_body_idle timeout passes, as Caddy bounds any request body, both
// on the path that reads the body under one timer (the idle timeout
// alone) and through Caddy's own reader (a minimum rate set); the
// connection then serves the next query.
func TestDoHStalledBody(t *testing.T) {
	for _, tc := range []struct{ name, idle string }{
		{"idle timeout", "1s"},
		{"idle timeout and minimum rate", "1s 10"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := startDoHSite(t, dohSiteWith(t, "\tocsp {", "\tservers {\n\t\ttimeouts {\n\t\t\tread_body_idle "+tc.idle+"\n\t\t}\n\t}\n"))
			body, stall := io.Pipe() // never written to until the end
			defer stall.Close()
			req, err := http.NewRequest(http.MethodPost, env.url, body)
			if err != nil {
				t.Fatal(err)
			}
			req.ContentLength = 40
			req.Header.Set("Content-Type", "application/dns-message")
			resp, err := env.http.Do(req) // the client gives up after 10s
			if err != nil {
				t.Fatalf("stalled POST: %v (no answer from the server)", err)
			}
			text, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(text), "read_body_idle") || resp.ProtoMajor != 2 {
				t.Fatalf("stalled POST: HTTP/%d %d %q, want HTTP/2 408 naming read_body_idle", resp.ProtoMajor, resp.StatusCode, text)
			}
			m, _ := answer(t, env.post(t, packQuery(t, "www.example.test.", dns.TypeA, nil)))
			if len(m.Answer) == 0 {
				t.Fatalf("query after the stalled one: %v", m)
			}
		})
	}
}

// TestDoHStalledReader: a client that never opens its HTTP/2 receive
// window (SETTINGS_INITIAL_WINDOW_SIZE 0) gets the answer's headers but
// cannot be sent its body; once the server's write_idle timeout passes,
// the stream is reset (RST_STREAM) instead of holding the handler for
// good, and the connection, its window opened, serves the next query.
// The write deadline that bounds this is the one the handler's answer
// write arms and leaves armed (see dohhandler.writeLast).
func TestDoHStalledReader(t *testing.T) {
	env := startDoHSite(t, dohSiteWith(t, "\tocsp {", "\tservers {\n\t\ttimeouts {\n\t\t\twrite_idle 1s\n\t\t}\n\t}\n"))
	cfg := env.tlsConfig(t)
	cfg.NextProtos = []string{"h2"}
	conn, err := tls.Dial("tcp", env.addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("ALPN %q, want h2", p)
	}
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0}); err != nil {
		t.Fatal(err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	get := func(stream uint32) {
		t.Helper()
		hb.Reset()
		path := "/dns-query?dns=" + base64.RawURLEncoding.EncodeToString(packQuery(t, "www.example.test.", dns.TypeA, nil))
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "dns.example.test"}, {":path", path}} {
			_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
	}
	get(1)
	sent := time.Now()
	var status string
stream1:
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("waiting for stream 1's end (headers %q): %v", status, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			status = f.PseudoValue("status")
		case *http2.DataFrame:
			if f.StreamID == 1 && len(f.Data()) > 0 {
				t.Fatalf("stream 1: %d octets of DATA sent into a zero window", len(f.Data()))
			}
		case *http2.RSTStreamFrame:
			if f.StreamID != 1 {
				continue
			}
			if status != "200" {
				t.Errorf("stream 1 reset (%v) after headers %q, want 200", f.ErrCode, status)
			}
			if waited := time.Since(sent); waited < 900*time.Millisecond {
				t.Errorf("stream 1 reset after %v, before write_idle (1s) passed", waited)
			}
			t.Logf("stream 1: headers %s, then RST_STREAM %v after %v", status, f.ErrCode, time.Since(sent).Round(time.Millisecond))
			break stream1
		case *http2.GoAwayFrame:
			t.Fatalf("connection closed (GOAWAY %v) instead of the stream reset", f.ErrCode)
		}
	}
	if err := fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 65535}); err != nil {
		t.Fatal(err)
	}
	get(3)
	var body []byte
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("waiting for stream 3's answer: %v", err)
		}
		if d, ok := f.(*http2.DataFrame); ok && d.StreamID == 3 {
			body = append(body, d.Data()...)
			if d.StreamEnded() {
				break
			}
		}
		if r, ok := f.(*http2.RSTStreamFrame); ok && r.StreamID == 3 {
			t.Fatalf("stream 3 reset: %v", r.ErrCode)
		}
	}
	m := new(dns.Msg)
	if err := m.Unpack(body); err != nil || len(m.Answer) == 0 {
		t.Fatalf("stream 3, after the window opened: %v (%v)", m, err)
	}
}

// TestDoHHeaderEdits: Caddy's header directive edits a response's
// header values in place (a deferred find-and-replace); the edit stays in
// the response it was made for, and other sites and paths, and the next
// responses, keep the handler's own headers.
func TestDoHHeaderEdits(t *testing.T) {
	env := startDoHSite(t, dohSiteWith(t, "\tdoh /dns-query {", `	header /dns-query {
		Content-Type dns-message dns-message-edited
		defer
	}
	doh /plain-query {
		zone example.test {{.Zone}}
	}
`))
	wire := packQuery(t, "www.example.test.", dns.TypeA, nil)
	plain := strings.Replace(env.url, "/dns-query", "/plain-query", 1)
	for i := range 3 {
		resp := env.get(t, wire)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "application/dns-message-edited" {
			t.Fatalf("edited path, request %d: %d %q, want 200 application/dns-message-edited", i+1, resp.StatusCode, ct)
		}
		resp, err := env.http.Get(plain + "?dns=" + base64.RawURLEncoding.EncodeToString(wire))
		if err != nil {
			t.Fatal(err)
		}
		m, _ := answer(t, resp) // checks Content-Type application/dns-message
		if len(m.Answer) == 0 {
			t.Fatalf("plain path, request %d: %v", i+1, m)
		}
	}
}

// TestDoHRequestBodyLimit: a POST body over the limit set with Caddy's
// request_body directive is refused 413, as over dnsfront's own 65535:
// by Caddy when the Content-Length says so, by the handler, naming the
// limit, when the body has no length; a body within it is answered.
func TestDoHRequestBodyLimit(t *testing.T) {
	env := startDoHSite(t, dohSiteWith(t, "\tdoh /dns-query {", "\trequest_body {\n\t\tmax_size 40\n\t}\n"))
	small := packQuery(t, "www.example.test.", dns.TypeA, nil)
	big := packQuery(t, "a-name-long-enough-to-pass-forty-octets.example.test.", dns.TypeA, nil)
	if len(small) > 40 || len(big) <= 40 {
		t.Fatalf("queries of %d and %d octets, want one within 40 and one over", len(small), len(big))
	}
	m, _ := answer(t, env.post(t, small))
	if len(m.Answer) == 0 {
		t.Fatalf("query within the limit: %v", m)
	}
	for _, chunked := range []bool{false, true} {
		var body io.Reader = bytes.NewReader(big)
		if chunked {
			body = io.MultiReader(bytes.NewReader(big[:10]), bytes.NewReader(big[10:])) // no Content-Length
		}
		req, _ := http.NewRequest(http.MethodPost, env.url, body)
		req.Header.Set("Content-Type", "application/dns-message")
		resp, err := env.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		text, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge || (chunked && !strings.Contains(string(text), "limit of 40 octets")) {
			t.Errorf("body of %d octets over max_size 40 (no length: %v): %d %q, want 413 naming the limit", len(big), chunked, resp.StatusCode, text)
		}
	}
}

// TestDoHAccessLog: with Caddy's access log on (it wraps the response
// writer to record the response), a DoH answer over HTTP/2 is whole and
// logged with its status, size and headers.
func TestDoHAccessLog(t *testing.T) {
	env := startDoHSite(t, dohSiteWith(t, "\tdoh /dns-query {", "\tlog {\n\t\toutput stderr\n\t\tformat json\n\t}\n"))
	resp := env.get(t, packQuery(t, "x.up.test.", dns.TypeA, nil))
	if resp.ProtoMajor != 2 {
		t.Fatalf("answered over %s, want HTTP/2", resp.Proto)
	}
	m, body := answer(t, resp)
	if len(m.Answer) != 1 {
		t.Fatalf("answer: %v", m)
	}
	env.c.waitLog(fmt.Sprintf(`"logger":"http\.log\.access[^\n]*"uri":"/dns-query\?dns=[^\n]*"size":%d,"status":200,[^\n]*"Content-Type":\["application/dns-message"\]`, len(body)), 10*time.Second)
}

// TestDoHClientGivesUp: curl clients that give up (--max-time 0.2) on
// a name whose upstream answers after 400 ms do not mark the upstream
// down: only the upstream's own failures count.
func TestDoHClientGivesUp(t *testing.T) {
	env := startDoH(t)
	curl := need(t, "curl")
	_, port, _ := net.SplitHostPort(env.addr)
	wire := packQuery(t, "slow.up.test.", dns.TypeA, nil)
	url := env.url + "?dns=" + base64.RawURLEncoding.EncodeToString(wire)
	up := `{upstream="udp://` + env.up.addr + `"}`
	for i := 0; i < 3; i++ {
		out, err := run(t, true, curl, "-s", "--http2", "--max-time", "0.2", "--cacert", env.root,
			"--resolve", "dns.example.test:"+port+":127.0.0.1", "-o", "/dev/null", "-w", "%{http_code}", url)
		if err == nil {
			t.Fatalf("curl --max-time 0.2 got an answer from a 400 ms upstream: %s", out)
		}
	}
	// the three abandoned queries are counted as sent (once the server
	// has seen each stream end), and not as errors
	if err := eventually(10*time.Second, func() bool { return env.c.metricValue("dnsfront_upstream_queries_total"+up) >= 3 }); err != nil {
		t.Fatalf("dnsfront_upstream_queries_total%s = %v, want 3", up, env.c.metricValue("dnsfront_upstream_queries_total"+up))
	}
	if h, e := env.c.metricValue("dnsfront_upstream_healthy"+up), env.c.metricValue("dnsfront_upstream_errors_total"+up); h != 1 || e != 0 {
		t.Fatalf("after 3 clients gave up: dnsfront_upstream_healthy %v (want 1), errors %v (want 0)", h, e)
	}
	if l := env.c.log.lines("upstream marked down"); len(l) > 0 {
		t.Fatalf("clients that gave up marked the upstream down: %s", l[0])
	}
	// a patient client gets the answer
	resp := env.get(t, wire)
	if m, _ := answer(t, resp); len(m.Answer) != 1 {
		t.Fatalf("slow.up.test: %v", m)
	}
}

// TestDoHTryIt: the log gives one line to try the DoH endpoint, at its
// listener and path, for the zone it serves; it is not repeated at a
// reload, and the command it gives (curl, run as written) gets the answer.
func TestDoHTryIt(t *testing.T) {
	need(t, "curl")
	env := startDoH(t)
	for i := 0; i < 2; i++ {
		if err := env.c.reload("", nil); err != nil {
			t.Fatal(err)
		}
	}
	lines := env.c.log.lines(`"logger":"http.handlers.doh","msg":"try it"`)
	if len(lines) != 1 {
		t.Fatalf("DoH try-it lines after 2 reloads: %q, want one", lines)
	}
	m := regexp.MustCompile(`"query":"(curl [^"]+)"`).FindStringSubmatch(lines[0])
	if m == nil || !strings.Contains(m[1], env.addr[strings.LastIndex(env.addr, ":"):]+"/dns-query?name=example.test.&type=SOA") {
		t.Fatalf("try-it line %q does not ask example.test. SOA at this listener's /dns-query", lines[0])
	}
	out, err := exec.Command("sh", "-c", m[1]).CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"type":6`) || !strings.Contains(string(out), "hostmaster.example.test.") {
		t.Fatalf("%s: %v\n%s", m[1], err, out)
	}
}
