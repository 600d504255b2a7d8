package ratelimit

import (
	"context"
	"errors"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/caddydns/dnswire"
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

// TestBlockFor: with block_for, a prefix that goes over its rate is
// refused until the block has passed, though its bucket refills
// meanwhile; another prefix is not touched; the block shows in the stats.
func TestBlockFor(t *testing.T) {
	l := newRL(t, `{"name":"block","qps":10,"burst":2,"block_for":"5s"}`).lim
	now := time.Now().UnixNano()
	for i := range 2 {
		if !l.admit(addr("192.0.2.1"), now) {
			t.Fatalf("query %d of the burst limited", i+1)
		}
	}
	if l.admit(addr("192.0.2.1"), now) {
		t.Fatal("the query over the burst was allowed")
	}
	if !l.admit(addr("198.51.100.1"), now) {
		t.Fatal("another prefix was limited")
	}
	st := l.stats(5, now+1)
	if st.ClientsBlocked != 1 || st.BlockFor != "5s" || len(st.Top) != 1 || st.Top[0].BlockedUntil == nil ||
		!st.Top[0].BlockedUntil.Equal(time.Unix(0, now+int64(5*time.Second))) {
		t.Fatalf("stats %+v", st)
	}
	later := now + int64(time.Second) // the bucket full again (10 a second)
	if l.admit(addr("192.0.2.7"), later) {
		t.Fatal("a query of the blocked prefix was allowed 1 s into a 5 s block")
	}
	end := now + int64(5*time.Second)
	if l.admit(addr("192.0.2.1"), end-1) || !l.admit(addr("192.0.2.1"), end) {
		t.Fatal("want the block to end at 5 s, no sooner")
	}
	if got := l.limited.Load(); got != 3 {
		t.Fatalf("limited %d, want 3", got)
	}
	if st := l.stats(5, end); st.ClientsBlocked != 0 || st.Top[0].BlockedUntil != nil {
		t.Fatalf("after the block: %+v", st)
	}
}

// TestRcodeLimit: a prefix that gets more NXDOMAIN answers than its
// limit allows is limited, whatever its query rate; other rcodes do not
// count; a prefix that never gets one is not stored; with block_for the
// limit lasts the block.
func TestRcodeLimit(t *testing.T) {
	l := newRL(t, `{"name":"nx","qps":1000,"rcodes":[{"rcode":"nxdomain","qps":1,"burst":3}]}`).lim
	ru := l.rules[0]
	now := time.Now().UnixNano()
	client, other := addr("192.0.2.1"), addr("198.51.100.1")
	for i := range 3 {
		if !l.admit(client, now) {
			t.Fatalf("query %d limited", i+1)
		}
		l.answered(client, dns.RcodeNameError, now)
		l.answered(client, dns.RcodeSuccess, now)
	}
	if l.admit(client, now) {
		t.Fatal("a query after 3 NXDOMAIN of a burst of 3 was allowed")
	}
	for range 10 {
		if !l.admit(other, now) {
			t.Fatal("a prefix without NXDOMAIN answers was limited")
		}
		l.answered(other, dns.RcodeSuccess, now)
	}
	if ru.Len() != 1 || ru.limited.Load() != 1 || l.limited.Load() != 1 {
		t.Fatalf("prefixes %d (want 1), limited %d/%d (want 1)", ru.Len(), ru.limited.Load(), l.limited.Load())
	}
	now += int64(time.Second) // one answer's worth at 1 a second
	if !l.admit(client, now) {
		t.Fatal("not allowed again after a second")
	}
	l.answered(client, dns.RcodeNameError, now)
	if l.admit(client, now) {
		t.Fatal("allowed after spending the refilled answer")
	}
	st := l.stats(5, now)
	if len(st.Rcodes) != 1 || st.Rcodes[0].Rcode != "NXDOMAIN" || st.Rcodes[0].Limited != 2 || st.Rcodes[0].Burst != 3 ||
		len(st.Rcodes[0].Top) != 1 || st.Rcodes[0].Top[0].Prefix != "192.0.2.0/24" {
		t.Fatalf("stats %+v", st)
	}

	b := newRL(t, `{"name":"nxblock","rcodes":[{"rcode":"SERVFAIL","qps":1,"burst":1}],"block_for":"1m"}`).lim
	b.answered(client, dns.RcodeServerFailure, now)
	for _, at := range []time.Duration{0, time.Second, 59 * time.Second} {
		if b.admit(client, now+int64(at)) {
			t.Fatalf("allowed %v into a 1m block", at)
		}
	}
	if !b.admit(client, now+int64(time.Minute)) {
		t.Fatal("still limited when the block ended")
	}
	if st := b.stats(0, now); st.ClientsBlocked != 1 {
		t.Fatalf("clients_blocked %d, want 1", st.ClientsBlocked)
	}
}

// TestRcodeHandler: the handler counts the rcode the client gets (from a
// message, from an upstream's octets, or SERVFAIL for an error) and
// limits the prefix past it.
func TestRcodeHandler(t *testing.T) {
	rl := newRL(t, `{"name":"rch","rcodes":[{"rcode":"NXDOMAIN","qps":0.001,"burst":2},{"rcode":"SERVFAIL","qps":0.001,"burst":1}]}`)
	q := new(dns.Msg)
	q.SetQuestion("example.org.", dns.TypeA)
	ask := func(client string, answer func(*caddydns.Request) (caddydns.Response, error)) string {
		r := &caddydns.Request{Msg: q, Server: "test", Client: netip.AddrPortFrom(addr(client), 5300)}
		res, err := rl.ServeDNS(context.Background(), r, func(_ context.Context, r *caddydns.Request) (caddydns.Response, error) { return answer(r) })
		switch {
		case err != nil:
			return "error"
		case res.Msg != nil && res.Msg.Rcode == dns.RcodeRefused:
			return "refused"
		}
		return "answered"
	}
	nx := func(r *caddydns.Request) (caddydns.Response, error) {
		m := new(dns.Msg)
		m.SetRcode(r.Msg, dns.RcodeNameError)
		return caddydns.Response{Msg: m}, nil
	}
	nxWire := func(r *caddydns.Request) (caddydns.Response, error) {
		m := new(dns.Msg)
		m.SetRcode(r.Msg, dns.RcodeNameError)
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		l, ok := dnswire.Walk(b)
		if !ok {
			t.Fatal("Walk refused an NXDOMAIN")
		}
		return caddydns.Response{Wire: caddydns.NewWire(b, &l)}, nil
	}
	fail := func(*caddydns.Request) (caddydns.Response, error) {
		return caddydns.Response{}, errors.New("upstream gone")
	}
	for i, step := range []struct {
		client string
		answer func(*caddydns.Request) (caddydns.Response, error)
		want   string
	}{
		{"192.0.2.1", nx, "answered"},
		{"192.0.2.1", nxWire, "answered"},
		{"192.0.2.1", nx, "refused"},
		{"198.51.100.1", fail, "error"},
		{"198.51.100.1", nx, "refused"},
		{"203.0.113.1", nx, "answered"},
	} {
		if got := ask(step.client, step.answer); got != step.want {
			t.Fatalf("step %d (%s): %s, want %s", i, step.client, got, step.want)
		}
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
		`{"qps":-1}`:                                           "qps -1",
		`{"prefix_v4":33}`:                                     "prefix_v4 33",
		`{"prefix_v6":129}`:                                    "prefix_v6 129",
		`{"action":"tarpit"}`:                                  `action "tarpit"`,
		`{"exempt":["10.0.0.1/8"]}`:                            `exempt[0]: "10.0.0.1/8" has bits set`,
		`{"burst":-3}`:                                         "burst -3",
		`{"block_for":-1}`:                                     "block_for -1ns",
		`{"rcodes":[{"rcode":"NXDOMIAN","qps":1}]}`:            `rcodes[0]: rcode "NXDOMIAN"`,
		`{"rcodes":[{"rcode":"BADSIG","qps":1}]}`:              `rcode "BADSIG"`,
		`{"rcodes":[{"rcode":"NXDOMAIN"}]}`:                    "rcodes[0] (NXDOMAIN): qps 0",
		`{"rcodes":[{"rcode":"NXDOMAIN","qps":1,"burst":-1}]}`: "burst -1",
		`{"rcodes":[{"rcode":"NXDOMAIN","qps":1},{"rcode":"nxdomain","qps":2}]}`: "rcodes[1]: rcode nxdomain is limited twice",
	})
}

func TestCaddyfile(t *testing.T) {
	rl := new(RateLimit)
	in := "ratelimit {\n\tqps 50\n\tburst 80\n\tprefix 32 64\n\taction drop\n\texempt 10.0.0.0/8 ::1\n\tmax_clients 5000\n" +
		"\tblock_for 1m\n\trcode nxdomain 20\n\trcode SERVFAIL 0.5 4\n}"
	if err := rl.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err != nil {
		t.Fatal(err)
	}
	if rl.QPS != 50 || rl.Burst != 80 || rl.PrefixV4 != 32 || rl.PrefixV6 != 64 || rl.Action != "drop" || len(rl.Exempt) != 2 || rl.MaxClients != 5000 ||
		rl.BlockFor != caddy.Duration(time.Minute) || len(rl.Rcodes) != 2 ||
		rl.Rcodes[0] != (RcodeLimit{Rcode: "NXDOMAIN", QPS: 20}) || rl.Rcodes[1] != (RcodeLimit{Rcode: "SERVFAIL", QPS: 0.5, Burst: 4}) {
		t.Fatalf("%+v", rl)
	}
	for in, msg := range map[string]string{
		"ratelimit {\n\tqps fast\n}":                             `qps "fast"`,
		"ratelimit {\n\tprefix 24\n}":                            "prefix: want the IPv4 and the IPv6 length",
		"ratelimit {\n\n\tprefix 40 56\n}":                       "prefix 40 56: want 0-32 and 0-128, at Testfile:3",
		"ratelimit {\n\texempt 10.0.0.1/8\n}":                    "exempt:",
		"ratelimit {\n\tblock_for soon\n}":                       "block_for:",
		"ratelimit {\n\trcode NXDOMAIN\n}":                       "rcode: want <rcode> <rate> [<burst>]",
		"ratelimit {\n\trcode NXDOMIAN 5\n}":                     `rcode "NXDOMIAN": want a name`,
		"ratelimit {\n\trcode NXDOMAIN 0\n}":                     `rcode NXDOMAIN: rate "0"`,
		"ratelimit {\n\trcode NXDOMAIN 5 0\n}":                   `rcode NXDOMAIN: burst "0"`,
		"ratelimit {\n\trcode NXDOMAIN 5\n\trcode nxdomain 6\n}": "rcode NXDOMAIN: limited twice, at Testfile:3",
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

// BenchmarkRcodeLimited is a known client's check with an NXDOMAIN limit
// it stays within, and its NXDOMAIN answer counted: it allocates nothing.
func BenchmarkRcodeLimited(b *testing.B) {
	rl := newRL(b, `{"name":"bench-rcode","qps":1e9,"burst":1000000000,"rcodes":[{"rcode":"NXDOMAIN","qps":1e9,"burst":1000000000}]}`)
	q := new(dns.Msg)
	q.SetQuestion("example.org.", dns.TypeA)
	nx := new(dns.Msg)
	nx.SetRcode(q, dns.RcodeNameError)
	r := &caddydns.Request{Msg: q, Client: netip.MustParseAddrPort("192.0.2.1:5300")}
	answer := func(context.Context, *caddydns.Request) (caddydns.Response, error) {
		return caddydns.Response{Msg: nx}, nil
	}
	b.ReportAllocs()
	for b.Loop() {
		_, _ = rl.ServeDNS(context.Background(), r, answer)
	}
}
