package integration

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/crypto/ocsp"
	"golang.org/x/sys/unix"

	"github.com/dnsfront/dnsfront/internal/testpki"
)

// exampleZone is the absolute path of the quick start's zone file.
func exampleZone(t testing.TB) string {
	t.Helper()
	p, err := filepath.Abs("../examples/example.test.zone")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

const dotSite = `{
	ocsp {
		issue dns.example.test 127.0.0.1
	}
	dot 127.0.0.1:{{.Port}} {
		idle_timeout {{.Idle}}
		read_timeout 1s
		max_connections_per_client {{.PerClient}}
		zone example.test {{.Zone}}
		forward {{.Upstreams}} {
			timeout 500ms
			max_fails 2
			fail_duration 1s
			health_check up.test A {
				interval 200ms
				fails 2
			}
		}
	}
}
`

type dotEnv struct {
	c    *caddyProc
	addr string
	root string // Caddy's root CA, for strict TLS clients
	ups  []*testUpstream
	vars Vars
}

func startDoT(t *testing.T, idle string, perClient, upstreams int) *dotEnv {
	t.Helper()
	dir := t.TempDir()
	env := &dotEnv{}
	var to []string
	for i := 1; i <= upstreams; i++ {
		u := newTestUpstream(t, byte(i))
		env.ups = append(env.ups, u)
		to = append(to, "udp://"+u.addr)
	}
	port := freePort(t)
	env.addr = fmt.Sprintf("127.0.0.1:%d", port)
	env.vars = Vars{"Port": port, "Idle": idle, "PerClient": perClient, "Zone": exampleZone(t), "Upstreams": strings.Join(to, " ")}
	env.c = startCaddy(t, dir, dotSite, env.vars)
	waitListen(t, env.addr)
	env.root = filepath.Join(dir, "data", "caddy", "pki", "authorities", "local", "root.crt")
	return env
}

// TestDoTAnswers: kdig and dig over TLS, from the zone and through
// forward, with and without SNI; strict kdig checks the certificate and
// requires a valid OCSP staple.
func TestDoTAnswers(t *testing.T) {
	env := startDoT(t, "10s", 0, 1)
	host, port, _ := net.SplitHostPort(env.addr)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"zone, no SNI", []string{"+tls", "@" + host, "-p", port, "www.example.test", "A"}, "192.0.2.80"},
		{"zone, SNI, verified, staple required", []string{"+tls-ca=" + env.root, "+tls-hostname=dns.example.test", "+tls-ocsp-stapling",
			"@" + host, "-p", port, "alias.example.test", "A"}, "192.0.2.80"},
		{"forward, no SNI", []string{"+tls", "@" + host, "-p", port, "host.up.test", "A"}, "198.51.100.1"},
		{"forward, SNI, staple required", []string{"+tls-ca=" + env.root, "+tls-hostname=dns.example.test", "+tls-ocsp-stapling",
			"@" + host, "-p", port, "other.up.test", "A"}, "198.51.100.1"},
		{"NXDOMAIN with SOA", []string{"+tls", "@" + host, "-p", port, "nope.example.test", "A"}, "status: NXDOMAIN"},
		{"truncated UDP upstream answer arrives whole (over TCP)", []string{"+tls", "+bufsize=1232", "@" + host, "-p", port, "big.up.test", "TXT"}, `"record 39 padding`},
		// the UDP size upstream is dnsfront's (1232, DNS Flag Day 2020's),
		// whatever the client's: one on a stream has no datagram size,
		// and a large one would bring the answers in IP fragments
		{"a client's UDP size of 65000: 1232 upstream", []string{"+tls", "+bufsize=65000", "@" + host, "-p", port, "size.up.test", "TXT"}, `"udp 1232"`},
		{"a client's UDP size of 512: 1232 upstream", []string{"+tls", "+bufsize=512", "@" + host, "-p", port, "size.up.test", "TXT"}, `"udp 1232"`},
		{"no EDNS: 1232 announced upstream", []string{"+tls", "+noedns", "@" + host, "-p", port, "size.up.test", "TXT"}, `"udp 1232"`},
		// past the 4 KB an upstream socket reads whole: asked again over TCP
		{"6 KB UDP answer arrives whole (over TCP)", []string{"+tls", "+bufsize=65000", "@" + host, "-p", port, "huge.up.test", "TXT"}, `"record 119 padding`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tcpBefore := env.ups[0].overTCP.Load()
			out := kdig(t, tc.args...)
			if !strings.Contains(out, tc.want) || strings.Contains(out, ";; ERROR") {
				t.Fatalf("kdig %s: want %q\n%s", strings.Join(tc.args, " "), tc.want, out)
			}
			if tcp := env.ups[0].overTCP.Load() - tcpBefore; (tcp > 0) != strings.Contains(tc.name, "over TCP") {
				t.Errorf("%d queries went to the upstream over TCP", tcp)
			}
			if strings.Contains(tc.name, "truncated") && regexp.MustCompile(`flags:[^;]*\btc\b`).MatchString(out) {
				t.Fatalf("answer still truncated:\n%s", out)
			}
		})
	}
	out, _ := run(t, true, need(t, "dig"), "+tls", "+tls-ca="+env.root, "+tls-hostname=dns.example.test", "@"+host, "-p", port, "mail.example.test", "A", "+short")
	if strings.TrimSpace(out) != "192.0.2.25" {
		t.Fatalf("dig +tls: %q", out)
	}
	// RFC 7828: the connection's idle timeout (idle_timeout 10s), to a
	// client that asks with an edns-tcp-keepalive option
	for _, name := range []string{"www.example.test", "host.up.test"} { // own answer, forwarded one
		out, _ = run(t, true, need(t, "dig"), "+tls", "+keepalive", "@"+host, "-p", port, name, "A")
		if !strings.Contains(out, "; TCP KEEPALIVE: 10.0 secs") {
			t.Fatalf("dig +tls +keepalive %s: no keepalive of 10 s\n%s", name, out)
		}
	}
	if out, _ = run(t, true, need(t, "dig"), "+tls", "@"+host, "-p", port, "www.example.test", "A"); strings.Contains(out, "KEEPALIVE") {
		t.Fatalf("dig +tls without +keepalive got a keepalive option:\n%s", out)
	}
	metrics := string(env.c.api("GET", "/metrics"))
	for _, re := range []string{
		`dnsfront_queries_total\{rcode="NOERROR",server="dot0",transport="dot"\} ([1-9]\d*)`,
		`dnsfront_queries_total\{rcode="NXDOMAIN",server="dot0",transport="dot"\} ([1-9]\d*)`,
		`dnsfront_query_duration_seconds_count\{server="dot0",transport="dot"\} ([1-9]\d*)`,
		`dnsfront_upstream_queries_total\{upstream="udp://[^"]+"\} ([1-9]\d*)`,
		`dnsfront_dot_connections_open\{server="dot0"\} (\d+)`,
	} {
		if !regexp.MustCompile(re).MatchString(metrics) {
			t.Errorf("/metrics has no %s", re)
		}
	}
}

// TestDoTPipelining: 100 queries written before any answer is read get
// 100 right answers; a slow upstream answer is overtaken by later ones.
func TestDoTPipelining(t *testing.T) {
	env := startDoT(t, "10s", 0, 1)
	c := dialDoT(t, env.addr)
	names := []string{"www.example.test.", "mail.example.test.", "alias.example.test.", "x.up.test."}
	want := map[string]string{"www.example.test.": "192.0.2.80", "mail.example.test.": "192.0.2.25",
		"alias.example.test.": "192.0.2.80", "x.up.test.": "198.51.100.1"}
	var batch []byte
	for i := 0; i < 100; i++ {
		b, _ := question(names[i%len(names)], dns.TypeA, uint16(1000+i)).Pack()
		batch = append(batch, byte(len(b)>>8), byte(len(b)))
		batch = append(batch, b...)
	}
	c.sendRaw(t, batch)
	seen := make(map[uint16]bool)
	for i := 0; i < 100; i++ {
		m, err := c.recv(5 * time.Second)
		if err != nil {
			t.Fatalf("after %d answers: %v", i, err)
		}
		name := m.Question[0].Name
		if seen[m.Id] || m.Id < 1000 || m.Id >= 1100 || names[(m.Id-1000)%4] != name {
			t.Fatalf("answer %d: id %d for %s is not one of ours or came twice", i, m.Id, name)
		}
		seen[m.Id] = true
		if len(m.Answer) == 0 || !strings.Contains(m.Answer[len(m.Answer)-1].String(), want[name]) {
			t.Fatalf("answer for %s: %v, want %s", name, m.Answer, want[name])
		}
	}

	// out of order: the slow query first, then five fast ones
	c.send(t, question("slow.up.test.", dns.TypeA, 1))
	for i := 0; i < 5; i++ {
		c.send(t, question("www.example.test.", dns.TypeA, uint16(10+i)))
	}
	var order []uint16
	for i := 0; i < 6; i++ {
		m, err := c.recv(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		order = append(order, m.Id)
	}
	if order[0] == 1 || order[5] != 1 {
		t.Fatalf("answers in order %v: the slow answer (id 1) held back the fast ones", order)
	}
}

// TestDoTConnectionLimits: idle timeout (reset by each query), a length
// prefix shorter than a header, a client that stops mid-query, and the
// per-client connection limit each close what they should, and another
// client is served meanwhile.
func TestDoTConnectionLimits(t *testing.T) {
	env := startDoT(t, "2s", 3, 1)
	host, port, _ := net.SplitHostPort(env.addr)
	otherClientOK := func(t *testing.T) {
		t.Helper()
		out := kdig(t, "+tls", "-b", "127.0.0.9", "@"+host, "-p", port, "www.example.test", "A", "+short")
		if strings.TrimSpace(out) != "192.0.2.80" {
			t.Fatalf("another client is not served: %q", out)
		}
	}

	t.Run("idle timeout, reset by each query", func(t *testing.T) {
		c := dialDoT(t, env.addr)
		// four queries 1s apart: 3s in all, open past the 2s timeout (a
		// wide margin: under load a round trip may take a while)
		for i := 0; i < 4; i++ {
			c.send(t, question("www.example.test.", dns.TypeA, uint16(i)))
			if _, err := c.recv(2 * time.Second); err != nil {
				t.Fatalf("query %d: connection closed although each query resets the idle timeout: %v", i, err)
			}
			time.Sleep(time.Second) // the scenario: a client that pauses, shorter than idle_timeout
		}
		if !c.closedByServer(5 * time.Second) {
			t.Fatal("idle connection not closed")
		}
		otherClientOK(t)
	})
	t.Run("length prefix under 12", func(t *testing.T) {
		c := dialDoT(t, env.addr)
		c.sendRaw(t, []byte{0, 5, 1, 2, 3, 4, 5})
		if !c.closedByServer(3 * time.Second) {
			t.Fatal("connection with a 5-octet message not closed")
		}
		otherClientOK(t)
	})
	t.Run("a response where a query belongs: FORMERR", func(t *testing.T) {
		// DESIGN's query validation: QR set -> FORMERR, with the client's
		// ID; the connection stays (the peer is the one connected: no
		// third party to loop with, as spoofed UDP could make one)
		c := dialDoT(t, env.addr)
		q := question("www.example.test.", dns.TypeA, 8)
		q.Response = true
		c.send(t, q)
		m, err := c.recv(3 * time.Second)
		if err != nil || m.Id != 8 || m.Rcode != dns.RcodeFormatError || !m.Response {
			t.Fatalf("QR set: %v %v, want FORMERR with ID 8", m, err)
		}
		c.send(t, question("www.example.test.", dns.TypeA, 9))
		if m, err := c.recv(3 * time.Second); err != nil || m.Id != 9 || len(m.Answer) != 1 {
			t.Fatalf("the query after it: %v %v", m, err)
		}
	})
	t.Run("records no query has, or TC: FORMERR", func(t *testing.T) {
		// nothing an honest client sends: answered FORMERR (as unbound
		// does), never passed on to a handler or an upstream
		c := dialDoT(t, env.addr)
		for i, f := range []func(q *dns.Msg){
			func(q *dns.Msg) { q.Answer = []dns.RR{rr(t, "www.example.test. 60 IN A 192.0.2.66")} },
			func(q *dns.Msg) { q.Ns = []dns.RR{rr(t, "example.test. 60 IN NS ns.attacker.example.")} },
			func(q *dns.Msg) { q.Extra = []dns.RR{rr(t, "ns.example.test. 60 IN A 192.0.2.66")} },
			func(q *dns.Msg) { q.Truncated = true },
		} {
			q := question("www.example.test.", dns.TypeA, uint16(20+i))
			f(q)
			c.send(t, q)
			m, err := c.recv(3 * time.Second)
			if err != nil || m.Id != uint16(20+i) || m.Rcode != dns.RcodeFormatError || len(m.Answer) != 0 {
				t.Fatalf("query %d: %v %v, want FORMERR with its ID", i, m, err)
			}
		}
		c.send(t, question("www.example.test.", dns.TypeA, 9))
		if m, err := c.recv(3 * time.Second); err != nil || m.Id != 9 || len(m.Answer) != 1 {
			t.Fatalf("the query after them: %v %v", m, err)
		}
	})
	t.Run("slowloris", func(t *testing.T) {
		c := dialDoT(t, env.addr)
		b, _ := question("www.example.test.", dns.TypeA, 7).Pack()
		c.sendRaw(t, []byte{0, byte(len(b))}, b[:5]) // and never the rest
		if !c.closedByServer(5 * time.Second) {
			t.Fatal("half-sent query kept the connection open")
		}
		otherClientOK(t)
	})
	t.Run("connections per client", func(t *testing.T) {
		var held []*dotConn
		for i := 0; i < 3; i++ {
			c := dialDoT(t, env.addr)
			c.send(t, question("www.example.test.", dns.TypeA, 1))
			if _, err := c.recv(2 * time.Second); err != nil {
				t.Fatal(err)
			}
			held = append(held, c)
		}
		// the fourth is closed before its handshake completes
		if _, _, err := tryStaple(env.addr, "", nil); err == nil {
			t.Fatal("a fourth connection from one client was accepted (limit 3)")
		}
		otherClientOK(t)
		held[0].send(t, question("mail.example.test.", dns.TypeA, 2))
		if _, err := held[0].recv(2 * time.Second); err != nil {
			t.Fatalf("a held connection stopped answering: %v", err)
		}
	})
}

// TestForwardFailover: with two upstreams, stopping one under load loses
// no query and the health metric shows it down; started again, it comes
// back; with both down the client gets SERVFAIL.
func TestForwardFailover(t *testing.T) {
	env := startDoT(t, "10s", 0, 2)
	up1, up2 := env.ups[0], env.ups[1]
	var failures, answered atomic.Int64
	stopLoad := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c := dialDoT(t, env.addr)
		for i := 0; ; i++ {
			select {
			case <-stopLoad:
				return
			default:
			}
			c.send(t, question(fmt.Sprintf("q%d.up.test.", i), dns.TypeA, uint16(i)))
			m, err := c.recv(5 * time.Second)
			if err != nil || m.Rcode != dns.RcodeSuccess {
				failures.Add(1)
				continue
			}
			answered.Add(1)
		}
	}()
	metric := func(u *testUpstream) string {
		re := regexp.MustCompile(`dnsfront_upstream_healthy\{upstream="udp://` + regexp.QuoteMeta(u.addr) + `"\} (\d)`)
		m := re.FindStringSubmatch(string(env.c.api("GET", "/metrics")))
		if m == nil {
			return ""
		}
		return m[1]
	}
	waitAnswered := func(n int64) {
		start := answered.Load()
		if err := eventually(10*time.Second, func() bool { return answered.Load() >= start+n }); err != nil {
			t.Fatalf("load stalled at %d answers", answered.Load())
		}
	}
	waitAnswered(50)
	up1.stop()
	if err := eventually(10*time.Second, func() bool { return metric(up1) == "0" }); err != nil {
		t.Fatalf("upstream 1 stopped, health metric %q, want 0", metric(up1))
	}
	waitAnswered(50)
	if metric(up2) != "1" {
		t.Fatalf("upstream 2 metric %q, want 1", metric(up2))
	}
	up1.start()
	before := up1.answered.Load()
	if err := eventually(10*time.Second, func() bool { return metric(up1) == "1" && up1.answered.Load() > before+20 }); err != nil {
		t.Fatalf("upstream 1 started again: metric %q, %d queries", metric(up1), up1.answered.Load()-before)
	}
	close(stopLoad)
	wg.Wait()
	if f := failures.Load(); f != 0 {
		t.Fatalf("%d of %d queries failed during failover", f, f+answered.Load())
	}

	up1.stop()
	up2.stop()
	c := dialDoT(t, env.addr)
	c.send(t, question("down.up.test.", dns.TypeA, 99))
	m, err := c.recv(5 * time.Second)
	if err != nil || m.Rcode != dns.RcodeServerFailure || m.Id != 99 {
		t.Fatalf("with both upstreams down: %v %v, want SERVFAIL", m, err)
	}
}

// TestDoTReloadUnderLoad: five `caddy reload --force` during a dnsperf
// run over DoT lose no query (open connections are handed to the new
// config).
func TestDoTReloadUnderLoad(t *testing.T) {
	dnsperf := need(t, "dnsperf")
	env := startDoT(t, "10s", 0, 1)
	host, port, _ := net.SplitHostPort(env.addr)
	qfile := filepath.Join(t.TempDir(), "queries")
	if err := os.WriteFile(qfile, []byte("www.example.test A\nmail.example.test A\nalias.example.test A\nnope.example.test AAAA\nq.up.test A\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := run(t, true, dnsperf, "-m", "dot", "-s", host, "-p", port, "-d", qfile, "-c", "4", "-q", "40", "-l", "15", "-t", "3")
		done <- result{out, err}
	}()
	// reload while dnsperf runs: each reload is real (--force)
	reloads := 0
	for reloads < 5 {
		select {
		case r := <-done:
			t.Fatalf("dnsperf ended after %d reloads: %v\n%s", reloads, r.err, r.out)
		case <-time.After(500 * time.Millisecond):
		}
		if err := env.c.reload("", nil); err != nil {
			t.Fatal(err)
		}
		reloads++
	}
	r := <-done
	m := regexp.MustCompile(`Queries lost:\s+(\d+)`).FindStringSubmatch(r.out)
	completed := regexp.MustCompile(`Queries completed:\s+(\d+)`).FindStringSubmatch(r.out)
	if m == nil || completed == nil {
		t.Fatalf("dnsperf output: %v\n%s", r.err, r.out)
	}
	if m[1] != "0" || completed[1] == "0" {
		t.Fatalf("dnsperf across 5 reloads: %s queries lost, %s completed\n%s", m[1], completed[1], r.out)
	}
	if n := len(env.c.log.lines("connections_handed_over")); n < 5 {
		t.Errorf("%d hand-overs logged, want one per reload", n)
	}
	t.Logf("dnsperf across 5 reloads: %s completed, 0 lost", completed[1])
	// the try-it hint: once, not at every reload, and for the zone served
	if l := env.c.log.lines(`"msg":"try it"`); len(l) != 1 || !strings.Contains(l[0], "example.test. SOA") {
		t.Errorf("try-it lines after 5 reloads: %q, want one, for example.test. SOA", l)
	}
}

// TestDoTCertificatePerServer: two DoT servers in one process, each
// presenting its own certificate and staple (as dnsdist's per-frontend
// certificates do), chosen by tag through the connection policy's
// cert_selection; clients with and without SNI.
func TestDoTCertificatePerServer(t *testing.T) {
	dir := t.TempDir()
	a := newPKI(t, dir, "a", testpki.ECDSA, testpki.LeafOptions{}, "a.example.test")
	b := newPKI(t, dir, "b", testpki.RSA, testpki.LeafOptions{}, "b.example.test")
	a.writeStaple(t, a.response(t, ocsp.Good, time.Hour))
	b.writeStaple(t, b.response(t, ocsp.Good, time.Hour))
	pa, pb := freePort(t), freePort(t)
	startCaddy(t, dir, `{
	ocsp {
		certificate {{.A}} {{.AKey}} {
			tags dot-a
			staple file {{.AStaple}}
		}
		certificate {{.B}} {{.BKey}} {
			tags dot-b
			staple file {{.BStaple}}
		}
	}
	dot 127.0.0.1:{{.PA}} {
		connection_policy {
			cert_selection {
				any_tag dot-a
			}
		}
		zone example.test {{.Zone}}
	}
	dot 127.0.0.1:{{.PB}} {
		connection_policy {
			cert_selection {
				any_tag dot-b
			}
		}
		zone example.test {{.Zone}}
	}
}
`, Vars{"A": a.certFile, "AKey": a.keyFile, "AStaple": a.stapleFile, "B": b.certFile, "BKey": b.keyFile, "BStaple": b.stapleFile,
		"PA": pa, "PB": pb, "Zone": exampleZone(t)})
	for _, tc := range []struct {
		port int
		pk   *pki
		name string
	}{{pa, a, "a.example.test"}, {pb, b, "b.example.test"}} {
		addr := fmt.Sprintf("127.0.0.1:%d", tc.port)
		waitListen(t, addr)
		for _, sni := range []string{"", tc.name} {
			out := sClient(t, addr, sni, "-alpn", "dot")
			// openssl pads an odd number of hex digits with a 0
			serial := regexp.MustCompile(fmt.Sprintf(`Serial Number: 0?%X\b`, tc.pk.leaf.Cert.SerialNumber))
			if !strings.Contains(out, "CN = "+tc.name) || !strings.Contains(out, "Cert Status: good") || !serial.MatchString(out) {
				t.Fatalf("DoT server on %s (SNI %q): want %s's certificate and its staple (%s)\n%s", addr, sni, tc.name, serial, out)
			}
		}
		// the other server's certificate is not served here, even for its name
		other := map[*pki]*pki{a: b, b: a}[tc.pk]
		if _, chain, err := tryStaple(addr, other.leaf.Cert.DNSNames[0], nil); err == nil && bytes.Equal(chain[0].Raw, other.leaf.Cert.Raw) {
			t.Fatalf("DoT server on %s serves the other server's certificate", addr)
		}
	}
}

// TestDoTWithoutCertificate: a DoT server that no certificate can reach
// (no ocsp-app certificate, no server_name, nothing in the tls app, no
// site) is a config error naming the server, not a server whose every
// handshake fails.
func TestDoTWithoutCertificate(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "Caddyfile")
	write := func(body string) {
		t.Helper()
		if err := os.WriteFile(cfg, []byte("{\n\tadmin off\n\tlocal_certs\n\tskip_install_trust\n"+body+"}\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	validate := func() (string, error) {
		t.Helper()
		cmd := exec.Command(caddyBin, "validate", "--config", cfg, "--adapter", "caddyfile")
		cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, "data"), "XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	write("\tdot 127.0.0.1:8853 {\n\t\tzone example.test " + exampleZone(t) + "\n\t}\n")
	if out, err := validate(); err == nil || !strings.Contains(out, "server dot0: no certificate to serve") {
		t.Fatalf("caddy validate of a DoT server with no certificate: %v\n%s", err, out)
	}
	write("\tdot 127.0.0.1:8853 {\n\t\tserver_name dns.example.test\n\t\tzone example.test " + exampleZone(t) + "\n\t}\n")
	if out, err := validate(); err != nil {
		t.Fatalf("caddy validate with server_name: %v\n%s", err, out)
	}
}

// TestDoTMissingCertificateWarned: handshakes for a server name that no
// certificate covers fail, and the log says so at warn level once for
// that name, however many fail.
func TestDoTMissingCertificateWarned(t *testing.T) {
	env := startDoT(t, "10s", 0, 1)
	for i := 0; i < 3; i++ {
		if _, _, err := tryStaple(env.addr, "nope.example.test", nil); err == nil {
			t.Fatal("a handshake for a name without a certificate succeeded")
		}
	}
	if _, _, err := tryStaple(env.addr, "dns.example.test", nil); err != nil {
		t.Fatalf("the certificate's own name: %v", err)
	}
	lines := env.c.log.lines("no certificate for this server name")
	if len(lines) != 1 || !strings.Contains(lines[0], `"server_name":"nope.example.test"`) || !strings.Contains(lines[0], `"level":"warn"`) {
		t.Fatalf("warnings for the name without a certificate: %q, want one", lines)
	}
}

// TestSecondInstanceRefused: a second Caddy started on the same config
// (same admin and DoT addresses, which SO_REUSEPORT would let it share)
// refuses to run and names the addresses and the first one's pid; the
// first keeps answering.
func TestSecondInstanceRefused(t *testing.T) {
	env := startDoT(t, "10s", 0, 1)
	dir2 := t.TempDir()
	cmd := exec.Command(caddyBin, "run", "--config", env.c.config, "--adapter", "caddyfile")
	cmd.Dir = dir2
	cmd.Env = append(os.Environ(), "HOME="+dir2, "XDG_DATA_HOME="+filepath.Join(dir2, "data"), "XDG_CONFIG_HOME="+filepath.Join(dir2, "config"))
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("a second instance on the same addresses kept running:\n%s", out)
	}
	if err == nil {
		t.Fatalf("the second instance exited without an error:\n%s", out)
	}
	pid := strconv.Itoa(env.c.cmd.Process.Pid)
	for _, want := range []string{"another process listens on the same address", env.c.Admin + " (pid " + pid + ")", env.addr + " (pid " + pid + ")"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("second instance's error does not say %q:\n%s", want, out)
		}
	}
	resp, herr := http.Get("http://" + env.c.Admin + "/config/")
	if herr != nil {
		t.Fatalf("first instance's admin API after the second gave up: %v", herr)
	}
	resp.Body.Close()
	host, port, _ := net.SplitHostPort(env.addr)
	if o := kdig(t, "+tls", "@"+host, "-p", port, "www.example.test", "A"); !strings.Contains(o, "192.0.2.80") {
		t.Fatalf("first instance after the second gave up:\n%s", o)
	}
}

// TestDoTConnectionRate: max_connection_rate_per_client closes a
// client's new connections past its rate (each costs a handshake), and
// not another client's, across a reload; the refusal is counted. kdig
// binds 127.0.0.x to be each client.
func TestDoTConnectionRate(t *testing.T) {
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	c := startCaddy(t, t.TempDir(), `{
	ocsp {
		issue dns.example.test 127.0.0.1
	}
	dot 127.0.0.1:{{.Port}} {
		max_connection_rate_per_client 0.1
		zone example.test {{.Zone}}
	}
}
`, Vars{"Port": port, "Zone": exampleZone(t)})
	waitListen(t, addr)
	ask := func(from string) string {
		return kdig(t, "+tls", "+retry=0", "+timeout=2", "-b", from, "@127.0.0.1", "-p", fmt.Sprint(port), "www.example.test", "A")
	}
	// the bucket holds one connection (a second's worth of 0.1, at least
	// one) and takes 10 s to refill: the second comes well before, after
	// a reload (the counts outlive it)
	if out := ask("127.0.0.5"); !strings.Contains(out, "192.0.2.80") {
		t.Fatalf("first connection: %s", out)
	}
	if err := c.reload("", nil); err != nil {
		t.Fatal(err)
	}
	if out := ask("127.0.0.5"); strings.Contains(out, "192.0.2.80") {
		t.Fatalf("a second connection within the rate's 10 s was answered:\n%s", out)
	}
	if out := ask("127.0.0.6"); !strings.Contains(out, "192.0.2.80") {
		t.Fatalf("another client was refused: %s", out)
	}
	if m := string(c.api("GET", "/metrics")); !strings.Contains(m, `dnsfront_dot_connections_refused_total{reason="max_connection_rate_per_client",server="dot0"} 1`) {
		var lines []string
		for _, l := range strings.Split(m, "\n") {
			if strings.Contains(l, "connections_refused") {
				lines = append(lines, l)
			}
		}
		t.Errorf("the refusal is not counted:\n%s", strings.Join(lines, "\n"))
	}
}

// TestDoTFastOpen: with tcp_fast_open, a client that has its cookie
// (kdig +fastopen, the second time) opens its connection with its
// ClientHello in the SYN, as the kernel's TCPFastOpenPassive count shows,
// and is answered over DoT and DoH. It needs the kernel to allow TCP Fast
// Open for servers (net.ipv4.tcp_fastopen with its server flag, 0x2, which the test
// does not change): without it, it skips.
func TestDoTFastOpen(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_fastopen")
	if err != nil {
		t.Skipf("no TCP Fast Open setting to read: %v", err)
	}
	if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err != nil || v&3 != 3 {
		t.Skipf("net.ipv4.tcp_fastopen is %s: TCP Fast Open needs 3 (client and server) for this test (sysctl -w net.ipv4.tcp_fastopen=3)", strings.TrimSpace(string(b)))
	}
	need(t, "kdig")
	port, dohPort := freePort(t), freePort(t)
	startCaddy(t, t.TempDir(), `{
	ocsp {
		issue dns.example.test 127.0.0.1
	}
	dot 127.0.0.1:{{.Port}} {
		tcp_fast_open 64
		zone example.test {
			file {{.Zone}}
		}
	}
	doh 127.0.0.1:{{.DoH}} {
		tcp_fast_open 64
		zone example.test {
			file {{.Zone}}
		}
	}
}
`, Vars{"Port": port, "DoH": dohPort, "Zone": exampleZone(t)})
	waitListen(t, fmt.Sprintf("127.0.0.1:%d", port))
	waitListen(t, fmt.Sprintf("127.0.0.1:%d", dohPort))
	for _, args := range [][]string{{"+tls", "-p", strconv.Itoa(port)}, {"+https=/dns-query", "-p", strconv.Itoa(dohPort)}} {
		// the cookie first: kdig +tls +fastopen without one stalls its
		// handshake with any server (openssl s_server too), so a Go
		// client with TCP_FASTOPEN_CONNECT asks for it
		fastOpenCookie(t, "127.0.0.1:"+args[2])
		before := fastOpenPassive(t)
		out := kdig(t, append(args, "+fastopen", "@127.0.0.1", "www.example.test", "A")...)
		if !strings.Contains(out, "status: NOERROR") || !strings.Contains(out, "192.0.2.80") {
			t.Fatalf("kdig %s +fastopen:\n%s", args[0], out)
		}
		if after := fastOpenPassive(t); after <= before {
			t.Fatalf("kdig %s +fastopen: TCPFastOpenPassive %d before, %d after: no connection was opened with TCP Fast Open", args[0], before, after)
		}
	}
}

// fastOpenCookie makes a TLS connection to addr with TCP Fast Open (its
// ClientHello in the SYN, with a cookie request), so that the kernel
// keeps the server's cookie for the clients after it.
func fastOpenCookie(t *testing.T, addr string) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		cerr := c.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_FASTOPEN_CONNECT, 1) })
		return errors.Join(cerr, err)
	}}
	raw, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(5 * time.Second))
	c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"dot", "h2"}}) // the handshake, not the certificate, is what this is for
	if err := c.Handshake(); err != nil {
		t.Fatalf("a TLS handshake over TCP Fast Open to %s: %v", addr, err)
	}
}

// fastOpenPassive is the kernel's count of connections it accepted with
// TCP Fast Open (TcpExt TCPFastOpenPassive in /proc/net/netstat).
func fastOpenPassive(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/net/netstat")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	for i := 0; i+1 < len(lines); i += 2 {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) == 0 || names[0] != "TcpExt:" || len(values) != len(names) {
			continue
		}
		for j, n := range names {
			if n == "TCPFastOpenPassive" {
				v, err := strconv.ParseInt(values[j], 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				return v
			}
		}
	}
	t.Fatal("/proc/net/netstat has no TCPFastOpenPassive")
	return 0
}
