package integration

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/http2"
)

// TestDoHServerStaple: the dedicated server's handshake (ALPN h2)
// carries the ocsp app's staple, as openssl sees it.
func TestDoHServerStaple(t *testing.T) {
	env := startDoHSite(t, dohServerSite)
	out := sClient(t, env.addr, "dns.example.test", "-alpn", "h2")
	if !strings.Contains(out, "OCSP Response Status: successful") || !strings.Contains(out, "ALPN protocol: h2") {
		t.Fatalf("openssl s_client -alpn h2 -status:\n%s", out)
	}
	out = sClient(t, env.addr, "", "-alpn", "http/1.1")
	if !strings.Contains(out, "OCSP Response Status: successful") || !strings.Contains(out, "ALPN protocol: http/1.1") {
		t.Fatalf("openssl s_client -alpn http/1.1 -status, no SNI:\n%s", out)
	}
}

// TestDoHServerH2spec: h2spec (its HTTP/2 and HPACK conformance cases)
// passes whole against the dedicated server, over TLS and in cleartext
// (prior knowledge).
func TestDoHServerH2spec(t *testing.T) {
	bin := t.TempDir() + "/h2spec"
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/summerwind/h2spec/cmd/h2spec").CombinedOutput(); err != nil {
		t.Fatalf("building h2spec (a tool of go.mod): %v\n%s", err, out)
	}
	for _, tc := range []struct {
		name, site string
		tls        []string
	}{
		{"tls", dohServerSite, []string{"-t", "-k"}},
		{"cleartext", dohCleartextSite, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := freePort(t)
			startCaddy(t, t.TempDir(), tc.site, Vars{"Port": port, "Zone": exampleZone(t), "Up": newTestUpstream(t, 1).addr})
			waitListen(t, fmt.Sprintf("127.0.0.1:%d", port))
			out, _ := run(t, true, bin, append(tc.tls, "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-P", "/dns-query", "-o", "5")...)
			m := regexp.MustCompile(`(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed`).FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("h2spec printed no summary:\n%s", out)
			}
			total, _ := strconv.Atoi(m[1])
			if total < 145 || m[1] != m[2] {
				t.Fatalf("h2spec: %s\n%s", m[0], out)
			}
			t.Logf("h2spec: %s", m[0])
		})
	}
}

// TestDoHServerReloadH2load: h2load (long-lived HTTP/2, 10 streams a
// connection) and curl (a connection a request) across five reloads
// through the admin API: no request fails.
func TestDoHServerReloadH2load(t *testing.T) {
	h2load := need(t, "h2load")
	curl := need(t, "curl")
	env := startDoHSite(t, dohServerSite)
	_, port, _ := net.SplitHostPort(env.addr)
	url := env.url + "?dns=" + base64.RawURLEncoding.EncodeToString(packQuery(t, "www.example.test.", dns.TypeA, nil))
	// h2load runs of 20,000 requests, one after the other until the
	// reloads are done (a run may end between two reloads on a fast
	// machine; most span one)
	var outs []string
	h2stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			out, _ := run(t, true, h2load, "-n", "20000", "-c", "4", "-m", "10", "--connect-to", "127.0.0.1:"+port, url)
			outs = append(outs, out)
			select {
			case <-h2stop:
				return
			default:
			}
		}
	}()
	var curlOK, curlFailed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			o, err := exec.Command(curl, "-s", "--http2", "--cacert", env.root, "--resolve", "dns.example.test:"+port+":127.0.0.1",
				"-o", "/dev/null", "-w", "%{http_code}", url).Output()
			if err == nil && string(o) == "200" {
				curlOK.Add(1)
			} else {
				curlFailed.Add(1)
			}
		}
	}()
	answered := func() int64 { return metric(t, env.c, `dnsfront_doh_responses_total{code="200",server="doh0"}`) }
	for i := 0; i < 5; i++ {
		n := answered()
		if err := eventually(20*time.Second, func() bool { return answered() > n+2000 }); err != nil {
			t.Fatalf("load stalled before reload %d", i+1)
		}
		if err := env.c.reload("", nil); err != nil {
			t.Fatal(err)
		}
	}
	close(h2stop)
	<-done
	close(stop)
	wg.Wait()
	for _, out := range outs {
		if !strings.Contains(out, "20000 succeeded, 0 failed, 0 errored, 0 timeout") || !strings.Contains(out, "status codes: 20000 2xx") {
			t.Fatalf("h2load across 5 reloads:\n%s", out)
		}
	}
	if curlFailed.Load() != 0 || curlOK.Load() == 0 {
		t.Fatalf("curl across 5 reloads: %d answered, %d failed", curlOK.Load(), curlFailed.Load())
	}
	t.Logf("h2load: %d runs of 20000 requests, curl: %d requests, across 5 reloads, none failed", len(outs), curlOK.Load())
}

// metric reads one sample of the admin API's /metrics (0 when absent).
func metric(t testing.TB, c *caddyProc, sample string) int64 {
	t.Helper()
	for _, l := range strings.Split(string(c.api("GET", "/metrics")), "\n") {
		if v, ok := strings.CutPrefix(l, sample+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return int64(f)
		}
	}
	return 0
}

// blackhole is an upstream that counts queries and answers none.
type blackhole struct {
	pc    net.PacketConn
	count atomic.Int64
}

func newBlackhole(t *testing.T) *blackhole {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{pc: pc}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			b.count.Add(1)
		}
	}()
	return b
}

const attackSite = `{
	ocsp {
		issue dns.example.test 127.0.0.1
	}
	doh :{{.Port}} {
		max_in_flight 20
		idle_timeout 2s
		write_timeout 2s
		zone example.test {{.Zone}}
		forward udp://{{.Up}} {
			timeout 20s
			tries 1
		}
	}
}
`

// TestDoHServerAttacks: the known HTTP/2 attacks each end (or are held
// to the server's limits) while another client is served all along, with
// no request of that client failing.
func TestDoHServerAttacks(t *testing.T) {
	hole := newBlackhole(t)
	dir := t.TempDir()
	port := freePort(t)
	env := &dohEnv{addr: fmt.Sprintf("127.0.0.1:%d", port), url: fmt.Sprintf("https://dns.example.test:%d/dns-query", port)}
	env.c = startCaddy(t, dir, attackSite, Vars{"Port": port, "Zone": exampleZone(t), "Up": hole.pc.LocalAddr().String()})
	waitListen(t, env.addr)
	env.root = dir + "/data/caddy/pki/authorities/local/root.crt"
	cfg := env.tlsConfig(t)

	// the other client: GETs over a connection of its own, all along
	var served, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		client := &http.Client{Timeout: 10 * time.Second, Transport: &http2.Transport{TLSClientConfig: cfg,
			DialTLS: func(network, _ string, c *tls.Config) (net.Conn, error) { return tls.Dial(network, env.addr, c) }}}
		url := env.url + "?dns=" + base64.RawURLEncoding.EncodeToString(packQuery(t, "www.example.test.", dns.TypeA, nil))
		for {
			select {
			case <-stop:
				return
			default:
			}
			resp, err := client.Get(url)
			if err == nil {
				resp.Body.Close()
			}
			if err == nil && resp.StatusCode == 200 {
				served.Add(1)
			} else {
				failed.Add(1)
			}
		}
	}()
	t.Cleanup(func() { close(stop); wg.Wait() })
	stillServed := func(t *testing.T) {
		t.Helper()
		n := served.Load()
		if err := eventually(10*time.Second, func() bool { return served.Load() > n+50 }); err != nil {
			t.Fatalf("the other client is no longer served (%d answered, %d failed)", served.Load(), failed.Load())
		}
		if failed.Load() != 0 {
			t.Fatalf("%d requests of the other client failed", failed.Load())
		}
	}
	upQuery := func(i int) string {
		return "/dns-query?dns=" + base64.RawURLEncoding.EncodeToString(packQuery(t, fmt.Sprintf("q%d.up.test.", i), dns.TypeA, nil))
	}

	t.Run("rapid reset", func(t *testing.T) {
		// CVE-2023-44487: streams opened and reset at once are not
		// counted as open; their answers are, until made
		c := dialH2(t, env.addr, cfg)
		before := hole.count.Load()
		go func() {
			w := bufio.NewWriter(c.conn)
			fr := http2.NewFramer(w, nil)
			for i := 0; i < 5000; i++ {
				id := uint32(2*i + 1)
				if fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.block("GET", upQuery(i)), EndStream: true, EndHeaders: true}) != nil ||
					fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
					return
				}
				if i%100 == 99 && w.Flush() != nil {
					return
				}
			}
			_ = w.Flush()
		}()
		if err := eventually(10*time.Second, func() bool { return hole.count.Load() >= before+20 }); err != nil {
			t.Fatalf("the resets' queries did not reach the upstream: %d", hole.count.Load()-before)
		}
		stillServed(t)
		if n := hole.count.Load() - before; n > 20 {
			t.Fatalf("%d upstream queries for 5000 reset streams: more than max_in_flight (20) at once", n)
		}
	})

	t.Run("CONTINUATION flood", func(t *testing.T) {
		// CVE-2024-27316 class: a header block that never ends, growing
		c := dialH2(t, env.addr, cfg)
		sent := 0
		block := c.block("GET", "/dns-query")
		w := http2.NewFramer(c.conn, nil) // the reader (await) writes acknowledgements with c.fr
		go func() {
			field := bytes.Repeat([]byte("v"), 1000)
			if w.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block}) != nil {
				return
			}
			for i := 0; sent < 50<<20; i++ {
				var frag []byte
				for len(frag) < 15000 {
					// a literal field, not indexed: name and value each time
					frag = append(frag, 0x00, byte(len("x-flood")))
					frag = append(frag, "x-flood"...)
					frag = append(frag, 0x7f, byte(len(field)-127)&0x7f|0x80, byte((len(field)-127)>>7))
					frag = append(frag, field...)
				}
				if w.WriteContinuation(1, false, frag) != nil {
					return
				}
				sent += len(frag)
			}
		}()
		if e := c.goaway(10 * time.Second); !e.goaway && !e.closed {
			t.Fatal("the flood went on")
		} else if e.goaway && e.code != http2.ErrCodeProtocol {
			t.Fatalf("GOAWAY %v, want PROTOCOL_ERROR", e.code)
		}
		stillServed(t)
	})

	t.Run("empty CONTINUATION flood", func(t *testing.T) {
		c := dialH2(t, env.addr, cfg)
		go func() {
			w := bufio.NewWriter(c.conn)
			fr := http2.NewFramer(w, nil)
			if fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: c.block("GET", "/dns-query")}) != nil {
				return
			}
			for i := 0; i < 5_000_000; i++ {
				if fr.WriteContinuation(1, false, nil) != nil {
					return
				}
			}
			_ = w.Flush()
		}()
		if e := c.goaway(20 * time.Second); !e.goaway || e.code != http2.ErrCodeEnhanceYourCalm {
			t.Fatalf("empty CONTINUATION frames: %+v, want GOAWAY ENHANCE_YOUR_CALM", e)
		}
		stillServed(t)
	})

	for _, flood := range []struct {
		name  string
		frame func(fr *http2.Framer) error
	}{
		{"PING flood", func(fr *http2.Framer) error { return fr.WritePing(false, [8]byte{1}) }},
		{"SETTINGS flood", func(fr *http2.Framer) error {
			return fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 16384})
		}},
	} {
		t.Run(flood.name, func(t *testing.T) {
			// frames that each want an answer, from a client that reads
			// none: the answers may not pile up
			c := dialH2(t, env.addr, cfg)
			w := bufio.NewWriterSize(c.conn, 64<<10)
			fr := http2.NewFramer(w, nil)
			sent := 0
			var err error
			for ; sent < 5_000_000 && err == nil; sent++ {
				err = flood.frame(fr)
			}
			if err == nil {
				err = w.Flush()
			}
			if err == nil {
				t.Fatalf("%d frames written, and the connection is still open", sent)
			}
			t.Logf("the connection ended after %d frames: %v", sent, err)
			stillServed(t)
		})
	}

	t.Run("empty DATA frames", func(t *testing.T) {
		c := dialH2(t, env.addr, cfg)
		if err := c.headers(1, false, c.block("POST", "/dns-query", "content-type", "application/dns-message")); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 1000; i++ {
			if c.fr.WriteData(1, false, nil) != nil {
				break
			}
		}
		if e := c.goaway(10 * time.Second); !e.goaway || e.code != http2.ErrCodeEnhanceYourCalm {
			t.Fatalf("1000 empty DATA frames: %+v, want GOAWAY ENHANCE_YOUR_CALM", e)
		}
		stillServed(t)
	})

	t.Run("stream exhaustion", func(t *testing.T) {
		// streams opened and never finished: past MAX_CONCURRENT_STREAMS
		// (max_in_flight) they are refused, and the idle timeout ends them
		c := dialH2(t, env.addr, cfg)
		for i := 0; i < 20; i++ {
			if err := c.headers(uint32(2*i+1), false, c.block("POST", "/dns-query", "content-type", "application/dns-message")); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.headers(41, false, c.block("POST", "/dns-query", "content-type", "application/dns-message")); err != nil {
			t.Fatal(err)
		}
		if e := c.await(41, 10*time.Second); !e.reset || e.rst != http2.ErrCodeRefusedStream {
			t.Fatalf("the 21st open stream: %+v, want RST_STREAM REFUSED_STREAM", e)
		}
		stillServed(t)
		if e := c.goaway(10 * time.Second); !e.goaway && !e.closed {
			t.Fatalf("20 stalled streams: the connection was not ended: %+v", e)
		}
	})

	t.Run("zero window", func(t *testing.T) {
		// a client that opens no window gets the answer's HEADERS, no
		// DATA, and is let go once write_timeout passes
		c := dialH2(t, env.addr, cfg, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
		if err := c.headers(1, true, c.block("GET", "/dns-query?dns="+base64.RawURLEncoding.EncodeToString(packQuery(t, "www.example.test.", dns.TypeA, nil)))); err != nil {
			t.Fatal(err)
		}
		// PINGs keep the connection from idling out: write_timeout ends it
		// (a Framer of their own: await writes too; each frame is one
		// write of the connection)
		pinger := http2.NewFramer(c.conn, nil)
		go func() {
			for i := 0; i < 100; i++ {
				if pinger.WritePing(false, [8]byte{byte(i)}) != nil {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
		e := c.await(1, 15*time.Second)
		if e.status != 200 || len(e.body) != 0 {
			t.Fatalf("zero window: %+v, want the headers (200) and no DATA", e)
		}
		if e := c.goaway(15 * time.Second); !e.goaway && !e.closed {
			t.Fatalf("zero window: the connection was not ended: %+v", e)
		}
		stillServed(t)
	})

	t.Run("slow read", func(t *testing.T) {
		// a client that opens its windows wide, sends requests and reads
		// nothing: the server stops taking its requests once 1 MB of
		// answers wait, and write_timeout ends it
		c := dialH2(t, env.addr, cfg, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
		if err := c.fr.WriteWindowUpdate(0, 1<<31-1-65535); err != nil {
			t.Fatal(err)
		}
		before := metric(t, env.c, `dnsfront_doh_responses_total{code="200",server="doh0"}`)
		block := c.block("GET", "/dns-query?dns="+base64.RawURLEncoding.EncodeToString(packQuery(t, "www.example.test.", dns.TypeA, nil)))
		w := bufio.NewWriterSize(c.conn, 64<<10)
		fr := http2.NewFramer(w, nil)
		var err error
		sent := 0
		for ; sent < 2_000_000 && err == nil; sent++ {
			if err = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*sent + 1), BlockFragment: block, EndStream: true, EndHeaders: true}); err == nil && sent%500 == 499 {
				err = w.Flush()
			}
		}
		if err == nil {
			t.Fatalf("%d requests sent unread, and the connection is still open", sent)
		}
		t.Logf("the connection ended after %d requests (%d answered, with the other client's): %v", sent,
			metric(t, env.c, `dnsfront_doh_responses_total{code="200",server="doh0"}`)-before, err)
		stillServed(t)
	})

	t.Run("HPACK bomb", func(t *testing.T) {
		// one 3,000-octet field in the dynamic table, then a request that
		// names it 100 times in one octet each: 300 KB of header list
		c := dialH2(t, env.addr, cfg)
		path := "/dns-query?dns=" + base64.RawURLEncoding.EncodeToString(packQuery(t, "www.example.test.", dns.TypeA, nil))
		if err := c.headers(1, true, c.block("GET", path, "x-bomb", strings.Repeat("b", 3000))); err != nil {
			t.Fatal(err)
		}
		if e := c.await(1, 10*time.Second); e.status != 200 {
			t.Fatalf("the first request: %+v", e)
		}
		bomb := append(c.block("GET", path), bytes.Repeat([]byte{0x80 | 62}, 100)...) // index 62: the newest entry
		if err := c.headers(3, true, bomb); err != nil {
			t.Fatal(err)
		}
		e := c.await(3, 10*time.Second)
		if e.status != 431 && !e.goaway && !e.closed {
			t.Fatalf("HPACK bomb: %+v, want 431 or the connection ended", e)
		}
		stillServed(t)
	})
}

// TestDoHServerConnectionRate: the dedicated server's
// max_connection_rate_per_client closes a client's second new connection
// within the rate, and answers another client; curl binds 127.0.0.x to
// be each client.
func TestDoHServerConnectionRate(t *testing.T) {
	curl := need(t, "curl")
	site := strings.Replace(dohServerSite, "\tdoh :{{.Port}} {\n", "\tdoh :{{.Port}} {\n\t\tmax_connection_rate_per_client 0.1\n", 1)
	env := startDoHSite(t, site)
	_, port, _ := net.SplitHostPort(env.addr)
	get := func(from string) (string, error) {
		out, err := exec.Command(curl, "-s", "--http2", "--interface", from, "--cacert", env.root, "--resolve", "dns.example.test:"+port+":127.0.0.1",
			"-H", "accept: application/dns-json", env.url+"?name=www.example.test&type=A").CombinedOutput()
		return string(out), err
	}
	if out, err := get("127.0.0.8"); err != nil || !strings.Contains(out, "192.0.2.80") {
		t.Fatalf("first connection: %v %s", err, out)
	}
	if out, err := get("127.0.0.8"); err == nil {
		t.Fatalf("a second connection within the rate's 10 s was answered: %s", out)
	}
	if out, err := get("127.0.0.9"); err != nil || !strings.Contains(out, "192.0.2.80") {
		t.Fatalf("another client was refused: %v %s", err, out)
	}
	if n := metric(t, env.c, `dnsfront_doh_connections_refused_total{reason="max_connection_rate_per_client",server="doh0"}`); n != 1 {
		t.Errorf("%d refusals counted, want 1", n)
	}
}

// TestDoHServerHeadersAndResponses: with `header` and `respond`, curl
// over HTTP/2 and HTTP/1.1 sees the server's field on answers and errors,
// and the fixed responses (a health check, a redirect) with theirs; kdig
// is answered as before. A reload with a field the server sets itself is
// refused, naming it, and the server goes on with the fields it had.
func TestDoHServerHeadersAndResponses(t *testing.T) {
	const opts = "\t\theader Access-Control-Allow-Origin *\n\t\trespond /health 200 OK\n" +
		"\t\trespond / 308 {\n\t\t\theader Location https://dns.example.test/dns-query\n\t\t}\n"
	site := strings.Replace(dohServerSite, "\tdoh :{{.Port}} {\n", "\tdoh :{{.Port}} {\n"+opts, 1)
	env := startDoHSite(t, site)
	_, port, _ := net.SplitHostPort(env.addr)
	curl := need(t, "curl")
	base := strings.TrimSuffix(env.url, "/dns-query")
	get := env.url + "?dns=" + base64.RawURLEncoding.EncodeToString(packQuery(t, "www.example.test.", dns.TypeA, nil))
	check := func(proto string) {
		t.Helper()
		for _, tc := range []struct {
			args       []string
			status     string
			body, want string // want: a field, in lower case
		}{
			{[]string{get}, "200", "", "access-control-allow-origin: *"},
			{[]string{"-X", "PUT", env.url}, "405", "method PUT not allowed", "access-control-allow-origin: *"},
			{[]string{base + "/health"}, "200", "OK", "access-control-allow-origin: *"},
			{[]string{base + "/"}, "308", "", "location: https://dns.example.test/dns-query"},
			{[]string{base + "/elsewhere"}, "404", "not found: DNS over HTTPS is at /dns-query", "access-control-allow-origin: *"},
		} {
			args := append([]string{"-s", proto, "--cacert", env.root, "--resolve", "dns.example.test:" + port + ":127.0.0.1",
				"-D", "-", "-w", "\nstatus=%{http_code}"}, tc.args...)
			out, err := exec.Command(curl, args...).CombinedOutput()
			text := strings.ToLower(string(out))
			if err != nil || !strings.Contains(string(out), "status="+tc.status) || !strings.Contains(text, "\n"+tc.want+"\r\n") ||
				!strings.Contains(string(out), tc.body) {
				t.Fatalf("curl %s %v: %v, want status %s, %q and a body with %q\n%s", proto, tc.args, err, tc.status, tc.want, tc.body, out)
			}
		}
	}
	check("--http2")
	check("--http1.1")
	out, _ := run(t, true, need(t, "kdig"), "+https=/dns-query", "@127.0.0.1", "-p", port, "www.example.test", "A",
		"+tls-ca="+env.root, "+tls-hostname=dns.example.test")
	if !strings.Contains(out, "192.0.2.80") {
		t.Fatalf("kdig +https with the server's fields:\n%s", out)
	}
	bad := strings.Replace(site, "\t\theader Access", "\t\theader Cache-Control no-store\n\t\theader Access", 1)
	if err := env.c.reload(bad, Vars{"Port": port, "Zone": exampleZone(t), "Up": env.up.addr}); err == nil ||
		!strings.Contains(err.Error(), "server doh0: headers: Cache-Control is set by the server itself") {
		t.Fatalf("a reload with Cache-Control among the fields: %v, want it refused, naming the field", err)
	}
	check("--http2")
}

// TestDoHServerForwardedFor: behind a proxy the server names in
// trusted_proxies, the acl sees the client X-Forwarded-For gives, read
// from the right (what a client writes to the left of it is not read);
// another peer's X-Forwarded-For is ignored, and one a trusted proxy
// sends with no address is refused, naming the field. With
// cache_control off the answers carry no Cache-Control. curl over
// HTTP/2 and HTTP/1.1, from 127.0.0.2 (the proxy) and 127.0.0.1.
func TestDoHServerForwardedFor(t *testing.T) {
	const opts = "\t\ttrusted_proxies 127.0.0.2 10.0.0.0/8\n\t\tcache_control off\n\t\tacl {\n\t\t\tallow 192.0.2.1\n\t\t}\n"
	site := strings.Replace(dohServerSite, "\tdoh :{{.Port}} {\n", "\tdoh :{{.Port}} {\n"+opts, 1)
	env := startDoHSite(t, site)
	_, port, _ := net.SplitHostPort(env.addr)
	curl := need(t, "curl")
	url := env.url + "?name=www.example.test&type=A"
	for _, proto := range []string{"--http2", "--http1.1"} {
		for _, tc := range []struct {
			from, xff string
			status    string // HTTP
			want      string // in the body
		}{
			{"127.0.0.2", "198.51.100.7, 192.0.2.1:4200", "200", `"Status":0`},                            // the rightmost is the client
			{"127.0.0.2", "192.0.2.1, 10.1.2.3", "200", `"Status":0`},                                     // past a trusted proxy
			{"127.0.0.2", "[2001:db8::1]:443,192.0.2.1", "200", `"Status":0`},                             // ports, brackets, no space
			{"127.0.0.2", "192.0.2.1, 198.51.100.7", "200", `"Status":5`},                                 // what the client wrote is not read
			{"127.0.0.2", "", "200", `"Status":5`},                                                        // the proxy itself
			{"127.0.0.1", "192.0.2.1", "200", `"Status":5`},                                               // not a trusted proxy: ignored
			{"127.0.0.2", "192.0.2.1, unknown", "400", `X-Forwarded-For: "unknown" is not an IP address`}, // refused, naming it
		} {
			args := []string{"-s", proto, "--interface", tc.from, "--cacert", env.root, "--resolve", "dns.example.test:" + port + ":127.0.0.1",
				"-D", "-", "-w", "\nstatus=%{http_code}", "-H", "Accept: application/dns-json"}
			if tc.xff != "" {
				args = append(args, "-H", "X-Forwarded-For: "+tc.xff)
			}
			out, err := exec.Command(curl, append(args, url)...).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "status="+tc.status) || !strings.Contains(string(out), tc.want) {
				t.Fatalf("curl %s from %s, X-Forwarded-For %q: %v, want status %s and %q\n%s", proto, tc.from, tc.xff, err, tc.status, tc.want, out)
			}
			if strings.Contains(strings.ToLower(string(out)), "cache-control") {
				t.Fatalf("curl %s: Cache-Control with cache_control off:\n%s", proto, out)
			}
		}
	}
	bad := strings.Replace(site, "127.0.0.2 10.0.0.0/8", "127.0.0.2 10.0.0.1/8", 1)
	if err := env.c.reload(bad, Vars{"Port": port, "Zone": exampleZone(t), "Up": env.up.addr}); err == nil ||
		!strings.Contains(err.Error(), `server doh0: trusted_proxies[1]: `) || !strings.Contains(err.Error(), `has bits set past its length (did you mean 10.0.0.0/8?)`) {
		t.Fatalf("a reload with a bad trusted proxy: %v, want it refused, naming it", err)
	}
}

// dohCleartextSite is a dedicated DoH server without TLS, behind a proxy
// at 127.0.0.2 that terminates TLS: its X-Forwarded-For names the
// client, whom the acl lets in only as 192.0.2.1.
const dohCleartextSite = `{
	doh 127.0.0.1:{{.Port}} {
		cleartext
		trusted_proxies 127.0.0.2
		acl {
			allow 192.0.2.1 127.0.0.1
		}
		zone example.test {{.Zone}}
	}
}
`

// TestDoHServerCleartext: DoH without TLS for a proxy that terminates
// it (dnsdist's DoH frontend without a certificate): dig +http-plain and
// h2load (HTTP/2 with prior knowledge) and curl over HTTP/2 and
// HTTP/1.1 on the same port get answers; the trusted proxy's
// X-Forwarded-For is the client for the acl; reloads under h2load's load
// fail no request; a TLS client gets nothing.
func TestDoHServerCleartext(t *testing.T) {
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	c := startCaddy(t, t.TempDir(), dohCleartextSite, Vars{"Port": port, "Zone": exampleZone(t)})
	waitListen(t, addr)
	p := strconv.Itoa(port)

	out, _ := run(t, true, need(t, "dig"), "+http-plain", "@127.0.0.1", "-p", p, "www.example.test", "A")
	if !strings.Contains(out, "status: NOERROR") || !regexp.MustCompile(`www\.example\.test\.\s+\d+\s+IN\s+A\s+192\.0\.2\.80`).MatchString(out) {
		t.Fatalf("dig +http-plain:\n%s", out)
	}

	curl := need(t, "curl")
	url := "http://" + addr + "/dns-query?name=www.example.test&type=A"
	for _, tc := range []struct {
		proto, from, xff, head, want string
	}{
		{"--http2-prior-knowledge", "127.0.0.1", "", "HTTP/2 200", `"Status":0`},
		{"--http1.1", "127.0.0.1", "", "HTTP/1.1 200", `"Status":0`},
		{"--http2-prior-knowledge", "127.0.0.2", "192.0.2.1", "HTTP/2 200", `"Status":0`},    // the proxy's client
		{"--http1.1", "127.0.0.2", "192.0.2.1", "HTTP/1.1 200", `"Status":0`},                // the same over HTTP/1.1
		{"--http2-prior-knowledge", "127.0.0.2", "198.51.100.9", "HTTP/2 200", `"Status":5`}, // a client the acl refuses
		{"--http2-prior-knowledge", "127.0.0.3", "192.0.2.1", "HTTP/2 200", `"Status":5`},    // not the proxy: ignored
	} {
		args := []string{"-s", tc.proto, "--interface", tc.from, "-D", "-", "-H", "Accept: application/dns-json"}
		if tc.xff != "" {
			args = append(args, "-H", "X-Forwarded-For: "+tc.xff)
		}
		out, err := exec.Command(curl, append(args, url)...).CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), tc.head) || !strings.Contains(string(out), tc.want) {
			t.Fatalf("curl %s from %s, X-Forwarded-For %q: %v, want %q and %q\n%s", tc.proto, tc.from, tc.xff, err, tc.head, tc.want, out)
		}
	}

	// h2load, which speaks HTTP/2 with prior knowledge to an http:// URL,
	// in runs of 20,000 requests one after the other across three
	// reloads through the admin API: none fails
	q := new(dns.Msg)
	q.SetQuestion("www.example.test.", dns.TypeA)
	q.Id = 0
	wire, _ := q.Pack()
	get := "http://" + addr + "/dns-query?dns=" + base64.RawURLEncoding.EncodeToString(wire)
	h2load := need(t, "h2load")
	var outs []string
	h2stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			out, _ := run(t, true, h2load, "-n", "20000", "-c", "4", "-m", "10", get)
			outs = append(outs, out)
			select {
			case <-h2stop:
				return
			default:
			}
		}
	}()
	answered := func() int64 { return metric(t, c, `dnsfront_doh_responses_total{code="200",server="doh0"}`) }
	for i := range 3 {
		n := answered()
		if err := eventually(20*time.Second, func() bool { return answered() > n+2000 }); err != nil {
			t.Fatalf("h2load stalled before reload %d", i+1)
		}
		if err := c.reload("", nil); err != nil {
			t.Fatal(err)
		}
	}
	close(h2stop)
	<-done
	for _, out := range outs {
		if !strings.Contains(out, "20000 succeeded, 0 failed, 0 errored, 0 timeout") || !strings.Contains(out, "Application protocol: h2c") {
			t.Fatalf("h2load over cleartext across 3 reloads:\n%s", out)
		}
	}

	// kdig over TLS to the cleartext port: no handshake, no answer
	if out, err := run(t, true, need(t, "kdig"), "+https", "+tls-hostname=dns.example.test", "+timeout=2", "+retry=0", "@127.0.0.1", "-p", p, "www.example.test"); err == nil && strings.Contains(out, "NOERROR") {
		t.Fatalf("kdig +https got an answer from the cleartext server:\n%s", out)
	}
	// dig's, curl's six and h2load's
	if n, want := answered(), int64(7+20000*len(outs)); n != want {
		t.Errorf("%d responses with 200 counted, want %d", n, want)
	}
}

// TestDoHServerCleartextProxyProtocol: a cleartext DoH server behind a
// load balancer that terminates TLS and sends a PROXY header (an L4
// balancer's TLS listener): curl's --haproxy-protocol over HTTP/2 with
// prior knowledge and HTTP/1.1, and PROXY v2 headers naming other
// clients, whom the acl judges.
func TestDoHServerCleartextProxyProtocol(t *testing.T) {
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	startCaddy(t, t.TempDir(), `{
	doh 127.0.0.1:{{.Port}} {
		cleartext
		listener_wrappers {
			proxy_protocol {
				timeout 2s
				allow 127.0.0.1/32
			}
		}
		acl {
			allow 127.0.0.1 198.51.100.0/24
		}
		zone example.test {{.Zone}}
	}
}
`, Vars{"Port": port, "Zone": exampleZone(t)})
	waitListen(t, addr)
	curl := need(t, "curl")
	url := "http://" + addr + "/dns-query?name=www.example.test&type=A"
	for _, proto := range []string{"--http2-prior-knowledge", "--http1.1"} {
		out, err := exec.Command(curl, "-s", proto, "--haproxy-protocol", "--interface", "127.0.0.1", "-H", "Accept: application/dns-json", url).CombinedOutput()
		if err != nil || !strings.Contains(string(out), `"Status":0`) || !strings.Contains(string(out), "192.0.2.80") {
			t.Fatalf("curl %s --haproxy-protocol: %v\n%s", proto, err, out)
		}
	}
	dst := netip.MustParseAddrPort(addr)
	for client, want := range map[string]string{"198.51.100.7:5555": `"Status":0`, "203.0.113.7:5555": `"Status":5`} {
		raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = raw.SetDeadline(time.Now().Add(5 * time.Second))
		req := "GET /dns-query?name=www.example.test&type=A HTTP/1.1\r\nHost: dns.example.test\r\nAccept: application/dns-json\r\nConnection: close\r\n\r\n"
		if _, err := raw.Write(append(proxyV2(netip.MustParseAddrPort(client), dst), req...)); err != nil {
			t.Fatal(err)
		}
		resp, err := io.ReadAll(raw)
		raw.Close()
		if !strings.HasPrefix(string(resp), "HTTP/1.1 200") || !strings.Contains(string(resp), want) {
			t.Fatalf("PROXY v2 for %s: %v, want %s\n%s", client, err, want, resp)
		}
	}
}
