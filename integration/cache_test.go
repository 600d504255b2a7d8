package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

const cacheSite = `{
	ocsp {
		issue dns.example.test 127.0.0.1
	}
	dot 127.0.0.1:{{.Port}} {
		cache {
			name dot-cache
			{{.CacheOpts}}
		}
		forward udp://{{.Up}} {
			timeout 300ms
			tries 1
		}
	}
}
`

// cacheTTL returns the TTL of the first A record in kdig's output.
func cacheTTL(t *testing.T, out string) int {
	t.Helper()
	m := regexp.MustCompile(`(?m)^\S+\s+(\d+)\s+IN\s+A\s+198\.51\.100\.1`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no A record in:\n%s", out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func startCache(t *testing.T, opts string) (*caddyProc, *testUpstream, string, string) {
	t.Helper()
	dir := t.TempDir()
	up := newTestUpstream(t, 1)
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	c := startCaddy(t, dir, cacheSite, Vars{"Port": port, "Up": up.addr, "CacheOpts": opts})
	waitListen(t, addr)
	return c, up, addr, filepath.Join(dir, "Caddyfile")
}

// TestDoTCache: through DoT with kdig, a second query is answered from
// the cache with a lower TTL and the client's own question; DO makes an
// entry of its own; a reload keeps the cache; the admin API reports it
// and purges a name.
func TestDoTCache(t *testing.T) {
	c, up, addr, _ := startCache(t, "")
	host, port, _ := net.SplitHostPort(addr)
	dig := func(args ...string) string {
		return kdig(t, append([]string{"+tls", "@" + host, "-p", port}, args...)...)
	}
	first := dig("a.cached.test", "A")
	if n := up.answered.Load(); n != 1 || cacheTTL(t, first) != 30 {
		t.Fatalf("first query: upstream asked %d times\n%s", n, first)
	}
	time.Sleep(1100 * time.Millisecond) // TTLs count seconds: let one pass
	second := dig("A.Cached.TEST", "A")
	if n := up.answered.Load(); n != 1 {
		t.Fatalf("second query asked the upstream (%d)", n)
	}
	if ttl := cacheTTL(t, second); ttl >= 30 {
		t.Fatalf("TTL %d after 1 s in the cache, want below 30\n%s", ttl, second)
	}
	// kdig sends names in lower case; dig keeps the case it is given
	if out, _ := run(t, true, need(t, "dig"), "+tls", "@"+host, "-p", port, "A.Cached.TEST", "A"); !strings.Contains(out, ";A.Cached.TEST.") || up.answered.Load() != 1 {
		t.Fatalf("dig: the answer lacks the client's question, or the upstream was asked (%d):\n%s", up.answered.Load(), out)
	}
	dig("+dnssec", "a.cached.test", "A")
	if n := up.answered.Load(); n != 2 {
		t.Fatalf("a DO query shared the non-DO entry (upstream asked %d times, want 2)", n)
	}
	if err := c.reload("", nil); err != nil {
		t.Fatal(err)
	}
	dig("a.cached.test", "A")
	if n := up.answered.Load(); n != 2 {
		t.Fatalf("the reload emptied the cache (upstream asked %d times, want 2)", n)
	}

	var stats []struct {
		Name    string `json:"name"`
		Entries int    `json:"entries"`
		Hits    uint64 `json:"hits"`
	}
	err := json.Unmarshal(c.api("GET", "/dns/cache"), &stats)
	if err != nil || len(stats) != 1 || stats[0].Name != "dot-cache" || stats[0].Entries != 2 || stats[0].Hits != 3 {
		t.Fatalf("GET /dns/cache: %+v (%v), want dot-cache with 2 entries and 3 hits (kdig, dig, after the reload)", stats, err)
	}
	// a typo purges nothing: curl, as an operator runs it
	curl := need(t, "curl")
	for path, want := range map[string]string{
		"/dns/cache/purge?nmae=a.cached.test":           `400 unknown parameter \"nmae\"`,
		"/dns/cache/purge?name=a.cached.test&cache=dot": `404 cache=\"dot\": no cache of that name`,
	} {
		out, _ := run(t, true, curl, "-s", "-X", "POST", "-w", " %{http_code}", "http://"+c.Admin+path)
		if code := out[strings.LastIndexByte(out, ' ')+1:]; !strings.Contains(out, want[4:]) || code != want[:3] {
			t.Fatalf("POST %s: %s, want %s", path, out, want)
		}
	}
	if body := c.api("POST", "/dns/cache/purge?name=a.cached.test&type=txt"); !strings.Contains(string(body), `"purged": 0`) {
		t.Fatalf("purge of a type with no entries: %s", body)
	}
	body := c.api("POST", "/dns/cache/purge?name=a.cached.test&type=A")
	if !strings.Contains(string(body), `"purged": 2`) {
		t.Fatalf("purge: %s", body)
	}
	dig("a.cached.test", "A")
	if n := up.answered.Load(); n != 3 {
		t.Fatalf("after the purge the upstream was asked %d times, want 3", n)
	}
	metrics := string(c.api("GET", "/metrics"))
	for _, want := range []string{`dnsfront_cache_hits_total{cache="dot-cache"} 3`, `dnsfront_cache_entries{cache="dot-cache"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestDoTCacheServeStale: the upstream dies; an expired entry is answered
// with TTL 30 (RFC 8767), and counted.
func TestDoTCacheServeStale(t *testing.T) {
	c, up, addr, _ := startCache(t, "max_ttl 1s")
	host, port, _ := net.SplitHostPort(addr)
	dig := func(args ...string) string {
		return kdig(t, append([]string{"+tls", "@" + host, "-p", port}, args...)...)
	}
	dig("s.cached.test", "A") // the upstream's answer, TTL 30; kept for max_ttl
	if ttl := cacheTTL(t, dig("s.cached.test", "A")); ttl > 1 {
		t.Fatalf("TTL %d from the cache, want at most max_ttl's 1", ttl)
	}
	time.Sleep(1100 * time.Millisecond) // past the entry's 1 s
	up.stop()
	out := dig("s.cached.test", "A")
	if !strings.Contains(out, "NOERROR") || cacheTTL(t, out) != 30 {
		t.Fatalf("with the upstream dead, want the stale answer with TTL 30:\n%s", out)
	}
	// RFC 8914's Extended DNS Error tells the client it is stale
	if !strings.Contains(out, "EDE: 3 (Stale Answer)") {
		t.Fatalf("the stale answer lacks EDE 3 (Stale Answer):\n%s", out)
	}
	if m := string(c.api("GET", "/metrics")); !strings.Contains(m, `dnsfront_cache_stale_served_total{cache="dot-cache"} 1`) {
		t.Fatal("stale answer not counted")
	}
}

// TestCacheADBit: dig sets AD in its queries (as kdig does, but for
// +noadflag); the upstream validates and sets AD for it, and the cache
// keeps that answer: kdig +noadflag's query, a hit on the same entry,
// gets it without AD (RFC 6840 5.8), and dig's next query with it.
func TestCacheADBit(t *testing.T) {
	c, up, addr, _ := startCache(t, "")
	host, port, _ := net.SplitHostPort(addr)
	dig := need(t, "dig")
	flags := func(out string) string {
		m := regexp.MustCompile(`(?m)^;; flags: ([a-z ]+);`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no flags in:\n%s", out)
		}
		return " " + m[1] + " "
	}
	out, _ := run(t, true, dig, "+tls", "+noedns", "@"+host, "-p", port, "secure.up.test", "A")
	if f := flags(out); !strings.Contains(f, " ad ") || !strings.Contains(out, "198.51.100.1") {
		t.Fatalf("dig (AD set): flags%s, want ad\n%s", f, out)
	}
	kout := kdig(t, "+tls", "+noedns", "+noadflag", "@"+host, "-p", port, "secure.up.test", "A")
	if m := regexp.MustCompile(`(?m)^;; Flags: ([a-z ]+);`).FindStringSubmatch(kout); m == nil || strings.Contains(" "+m[1]+" ", " ad ") || !strings.Contains(kout, "198.51.100.1") {
		t.Fatalf("kdig +noadflag, from the cache: want no ad\n%s", kout)
	}
	if out, _ := run(t, true, dig, "+tls", "+noedns", "@"+host, "-p", port, "secure.up.test", "A"); !strings.Contains(flags(out), " ad ") {
		t.Fatalf("dig again, from the cache: want ad\n%s", out)
	}
	if n := up.answered.Load(); n != 1 {
		t.Fatalf("the upstream answered %d queries, want 1 (the others from the cache)", n)
	}
	_ = c
}
