package dotapp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/miekg/dns"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/dnsfront/dnsfront/caddydns"
)

// newTestDoHServer is newTestServer as a DoH server at /dns-query.
func newTestDoHServer(t testing.TB) *Server {
	t.Helper()
	s := newTestServer(t)
	s.doh = &dohSide{path: DefaultDoHPath}
	s.doh.provision(s.ctx, s)
	return s
}

// syncBuf is a writer the h2 writer goroutine and the test share.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// h2exchange runs the HTTP/2 connection loop over input (the client's
// octets, then EOF) and returns what the server wrote.
func h2exchange(t testing.TB, s *Server, input []byte) []byte {
	t.Helper()
	_, out := h2run(s, input)
	return out
}

// h2run is h2exchange that also returns the connection, for a test that
// looks at what it kept.
func h2run(s *Server, input []byte) (*h2conn, []byte) {
	return h2runFrom(s, bytes.NewReader(input))
}

// h2runFrom is h2run reading the client's octets from in.
func h2runFrom(s *Server, in io.Reader) (*h2conn, []byte) {
	c := &conn{client: netip.MustParseAddrPort("192.0.2.1:5300"), metrics: s.metrics}
	c.srv.Store(s)
	var out syncBuf
	h := newH2(c, struct {
		io.Reader
		io.Writer
	}{in, &out}, s.set.maxInFlight)
	h.startWriter()
	h.finish(h.start() == h2Graceful)
	return h, out.b.Bytes()
}

// h2input builds a client's octets: the preface, SETTINGS, then what
// write adds with the Framer and an HPACK encoder.
func h2input(write func(fr *http2.Framer, enc func(fields ...string) []byte)) []byte {
	var b, hb bytes.Buffer
	b.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&b, nil)
	_ = fr.WriteSettings()
	e := hpack.NewEncoder(&hb)
	write(fr, func(fields ...string) []byte {
		hb.Reset()
		for i := 0; i+1 < len(fields); i += 2 {
			_ = e.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		return bytes.Clone(hb.Bytes())
	})
	return b.Bytes()
}

// h2reply is a stream's response, as read back from the server's octets.
type h2reply struct {
	status int
	hdr    map[string]string
	n      map[string]int // how many times each field came
	body   []byte
	rst    http2.ErrCode
	reset  bool
}

func readReplies(t testing.TB, out []byte) (map[uint32]*h2reply, *http2.GoAwayFrame) {
	t.Helper()
	fr := http2.NewFramer(nil, bytes.NewReader(out))
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	replies := make(map[uint32]*h2reply)
	get := func(id uint32) *h2reply {
		if replies[id] == nil {
			replies[id] = &h2reply{hdr: make(map[string]string), n: make(map[string]int)}
		}
		return replies[id]
	}
	var goaway *http2.GoAwayFrame
	for {
		f, err := fr.ReadFrame()
		if err == io.EOF {
			return replies, goaway
		}
		if err != nil {
			t.Fatalf("the server's frames: %v", err)
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			r := get(f.StreamID)
			for _, hf := range f.Fields {
				r.hdr[hf.Name] = hf.Value
				r.n[hf.Name]++
			}
			r.status, _ = strconv.Atoi(r.hdr[":status"])
		case *http2.DataFrame:
			get(f.StreamID).body = append(get(f.StreamID).body, f.Data()...)
		case *http2.RSTStreamFrame:
			r := get(f.StreamID)
			r.reset, r.rst = true, f.ErrCode
		case *http2.GoAwayFrame:
			g := *f
			goaway = &g
		}
	}
}

func dnsGET(t testing.TB, name string) string {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeA)
	wire, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return "/dns-query?dns=" + base64.RawURLEncoding.EncodeToString(wire)
}

func TestH2Requests(t *testing.T) {
	s := newTestDoHServer(t)
	q := new(dns.Msg)
	q.SetQuestion("www.example.org.", dns.TypeA)
	wire, _ := q.Pack()
	get := dnsGET(t, "www.example.org.")
	req := func(method, path string, extra ...string) []string {
		return append([]string{":method", method, ":scheme", "https", ":path", path, ":authority", "dns.example.org"}, extra...)
	}
	in := h2input(func(fr *http2.Framer, enc func(...string) []byte) {
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(req("GET", get)...), EndStream: true, EndHeaders: true})
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: enc(req("POST", "/dns-query", "content-type", "application/dns-message",
			"content-length", strconv.Itoa(len(wire)))...), EndHeaders: true})
		_ = fr.WriteData(3, false, wire[:5])
		_ = fr.WriteData(3, true, wire[5:])
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: enc(req("HEAD", get)...), EndStream: true, EndHeaders: true})
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 7, BlockFragment: enc(req("GET", "/other")...), EndStream: true, EndHeaders: true})
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 9, BlockFragment: enc(req("PUT", "/dns-query")...), EndStream: true, EndHeaders: true})
		// a request with a connection-specific field is malformed
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 11, BlockFragment: enc(req("GET", get, "connection", "close")...), EndStream: true, EndHeaders: true})
		// a body longer than its content-length is malformed
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 13, BlockFragment: enc(req("POST", "/dns-query", "content-type", "application/dns-message",
			"content-length", "3")...), EndHeaders: true})
		_ = fr.WriteData(13, true, wire)
	})
	replies, goaway := readReplies(t, h2exchange(t, s, in))
	for id, want := range map[uint32]int{1: 200, 3: 200, 5: 200, 7: 404, 9: 405} {
		r := replies[id]
		if r == nil || r.status != want {
			t.Fatalf("stream %d: %+v, want %d", id, r, want)
		}
	}
	for _, id := range []uint32{1, 3} {
		m := new(dns.Msg)
		if err := m.Unpack(replies[id].body); err != nil || len(m.Answer) != 1 || replies[id].hdr["cache-control"] != "max-age=60" ||
			replies[id].hdr["content-length"] != strconv.Itoa(len(replies[id].body)) {
			t.Fatalf("stream %d: %v %v %v", id, m, err, replies[id].hdr)
		}
	}
	if len(replies[5].body) != 0 || replies[5].hdr["content-length"] == "0" {
		t.Fatalf("HEAD: %+v", replies[5])
	}
	if replies[9].hdr["allow"] != "GET, HEAD, POST" {
		t.Fatalf("405: %v", replies[9].hdr)
	}
	for _, id := range []uint32{11, 13} {
		if r := replies[id]; r == nil || !r.reset || r.rst != http2.ErrCodeProtocol || r.status != 0 {
			t.Fatalf("stream %d: %+v, want RST_STREAM PROTOCOL_ERROR", id, r)
		}
	}
	if goaway == nil || goaway.ErrCode != http2.ErrCodeNo || goaway.LastStreamID != 13 {
		t.Fatalf("GOAWAY at EOF: %+v, want NO_ERROR with last stream 13", goaway)
	}
}

// TestH2BodyTooLarge: a POST whose body passes 65535 octets is answered
// 413 at once; the rest of its body is read and dropped, so that the
// stream ends as the client ends it (curl shows the answer only then),
// and a body that goes on past h2Drain more is reset with NO_ERROR. The
// connection serves the next request either way.
func TestH2BodyTooLarge(t *testing.T) {
	s := newTestDoHServer(t)
	post := []string{":method", "POST", ":scheme", "https", ":path", "/dns-query", ":authority", "dns.example.org",
		"content-type", "application/dns-message"}
	chunk := make([]byte, 16384)
	// a client within its windows: the server gives a stream's window
	// back when half of it is used, so frames of 16384 never overrun it
	send := func(fr *http2.Framer, id uint32, n int, end bool) {
		for ; n > len(chunk); n -= len(chunk) {
			_ = fr.WriteData(id, false, chunk)
		}
		_ = fr.WriteData(id, end, chunk[:n])
	}
	in := h2input(func(fr *http2.Framer, enc func(...string) []byte) {
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(post...), EndHeaders: true})
		send(fr, 1, 70000, true)
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: enc(post...), EndHeaders: true})
		send(fr, 3, caddydns.MaxMessage+h2Drain+3*16384, true)
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: enc(":method", "GET", ":scheme", "https",
			":path", dnsGET(t, "www.example.org."), ":authority", "dns.example.org"), EndStream: true, EndHeaders: true})
	})
	replies, _ := readReplies(t, h2exchange(t, s, in))
	if r := replies[1]; r == nil || r.status != 413 || r.reset {
		t.Fatalf("70,000 octets: %+v, want 413 and the stream ended by the client, not reset", r)
	}
	if r := replies[3]; r == nil || r.status != 413 || !r.reset || r.rst != http2.ErrCodeNo {
		t.Fatalf("a body past the drain limit: %+v, want 413, then RST_STREAM NO_ERROR", r)
	}
	if r := replies[5]; r == nil || r.status != 200 {
		t.Fatalf("the next request: %+v, want 200", r)
	}
}

// TestH2HPACKBomb: a request naming one large table entry many times, in
// an octet each, makes a header list past the limit: 431, and the
// connection goes on.
func TestH2HPACKBomb(t *testing.T) {
	s := newTestDoHServer(t)
	get := dnsGET(t, "www.example.org.")
	in := h2input(func(fr *http2.Framer, enc func(...string) []byte) {
		req := []string{":method", "GET", ":scheme", "https", ":path", get, ":authority", "dns.example.org"}
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(append(req, "x-bomb", strings.Repeat("b", 3000))...), EndStream: true, EndHeaders: true})
		bomb := append(enc(req...), bytes.Repeat([]byte{0x80 | 62}, 100)...)
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: bomb, EndStream: true, EndHeaders: true})
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: enc(req...), EndStream: true, EndHeaders: true})
	})
	replies, _ := readReplies(t, h2exchange(t, s, in))
	for id, want := range map[uint32]int{1: 200, 3: 431, 5: 200} {
		if r := replies[id]; r == nil || r.status != want {
			t.Fatalf("stream %d: %+v, want %d", id, r, want)
		}
	}
}

// FuzzH2 feeds the connection loop any frames after the preface: it must
// end, without a panic, and write a bounded amount.
func FuzzH2(f *testing.F) {
	get := "/dns-query?dns=AAABAAABAAAAAAAAA3d3dwdleGFtcGxlA29yZwAAAQAB"
	for _, seed := range [][]byte{
		h2input(func(fr *http2.Framer, enc func(...string) []byte) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(":method", "GET", ":scheme", "https", ":path", get), EndStream: true, EndHeaders: true})
		}),
		h2input(func(fr *http2.Framer, enc func(...string) []byte) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(":method", "POST", ":scheme", "https", ":path", "/dns-query",
				"content-type", "application/dns-message"), EndHeaders: true})
			_ = fr.WriteData(1, false, []byte{0, 1, 1, 0, 0, 1})
			_ = fr.WriteRSTStream(1, http2.ErrCodeCancel)
			_ = fr.WritePing(false, [8]byte{1})
			_ = fr.WriteWindowUpdate(0, 1000)
			_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1})
		}),
	} {
		f.Add(seed[len(http2.ClientPreface):])
	}
	s := newTestDoHServer(f)
	f.Fuzz(func(t *testing.T, frames []byte) {
		out := h2exchange(t, s, append([]byte(http2.ClientPreface), frames...))
		if len(out) > 4*h2MaxQueued+len(frames)*64 {
			t.Fatalf("%d octets written for %d read", len(out), len(frames))
		}
	})
}

// TestH2HeadersAndResponses: the server's header fields go with every
// response (answers, errors, fixed responses), once each; a fixed
// response has its status, body and fields, its own replacing the
// server's of the same name, and HEAD gets it without the body.
func TestH2HeadersAndResponses(t *testing.T) {
	s := newTestServer(t)
	s.doh = &dohSide{path: DefaultDoHPath}
	err := s.doh.setResponses(&DoHServer{
		Headers: map[string]string{"Access-Control-Allow-Origin": "*", "X-Content-Type-Options": "nosniff"},
		Responses: []DoHResponse{
			{Path: "/health", Status: 200, Body: "OK\n"},
			{Path: "/coffee", Status: 418, Body: "C0FFEE", Headers: map[string]string{"FoO": "bar", "access-control-allow-origin": "https://example.org"}},
			{Path: "/", Status: 308, Headers: map[string]string{"Location": "https://example.org/"}},
			{Path: "/json", Status: 200, Body: "{}", Headers: map[string]string{"Content-Type": "application/json"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	s.doh.provision(s.ctx, s)
	req := func(method, path string, extra ...string) []string {
		return append([]string{":method", method, ":scheme", "https", ":path", path, ":authority", "dns.example.org"}, extra...)
	}
	paths := map[uint32][]string{1: req("GET", dnsGET(t, "www.example.org.")), 3: req("GET", "/other"), 5: req("GET", "/health"),
		7: req("GET", "/coffee?x=1"), 9: req("GET", "/"), 11: req("HEAD", "/health"), 13: req("POST", "/dns-query", "content-type", "text/plain"),
		15: req("GET", "/json")}
	in := h2input(func(fr *http2.Framer, enc func(...string) []byte) {
		for id := uint32(1); id <= 15; id += 2 {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: enc(paths[id]...), EndStream: true, EndHeaders: true})
		}
	})
	replies, _ := readReplies(t, h2exchange(t, s, in))
	for id, want := range map[uint32]struct {
		status             int
		body, ctype, acao  string
		extraName, extraIs string
	}{
		1:  {200, "", "application/dns-message", "*", "", ""},
		3:  {404, "not found: DNS over HTTPS is at /dns-query\n", "text/plain; charset=utf-8", "*", "", ""},
		5:  {200, "OK\n", "text/plain; charset=utf-8", "*", "content-length", "3"},
		7:  {418, "C0FFEE", "text/plain; charset=utf-8", "https://example.org", "foo", "bar"},
		9:  {308, "", "", "*", "location", "https://example.org/"},
		11: {200, "", "text/plain; charset=utf-8", "*", "content-length", "3"},
		13: {415, "POST body must be application/dns-message\n", "text/plain; charset=utf-8", "*", "", ""},
		15: {200, "{}", "application/json", "*", "", ""},
	} {
		r := replies[id]
		if r == nil || r.status != want.status || (want.body != "" || id == 9 || id == 11) && string(r.body) != want.body ||
			r.hdr["content-type"] != want.ctype || r.hdr["access-control-allow-origin"] != want.acao ||
			want.extraName != "" && r.hdr[want.extraName] != want.extraIs {
			t.Errorf("stream %d %v: %+v, want %+v", id, paths[id], r, want)
			continue
		}
		// the operator's X-Content-Type-Options replaces the server's own
		for name, n := range r.n {
			if n != 1 {
				t.Errorf("stream %d: %s sent %d times", id, name, n)
			}
		}
		if r.hdr["x-content-type-options"] != "nosniff" {
			t.Errorf("stream %d: no x-content-type-options: %v", id, r.hdr)
		}
	}
}

// TestDoHServerConfigErrors: a bad doh block or path is refused with a
// message that names what is wrong.
func TestDoHServerConfigErrors(t *testing.T) {
	for in, want := range map[string]string{
		"doh 127.0.0.1:8444 {\n\theader X-A\n}":                                     "header takes a field name and a value, e.g. header Access-Control-Allow-Origin *, at Testfile:2",
		"doh 127.0.0.1:8444 {\n\theader X-A 1\n\theader x-a 2\n}":                   "header x-a is given twice (names are not case-sensitive), at Testfile:3",
		"doh 127.0.0.1:8444 {\n\trespond /health\n}":                                "respond takes a path, a status and an optional body, e.g. respond /health 200 OK, at Testfile:2",
		"doh 127.0.0.1:8444 {\n\trespond /health ok\n}":                             `respond /health: status "ok" is not a number, at Testfile:2`,
		"doh 127.0.0.1:8444 {\n\trespond / 308 {\n\t\tlocation /x\n\t}\n}":          `respond /: unrecognized option "location" (want header), at Testfile:3`,
		"doh {\n\tzone example.org {\n\t\trecord \"www 60 IN A 192.0.2.1\"\n\t}\n}": "doh needs a listen address, e.g. doh 127.0.0.1:443",
		"doh 127.0.0.1:8444 {\n\tpath\n}":                                           "wrong argument count",
		"doh 127.0.0.1:8444 {\n\tjson maybe\n}":                                     "json takes on or off",
		"doh 127.0.0.1:8444 {\n\tcache_control none\n}":                             "cache_control takes on or off, at Testfile:2",
		"doh 127.0.0.1:8444 {\n\ttrusted_proxies\n}":                                "trusted_proxies takes addresses or prefixes, or private_ranges, at Testfile:2",
		"doh 127.0.0.1:8444 {\n\tcleartext yes\n}":                                  "wrong argument count",
		"doh 127.0.0.1:8444 {\n\tframe_size 1\n}":                                   "unrecognized subdirective 'frame_size' (not a doh option nor a dns handler)",
		"doh 127.0.0.1:8444 {\n\twrite_timeout never\n}":                            "never",
		"doh 127.0.0.1:8444 {\n\tmax_in_flight -1\n}":                               "-1",
		"doh 127.0.0.1:8444 {\n\ttcp_fast_open many\n}":                             "many",
		"doh 127.0.0.1:8444 {\n\tmax_connection_rate_per_client 0\n}":               `max_connection_rate_per_client "0": want a rate above 0`,
		"doh 127.0.0.1:8444 {\n\tmax_connection_rate_per_client lots\n}":            `max_connection_rate_per_client "lots": want a rate above 0`,
		"doh 127.0.0.1:8444 {\n\tmax_connection_duration soon\n}":                   `max_connection_duration: time: invalid duration "soon", at Testfile:2`,
		"doh 127.0.0.1:8444 {\n\tmax_connection_duration -5s\n}":                    `max_connection_duration must be positive, got -5s, at Testfile:2`,
	} {
		err := new(DoHServer).UnmarshalCaddyfile(caddyfile.NewTestDispenser(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error with %q", in, err, want)
		}
	}
	app := &DoHApp{Servers: map[string]*DoHServer{"d": {Server: Server{Listen: []string{"127.0.0.1:8444"}}, Path: "dns-query?x"}}}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := app.Provision(ctx); err == nil || !strings.Contains(err.Error(), `server d: path "dns-query?x" is not a request path`) {
		t.Errorf("a path without /: %v", err)
	}
	for _, c := range []struct {
		headers   map[string]string
		responses []DoHResponse
		want      string
	}{
		{map[string]string{"Cache-Control": "no-store"}, nil, "server d: headers: Cache-Control is set by the server itself"},
		{map[string]string{"Content-Type": "text/html"}, nil, "server d: headers: Content-Type is set by the server itself"},
		{map[string]string{"Connection": "close"}, nil, "server d: headers: Connection is connection-specific"},
		{map[string]string{"X A": "1"}, nil, `server d: headers: "X A" is not a header field name`},
		{map[string]string{"X-A": "1\r\nX-B: 2"}, nil, `server d: headers: X-A: the value "1\r\nX-B: 2" has a character a header field cannot carry`},
		{map[string]string{"X-A": "1", "x-a": "2"}, nil, "is given twice"},
		{nil, []DoHResponse{{Path: "health", Status: 200}}, `server d: responses[0]: path "health" is not a request path`},
		{nil, []DoHResponse{{Path: "/dns-query", Status: 200}}, "server d: responses[0]: path /dns-query is where DNS over HTTPS is answered"},
		{nil, []DoHResponse{{Path: "/a", Status: 200}, {Path: "/a", Status: 204}}, "server d: responses[1]: path /a has a response already"},
		{nil, []DoHResponse{{Path: "/a", Status: 101}}, "server d: responses[0]: status 101: want 200 to 599"},
		{nil, []DoHResponse{{Path: "/a", Status: 204, Body: "x"}}, "server d: responses[0]: status 204 has no body"},
		{nil, []DoHResponse{{Path: "/a", Status: 200, Headers: map[string]string{"Content-Length": "9"}}}, "server d: responses[0].headers: Content-Length is set by the server itself"},
	} {
		ds := &DoHServer{Server: Server{Listen: []string{"127.0.0.1:8444"}}, Headers: c.headers, Responses: c.responses}
		app := &DoHApp{Servers: map[string]*DoHServer{"d": ds}}
		if err := app.Provision(ctx); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v %+v: %v, want an error with %q", c.headers, c.responses, err, c.want)
		}
	}
	app = &DoHApp{Servers: map[string]*DoHServer{"d": {Server: Server{Listen: []string{"127.0.0.1:8444"}}, TrustedProxies: []string{"10.0.0.0/8", "proxy.example"}}}}
	if err := app.Provision(ctx); err == nil || !strings.Contains(err.Error(), `server d: trusted_proxies[1]: "proxy.example" is not an IP address or prefix`) {
		t.Errorf("a trusted proxy by name: %v", err)
	}
	for _, tlsSet := range []func(*Server){
		func(s *Server) { s.ServerNames = []string{"dns.example.org"} },
		func(s *Server) { s.TLSConnPolicies = caddytls.ConnectionPolicies{new(caddytls.ConnectionPolicy)} },
	} {
		ds := &DoHServer{Server: Server{Listen: []string{"127.0.0.1:8080"}}, Cleartext: true}
		tlsSet(&ds.Server)
		app = &DoHApp{Servers: map[string]*DoHServer{"d": ds}}
		if err := app.Provision(ctx); err == nil || !strings.Contains(err.Error(), "server d: cleartext: a server without TLS has no use for tls_connection_policies (connection_policy) or server_names") {
			t.Errorf("cleartext with TLS settings: %v", err)
		}
	}
	app = &DoHApp{Servers: map[string]*DoHServer{"d": {Server: Server{Listen: []string{"127.0.0.1:8444"}, MaxConnectionDuration: -1}}}}
	if err := app.Provision(ctx); err == nil || !strings.Contains(err.Error(), "server d: max_connection_duration -1ns: want a duration above 0, or 0 for none") {
		t.Errorf("a negative connection duration: %v", err)
	}
	app = &DoHApp{Servers: map[string]*DoHServer{"d": {Server: Server{Listen: []string{"127.0.0.1:8444"}, MaxConnectionRatePerClient: -1}}}}
	if err := app.Provision(ctx); err == nil || !strings.Contains(err.Error(), "server d: max_connection_rate_per_client -1: want a rate above 0, or 0 for none") {
		t.Errorf("a negative connection rate: %v", err)
	}
	for _, q := range []int{-1, 65536} {
		app = &DoHApp{Servers: map[string]*DoHServer{"d": {Server: Server{Listen: []string{"127.0.0.1:8444"}, TCPFastOpen: q}}}}
		if err := app.Provision(ctx); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("server d: tcp_fast_open %d: want a queue length of 1 to 65535, or 0 for off", q)) {
			t.Errorf("tcp_fast_open %d: %v", q, err)
		}
	}
}

// BenchmarkH2GET: one connection's frame loop answering GETs from a
// zone, 100 a round (allocations and CPU per request, without TLS).
func BenchmarkH2GET(b *testing.B) {
	s := newTestDoHServer(b)
	paths := make([]string, 100)
	for i := range paths {
		paths[i] = dnsGET(b, "www.example.org.")
	}
	in := h2input(func(fr *http2.Framer, enc func(...string) []byte) {
		for i, p := range paths {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: enc(":method", "GET", ":scheme", "https",
				":path", p, ":authority", "dns.example.org", "user-agent", "h2load"), EndStream: true, EndHeaders: true})
		}
	})
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += 100 {
		h2exchange(b, s, in)
	}
}

// TestLengthText: the content-length strings are strconv.Itoa's, the
// cached ones allocate nothing, and lengths past the cache still work.
func TestLengthText(t *testing.T) {
	for _, n := range []int{0, 7, 99, 100, 468, 4095, 4096, 65535} {
		if got := lengthText(n); got != strconv.Itoa(n) {
			t.Fatalf("lengthText(%d) = %q", n, got)
		}
	}
	if a := testing.AllocsPerRun(100, func() { _ = lengthText(468) }); a != 0 {
		t.Fatalf("lengthText(468) allocates %v times", a)
	}
}

// TestFrameBuffered: a frame is whole in the read buffer when its header
// and all of its payload are, whatever its length's octets.
func TestFrameBuffered(t *testing.T) {
	for _, l := range []int{0, 1, 2, 6, 7, 8, 9, 255, 256, 257, 0x0303, readBufferSize - http2FrameHeaderLen} {
		for _, have := range []int{l - 1, l} {
			if have < 0 {
				continue
			}
			b := append([]byte{byte(l >> 16), byte(l >> 8), byte(l), 0, 0, 0, 0, 0, 1}, make([]byte, have)...)
			in := bufio.NewReaderSize(bytes.NewReader(b), readBufferSize)
			if _, err := in.Peek(1); err != nil {
				t.Fatal(err)
			}
			if got := frameBuffered(in); got != (have == l) {
				t.Errorf("length %d, %d octets of payload buffered: whole %v", l, have, got)
			}
		}
	}
	in := bufio.NewReaderSize(bytes.NewReader([]byte{0, 0, 0, 4, 0, 0, 0}), readBufferSize)
	_, _ = in.Peek(1)
	if frameBuffered(in) {
		t.Error("7 octets of a header: whole")
	}
}
