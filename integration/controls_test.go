package integration

import (
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// controlsSite: DoT behind a load balancer (PROXY protocol from
// 127.0.0.1 only), and a DoH site that trusts X-Forwarded-For from
// 127.0.0.1; both with the same ACL and a rate limit, so that each shows
// which client address its handlers saw.
const controlsSite = proxiedDoTHead + `		query_log
		acl {
			deny 127.0.0.3 203.0.113.0/24
			allow 127.0.0.0/8 198.51.100.0/24
		}
		ratelimit {
			name dot-limit
			qps 0.001
			burst 3
			prefix 32 128
		}
		forward udp://{{.Up}}
	}
	servers {
		trusted_proxies static 127.0.0.1/32
	}
}
https://127.0.0.1:{{.HTTPS}} {
	tls internal
	doh {
		query_log
		acl {
			deny 127.0.0.3 203.0.113.0/24
			allow 127.0.0.0/8 198.51.100.0/24
		}
		forward udp://{{.Up}}
	}
	doh /drop-query {
		acl {
			deny 203.0.113.0/24
			action drop
		}
		forward udp://{{.Up}}
	}
}
`

// proxiedDoTHead opens a test config: the ocsp app's certificate, and a
// DoT server behind a load balancer at 127.0.0.1 that sends PROXY
// headers; the server's handlers and the closing braces follow.
const proxiedDoTHead = `{
	ocsp {
		issue dns.example.test 127.0.0.1
	}
	dot 127.0.0.1:{{.Port}} {
		listener_wrappers {
			proxy_protocol {
				timeout 2s
				allow 127.0.0.1/32
			}
		}
`

// proxyV2 is a PROXY protocol v2 header for a TCP over IPv4 connection
// from src to dst.
func proxyV2(src, dst netip.AddrPort) []byte {
	b := []byte("\r\n\r\n\x00\r\nQUIT\n")
	b = append(b, 0x21, 0x11, 0, 12) // v2 PROXY, TCP over IPv4, 12 octets of addresses
	s, d := src.Addr().As4(), dst.Addr().As4()
	b = append(append(b, s[:]...), d[:]...)
	b = binary.BigEndian.AppendUint16(b, src.Port())
	return binary.BigEndian.AppendUint16(b, dst.Port())
}

// dotVia asks name over DoT from the local address from, with header
// (a PROXY header, or nil) written before the TLS handshake, and returns
// the rcode, or -1 when the connection failed or was closed unanswered.
func dotVia(t *testing.T, addr, from string, header []byte, name string) int {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	raw, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if header != nil {
		if _, err := raw.Write(header); err != nil {
			return -1
		}
	}
	c := &dotConn{tls.Client(raw, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"dot"}})} // trust is kdig's test
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := c.Handshake(); err != nil {
		return -1
	}
	c.send(t, question(name, dns.TypeA, 7))
	m, err := c.recv(5 * time.Second)
	if err != nil {
		return -1
	}
	return m.Rcode
}

// TestClientControls: the ACL and the rate limit see the real client,
// over DoT (the socket's address, or a trusted PROXY v1/v2 header's) and
// DoH (X-Forwarded-For from a trusted proxy); a PROXY header from a
// sender not allowed is not believed; a client over its rate is refused
// while another is answered.
func TestClientControls(t *testing.T) {
	dir := t.TempDir()
	up := newTestUpstream(t, 1)
	port, https := freePort(t), freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	c := startCaddy(t, dir, controlsSite, Vars{"Port": port, "HTTPS": https, "Up": up.addr})
	waitListen(t, addr)
	host, p, _ := net.SplitHostPort(addr)
	kd := func(from string, names ...string) string {
		return kdig(t, append([]string{"+tls", "+retry=0", "-b", from, "@" + host, "-p", p}, names...)...)
	}

	// kdig from addresses of 127/8: allowed, denied
	if out := kd("127.0.0.2", "a.example.test."); !strings.Contains(out, "status: NOERROR") {
		t.Fatalf("127.0.0.2 (allowed):\n%s", out)
	}
	if out := kd("127.0.0.3", "a.example.test."); !strings.Contains(out, "status: REFUSED") || !strings.Contains(out, "EDE: 18 (Prohibited)") {
		t.Fatalf("127.0.0.3 (denied): want REFUSED with EDE 18\n%s", out)
	}

	// PROXY headers from the load balancer (127.0.0.1, allowed): the
	// handlers see the address they carry
	dst := netip.MustParseAddrPort(addr)
	if rc := dotVia(t, addr, "127.0.0.1", proxyV2(netip.MustParseAddrPort("203.0.113.7:5555"), dst), "a.example.test."); rc != dns.RcodeRefused {
		t.Fatalf("PROXY v2 from a denied client: rcode %d, want REFUSED", rc)
	}
	if rc := dotVia(t, addr, "127.0.0.1", proxyV2(netip.MustParseAddrPort("198.51.100.7:5555"), dst), "a.example.test."); rc != dns.RcodeSuccess {
		t.Fatalf("PROXY v2 from an allowed client: rcode %d, want NOERROR", rc)
	}
	v1 := []byte(fmt.Sprintf("PROXY TCP4 203.0.113.8 127.0.0.1 5555 %d\r\n", port))
	if rc := dotVia(t, addr, "127.0.0.1", v1, "a.example.test."); rc != dns.RcodeRefused {
		t.Fatalf("PROXY v1 from a denied client: rcode %d, want REFUSED", rc)
	}
	// a denied client that sends a header claiming an allowed address is
	// not believed: it is not an allowed sender
	if rc := dotVia(t, addr, "127.0.0.3", proxyV2(netip.MustParseAddrPort("198.51.100.9:5555"), dst), "a.example.test."); rc == dns.RcodeSuccess {
		t.Fatal("a PROXY header from a sender not allowed was believed: the denied client was answered")
	}

	// the query log saw the client the PROXY header named
	if err := eventually(5*time.Second, func() bool {
		return len(c.log.lines(`"client":"203.0.113.7"`)) > 0
	}); err != nil {
		t.Fatalf("no query log entry for the PROXY v2 client 203.0.113.7")
	}
	if l := c.log.lines(`"client":"203.0.113.7"`)[0]; !strings.Contains(l, `"logger":"dns.handlers.query_log"`) ||
		!strings.Contains(l, `"rcode":"REFUSED"`) || !strings.Contains(l, `"transport":"dot"`) || !strings.Contains(l, `"qname":"a.example.test."`) {
		t.Fatalf("query log entry: %s", l)
	}

	// the rate limit: 3 queries, then REFUSED; another client answered
	for i, want := range []string{"NOERROR", "NOERROR", "NOERROR", "REFUSED"} {
		if out := kd("127.0.0.4", fmt.Sprintf("r%d.example.test", i)); !strings.Contains(out, "status: "+want) {
			t.Fatalf("query %d from 127.0.0.4: want %s\n%s", i+1, want, out)
		}
	}
	if out := kd("127.0.0.5", "a.example.test."); !strings.Contains(out, "status: NOERROR") {
		t.Fatalf("another client while 127.0.0.4 is limited:\n%s", out)
	}
	var stats []struct {
		Name           string `json:"name"`
		ClientsLimited int    `json:"clients_limited"`
		Limited        uint64 `json:"limited"`
		Top            []struct {
			Prefix  string `json:"prefix"`
			Limited uint64 `json:"limited"`
		} `json:"top"`
	}
	if err := json.Unmarshal(c.api("GET", "/dns/ratelimit"), &stats); err != nil || len(stats) != 1 || stats[0].Limited != 1 ||
		len(stats[0].Top) != 1 || stats[0].Top[0].Prefix != "127.0.0.4/32" {
		t.Fatalf("GET /dns/ratelimit: %+v (%v), want 127.0.0.4/32 limited once", stats, err)
	}
	metrics := string(c.api("GET", "/metrics"))
	for _, want := range []string{
		`dnsfront_ratelimit_limited_total{ratelimit="dot-limit"} 1`,
		`dnsfront_acl_denied_total{rule="deny 127.0.0.3 203.0.113.0/24",server="dot0"}`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// DoH: X-Forwarded-For from the trusted proxy names the client
	curl := need(t, "curl")
	doh := func(xff string) string {
		args := []string{"-sk", "--interface", "127.0.0.1", "-H", "accept: application/dns-json"}
		if xff != "" {
			args = append(args, "-H", "X-Forwarded-For: "+xff)
		}
		out, _ := run(t, true, curl, append(args, fmt.Sprintf("https://127.0.0.1:%d/dns-query?name=a.example.test&type=A", https))...)
		return out
	}
	// the site's certificate is issued in the background after start:
	// asked until it serves
	var out string
	if err := eventually(15*time.Second, func() bool { out = doh(""); return out != "" }); err != nil || !strings.Contains(out, `"Status":0`) {
		t.Fatalf("DoH from 127.0.0.1: %q", out)
	}
	if out := doh("203.0.113.9"); !strings.Contains(out, `"Status":5`) {
		t.Fatalf("DoH for a denied client behind the trusted proxy: %s, want REFUSED (5)", out)
	}
	if out := doh("198.51.100.9"); !strings.Contains(out, `"Status":0`) {
		t.Fatalf("DoH for an allowed client behind the trusted proxy: %s", out)
	}
	// action drop on DoH: the stream is reset, no HTTP answer at all
	dropURL := fmt.Sprintf("https://127.0.0.1:%d/drop-query?name=a.example.test&type=A", https)
	out, err := run(t, true, curl, "-sk", "--http2", "-o", "/dev/null", "-w", "%{http_code}", "-H", "accept: application/dns-json", "-H", "X-Forwarded-For: 203.0.113.10", dropURL)
	if err == nil || strings.TrimSpace(out) != "000" {
		t.Fatalf("DoH drop: curl %v, status %q; want a failed transfer with no status", err, out)
	}
	if out, _ := run(t, true, curl, "-sk", "--http2", "-o", "/dev/null", "-w", "%{http_code}", "-H", "accept: application/dns-json", dropURL); strings.TrimSpace(out) != "200" {
		t.Fatalf("DoH through the drop ACL from an allowed client: status %q", out)
	}
	if l := c.log.lines(`"client":"203.0.113.9"`); len(l) != 1 || !strings.Contains(l[0], `"transport":"doh"`) || !strings.Contains(l[0], `"rcode":"REFUSED"`) {
		t.Fatalf("query log entries of the DoH client 203.0.113.9: %q", l)
	}
	if l := c.log.lines(`"client":"198.51.100.9"`); len(l) != 1 || !strings.Contains(l[0], `"upstream":"udp://`) {
		t.Fatalf("query log entries of the DoH client 198.51.100.9: %q", l)
	}
}

// rcodeLimitSite: a DoT server whose rate limit blocks, for an hour, a
// client that gets more than 3 NXDOMAIN answers (dnsdist's dynamic block
// on an rcode rate: a random-subdomain flood through this server); Mark
// changes the config without touching the limit.
const rcodeLimitSite = `{
	ocsp {
		issue dns.example.test 127.0.0.1
	}
	dot 127.0.0.1:{{.Port}} {
		ratelimit {
			name nx-limit
			qps 1000
			prefix 32 128
			rcode NXDOMAIN 0.001 3
			block_for 1h
		}
		route {
			name mark.example.test
			answer {{.Mark}}
		}
		zone example.test {{.Zone}}
	}
}
`

// TestRcodeLimitBlock: kdig from one address gets 3 NXDOMAIN answers,
// then REFUSED for a name that exists, while another address is
// answered; the admin API and the metrics show the block, and a reload
// that keeps the limit's config keeps the block.
func TestRcodeLimitBlock(t *testing.T) {
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	vars := Vars{"Port": port, "Zone": exampleZone(t), "Mark": "192.0.2.1"}
	c := startCaddy(t, t.TempDir(), rcodeLimitSite, vars)
	waitListen(t, addr)
	p := strconv.Itoa(port)
	kd := func(from, name string) string {
		return kdig(t, "+tls", "+retry=0", "-b", from, "@127.0.0.1", "-p", p, name)
	}
	for i := range 3 {
		if out := kd("127.0.0.7", fmt.Sprintf("nx%d.example.test", i)); !strings.Contains(out, "status: NXDOMAIN") {
			t.Fatalf("NXDOMAIN %d from 127.0.0.7:\n%s", i+1, out)
		}
	}
	if out := kd("127.0.0.7", "www.example.test"); !strings.Contains(out, "status: REFUSED") {
		t.Fatalf("127.0.0.7 after 3 NXDOMAIN answers, want REFUSED:\n%s", out)
	}
	if out := kd("127.0.0.8", "www.example.test"); !strings.Contains(out, "status: NOERROR") {
		t.Fatalf("another client while 127.0.0.7 is blocked:\n%s", out)
	}
	if out := kd("127.0.0.8", "nx.example.test"); !strings.Contains(out, "status: NXDOMAIN") {
		t.Fatalf("another client's first NXDOMAIN:\n%s", out)
	}
	var stats []struct {
		Name           string `json:"name"`
		ClientsBlocked int    `json:"clients_blocked"`
		BlockFor       string `json:"block_for"`
		Rcodes         []struct {
			Rcode   string `json:"rcode"`
			Limited uint64 `json:"limited"`
			Top     []struct {
				Prefix       string     `json:"prefix"`
				BlockedUntil *time.Time `json:"blocked_until"`
			} `json:"top"`
		} `json:"rcodes"`
	}
	if err := json.Unmarshal(c.api("GET", "/dns/ratelimit"), &stats); err != nil || len(stats) != 1 || stats[0].ClientsBlocked != 1 ||
		stats[0].BlockFor != "1h0m0s" || len(stats[0].Rcodes) != 1 || stats[0].Rcodes[0].Rcode != "NXDOMAIN" || stats[0].Rcodes[0].Limited != 1 ||
		len(stats[0].Rcodes[0].Top) != 1 || stats[0].Rcodes[0].Top[0].Prefix != "127.0.0.7/32" || stats[0].Rcodes[0].Top[0].BlockedUntil == nil ||
		time.Until(*stats[0].Rcodes[0].Top[0].BlockedUntil) < 59*time.Minute {
		t.Fatalf("GET /dns/ratelimit: %+v (%v), want 127.0.0.7/32 blocked for an hour", stats, err)
	}
	if n := metric(t, c, `dnsfront_ratelimit_rcode_limited_total{ratelimit="nx-limit",rcode="NXDOMAIN"}`); n != 1 {
		t.Errorf("rcode_limited_total %d, want 1", n)
	}
	if n := metric(t, c, `dnsfront_ratelimit_clients_blocked{ratelimit="nx-limit"}`); n != 1 {
		t.Errorf("clients_blocked %d, want 1", n)
	}

	vars["Mark"] = "192.0.2.2"
	if err := c.reload(rcodeLimitSite, vars); err != nil {
		t.Fatal(err)
	}
	if out := kd("127.0.0.8", "mark.example.test"); !strings.Contains(out, "192.0.2.2") {
		t.Fatalf("the reloaded config is not serving:\n%s", out)
	}
	if out := kd("127.0.0.7", "www.example.test"); !strings.Contains(out, "status: REFUSED") {
		t.Fatalf("127.0.0.7 after a reload that kept the limit, want REFUSED still:\n%s", out)
	}
}

// TestRebindProtection: kdig over DoT and DoH (the dedicated server)
// through rebind_protection between the cache and forward: an
// upstream's private address is removed (NOERROR, no address, EDE 15),
// and the cache keeps and serves the answer so made; a CNAME stays without its target's private address; a
// public address and an allowed domain's private one reach the client.
func TestRebindProtection(t *testing.T) {
	up := newTestUpstream(t, 1)
	port, dohPort := freePort(t), freePort(t)
	chain := `
		cache
		rebind_protection {
			allow corp.private.up.test
		}
		forward udp://{{.Up}}
	}`
	c := startCaddy(t, t.TempDir(), `{
	ocsp {
		issue dns.example.test 127.0.0.1
	}
	dot 127.0.0.1:{{.Port}} {`+chain+`
	doh 127.0.0.1:{{.DoH}} {`+chain+`
}
`, Vars{"Port": port, "DoH": dohPort, "Up": up.addr})
	waitListen(t, fmt.Sprintf("127.0.0.1:%d", port))
	waitListen(t, fmt.Sprintf("127.0.0.1:%d", dohPort))
	// names of each transport's own: the two servers share the cache
	for _, tr := range []struct{ name, flag, port string }{
		{"dot", "+tls", strconv.Itoa(port)},
		{"doh", "+https=/dns-query", strconv.Itoa(dohPort)},
	} {
		kd := func(name string) string {
			return kdig(t, tr.flag, "+retry=0", "@127.0.0.1", "-p", tr.port, name, "A")
		}
		for i := range 2 { // the second from the cache
			out := kd("nas-" + tr.name + ".private.up.test")
			if !strings.Contains(out, "status: NOERROR") || strings.Contains(out, "10.0.0.1") || !strings.Contains(out, "EDE: 15 (Blocked)") {
				t.Fatalf("%s, query %d of a private address:\n%s", tr.name, i+1, out)
			}
		}
		out := kd("alias." + tr.name + ".private.up.test")
		if !strings.Contains(out, "CNAME") || !strings.Contains(out, "target."+tr.name+".private.up.test.") || strings.Contains(out, "10.0.0.1") {
			t.Fatalf("%s, a CNAME to a private address:\n%s", tr.name, out)
		}
		if out := kd("lan.corp.private.up.test"); !strings.Contains(out, "10.0.0.1") || strings.Contains(out, "EDE") {
			t.Fatalf("%s, a name of the allowed domain:\n%s", tr.name, out)
		}
		if out := kd("www.public.test"); !strings.Contains(out, "198.51.100.1") {
			t.Fatalf("%s, a public address:\n%s", tr.name, out)
		}
	}
	// each transport: the private answer once (the second came from the
	// cache, which kept it filtered), and the alias's
	for _, server := range []string{"dot0", "doh0"} {
		if n := metric(t, c, `dnsfront_rebind_protection_answers_total{server="`+server+`"}`); n != 2 {
			t.Errorf("%s: rebind_protection_answers_total %d, want 2", server, n)
		}
	}
}

// TestNSID: kdig +nsid and dig +nsid over DoT, and kdig +nsid over the
// dedicated DoH server, get the server's identity (RFC 5001), with
// Caddy's placeholder replaced; a query without the option gets none;
// an upstream's NSID never reaches the client, asked or not; id.server.
// CH TXT gets it too (RFC 4892).
func TestNSID(t *testing.T) {
	up := newTestUpstream(t, 1)
	port, dohPort := freePort(t), freePort(t)
	host, _ := os.Hostname()
	startCaddy(t, t.TempDir(), `{
	ocsp {
		issue dns.example.test 127.0.0.1
	}
	dot 127.0.0.1:{{.Port}} {
		nsid dot-{system.hostname}
		cache
		forward udp://{{.Up}}
	}
	doh 127.0.0.1:{{.DoH}} {
		nsid doh-front
		forward udp://{{.Up}}
	}
}
`, Vars{"Port": port, "DoH": dohPort, "Up": up.addr})
	waitListen(t, fmt.Sprintf("127.0.0.1:%d", port))
	waitListen(t, fmt.Sprintf("127.0.0.1:%d", dohPort))
	p, dp := strconv.Itoa(port), strconv.Itoa(dohPort)
	want := fmt.Sprintf(`"dot-%s"`, host)
	for i := range 2 { // the second from the cache
		out := kdig(t, "+tls", "+nsid", "@127.0.0.1", "-p", p, "nsid.up.test", "A")
		if !strings.Contains(out, "NSID: ") || !strings.Contains(out, want) || strings.Contains(out, `"up-1"`) {
			t.Fatalf("kdig +nsid, query %d: want %s alone\n%s", i+1, want, out)
		}
	}
	if out := kdig(t, "+tls", "@127.0.0.1", "-p", p, "nsid.up.test", "A"); strings.Contains(out, "NSID") || !strings.Contains(out, "198.51.100.1") {
		t.Fatalf("kdig without +nsid got an NSID, or no answer:\n%s", out)
	}
	dig := need(t, "dig")
	out, _ := run(t, true, dig, "+tls", "+nsid", "@127.0.0.1", "-p", p, "www.up.test", "A")
	if !strings.Contains(out, "NSID: ") || !strings.Contains(out, "(\""+strings.Trim(want, `"`)+"\")") {
		t.Fatalf("dig +nsid: want %s\n%s", want, out)
	}
	if out := kdig(t, "+https=/dns-query", "+nsid", "@127.0.0.1", "-p", dp, "nsid.up.test", "A"); !strings.Contains(out, `"doh-front"`) || strings.Contains(out, `"up-1"`) {
		t.Fatalf("kdig +https +nsid: want doh-front alone\n%s", out)
	}
	// RFC 4892, for a client without EDNS: the same identity
	if out := kdig(t, "+tls", "+noedns", "@127.0.0.1", "-p", p, "-c", "CH", "id.server", "TXT"); !strings.Contains(out, "CH\tTXT\t"+want) || !strings.Contains(out, " aa") {
		t.Fatalf("kdig CH TXT id.server: want %s, authoritative\n%s", want, out)
	}
}

// TestACLDropAtAccept: an acl with action drop first in the chain (past
// the query log) closes a denied client's connection as it is accepted,
// before a TLS handshake (as dnsdist's ACL): kdig from a denied address
// gets nothing, and no handshake is counted; the client a trusted PROXY
// header names is the one judged; an allowed client is answered.
func TestACLDropAtAccept(t *testing.T) {
	up := newTestUpstream(t, 1)
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	c := startCaddy(t, t.TempDir(), proxiedDoTHead+`		query_log
		acl {
			allow 127.0.0.1 198.51.100.0/24
			action drop
		}
		forward udp://{{.Up}}
	}
}
`, Vars{"Port": port, "Up": up.addr})
	waitListen(t, addr)
	p := strconv.Itoa(port)
	refused := func() int64 {
		return metric(t, c, `dnsfront_dot_connections_refused_total{reason="acl",server="dot0"}`)
	}
	if out := kdig(t, "+tls", "+retry=0", "-b", "127.0.0.1", "@127.0.0.1", "-p", p, "a.example.test"); !strings.Contains(out, "status: NOERROR") {
		t.Fatalf("127.0.0.1 (allowed):\n%s", out)
	}
	failures := func() int64 { return metric(t, c, `dnsfront_dot_handshake_failures_total{server="dot0"}`) }
	failed := failures() // waitListen's probe
	if out := kdig(t, "+tls", "+retry=0", "+timeout=2", "-b", "127.0.0.2", "@127.0.0.1", "-p", p, "a.example.test"); strings.Contains(out, "status:") {
		t.Fatalf("127.0.0.2 (dropped) got an answer:\n%s", out)
	}
	if n := refused(); n != 1 {
		t.Fatalf("%d connections refused by the acl, want 1", n)
	}
	if n := failures() - failed; n != 0 {
		t.Errorf("%d handshakes failed: the dropped client's connection was taken to a handshake", n)
	}
	dst := netip.MustParseAddrPort(addr)
	if rc := dotVia(t, addr, "127.0.0.1", proxyV2(netip.MustParseAddrPort("203.0.113.7:5555"), dst), "a.example.test."); rc != -1 {
		t.Fatalf("PROXY v2 naming a dropped client: rcode %d, want the connection closed", rc)
	}
	if rc := dotVia(t, addr, "127.0.0.1", proxyV2(netip.MustParseAddrPort("198.51.100.7:5555"), dst), "a.example.test."); rc != dns.RcodeSuccess {
		t.Fatalf("PROXY v2 naming an allowed client: rcode %d, want NOERROR", rc)
	}
	if n := refused(); n != 2 {
		t.Fatalf("%d connections refused by the acl, want 2", n)
	}
	if l := c.log.lines(`"client":"203.0.113.7"`); len(l) != 0 {
		t.Errorf("query log entries for a client whose connection was closed at accept: %q", l)
	}
}
