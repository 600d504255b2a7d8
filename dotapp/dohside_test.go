package dotapp

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"golang.org/x/net/http2"
)

// TestForwardedFor: the client X-Forwarded-For gives behind a trusted
// proxy, read from the right; another peer's is ignored.
func TestForwardedFor(t *testing.T) {
	d := &dohSide{}
	if err := d.setTrusted([]string{"127.0.0.2", "10.0.0.0/8", "private_ranges"}); err != nil {
		t.Fatal(err)
	}
	proxy, other := netip.MustParseAddrPort("127.0.0.2:4000"), netip.MustParseAddrPort("198.51.100.1:4000")
	for _, c := range []struct {
		peer      netip.AddrPort
		xff, want string // want: the client, or the error's start
	}{
		{proxy, "192.0.2.1", "192.0.2.1:0"},
		{proxy, "192.0.2.1:4200", "192.0.2.1:4200"},
		{proxy, "198.51.100.7, 192.0.2.1", "192.0.2.1:0"},
		{proxy, "192.0.2.1, 10.1.2.3,172.16.0.1", "192.0.2.1:0"}, // past trusted proxies (private_ranges)
		{proxy, "spoofed, 192.0.2.1, 10.1.2.3", "192.0.2.1:0"},   // left of the client: not read
		{proxy, "10.0.0.1, 10.0.0.2", "10.0.0.1:0"},              // all trusted: the leftmost
		{proxy, "[2001:db8::1]:443", "[2001:db8::1]:443"},        // brackets and port
		{proxy, "2001:db8::1", "[2001:db8::1]:0"},                // bare IPv6
		{proxy, "[2001:db8::2]", "[2001:db8::2]:0"},              // brackets, no port
		{proxy, "::ffff:192.0.2.9", "192.0.2.9:0"},               // mapped: IPv4
		{proxy, "192.0.2.1, , \t", "192.0.2.1:0"},                // empty elements
		{proxy, "", "127.0.0.2:4000"},                            // none: the proxy
		{other, "192.0.2.1", "198.51.100.1:4000"},                // not trusted: ignored
		{proxy, "192.0.2.1, unknown", `X-Forwarded-For: "unknown" is not an IP address`},
		{proxy, "192.0.2.1, 10.0.0.1, _gazonk", `X-Forwarded-For: "_gazonk"`},
		{proxy, strings.Repeat("x", 200), `X-Forwarded-For: "` + strings.Repeat("x", 64) + `..." is not`},
	} {
		client := c.peer
		msg := d.forwardedFor(&client, c.xff)
		got := client.String()
		if msg != "" {
			got = msg
		}
		if !strings.HasPrefix(got, c.want) {
			t.Errorf("from %s, X-Forwarded-For %q: %s, want %s", c.peer, c.xff, got, c.want)
		}
	}
	if err := d.setTrusted([]string{"10.0.0.1/8"}); err == nil || err.Error() != `trusted_proxies[0]: "10.0.0.1/8" has bits set past its length (did you mean 10.0.0.0/8?)` {
		t.Errorf("a bad prefix: %v", err)
	}
	// no trusted proxies: the header is never read
	d = &dohSide{}
	client := proxy
	if msg := d.forwardedFor(&client, "192.0.2.1"); msg != "" || client != proxy {
		t.Errorf("no trusted proxies: %s %q", client, msg)
	}
}

// TestH2ForwardedFor: several X-Forwarded-For fields on HTTP/2 are one
// list, in order; a trusted proxy's bad one is 400, naming it.
func TestH2ForwardedFor(t *testing.T) {
	s := newTestServer(t)
	s.doh = &dohSide{path: DefaultDoHPath}
	if err := s.doh.setTrusted([]string{"192.0.2.1"}); err != nil { // h2exchange's client
		t.Fatal(err)
	}
	s.doh.provision(s.ctx, s)
	get := dnsGET(t, "www.example.org.")
	in := h2input(func(fr *http2.Framer, enc func(...string) []byte) {
		for i, xff := range [][2]string{{"bogus", "192.0.2.7"}, {"192.0.2.7", "bogus"}} {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), EndStream: true, EndHeaders: true,
				BlockFragment: enc(":method", "GET", ":scheme", "https", ":path", get, ":authority", "dns.example.org",
					"x-forwarded-for", xff[0], "x-forwarded-for", xff[1])})
		}
	})
	replies, _ := readReplies(t, h2exchange(t, s, in))
	if r := replies[1]; r == nil || r.status != 200 {
		t.Errorf("bogus, then 192.0.2.7: %+v, want 200 (the rightmost is the client)", r)
	}
	if r := replies[3]; r == nil || r.status != 400 || !strings.Contains(string(r.body), `X-Forwarded-For: "bogus" is not an IP address`) {
		t.Errorf("192.0.2.7, then bogus: %+v, want 400 naming it", r)
	}
}

// FuzzForwardedFor: any X-Forwarded-For gives the proxy, an address it
// holds, or an error; never a panic, and no more than the field's work.
func FuzzForwardedFor(f *testing.F) {
	for _, s := range []string{"192.0.2.1", "a, 10.0.0.1", "[::1]:53, 10.0.0.2", ",,,", "[", "1.2.3.4:99999", "fe80::1%eth0"} {
		f.Add(s)
	}
	d := &dohSide{}
	if err := d.setTrusted([]string{"127.0.0.0/8", "10.0.0.0/8"}); err != nil {
		f.Fatal(err)
	}
	proxy := netip.MustParseAddrPort("127.0.0.2:4000")
	f.Fuzz(func(t *testing.T, xff string) {
		client := proxy
		msg := d.forwardedFor(&client, xff)
		switch {
		case msg != "":
			if !strings.HasPrefix(msg, "X-Forwarded-For: ") || len(msg) > 4*64+64 {
				t.Fatalf("%q: %q", xff, msg)
			}
		case client != proxy:
			if !client.IsValid() || client.Addr().Zone() != "" || client.Addr().Is4In6() {
				t.Fatalf("%q: client %v", xff, client)
			}
		}
	})
}

// TestSubPaths: with sub_paths the paths under the DoH path are DoH too,
// and the request carries its path; without, they get 404. A fixed
// response may not take one of them.
func TestSubPaths(t *testing.T) {
	for _, sub := range []bool{false, true} {
		d := &dohSide{path: "/dns-query", subPaths: sub}
		for path, want := range map[string]bool{"/dns-query": true, "/dns-query/kids": sub, "/dns-query/a/b": sub, "/dns-querykids": false, "/": false, "/dns": false} {
			if got := d.isDoH(path); got != want {
				t.Errorf("sub_paths %v: isDoH(%q) = %v", sub, path, got)
			}
		}
	}
	root := &dohSide{path: "/", subPaths: true}
	if !root.isDoH("/kids") || !root.isDoH("/") {
		t.Error("path / with sub_paths: every path is DoH")
	}
	d := &dohSide{path: "/dns-query", subPaths: true}
	if err := d.setResponses(&DoHServer{Responses: []DoHResponse{{Path: "/dns-query/health", Status: 200}}}); err == nil ||
		!strings.Contains(err.Error(), "responses[0]: path /dns-query/health is where DNS over HTTPS is answered") {
		t.Errorf("a fixed response under the DoH path with sub_paths: %v", err)
	}

	s := newTestServer(t)
	s.doh = &dohSide{path: DefaultDoHPath, subPaths: true}
	s.doh.provision(s.ctx, s)
	get := dnsGET(t, "www.example.org.")
	in := h2input(func(fr *http2.Framer, enc func(...string) []byte) {
		for i, p := range []string{strings.Replace(get, "/dns-query?", "/dns-query/kids?", 1), strings.Replace(get, "/dns-query?", "/elsewhere?", 1)} {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), EndStream: true, EndHeaders: true,
				BlockFragment: enc(":method", "GET", ":scheme", "https", ":path", p, ":authority", "dns.example.org")})
		}
	})
	replies, _ := readReplies(t, h2exchange(t, s, in))
	if r := replies[1]; r == nil || r.status != 200 || r.hdr["content-type"] != "application/dns-message" {
		t.Errorf("/dns-query/kids: %+v, want a DoH answer", r)
	}
	if r := replies[3]; r == nil || r.status != 404 {
		t.Errorf("/elsewhere: %+v, want 404", r)
	}
}

// TestH2ForwardedRoom: a long X-Forwarded-For's room (4,400 octets
// here) is not kept for the connection's next header block.
func TestH2ForwardedRoom(t *testing.T) {
	s := newTestServer(t)
	s.doh = &dohSide{path: DefaultDoHPath}
	s.doh.provision(s.ctx, s)
	get := dnsGET(t, "www.example.org.")
	in := h2input(func(fr *http2.Framer, enc func(...string) []byte) {
		for i, xff := range []string{strings.Repeat("192.0.2.1, ", 400), "192.0.2.7"} {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), EndStream: true, EndHeaders: true,
				BlockFragment: enc(":method", "GET", ":scheme", "https", ":path", get, ":authority", "dns.example.org", "x-forwarded-for", xff)})
		}
	})
	h, _ := h2run(s, in)
	if h.blk == nil || string(h.blk.forwarded) != "192.0.2.7" || cap(h.blk.forwarded) > h2KeepForwarded {
		t.Fatalf("the second block's field: %q, room %d (at most %d kept)", h.blk.forwarded, cap(h.blk.forwarded), h2KeepForwarded)
	}
}

// trickleConn is a client that sends data a chunk octets at a time.
type trickleConn struct {
	net.Conn
	data  []byte
	chunk int
	read  int // octets taken
	calls int // reads
}

func (c *trickleConn) Read(p []byte) (int, error) {
	c.calls++
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), c.chunk)], c.data)
	c.data = c.data[n:]
	c.read += n
	return n, nil
}

// TestSniff: a cleartext connection is HTTP/2 for the client preface,
// HTTP/1.1 for a request line's method, and refused otherwise, however
// the octets come; what was read is read again.
func TestSniff(t *testing.T) {
	for in, want := range map[string]string{
		http2.ClientPreface + "\x00\x00\x00\x04":       "h2",
		"GET /dns-query?dns=AAAB HTTP/1.1\r\n":         "h1",
		"POST /dns-query HTTP/1.1\r\n":                 "h1",
		"OPTIONS * HTTP/1.1\r\n":                       "h1",
		"PRI * HTTP/1.1\r\n\r\n":                       "refused", // the preface's start, then not
		"INVALID CONNECTION PREFACE\r\n\r\n":           "refused", // h2spec 3.5/2
		"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03": "refused", // a TLS ClientHello
		"GE":                 "refused", // ends undecided
		"":                   "refused",
		"get / HTTP/1.1\r\n": "refused", // methods are case-sensitive
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[:20] + "XXXXXXXXXX": "refused",
	} {
		for _, chunk := range []int{1, 3, 64} {
			tc := &trickleConn{data: []byte(in), chunk: chunk}
			c := &conn{raw: tc}
			h2, err := c.sniff()
			got := "refused"
			if err == nil {
				got = map[bool]string{true: "h2", false: "h1"}[h2]
			}
			if got != want {
				t.Errorf("%q in chunks of %d: %s (%v), want %s", in, chunk, got, err, want)
				continue
			}
			if err != nil {
				continue
			}
			replayed, _ := io.ReadAll(c.tc)
			if string(replayed) != in {
				t.Errorf("%q in chunks of %d: read again %q", in, chunk, replayed)
			}
		}
	}
}

// FuzzSniff: whatever a client sends first, sniff reads at most the
// preface's length, decides as the rules say, and loses no octet.
func FuzzSniff(f *testing.F) {
	f.Add([]byte(http2.ClientPreface), 5)
	f.Add([]byte("GET / HTTP/1.1\r\n"), 1)
	f.Add([]byte("PRI * HTTP/1.1"), 2)
	f.Fuzz(func(t *testing.T, data []byte, chunk int) {
		if chunk < 1 || chunk > 64 {
			return
		}
		tc := &trickleConn{data: data, chunk: chunk}
		c := &conn{raw: tc}
		h2, err := c.sniff()
		if tc.read > len(http2.ClientPreface) {
			t.Fatalf("read %d octets", tc.read)
		}
		isH1 := slices.ContainsFunc(h1Methods, func(m string) bool { return bytes.HasPrefix(data, []byte(m)) })
		isH2 := bytes.HasPrefix(data, []byte(http2.ClientPreface))
		switch {
		case err != nil && (isH1 || isH2), err == nil && h2 != isH2, err == nil && !h2 && !isH1:
			t.Fatalf("%q: h2 %v, err %v", data, h2, err)
		}
		if err == nil {
			if all, _ := io.ReadAll(c.tc); !bytes.Equal(all, data) {
				t.Fatalf("%q: read again %q", data, all)
			}
		}
	})
}

// TestH2ReadsBuffered: the HTTP/2 loop reads its connection a buffer at
// a time, not a frame header and then a payload (in cleartext, each
// read is a system call): 40 GETs that came together take a read of the
// socket for each buffer's worth, and one more for the end.
func TestH2ReadsBuffered(t *testing.T) {
	s := newTestDoHServer(t)
	get := dnsGET(t, "www.example.org.")
	in := h2input(func(fr *http2.Framer, enc func(...string) []byte) {
		for i := range 40 {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), EndStream: true, EndHeaders: true,
				BlockFragment: enc(":method", "GET", ":scheme", "http", ":path", get, ":authority", "dns.example.org")})
		}
	})
	tc := &trickleConn{data: in, chunk: len(in)} // all of it in the socket at once
	_, out := h2runFrom(s, tc)
	replies, _ := readReplies(t, out)
	if len(replies) != 40 {
		t.Fatalf("%d answers, want 40", len(replies))
	}
	if want := (len(in)+readBufferSize-1)/readBufferSize + 1; tc.calls > want {
		t.Fatalf("%d reads of the connection for %d octets, want at most %d", tc.calls, len(in), want)
	}
}
