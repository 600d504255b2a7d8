package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/crypto/ocsp"

	"github.com/dnsfront/dnsfront/internal/testpki"
)

// goroutines reads the running Caddy's goroutine count from pprof.
func (p *caddyProc) goroutines() int {
	p.t.Helper()
	m := regexp.MustCompile(`goroutine profile: total (\d+)`).FindSubmatch(p.api("GET", "/debug/pprof/goroutine?debug=1"))
	if m == nil {
		p.t.Fatal("no goroutine count in /debug/pprof/goroutine")
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// heapLive returns the bytes of live heap in Caddy after two garbage
// collections (the second empties sync.Pool's victim cache), read from
// the runtime.MemStats block of the admin API's heap profile.
func (p *caddyProc) heapLive() int64 {
	p.t.Helper()
	p.api("GET", "/debug/pprof/heap?gc=1")
	m := regexp.MustCompile(`(?m)^# HeapAlloc = (\d+)`).FindSubmatch(p.api("GET", "/debug/pprof/heap?gc=1&debug=1"))
	if m == nil {
		p.t.Fatal("no HeapAlloc in /debug/pprof/heap?debug=1")
	}
	n, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return n
}

// TestSoak: DoT and DoH load while the config is force-reloaded and the
// staple file replaced, over and over: no failed query, no handshake
// without a staple, no goroutines left behind, and the live heap back to
// where it was (after GC, clients gone). DNSFRONT_SOAK=5m runs it
// longer (reload every 5 s, staple every 10 s, as an operator would
// schedule them); CI runs 15 s at a faster pace.
func TestSoak(t *testing.T) {
	length, reloadEvery, stapleEvery := 15*time.Second, time.Second, 500*time.Millisecond
	if v := os.Getenv("DNSFRONT_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("DNSFRONT_SOAK=%q: %v", v, err)
		}
		length, reloadEvery, stapleEvery = d, 5*time.Second, 10*time.Second
	}
	dir := t.TempDir()
	pk := newPKI(t, dir, "server", testpki.ECDSA, testpki.LeafOptions{}, "dns.example.test", "127.0.0.1")
	pk.writeStaple(t, pk.response(t, ocsp.Good, 3*time.Hour))
	up := newTestUpstream(t, 1)
	dotPort, dohPort := freePort(t), freePort(t)
	c := startCaddy(t, dir, `{
	ocsp {
		certificate {{.Cert}} {{.Key}} {
			staple file {{.Staple}}
		}
	}
	dot 127.0.0.1:{{.DoT}} {
		zone example.test {{.Zone}}
		forward udp://{{.Up}}
	}
}
https://:{{.DoH}} {
	tls {
		get_certificate ocsp
	}
	doh /dns-query {
		zone example.test {{.Zone}}
		forward udp://{{.Up}}
	}
}
`, Vars{"Cert": pk.certFile, "Key": pk.keyFile, "Staple": pk.stapleFile, "DoT": dotPort, "DoH": dohPort, "Zone": exampleZone(t), "Up": up.addr})
	dotAddr, dohAddr := fmt.Sprintf("127.0.0.1:%d", dotPort), fmt.Sprintf("127.0.0.1:%d", dohPort)
	waitListen(t, dotAddr)
	waitListen(t, dohAddr)
	// warm up, then count goroutines at rest
	for _, a := range []string{dotAddr, dohAddr} {
		if s, _, err := tryStaple(a, "dns.example.test", nil); err != nil || s == nil {
			t.Fatalf("%s: no staple before the soak: %v", a, err)
		}
	}
	before, heapBefore := c.goroutines(), c.heapLive()

	var queries, failures, unstapled atomic.Int64
	var firstFailure atomic.Value
	fail := func(what string) {
		failures.Add(1)
		firstFailure.CompareAndSwap(nil, what)
	}
	ctx, stop := context.WithTimeout(context.Background(), length)
	defer stop()
	var wg sync.WaitGroup
	names := []string{"www.example.test.", "mail.example.test.", "q.up.test.", "nope.example.test."}
	// DoT: long connections, and a new connection (handshake) now and then
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for ctx.Err() == nil {
				conn, err := tls.Dial("tcp", dotAddr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"dot"}, ServerName: "dns.example.test"})
				if err != nil {
					fail("dial: " + err.Error())
					continue
				}
				if len(conn.ConnectionState().OCSPResponse) == 0 {
					unstapled.Add(1)
				}
				dc := &dotConn{conn}
				for i := 0; i < 200 && ctx.Err() == nil; i++ {
					q := question(names[(w+i)%len(names)], dns.TypeA, uint16(i))
					b, _ := q.Pack()
					if _, err := conn.Write(append([]byte{byte(len(b) >> 8), byte(len(b))}, b...)); err != nil {
						fail("dot write: " + err.Error())
						break
					}
					m, err := dc.recv(5 * time.Second)
					if err != nil || m.Id != uint16(i) || m.Rcode == dns.RcodeServerFailure {
						fail(fmt.Sprintf("dot answer: %v %v", m, err))
						break
					}
					queries.Add(1)
				}
				conn.Close()
			}
		}(w)
	}
	// DoH over HTTP/2
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true,
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := (&tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, ServerName: "dns.example.test"}}).DialContext(ctx, network, dohAddr)
			if err == nil && len(conn.(*tls.Conn).ConnectionState().OCSPResponse) == 0 {
				unstapled.Add(1)
			}
			return conn, err
		},
	}}
	defer client.CloseIdleConnections()
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				b, _ := question(names[(w+i)%len(names)], dns.TypeA, 0).Pack()
				resp, err := client.Post("https://dns.example.test/dns-query", "application/dns-message", bytes.NewReader(b))
				if err != nil {
					fail("doh: " + err.Error())
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				m := new(dns.Msg)
				if resp.StatusCode != 200 || m.Unpack(body) != nil || m.Rcode == dns.RcodeServerFailure {
					fail(fmt.Sprintf("doh answer: %d %v", resp.StatusCode, m))
					continue
				}
				queries.Add(1)
			}
		}(w)
	}
	// the operator: reloads and new staples
	reloads, staples := 0, 0
	reloadTick, stapleTick := time.NewTicker(reloadEvery), time.NewTicker(stapleEvery)
	defer reloadTick.Stop()
	defer stapleTick.Stop()
	quarter := time.After(length / 4)
	var heapQuarter int64
	for ctx.Err() == nil {
		select {
		case <-quarter:
			heapQuarter = c.heapLive()
		case <-reloadTick.C:
			if err := c.reload("", nil); err != nil {
				t.Errorf("reload %d: %v", reloads+1, err)
			}
			reloads++
		case <-stapleTick.C:
			// written atomically, as a careful operator does
			tmp := pk.stapleFile + ".tmp"
			testpki.WriteFile(t, tmp, pk.response(t, ocsp.Good, time.Duration(staples%3600)*time.Second+time.Minute))
			if err := os.Rename(tmp, pk.stapleFile); err != nil {
				t.Fatal(err)
			}
			staples++
		case <-ctx.Done():
		}
	}
	wg.Wait()
	client.CloseIdleConnections()
	t.Logf("soak %v: %d queries, %d reloads, %d staple files, %d failures, %d handshakes without a staple",
		length, queries.Load(), reloads, staples, failures.Load(), unstapled.Load())
	if failures.Load() != 0 || unstapled.Load() != 0 || queries.Load() == 0 {
		t.Fatalf("%d failed queries (first: %v), %d handshakes without a staple", failures.Load(), firstFailure.Load(), unstapled.Load())
	}
	// goroutines come back to where they were once the clients are gone
	// (and with them the configs the old connections held on to)
	var after int
	if err := eventually(10*time.Second, func() bool { after = c.goroutines(); return after <= before+5 }); err != nil {
		t.Fatalf("goroutines: %d before the soak, %d after", before, after)
	}
	// and so does the live heap. Caddy keeps the configs that HTTP/2
	// connections were served with for about a minute after they end
	// (seen with a stock Caddy and `respond` too), so this waits up to
	// two minutes; the margin covers buffers and pools warmed up by the
	// load. A leak of one config per reload would exceed it.
	const margin = 1 << 20
	heapAfter := c.heapLive()
	for deadline := time.Now().Add(2 * time.Minute); heapAfter > heapBefore+margin && time.Now().Before(deadline); heapAfter = c.heapLive() {
		time.Sleep(2 * time.Second) // polling: nothing signals the release
	}
	if heapAfter > heapBefore+margin {
		t.Fatalf("live heap after GC: %d bytes before the soak, %d at a quarter, still %d two minutes after", heapBefore, heapQuarter, heapAfter)
	}
	t.Logf("live heap after GC: %d bytes before the soak, %d at a quarter (under load), %d after", heapBefore, heapQuarter, heapAfter)
}

// TestUpstreamFaults: an upstream that answers garbage, answers with the
// wrong ID or question, or never answers, gets SERVFAIL within the
// timeout from its forward, while a handler with a good upstream next to
// it is served; the bad answers are never passed on.
func TestUpstreamFaults(t *testing.T) {
	bad := func(t *testing.T, reply func(pc net.PacketConn, addr net.Addr, q []byte)) string {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 4096)
			for {
				n, addr, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				reply(pc, addr, append([]byte(nil), buf[:n]...))
			}
		}()
		return pc.LocalAddr().String()
	}
	answerFor := func(q []byte, edit func(*dns.Msg)) []byte {
		m := new(dns.Msg)
		if m.Unpack(q) != nil {
			return nil
		}
		r := new(dns.Msg)
		r.SetReply(m)
		r.Answer = append(r.Answer, rr(t, m.Question[0].Name+" 30 IN A 203.0.113.66"))
		edit(r)
		b, _ := r.Pack()
		return b
	}
	garbage := bad(t, func(pc net.PacketConn, a net.Addr, q []byte) {
		_, _ = pc.WriteTo(append(q[:2:2], []byte("not a DNS answer at all")...), a)
	})
	wrongID := bad(t, func(pc net.PacketConn, a net.Addr, q []byte) {
		_, _ = pc.WriteTo(answerFor(q, func(r *dns.Msg) { r.Id++ }), a)
	})
	wrongQuestion := bad(t, func(pc net.PacketConn, a net.Addr, q []byte) {
		_, _ = pc.WriteTo(answerFor(q, func(r *dns.Msg) { r.Question[0].Name = "evil.example." }), a)
	})
	silent := bad(t, func(net.PacketConn, net.Addr, []byte) {})
	good := newTestUpstream(t, 7)

	dir := t.TempDir()
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	startCaddy(t, dir, `{
	ocsp {
		issue dns.example.test
	}
	dot 127.0.0.1:{{.Port}} {
		forward udp://{{.Good}}
	}
}
`, Vars{"Port": port, "Good": good.addr})
	waitListen(t, addr)
	// each bad upstream behind its own server
	for _, tc := range []struct{ name, up string }{{"garbage", garbage}, {"wrong ID", wrongID}, {"wrong question", wrongQuestion}, {"silent", silent}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := freePort(t)
			a := fmt.Sprintf("127.0.0.1:%d", p)
			startCaddy(t, dir, `{
	ocsp {
		issue dns.example.test
	}
	dot 127.0.0.1:{{.Port}} {
		forward udp://{{.Up}} {
			timeout 300ms
			tries 2
		}
	}
}
`, Vars{"Port": p, "Up": tc.up})
			waitListen(t, a)
			c := dialDoT(t, a)
			start := time.Now()
			c.send(t, question("x.bad.test.", dns.TypeA, 5))
			m, err := c.recv(5 * time.Second)
			if err != nil || m.Rcode != dns.RcodeServerFailure || len(m.Answer) != 0 {
				t.Fatalf("answer %v %v, want SERVFAIL and nothing of the bad upstream's", m, err)
			}
			if el := time.Since(start); el > 3*time.Second {
				t.Fatalf("SERVFAIL after %v: not within the tries' timeouts", el)
			}
			// the server keeps serving others meanwhile
			g := dialDoT(t, addr)
			g.send(t, question("ok.up.test.", dns.TypeA, 6))
			if m, err := g.recv(5 * time.Second); err != nil || len(m.Answer) != 1 || !strings.Contains(m.Answer[0].String(), "198.51.100.7") {
				t.Fatalf("good upstream: %v %v", m, err)
			}
		})
	}
}

// TestForwardHashPolicy: with policy hash each name goes to one
// upstream, whatever case the client writes it in (kdig sends lower case,
// dig the case it is given); the names spread over the upstreams; when
// one stops, its names go to the others and every other name stays
// where it was.
func TestForwardHashPolicy(t *testing.T) {
	ups := []*testUpstream{newTestUpstream(t, 1), newTestUpstream(t, 2), newTestUpstream(t, 3)}
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	c := startCaddy(t, t.TempDir(), `{
	ocsp {
		issue dns.example.test
	}
	dot 127.0.0.1:{{.Port}} {
		forward udp://{{.A}} udp://{{.B}} udp://{{.C}} {
			policy hash
			timeout 300ms
			max_fails 1
			fail_duration 30s
		}
	}
}
`, Vars{"Port": port, "A": ups[0].addr, "B": ups[1].addr, "C": ups[2].addr})
	waitListen(t, addr)
	p := strconv.Itoa(port)
	answeredBy := func(out string) string {
		m := regexp.MustCompile(`\sA\s+198\.51\.100\.(\d)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no answer from a test upstream:\n%s", out)
		}
		return m[1]
	}
	dig := need(t, "dig")
	home := map[string]string{}
	used := map[string]int{}
	for i := range 24 {
		name := fmt.Sprintf("n%d.hash.test", i)
		home[name] = answeredBy(kdig(t, "+tls", "@127.0.0.1", "-p", p, name, "A"))
		used[home[name]]++
		out, _ := run(t, true, dig, "+tls", "@127.0.0.1", "-p", p, strings.ToUpper(name), "A")
		if again := answeredBy(out); again != home[name] {
			t.Fatalf("%s went to upstream %s, in upper case to %s", name, home[name], again)
		}
	}
	if len(used) < 2 {
		t.Fatalf("24 names all went to one upstream: %v", used)
	}
	ups[1].stop() // upstream 2
	for name, was := range home {
		now := answeredBy(kdig(t, "+tls", "+timeout=3", "@127.0.0.1", "-p", p, name, "A"))
		if now == "2" || (was != "2" && now != was) {
			t.Fatalf("%s: upstream %s before upstream 2 stopped, %s after", name, was, now)
		}
	}

	// the admin API shows upstream 2 down (its queries failed), the
	// others up, each with the queries it was sent
	var status []struct {
		Upstream  string `json:"upstream"`
		Healthy   bool   `json:"healthy"`
		Down      string `json:"down"`
		DownUntil string `json:"down_until"`
		Queries   uint64 `json:"queries"`
		Errors    uint64 `json:"errors"`
		CaseRand  bool   `json:"case_randomized"`
	}
	if err := json.Unmarshal(c.api("GET", "/dns/upstreams"), &status); err != nil || len(status) != 3 {
		t.Fatalf("GET /dns/upstreams: %v %+v", err, status)
	}
	for _, s := range status {
		stopped := s.Upstream == "udp://"+ups[1].addr
		if s.Healthy == stopped || (s.Down == "passive") != stopped || (s.DownUntil != "") != stopped || s.Queries == 0 || (s.Errors > 0) != stopped || !s.CaseRand {
			t.Errorf("GET /dns/upstreams, %s (stopped: %v): %+v", s.Upstream, stopped, s)
		}
	}
}

// TestForwardWeights: round_robin with weights 3 and 1 sends the first
// upstream three queries of four, exactly, under dnsperf's load.
func TestForwardWeights(t *testing.T) {
	dnsperf := need(t, "dnsperf")
	ups := []*testUpstream{newTestUpstream(t, 1), newTestUpstream(t, 2)}
	port := freePort(t)
	startCaddy(t, t.TempDir(), `{
	ocsp {
		issue dns.example.test
	}
	dot 127.0.0.1:{{.Port}} {
		forward udp://{{.A}} udp://{{.B}} {
			policy round_robin
			weights 3 1
		}
	}
}
`, Vars{"Port": port, "A": ups[0].addr, "B": ups[1].addr})
	waitListen(t, fmt.Sprintf("127.0.0.1:%d", port))
	var names strings.Builder
	for i := range 400 {
		fmt.Fprintf(&names, "w%d.weights.test A\n", i)
	}
	qfile := filepath.Join(t.TempDir(), "queries")
	if err := os.WriteFile(qfile, []byte(names.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _ := run(t, true, dnsperf, "-m", "dot", "-s", "127.0.0.1", "-p", strconv.Itoa(port), "-d", qfile, "-n", "10", "-c", "2", "-q", "20")
	if !strings.Contains(out, "Queries completed:    4000 ") {
		t.Fatalf("dnsperf:\n%s", out)
	}
	if a, b := ups[0].answered.Load(), ups[1].answered.Load(); a != 3000 || b != 1000 {
		t.Fatalf("upstreams answered %d and %d of 4000 queries, want 3000 and 1000", a, b)
	}
}

// TestAbuse: 2,000 connections that never send a byte (parked, and closed
// at the handshake timeout), and a pipeline of 10,000 queries on one
// connection: the limits hold and another client is served throughout.
func TestAbuse(t *testing.T) {
	env := startDoT(t, "10s", 0, 1)
	host, port, _ := net.SplitHostPort(env.addr)
	served := func() {
		t.Helper()
		out := kdig(t, "+tls", "@"+host, "-p", port, "www.example.test", "A", "+short")
		if strings.TrimSpace(out) != "192.0.2.80" {
			t.Fatalf("another client is not served: %q", out)
		}
	}
	before := env.c.goroutines()
	var idle []net.Conn
	for i := 0; i < 2000; i++ {
		conn, err := net.Dial("tcp", env.addr)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		idle = append(idle, conn)
	}
	served()
	// waiting for a ClientHello that does not come, they are parked: no
	// goroutine each
	var waiting int
	if err := eventually(5*time.Second, func() bool { waiting = env.c.goroutines(); return waiting <= before+50 }); err != nil {
		t.Fatalf("goroutines: %d before, %d with 2,000 silent connections open", before, waiting)
	}
	// they never complete a handshake: closed after handshake_timeout
	closed := 0
	for _, conn := range idle {
		_ = conn.SetReadDeadline(time.Now().Add(15 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				closed++
			}
		}
		conn.Close()
	}
	if closed != len(idle) {
		t.Fatalf("%d of %d silent connections closed by the server", closed, len(idle))
	}

	// 10,000 queries written in one go: all answered, in-flight bounded
	c := dialDoT(t, env.addr)
	var batch []byte
	for i := 0; i < 10000; i++ {
		b, _ := question("www.example.test.", dns.TypeA, uint16(i)).Pack()
		batch = append(batch, byte(len(b)>>8), byte(len(b)))
		batch = append(batch, b...)
	}
	go func() { _, _ = c.Write(batch) }()
	seen := make(map[uint16]bool, 10000)
	for len(seen) < 10000 {
		m, err := c.recv(10 * time.Second)
		if err != nil {
			t.Fatalf("after %d answers: %v", len(seen), err)
		}
		seen[m.Id] = true
	}
	served()
	c.Close()
	var after int
	if err := eventually(10*time.Second, func() bool { after = env.c.goroutines(); return after <= before+5 }); err != nil {
		t.Fatalf("goroutines: %d before, %d after the abuse", before, after)
	}
}

// stapleFaultsConfig serves a file staple polled every 200 ms and a
// generated one written through to a file, for the staple fault tests.
const stapleFaultsConfig = `{
	ocsp {
		certificate {{.Cert}} {{.Key}} {
			staple file {{.Staple}} {
				poll_interval 200ms
			}
		}
		certificate {{.Gen}} {{.GenKey}} {
			staple local_ca {{.CA}} {{.CAKey}} {
				write_to {{.Written}}
			}
		}
	}
}
https://:{{.Port}} {
	tls {
		get_certificate ocsp
	}
	respond "ok"
}
`

// TestStapleFaults: a staple file that disappears keeps the last good
// staple, is logged once (not at every poll), and is picked up again by
// itself when it returns; a write-through target that cannot be written
// is logged and the generated staple is served all the same.
func TestStapleFaults(t *testing.T) {
	dir := t.TempDir()
	pk := newPKI(t, dir, "server", testpki.ECDSA, testpki.LeafOptions{}, "dns.example.test")
	gen := newPKI(t, dir, "gen", testpki.ECDSA, testpki.LeafOptions{}, "gen.example.test")
	good := pk.response(t, ocsp.Good, 2*time.Hour)
	pk.writeStaple(t, good)
	notADir := testpki.WriteFile(t, dir+"/plain-file", []byte("x"))
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	c := startCaddy(t, dir, stapleFaultsConfig, Vars{"Cert": pk.certFile, "Key": pk.keyFile, "Staple": pk.stapleFile, "Gen": gen.certFile, "GenKey": gen.keyFile,
		"CA": gen.caFile, "CAKey": gen.caKeyFile, "Written": notADir + "/staple.ocsp", "Port": port})
	waitListen(t, addr)
	if s, _ := stapleGo(t, addr, "gen.example.test", nil); s == nil {
		t.Fatal("a failing write_to stopped the generated staple from being served")
	}
	c.waitLog(`writing ocsp staple through to file`, 5*time.Second)

	if err := os.Remove(pk.stapleFile); err != nil {
		t.Fatal(err)
	}
	// several polls pass; the refusal is logged once
	if err := eventually(5*time.Second, func() bool {
		st := c.staples("GET", "/ocsp/")
		return st[0].LastResult == "failed" && strings.Contains(st[0].LastError, "no such file")
	}); err != nil {
		t.Fatalf("a missing staple file was not noticed: %+v", c.staples("GET", "/ocsp/"))
	}
	time.Sleep(time.Second) // five more polls of the missing file: the scenario, not a sync point
	if n := len(c.log.lines(`"ocsp staple refused"`)); n != 1 {
		t.Fatalf("the missing file was logged %d times, want once", n)
	}
	if s, _ := stapleGo(t, addr, "dns.example.test", nil); !bytes.Equal(s, good) {
		t.Fatal("the last good staple is not served while the file is missing")
	}
	newer := pk.response(t, ocsp.Good, time.Hour)
	pk.writeStaple(t, newer)
	if err := eventually(5*time.Second, func() bool {
		s, _ := stapleGo(t, addr, "dns.example.test", nil)
		return bytes.Equal(s, newer)
	}); err != nil {
		t.Fatal("the staple file came back but the new staple is not served")
	}
}

// metricValue sums the samples of /metrics whose line starts with prefix
// (a metric name and some of its labels).
func (p *caddyProc) metricValue(prefix string) float64 {
	p.t.Helper()
	var sum float64
	for _, line := range strings.Split(string(p.api("GET", "/metrics")), "\n") {
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			p.t.Fatalf("metrics line %q: %v", line, err)
		}
		sum += v
	}
	return sum
}

// TestStaplePermissionFaults: a staple file that becomes unreadable and a
// write_to directory that becomes read-only (a write refused as a full
// disk would refuse it), with Caddy run so that file modes hold for it.
// Each time the staple is still served, the cause is logged once however
// often it recurs, GET /ocsp/ and the metrics show it, and the server
// recovers by itself once the fault is gone.
func TestStaplePermissionFaults(t *testing.T) {
	wrap := fileModesApply(t)
	dir := t.TempDir()
	pk := newPKI(t, dir, "server", testpki.ECDSA, testpki.LeafOptions{}, "dns.example.test")
	gen := newPKI(t, dir, "gen", testpki.ECDSA, testpki.LeafOptions{}, "gen.example.test")
	good := pk.response(t, ocsp.Good, 2*time.Hour)
	pk.writeStaple(t, good)
	outDir := dir + "/out"
	if err := os.Mkdir(outDir, 0o555); err != nil { // read-only from the start
		t.Fatal(err)
	}
	written := outDir + "/gen.ocsp"
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	c := startCaddyAs(t, dir, stapleFaultsConfig, Vars{"Cert": pk.certFile, "Key": pk.keyFile, "Staple": pk.stapleFile, "Gen": gen.certFile, "GenKey": gen.keyFile,
		"CA": gen.caFile, "CAKey": gen.caKeyFile, "Written": written, "Port": port}, wrap)
	waitListen(t, addr)
	status := func(cert string) stapleStatus {
		for _, st := range c.staples("GET", "/ocsp/") {
			if st.Certificate == cert {
				return st
			}
		}
		t.Fatalf("GET /ocsp/ has no entry for %s", cert)
		return stapleStatus{}
	}
	// labels come sorted; the certificate label is its first name
	fileFailed := `dnsfront_ocsp_staple_refresh_total{certificate="dns.example.test",result="failed",`
	writeFailed := `dnsfront_ocsp_staple_write_total{certificate="gen.example.test",result="failed",`

	t.Run("write_to directory read-only", func(t *testing.T) {
		// refused at start and retried with back-off: two refusals, one log line
		if err := eventually(20*time.Second, func() bool {
			return c.metricValue(writeFailed) >= 2 && strings.Contains(status(gen.certFile).WriteError, "permission denied")
		}); err != nil {
			t.Fatalf("the refused write-through is not retried and shown: %+v, %v failed writes", status(gen.certFile), c.metricValue(writeFailed))
		}
		if n := len(c.log.lines(`"writing ocsp staple through to file"`)); n != 1 {
			t.Fatalf("the refused write was logged %d times, want once", n)
		}
		served, _ := stapleGo(t, addr, "gen.example.test", nil)
		if served == nil || status(gen.certFile).Status != "good" {
			t.Fatal("a write_to that cannot be written stopped the generated staple from being served")
		}
		if err := os.Chmod(outDir, 0o755); err != nil {
			t.Fatal(err)
		}
		var got []byte
		if err := eventually(20*time.Second, func() bool {
			got, _ = os.ReadFile(written)
			return got != nil && status(gen.certFile).WriteError == ""
		}); err != nil {
			t.Fatalf("the directory is writable again but the staple was not written: %+v", status(gen.certFile))
		}
		if !bytes.Equal(got, served) {
			t.Fatal("the file written on recovery is not the staple served")
		}
		c.waitLog(`ocsp staple written through to file again`, 5*time.Second)
	})

	t.Run("staple file unreadable", func(t *testing.T) {
		failedBefore := c.metricValue(fileFailed)
		if err := os.Chmod(pk.stapleFile, 0); err != nil {
			t.Fatal(err)
		}
		// several polls (200 ms apart) refuse it; the refusal is logged once
		if err := eventually(10*time.Second, func() bool {
			st := status(pk.certFile)
			return st.LastResult == "failed" && strings.Contains(st.LastError, "permission denied") &&
				c.metricValue(fileFailed) >= failedBefore+3
		}); err != nil {
			t.Fatalf("the unreadable file is not shown as failing: %+v", status(pk.certFile))
		}
		if n := len(c.log.lines(`permission denied`)); n != 2 { // the write_to refusal above, and this one
			t.Fatalf("%d log lines say permission denied, want 2 (each fault once):\n%s", n, strings.Join(c.log.lines(`permission denied`), "\n"))
		}
		if s, _ := stapleGo(t, addr, "dns.example.test", nil); !bytes.Equal(s, good) || status(pk.certFile).Status != "good" {
			t.Fatal("the last good staple is not served while the file is unreadable")
		}
		if err := os.Chmod(pk.stapleFile, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := eventually(10*time.Second, func() bool {
			st := status(pk.certFile)
			return st.LastResult == "unchanged" && st.LastError == ""
		}); err != nil {
			t.Fatalf("the file is readable again but the source still fails: %+v", status(pk.certFile))
		}
	})
}

// TestServfailEDE: a SERVFAIL for a failed upstream says why in an
// Extended DNS Error (RFC 8914), as kdig shows it: No Reachable
// Authority (22) when the upstream never answers, Network Error (23)
// when its port refuses; a client without EDNS gets the bare SERVFAIL.
// The SERVFAIL the cache keeps for failure_ttl carries it too, and the
// upstream is not asked again meanwhile.
func TestServfailEDE(t *testing.T) {
	hole, err := net.ListenPacket("udp", "127.0.0.1:0") // reads, never answers
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hole.Close() })
	var asked atomic.Int64
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, _, err := hole.ReadFrom(buf); err != nil {
				return
			}
			asked.Add(1)
		}
	}()
	port, refPort, dohPort, closed := freePort(t), freePort(t), freePort(t), freePort(t)
	startCaddy(t, t.TempDir(), `{
	ocsp {
		issue dns.example.test 127.0.0.1
	}
	dot 127.0.0.1:{{.Port}} {
		cache {
			failure_ttl 1m
		}
		forward udp://{{.Hole}} {
			timeout 200ms
			tries 2
		}
	}
	dot 127.0.0.1:{{.Ref}} {
		forward tcp://127.0.0.1:{{.Closed}}
	}
	doh 127.0.0.1:{{.DoH}} {
		forward tcp://127.0.0.1:{{.Closed}}
	}
}
`, Vars{"Port": port, "Ref": refPort, "DoH": dohPort, "Hole": hole.LocalAddr().String(), "Closed": closed})
	for _, p := range []int{port, refPort, dohPort} {
		waitListen(t, fmt.Sprintf("127.0.0.1:%d", p))
	}
	p, rp, dp := strconv.Itoa(port), strconv.Itoa(refPort), strconv.Itoa(dohPort)
	const unreachable, network = "EDE: 22 (No Reachable Authority)", "EDE: 23 (Network Error)"
	out := kdig(t, "+tls", "@127.0.0.1", "-p", p, "down.up.test", "A")
	if !strings.Contains(out, "status: SERVFAIL") || !strings.Contains(out, unreachable) {
		t.Fatalf("upstream that never answers: want SERVFAIL with %s\n%s", unreachable, out)
	}
	n := asked.Load()
	if n != 2 {
		t.Fatalf("the silent upstream was asked %d times, want 2 (tries 2)", n)
	}
	out = kdig(t, "+tls", "@127.0.0.1", "-p", p, "DOWN.up.test", "A")
	if !strings.Contains(out, "status: SERVFAIL") || !strings.Contains(out, unreachable) {
		t.Fatalf("the kept SERVFAIL: want it with %s\n%s", unreachable, out)
	}
	if out := kdig(t, "+tls", "+noedns", "@127.0.0.1", "-p", p, "down.up.test", "A"); !strings.Contains(out, "status: SERVFAIL") || strings.Contains(out, "EDE") || strings.Contains(out, "EDNS PSEUDOSECTION") {
		t.Fatalf("a client without EDNS: want a bare SERVFAIL\n%s", out)
	}
	if got := asked.Load(); got != n {
		t.Fatalf("the upstream was asked %d more times within failure_ttl, want 0", got-n)
	}
	for _, args := range [][]string{{"+tls", "-p", rp}, {"+https=/dns-query", "-p", dp}} {
		out := kdig(t, append(args, "@127.0.0.1", "q.up.test", "A")...)
		if !strings.Contains(out, "status: SERVFAIL") || !strings.Contains(out, network) {
			t.Fatalf("kdig %s to a closed port's upstream: want SERVFAIL with %s\n%s", args[0], network, out)
		}
	}
}
