package integration

import (
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// routeSite has a DoT and a dedicated DoH server whose route answers the
// clients that connect to family.example.test from a zone of its own;
// the names outside that zone, and every other client, go on to the
// server's own zone and forward. The Caddy site's handler has the
// same route.
const routeSite = `{
	ocsp {
		issue dns.example.test family.example.test 127.0.0.1
	}
	dot 127.0.0.1:{{.DoT}} {
		idle_timeout 1s
		{{.Route}}
		zone example.test {{.Zone}}
		forward udp://{{.Up}}
	}
	doh 127.0.0.1:{{.DoH}} {
		{{.Route}}
		zone example.test {{.Zone}}
		forward udp://{{.Up}}
	}
}

https://dns.example.test:{{.Site}}, https://family.example.test:{{.Site}} {
	tls {
		get_certificate ocsp
	}
	doh /dns-query {
		{{.Route}}
		zone example.test {{.Zone}}
	}
}
`

// familyRoute is the route of routeSite's three servers.
const familyRoute = `route {
			server_name family.example.test
			zone example.test {
				record "@ 3600 IN SOA ns1 hostmaster 1 7200 3600 1209600 300"
				record "www 60 IN A 192.0.2.99"
			}
		}`

// TestRouteServerName: the server name a client connects to picks its
// handlers, on DoT (kdig, with and without SNI, and after TLS resumption
// as dnsdist's test has it), on the dedicated DoH server and in a Caddy
// site (curl and kdig +https).
func TestRouteServerName(t *testing.T) {
	dir := t.TempDir()
	up := newTestUpstream(t, 1)
	vars := Vars{"DoT": freePort(t), "DoH": freePort(t), "Site": freePort(t), "Zone": exampleZone(t), "Up": up.addr, "Route": familyRoute}
	startCaddy(t, dir, routeSite, vars)
	for _, k := range []string{"DoT", "DoH", "Site"} {
		waitListen(t, fmt.Sprintf("127.0.0.1:%d", vars[k]))
	}
	root := filepath.Join(dir, "data", "caddy", "pki", "authorities", "local", "root.crt")
	port := func(k string) string { return fmt.Sprint(vars[k]) }
	const family, plain = "192.0.2.99", "192.0.2.80"
	for _, c := range []struct {
		what string
		args []string
		want string
	}{
		{"DoT, family SNI", []string{"+tls-ca=" + root, "+tls-hostname=family.example.test", "-p", port("DoT"), "www.example.test"}, family},
		{"DoT, other SNI", []string{"+tls-ca=" + root, "+tls-hostname=dns.example.test", "-p", port("DoT"), "www.example.test"}, plain},
		{"DoT, no SNI", []string{"+tls", "-p", port("DoT"), "www.example.test"}, plain},
		{"DoT, family SNI, forwarded", []string{"+tls-ca=" + root, "+tls-hostname=family.example.test", "-p", port("DoT"), "host.up.test"}, "198.51.100.1"},
		{"DoH server, family SNI", []string{"+https=/dns-query", "+tls-ca=" + root, "+tls-hostname=family.example.test", "-p", port("DoH"), "www.example.test"}, family},
		{"DoH server, other SNI", []string{"+https=/dns-query", "+tls-ca=" + root, "+tls-hostname=dns.example.test", "-p", port("DoH"), "www.example.test"}, plain},
		{"DoH handler, family SNI", []string{"+https=/dns-query", "+tls-ca=" + root, "+tls-hostname=family.example.test", "-p", port("Site"), "www.example.test"}, family},
		{"DoH handler, other SNI", []string{"+https=/dns-query", "+tls-ca=" + root, "+tls-hostname=dns.example.test", "-p", port("Site"), "www.example.test"}, plain},
	} {
		out := kdig(t, append([]string{"@127.0.0.1", "+short"}, append(c.args, "A")...)...)
		if strings.TrimSpace(out) != c.want {
			t.Errorf("%s: kdig %s: %q, want %s", c.what, strings.Join(c.args, " "), out, c.want)
		}
	}
	// TLS resumption keeps the server name (dnsdist's
	// testTLSSNIRoutingAfterResumption): the second query of each run
	// resumes the first's session
	for _, sni := range []string{"family.example.test", "dns.example.test"} {
		want := map[string]string{"family.example.test": family, "dns.example.test": plain}[sni]
		sess := filepath.Join(dir, "sess-"+sni)
		for i := 0; i < 2; i++ {
			args := []string{"s_client", "-connect", "127.0.0.1:" + port("DoT"), "-servername", sni, "-CAfile", root, "-alpn", "dot", "-ign_eof"}
			if i == 0 {
				args = append(args, "-sess_out", sess)
			} else {
				args = append(args, "-sess_in", sess)
			}
			cmd := exec.Command(need(t, "openssl"), args...)
			q := packQuery(t, "www.example.test.", dns.TypeA, nil)
			cmd.Stdin = strings.NewReader(string(append([]byte{byte(len(q) >> 8), byte(len(q))}, q...)))
			out, _ := cmd.CombinedOutput()
			if i == 1 && !strings.Contains(string(out), "Reused, TLS") {
				t.Fatalf("SNI %s: the session was not resumed:\n%s", sni, out)
			}
			if ip := net.ParseIP(want).To4(); !strings.Contains(string(out), string(ip)) {
				t.Fatalf("SNI %s, connection %d: no %s in the answer:\n%q", sni, i, want, out)
			}
		}
	}
	// curl to the dedicated server by name (its SNI), over HTTP/2 and 1.1
	get := "/dns-query?dns=" + base64.RawURLEncoding.EncodeToString(packQuery(t, "www.example.test.", dns.TypeA, nil))
	for _, proto := range []string{"--http2", "--http1.1"} {
		out, err := exec.Command(need(t, "curl"), "-s", proto, "--cacert", root, "--resolve", "family.example.test:"+port("DoH")+":127.0.0.1",
			"https://family.example.test:"+port("DoH")+get).Output()
		m := new(dns.Msg)
		if err != nil || m.Unpack(out) != nil || len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != family {
			t.Fatalf("curl %s to family.example.test: %v %v", proto, err, m)
		}
	}
}

// blockSite blocks names with routes and answers: NXDOMAIN for two
// names and all under them, a sinkhole address for a third (its A and
// AAAA queries only); the rest is the zone's.
const blockSite = `{
	ocsp {
		issue dns.example.test 127.0.0.1
	}
	dot 127.0.0.1:{{.Port}} {
		route {
			name ads.example.test tracker.example.test
			not {
				name ok.ads.example.test
			}
			answer nxdomain {
				ede 15 "blocked by policy"
			}
		}
		route {
			name sink.example.test
			type A AAAA
			answer 0.0.0.0 :: {
				ttl 1h
			}
		}
		route {
			name search.example.test
			answer cname www.example.test {
				ttl 5m
			}
		}
		route {
			name nxcname.example.test
			answer cname nothere.example.test
		}
		route {
			name cached-block.example.test
			answer nxdomain {
				soa
				ttl 10m
			}
		}
		zone example.test {{.Zone}}
	}
}
`

// TestRouteBlockList: route by name and type with answer, through kdig
// (which shows the Extended DNS Error), with an exception (not); a CNAME answer (SafeSearch's
// kind) with its target's records from the zone after the route.
func TestRouteBlockList(t *testing.T) {
	port := freePort(t)
	startCaddy(t, t.TempDir(), blockSite, Vars{"Port": port, "Zone": exampleZone(t)})
	waitListen(t, fmt.Sprintf("127.0.0.1:%d", port))
	for _, c := range []struct {
		name, qtype string
		want        []string // in kdig's output
		not         string
	}{
		{"ads.example.test", "A", []string{"status: NXDOMAIN", "EDE: 15 (Blocked): 'blocked by policy'"}, "SOA"},
		{"x.y.Ads.Example.Test", "AAAA", []string{"status: NXDOMAIN"}, "SOA"}, // under it, any case
		{"tracker.example.test", "TXT", []string{"status: NXDOMAIN"}, "SOA"},
		{"notads.example.test", "A", []string{"status: NXDOMAIN", "SOA"}, ""},      // the zone's
		{"x.ok.ads.example.test", "A", []string{"status: NXDOMAIN", "SOA"}, "EDE"}, // the exception: the zone's
		{"sink.example.test", "A", []string{"status: NOERROR", "3600\tIN\tA\t0.0.0.0"}, ""},
		{"sink.example.test", "AAAA", []string{"status: NOERROR", "3600\tIN\tAAAA\t::"}, ""},
		{"sink.example.test", "MX", []string{"status: NXDOMAIN", "SOA"}, ""}, // not its type: the zone's
		{"www.example.test", "A", []string{"192.0.2.80"}, ""},
		{"Search.Example.Test", "A", []string{"status: NOERROR", "search.example.test.\t300\tIN\tCNAME\twww.example.test.", "3600\tIN\tA\t192.0.2.80"}, ""},
		{"search.example.test", "CNAME", []string{"status: NOERROR", "\tCNAME\twww.example.test."}, "192.0.2.80"},
		{"nxcname.example.test", "A", []string{"status: NXDOMAIN", "\tCNAME\tnothere.example.test.", "SOA"}, ""},
		{"cached-block.example.test", "A", []string{"status: NXDOMAIN", "AUTHORITY SECTION", "600\tIN\tSOA\t. . 1 3600 600 86400 600"}, ""},
	} {
		out := kdig(t, "+tls", "@127.0.0.1", "-p", fmt.Sprint(port), c.name, c.qtype)
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s %s: no %q in\n%s", c.name, c.qtype, w, out)
			}
		}
		if c.not != "" && strings.Contains(out, c.not) {
			t.Errorf("%s %s: %q in\n%s", c.name, c.qtype, c.not, out)
		}
	}
}

// pathSite is a dedicated DoH server with sub_paths, whose route answers
// the queries that come by /dns-query/kids from a block list.
const pathSite = `{
	ocsp {
		issue dns.example.test 127.0.0.1
	}
	doh 127.0.0.1:{{.Port}} {
		sub_paths
		route {
			path /dns-query/kids
			name www.example.test
			answer 192.0.2.71
		}
		zone example.test {{.Zone}}
	}
}
`

// TestRoutePath: per-client DoH URLs: /dns-query/kids gets its route,
// /dns-query and /dns-query/other the zone's answer, over HTTP/2 (kdig)
// and HTTP/1.1 (curl).
func TestRoutePath(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	startCaddy(t, dir, pathSite, Vars{"Port": port, "Zone": exampleZone(t)})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	waitListen(t, addr)
	root := filepath.Join(dir, "data", "caddy", "pki", "authorities", "local", "root.crt")
	for path, want := range map[string]string{"/dns-query/kids": "192.0.2.71", "/dns-query": "192.0.2.80", "/dns-query/other": "192.0.2.80"} {
		out := kdig(t, "+https="+path, "+tls-ca="+root, "+tls-hostname=dns.example.test", "@127.0.0.1", "-p", fmt.Sprint(port), "www.example.test", "A", "+short")
		if strings.TrimSpace(out) != want {
			t.Errorf("kdig +https=%s: %q, want %s", path, out, want)
		}
		get := path + "?dns=" + base64.RawURLEncoding.EncodeToString(packQuery(t, "www.example.test.", dns.TypeA, nil))
		body, err := exec.Command(need(t, "curl"), "-s", "--http1.1", "--cacert", root, "--resolve", fmt.Sprintf("dns.example.test:%d:127.0.0.1", port),
			fmt.Sprintf("https://dns.example.test:%d%s", port, get)).Output()
		m := new(dns.Msg)
		if err != nil || m.Unpack(body) != nil || len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != want {
			t.Errorf("curl --http1.1 %s: %v %v, want %s", path, err, m, want)
		}
	}
}

// blockListSite is a DoT server whose route answers the names of a block
// list file (and the names under them) with a block page's address.
const blockListSite = `{
	ocsp {
		issue dns.example.test
	}
	dot 127.0.0.1:{{.DoT}} {
		route blocklist {
			name_file {{.Block}}
			name_file_poll 100ms
			answer 192.0.2.66
		}
		route {
			name_regexp ad[0-9]+\.up\.test
			answer 192.0.2.67
		}
		zone example.test {{.Zone}}
		forward udp://{{.Up}}
	}
}
`

// TestRouteNameFile: a block list in a file (hosts lines, names,
// ||name^) picks a route's queries (kdig over DoT); the file replaced
// while Caddy runs is read again (its log says so) and the next queries
// see it; a broken file leaves the names read before, on the watcher's
// next look and on a config reload through the admin API, which Caddy
// refuses, naming the file and line. A route by name_regexp beside it
// takes the whole names its expression matches.
func TestRouteNameFile(t *testing.T) {
	dir := t.TempDir()
	up := newTestUpstream(t, 1)
	block := filepath.Join(dir, "block.txt")
	write := func(text string) {
		t.Helper()
		if err := os.WriteFile(block+".new", []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(block+".new", block); err != nil {
			t.Fatal(err)
		}
	}
	write("# StevenBlack-style hosts lines, then a name and an adblock rule\n0.0.0.0 ads.up.test\n0.0.0.0 www.example.test\nhost.up.test\n||tracker.up.test^\n")
	vars := Vars{"DoT": freePort(t), "Zone": exampleZone(t), "Up": up.addr, "Block": block}
	c := startCaddy(t, dir, blockListSite, vars)
	addr := fmt.Sprintf("127.0.0.1:%d", vars["DoT"])
	waitListen(t, addr)
	dig := func(name string) string {
		t.Helper()
		return strings.TrimSpace(kdig(t, "+tls", "@127.0.0.1", "-p", fmt.Sprint(vars["DoT"]), name, "A", "+short"))
	}
	const blocked = "192.0.2.66"
	for name, want := range map[string]string{
		"www.example.test": blocked, "mail.example.test": "192.0.2.25", "ads.up.test": blocked, "x.ads.up.test": blocked,
		"host.up.test": blocked, "tracker.up.test": blocked, "other.up.test": "198.51.100.1",
		// name_regexp: the whole name only
		"ad42.up.test": "192.0.2.67", "AD7.up.test": "192.0.2.67", "x.ad42.up.test": "198.51.100.1",
	} {
		if got := dig(name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	write("mail.example.test\n")
	c.waitLog(`"msg":"name files read again".*"names":1`, 10*time.Second)
	if got := dig("mail.example.test"); got != blocked {
		t.Errorf("mail.example.test after it was added: %q", got)
	}
	if got := dig("www.example.test"); got != "192.0.2.80" {
		t.Errorf("www.example.test after it was taken out: %q", got)
	}
	write("mail.example.test\nads.up.test tracker.up.test\n")
	c.waitLog(`"msg":"name files not read again: the names read before stay".*block.txt:2`, 10*time.Second)
	if got := dig("mail.example.test"); got != blocked {
		t.Errorf("mail.example.test after a broken file: %q", got)
	}
	// the blocked queries, counted by the route's name: 5 of the first 7,
	// then mail.example.test twice
	if m := regexp.MustCompile(`dnsfront_route_queries_total\{route="blocklist",server="[^"]+"\} (\d+)`).FindStringSubmatch(string(c.api("GET", "/metrics"))); m == nil || m[1] != "7" {
		t.Errorf("the route's metric: %v, want 7 queries taken", m)
	}
	err := c.reload("", nil)
	if err == nil || !strings.Contains(err.Error(), "route: match.name_file[0]: "+block+":2: ") || !strings.Contains(err.Error(), "ads.up.test tracker.up.test") {
		t.Errorf("a reload with the broken file: %v", err)
	}
	if got := dig("mail.example.test"); got != blocked {
		t.Errorf("mail.example.test after the refused reload: %q", got)
	}
}
