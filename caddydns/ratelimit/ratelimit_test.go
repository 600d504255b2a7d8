package ratelimit

import (
	"context"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/internal/handlertest"
)

func newRL(t testing.TB, cfg string) *RateLimit {
	t.Helper()
	rl := new(RateLimit)
	handlertest.Provision(t, rl, cfg)
	return rl
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

// TestBucket: a prefix gets its burst at once, then its rate; prefixes
// are grouped by their configured lengths, and do not share buckets.
func TestBucket(t *testing.T) {
	l := newRL(t, `{"name":"bucket","qps":10,"burst":5,"prefix_v4":24,"prefix_v6":56}`).lim
	now := time.Now().UnixNano()
	for i := range 5 {
		if !l.Allow(addr("192.0.2.1"), now) {
			t.Fatalf("query %d of the burst limited", i+1)
		}
	}
	if l.Allow(addr("192.0.2.200"), now) {
		t.Fatal("the 6th query of the /24 at once was allowed")
	}
	if !l.Allow(addr("192.0.3.1"), now) {
		t.Fatal("another /24 was limited")
	}
	now += int64(100 * time.Millisecond) // one token at 10 a second
	if !l.Allow(addr("192.0.2.9"), now) || l.Allow(addr("192.0.2.9"), now) {
		t.Fatal("after 100 ms: want exactly one more query")
	}
	for i := range 5 {
		if !l.Allow(addr("2001:db8:0:ff::1"), now) {
			t.Fatalf("IPv6 query %d limited", i)
		}
	}
	if l.Allow(addr("2001:db8:0:1::2"), now) {
		t.Fatal("the same /56 has its own bucket")
	}
	if !l.Allow(addr("2001:db8:0:100::1"), now) {
		t.Fatal("another /56 was limited")
	}
	if got := l.Prefix(l.Key(addr("192.0.2.77"))).String(); got != "192.0.2.0/24" {
		t.Fatalf("prefix %s", got)
	}
	if got := l.Prefix(l.Key(addr("2001:db8:0:ff::1"))).String(); got != "2001:db8::/56" {
		t.Fatalf("prefix %s", got)
	}
}

func ask(t testing.TB, rl *RateLimit, client string) string {
	t.Helper()
	return handlertest.Verdict(t, rl, client)
}

// TestHandler: over its limit a client is refused (or dropped) while
// another is answered; exempt prefixes are never limited.
func TestHandler(t *testing.T) {
	rl := newRL(t, `{"name":"handler","qps":0.001,"burst":2,"exempt":["127.0.0.0/8"]}`)
	for i, want := range []string{"pass", "pass", "refused", "refused"} {
		if got := ask(t, rl, "192.0.2.1"); got != want {
			t.Fatalf("query %d: %s, want %s", i+1, got, want)
		}
	}
	if got := ask(t, rl, "198.51.100.1"); got != "pass" {
		t.Fatalf("another client: %s", got)
	}
	for range 5 {
		if got := ask(t, rl, "127.0.0.2"); got != "pass" {
			t.Fatalf("exempt client: %s", got)
		}
	}
	if rl.lim.limited.Load() != 2 {
		t.Fatalf("limited %d, want 2", rl.lim.limited.Load())
	}
	st := rl.lim.stats(5, time.Now().UnixNano())
	if st.ClientsLimited != 1 || len(st.Top) != 1 || st.Top[0].Prefix != "192.0.2.0/24" || st.Top[0].Limited != 2 {
		t.Fatalf("stats %+v", st)
	}
	drop := newRL(t, `{"name":"drop","qps":0.001,"burst":1,"action":"drop"}`)
	ask(t, drop, "192.0.2.1")
	if got := ask(t, drop, "192.0.2.1"); got != "drop" {
		t.Fatalf("action drop: %s", got)
	}
}

// TestFlood: 1,000,000 distinct prefixes keep the limiter within
// max_clients, and its memory within the documented 250 bytes a client;
// a client asking all along at an honest rate is never limited.
func TestFlood(t *testing.T) {
	const maxClients = 10_000
	rl := newRL(t, `{"name":"flood","qps":20,"burst":40,"max_clients":10000}`)
	l := rl.lim
	ordinary := addr("127.0.0.2")
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	now := time.Now().UnixNano()
	for i := range 1_000_000 {
		now += int64(time.Millisecond) // 1,000 queries a second from new prefixes
		a := netip.AddrFrom4([4]byte{byte(10 + i>>16), byte(i >> 8), byte(i), 1})
		if i&1 == 1 {
			a = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(i >> 16), byte(i >> 8), byte(i), 0, 15: 1})
		}
		l.Allow(a, now)
		if i%100 == 0 && !l.Allow(ordinary, now) { // 10 a second
			t.Fatalf("the ordinary client was limited after %d flood queries", i)
		}
	}
	l.CleanUp()
	runtime.GC()
	runtime.ReadMemStats(&after)
	if n := l.Len(); n > maxClients {
		t.Fatalf("%d prefixes tracked, max_clients %d", n, maxClients)
	}
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("%d prefixes tracked, the heap grew by %d bytes (%d a prefix)", l.Len(), grew, grew/int64(max(l.Len(), 1)))
	if grew > 250*maxClients {
		t.Fatalf("the heap grew by %d bytes for %d clients: over 250 a client", grew, maxClients)
	}
	runtime.KeepAlive(rl)
}

func TestBadConfig(t *testing.T) {
	handlertest.BadConfigs(t, func() caddy.Provisioner { return new(RateLimit) }, map[string]string{
		`{"qps":-1}`:                "qps -1",
		`{"prefix_v4":33}`:          "prefix_v4 33",
		`{"prefix_v6":129}`:         "prefix_v6 129",
		`{"action":"tarpit"}`:       `action "tarpit"`,
		`{"exempt":["10.0.0.1/8"]}`: `exempt[0]: "10.0.0.1/8" has bits set`,
		`{"burst":-3}`:              "burst -3",
	})
}

func TestCaddyfile(t *testing.T) {
	rl := new(RateLimit)
	in := "ratelimit {\n\tqps 50\n\tburst 80\n\tprefix 32 64\n\taction drop\n\texempt 10.0.0.0/8 ::1\n\tmax_clients 5000\n}"
	if err := rl.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err != nil {
		t.Fatal(err)
	}
	if rl.QPS != 50 || rl.Burst != 80 || rl.PrefixV4 != 32 || rl.PrefixV6 != 64 || rl.Action != "drop" || len(rl.Exempt) != 2 || rl.MaxClients != 5000 {
		t.Fatalf("%+v", rl)
	}
	for in, msg := range map[string]string{
		"ratelimit {\n\tqps fast\n}":          `qps "fast"`,
		"ratelimit {\n\tprefix 24\n}":         "prefix: want the IPv4 and the IPv6 length",
		"ratelimit {\n\n\tprefix 40 56\n}":    "prefix 40 56: want 0-32 and 0-128, at Testfile:3",
		"ratelimit {\n\texempt 10.0.0.1/8\n}": "exempt:",
	} {
		err := new(RateLimit).UnmarshalCaddyfile(caddyfile.NewTestDispenser(in))
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q: %v, want %q", in, err, msg)
		}
	}
}

// BenchmarkAllowed is a known client's check: it allocates nothing.
func BenchmarkAllowed(b *testing.B) {
	rl := newRL(b, `{"name":"bench","qps":1e9,"burst":1000000000}`)
	q := new(dns.Msg)
	q.SetQuestion("example.org.", dns.TypeA)
	r := &caddydns.Request{Msg: q, Client: netip.MustParseAddrPort("192.0.2.1:5300")}
	pass := func(context.Context, *caddydns.Request) (caddydns.Response, error) { return caddydns.Response{}, nil }
	b.ReportAllocs()
	for b.Loop() {
		_, _ = rl.ServeDNS(context.Background(), r, pass)
	}
}
