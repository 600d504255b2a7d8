package cache

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/caddydns/dnswire"
	"github.com/dnsfront/dnsfront/internal/handlertest"
)

// upstream is a test handler standing for forward: it answers by name
// and counts what it is asked.
type upstream struct {
	asked atomic.Int32
	fail  atomic.Bool   // answer with an error, as forward when no upstream answers
	hold  chan struct{} // when set, each query waits for it
	edit  func(m *dns.Msg)
}

func (u *upstream) ServeDNS(_ context.Context, r *caddydns.Request, _ caddydns.Next) (caddydns.Response, error) {
	u.asked.Add(1)
	if u.hold != nil {
		<-u.hold
	}
	if u.fail.Load() {
		return caddydns.Response{}, errors.New("no upstream answered")
	}
	m := new(dns.Msg)
	m.SetReply(r.Msg)
	q := r.Msg.Question[0]
	rr := func(s string) dns.RR {
		x, err := dns.NewRR(s)
		if err != nil {
			panic(err)
		}
		return x
	}
	soa := rr("example.org. 3600 IN SOA ns1.example.org. host.example.org. 1 7200 3600 1209600 60")
	switch name := strings.ToLower(q.Name); {
	case strings.HasPrefix(name, "nx."):
		m.Rcode = dns.RcodeNameError
		m.Ns = append(m.Ns, soa)
	case strings.HasPrefix(name, "servfail."):
		m.Rcode = dns.RcodeServerFailure
	case strings.HasPrefix(name, "refused."):
		m.Rcode = dns.RcodeRefused
	case strings.HasPrefix(name, "tc."):
		m.Truncated = true
	case strings.HasPrefix(name, "big."):
		for i := 0; i < 40; i++ {
			m.Answer = append(m.Answer, rr(fmt.Sprintf("%s 300 IN TXT %q", q.Name, strings.Repeat("x", 200))))
		}
	case q.Qtype == dns.TypeAAAA:
		m.Ns = append(m.Ns, soa) // NODATA
	default:
		m.Answer = append(m.Answer, rr(q.Name+" 300 IN A 192.0.2.1"), rr(q.Name+" 600 IN A 192.0.2.2"))
	}
	if opt := r.Msg.IsEdns0(); opt != nil {
		m.SetEdns0(1232, opt.Do())
	}
	if u.edit != nil {
		u.edit(m)
	}
	return caddydns.Response{Msg: m}, nil
}

// newCache provisions a cache with cfg (JSON) in front of a test upstream.
func newCache(t testing.TB, cfg string) (*caddydns.Chain, *Cache, *upstream) {
	t.Helper()
	c := new(Cache)
	handlertest.Provision(t, c, cfg)
	u := new(upstream)
	return caddydns.NewChain("test", "test", c, u), c, u
}

func ask(t testing.TB, ch *caddydns.Chain, q *dns.Msg) (*dns.Msg, caddydns.Answer) {
	t.Helper()
	b, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	// as behind an ecs handler with policy pass: the client's option is
	// what goes upstream
	ecs := q.IsEdns0() != nil && slices.ContainsFunc(q.IsEdns0().Option, func(o dns.EDNS0) bool { return o.Option() == dns.EDNS0SUBNET })
	a := ch.Serve(context.Background(), &caddydns.Request{Client: netipClient, Size: caddydns.MaxMessage, ECS: ecs}, b, nil)
	m := new(dns.Msg)
	if err := m.Unpack(a.Wire); err != nil {
		t.Fatalf("answer does not decode: %v", err)
	}
	return m, a
}

func query(name string, qtype uint16) *dns.Msg {
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	return q
}

// edit calls fn with q's stored record, under its shard's lock; a test
// without the record fails.
func edit(t testing.TB, c *Cache, q *dns.Msg, fn func(h *header)) {
	t.Helper()
	if !c.store.edit(q, fn) {
		t.Fatalf("no entry for %s", q.Question[0].Name)
	}
}

func (s *store) edit(q *dns.Msg, fn func(h *header)) bool {
	key := appendKey(nil, q, true, nil)
	hash := hashKey(key)
	sh := s.shard(hash)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	_, off, ok := sh.idx.find(hash, key, sh.buf)
	if !ok {
		return false
	}
	fn(sh.hdr(off))
	return true
}

// entryOf is a copy of q's stored record's header, or nil.
func entryOf(c *Cache, q *dns.Msg) *header {
	var out *header
	c.store.edit(q, func(h *header) {
		cp := *h
		out = &cp
	})
	return out
}

// age moves q's entry's clock back by d, as if it had been stored d ago.
func age(t testing.TB, c *Cache, q *dns.Msg, d time.Duration) {
	edit(t, c, q, func(h *header) {
		h.stored -= int64(d)
		h.expires -= int64(d)
	})
}

// TestHit: a second query is answered from the cache, with the client's
// ID and casing and every TTL lowered by the entry's age; DoH's
// Cache-Control follows.
func TestHit(t *testing.T) {
	ch, c, u := newCache(t, `{"name":"hit"}`)
	m, _ := ask(t, ch, query("www.example.org.", dns.TypeA))
	if len(m.Answer) != 2 || u.asked.Load() != 1 {
		t.Fatalf("miss: %v, asked %d", m, u.asked.Load())
	}
	age(t, c, query("www.example.org.", dns.TypeA), 100*time.Second)
	q := query("WWW.Example.ORG.", dns.TypeA)
	q.Id = 4242
	m, a := ask(t, ch, q)
	if u.asked.Load() != 1 {
		t.Fatal("the hit asked the upstream")
	}
	if m.Id != 4242 || m.Question[0].Name != "WWW.Example.ORG." {
		t.Fatalf("hit: ID %d, question %q: want the client's", m.Id, m.Question[0].Name)
	}
	if m.Answer[0].Header().Ttl != 200 || m.Answer[1].Header().Ttl != 500 || !a.Cacheable || a.TTL != 200 {
		t.Fatalf("TTLs %d %d, Answer TTL %d: want 200 500 200 after 100 s", m.Answer[0].Header().Ttl, m.Answer[1].Header().Ttl, a.TTL)
	}
	// fresh until the smallest TTL runs out
	age(t, c, q, 199*time.Second)
	if m, _ := ask(t, ch, q); u.asked.Load() != 1 || m.Answer[0].Header().Ttl != 1 || m.Answer[1].Header().Ttl != 301 {
		t.Fatalf("at 299 s: %v", m)
	}
	age(t, c, q, time.Second)
	if m, _ := ask(t, ch, q); u.asked.Load() != 2 || m.Answer[0].Header().Ttl != 300 {
		t.Fatalf("at 300 s: %v, want a fresh answer from the upstream", m)
	}
	if c.store.hits.Load() != 2 || c.store.misses.Load() != 2 {
		t.Fatalf("hits %d misses %d", c.store.hits.Load(), c.store.misses.Load())
	}
}

// TestKey: DO, CD and RD make entries of their own, and so does an ECS
// subnet (the address masked to its prefix); the ID and the hop's
// options do not.
func TestKey(t *testing.T) {
	ch, _, u := newCache(t, `{"name":"key"}`)
	mk := func(do, cd, rd bool, opts ...dns.EDNS0) *dns.Msg {
		q := query("www.example.org.", dns.TypeA)
		q.RecursionDesired, q.CheckingDisabled = rd, cd
		q.SetEdns0(1232, do)
		q.IsEdns0().Option = opts
		return q
	}
	ecs := func(addr string, bits uint8) *dns.EDNS0_SUBNET {
		return &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: bits, Address: net.ParseIP(addr).To4()}
	}
	steps := []struct {
		name string
		q    *dns.Msg
		new  bool
	}{
		{"plain", mk(false, false, true), true},
		{"again, other ID, padding, cookie", mk(false, false, true, &dns.EDNS0_PADDING{Padding: make([]byte, 20)},
			&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"}), false},
		{"DO", mk(true, false, true), true},
		{"CD", mk(false, true, true), true},
		{"no RD", mk(false, false, false), true},
		{"ECS 192.0.2.0/24", mk(false, false, true, ecs("192.0.2.1", 24)), true},
		{"ECS 192.0.2.77/24, the same subnet", mk(false, false, true, ecs("192.0.2.77", 24)), false},
		{"ECS 198.51.100.0/24", mk(false, false, true, ecs("198.51.100.1", 24)), true},
	}
	// without an ecs handler the option is stripped upstream: not keyed
	if string(appendKey(nil, mk(false, false, true, ecs("192.0.2.1", 24)), false, nil)) != string(appendKey(nil, mk(false, false, true, ecs("198.51.100.1", 24)), false, nil)) {
		t.Error("the ECS option is in the key of a query whose option is not sent upstream")
	}
	for _, s := range steps {
		before := u.asked.Load()
		ask(t, ch, s.q)
		if got := u.asked.Load() != before; got != s.new {
			t.Errorf("%s: asked the upstream %v, want %v", s.name, got, s.new)
		}
	}
}

// TestNegativeAndFailures: NXDOMAIN and NODATA are kept for the SOA's
// min(TTL, minimum); SERVFAIL and a failed upstream for failure_ttl;
// TC, REFUSED and answers over max_entry_size never.
func TestNegativeAndFailures(t *testing.T) {
	ch, c, u := newCache(t, `{"name":"neg","failure_ttl":"7s","max_entry_size":2048}`)
	for _, tc := range []struct {
		name     string
		q        *dns.Msg
		kept     bool
		lifetime time.Duration
	}{
		{"nxdomain", query("nx.example.org.", dns.TypeA), true, 60 * time.Second},
		{"nodata", query("www.example.org.", dns.TypeAAAA), true, 60 * time.Second},
		{"servfail", query("servfail.example.org.", dns.TypeA), true, 7 * time.Second},
		{"refused", query("refused.example.org.", dns.TypeA), false, 0},
		{"truncated", query("tc.example.org.", dns.TypeA), false, 0},
		{"too large", query("big.example.org.", dns.TypeTXT), false, 0},
	} {
		before := u.asked.Load()
		ask(t, ch, tc.q)
		ask(t, ch, tc.q)
		asked := u.asked.Load() - before
		if (asked == 1) != tc.kept {
			t.Errorf("%s: asked %d times for 2 queries; kept should be %v", tc.name, asked, tc.kept)
			continue
		}
		if e := entryOf(c, tc.q); tc.kept && (e == nil || time.Duration(e.expires-e.stored) != tc.lifetime) {
			t.Errorf("%s: entry %+v, want a lifetime of %v", tc.name, e, tc.lifetime)
		}
	}
	// a dead upstream: SERVFAIL, kept for failure_ttl so it is not asked again
	u.fail.Store(true)
	before := u.asked.Load()
	for i := 0; i < 3; i++ {
		if m, _ := ask(t, ch, query("dead.example.org.", dns.TypeA)); m.Rcode != dns.RcodeServerFailure {
			t.Fatalf("dead upstream: %s", dns.RcodeToString[m.Rcode])
		}
	}
	if n := u.asked.Load() - before; n != 1 {
		t.Fatalf("a dead upstream asked %d times for 3 queries, want 1", n)
	}
}

// TestTTLClamp: min_ttl and max_ttl clamp what is kept.
func TestTTLClamp(t *testing.T) {
	ch, _, _ := newCache(t, `{"name":"clamp","min_ttl":"400s","max_ttl":"500s"}`)
	ask(t, ch, query("www.example.org.", dns.TypeA))
	m, _ := ask(t, ch, query("www.example.org.", dns.TypeA))
	if m.Answer[0].Header().Ttl != 400 || m.Answer[1].Header().Ttl != 500 {
		t.Fatalf("TTLs %d %d, want 400 500", m.Answer[0].Header().Ttl, m.Answer[1].Header().Ttl)
	}
}

// TestMaxNegativeTTL: a negative answer is kept for at most
// max_negative_ttl (1h by default), its SOA's TTL served no higher;
// positive answers are not capped by it.
func TestMaxNegativeTTL(t *testing.T) {
	for _, tc := range []struct {
		cfg  string
		want time.Duration
	}{
		{`{"name":"neg-default"}`, time.Hour},
		{`{"name":"neg-90","max_negative_ttl":"90s"}`, 90 * time.Second},
		{`{"name":"neg-maxttl","max_ttl":"20m"}`, 20 * time.Minute},
	} {
		ch, c, u := newCache(t, tc.cfg)
		u.edit = func(m *dns.Msg) {
			for _, rr := range m.Ns {
				if soa, ok := rr.(*dns.SOA); ok {
					soa.Hdr.Ttl, soa.Minttl = 7200, 7200
				}
			}
		}
		for _, q := range []*dns.Msg{query("nx.example.org.", dns.TypeA), query("www.example.org.", dns.TypeAAAA)} {
			before := u.asked.Load()
			ask(t, ch, q)
			m, _ := ask(t, ch, q)
			if u.asked.Load()-before != 1 {
				t.Fatalf("%s: %s %s not kept", tc.cfg, q.Question[0].Name, dns.TypeToString[q.Question[0].Qtype])
			}
			if e := entryOf(c, q); time.Duration(e.expires-e.stored) != tc.want {
				t.Errorf("%s: %s kept for %v, want %v", tc.cfg, q.Question[0].Name, time.Duration(e.expires-e.stored), tc.want)
			}
			if ttl := m.Ns[0].Header().Ttl; time.Duration(ttl)*time.Second > tc.want {
				t.Errorf("%s: SOA served with TTL %d, over %v", tc.cfg, ttl, tc.want)
			}
		}
		m, _ := ask(t, ch, query("www.example.org.", dns.TypeA))
		if m.Answer[1].Header().Ttl != 600 {
			t.Errorf("%s: a positive answer's TTL %d, want 600 (not capped)", tc.cfg, m.Answer[1].Header().Ttl)
		}
	}
	ctx, err := caddy.ProvisionContext(&caddy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	c := &Cache{MinTTL: caddy.Duration(time.Hour), MaxNegativeTTL: caddy.Duration(time.Minute)}
	if err := c.Provision(ctx); err == nil || !strings.Contains(err.Error(), "min_ttl 1h0m0s is over max_negative_ttl 1m0s") {
		t.Errorf("min_ttl over max_negative_ttl: %v", err)
	}
}

// TestScopeZero: an answer the upstream gave with SCOPE PREFIX-LENGTH 0
// is kept once for every subnet (RFC 7871 7.3.1), and a client of
// another subnet gets it with its own option echoed, scope 0; an answer
// with a scope, or with no option at all (as dnsdist), is kept for its
// subnet only; a query that went upstream without an option never gets
// the answer kept for every subnet.
func TestScopeZero(t *testing.T) {
	ch, c, u := newCache(t, `{"name":"scope-zero","prefetch":1}`)
	u.edit = func(m *dns.Msg) {
		name := m.Question[0].Name
		if strings.HasPrefix(name, "noecs.") || m.IsEdns0() == nil {
			return
		}
		scope := uint8(0)
		if strings.HasPrefix(name, "scoped.") {
			scope = 24
		}
		m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, SourceScope: scope, Address: net.IPv4(203, 0, 113, 0).To4()}}
	}
	from := func(name string, subnet net.IP) *dns.Msg {
		q := query(name, dns.TypeA)
		q.SetEdns0(1232, false)
		if subnet != nil {
			q.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: subnet}}
		}
		return q
	}
	a, b := net.IPv4(192, 0, 2, 0).To4(), net.IPv4(198, 51, 100, 0).To4()
	for _, tc := range []struct {
		name   string
		asked  int32 // for a's query then b's
		shared bool
	}{
		{"zero.example.org.", 1, true},
		{"scoped.example.org.", 2, false},
		{"noecs.example.org.", 2, false},
	} {
		before := u.asked.Load()
		ask(t, ch, from(tc.name, a))
		m, _ := ask(t, ch, from(tc.name, b))
		if n := u.asked.Load() - before; n != tc.asked {
			t.Errorf("%s: the upstream was asked %d times for two subnets, want %d", tc.name, n, tc.asked)
		}
		if !tc.shared {
			continue
		}
		var echo *dns.EDNS0_SUBNET
		for _, o := range m.IsEdns0().Option {
			if e, ok := o.(*dns.EDNS0_SUBNET); ok {
				echo = e
			}
		}
		if echo == nil || !echo.Address.Equal(b) || echo.SourceNetmask != 24 || echo.SourceScope != 0 {
			t.Errorf("%s: the second subnet got ECS %v back, want its own 198.51.100.0/24 with scope 0", tc.name, echo)
		}
	}
	// an answer scoped 24 that the upstream, once it expired, scoped 0:
	// the subnet's own record goes (else every query of the subnet would
	// find it expired before the one for every subnet)
	flip := from("scoped.example.org.", a)
	age(t, c, flip, time.Hour)
	edit := u.edit
	u.edit = func(m *dns.Msg) {
		m.Question[0].Name = "zero." + m.Question[0].Name // scope 0 for it
		edit(m)
		m.Question[0].Name = strings.TrimPrefix(m.Question[0].Name, "zero.")
	}
	ask(t, ch, flip)
	u.edit = edit
	if e := entryOf(c, flip); e != nil {
		t.Errorf("the subnet's expired record outlived the answer for every subnet: %+v", e)
	}
	before := u.asked.Load()
	ask(t, ch, from("scoped.example.org.", net.IPv4(203, 0, 113, 0).To4())) // a third subnet
	if n := u.asked.Load() - before; n != 0 {
		t.Errorf("the answer scoped 0 after an expired one scoped 24 was not kept for every subnet")
	}

	// a query that went upstream without an option has its own entry (an
	// upstream tailors that answer to us); one whose option asks for no
	// subnet (family 0, prefix 0) is served the answer for every subnet
	before = u.asked.Load()
	ask(t, ch, from("zero.example.org.", nil))
	if n := u.asked.Load() - before; n != 1 {
		t.Errorf("a query without an option was served the answer for every subnet")
	}
	none := from("zero.example.org.", nil)
	none.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 0}}
	ask(t, ch, none)
	if n := u.asked.Load() - before; n != 1 {
		t.Errorf("a query for no subnet asked the upstream, with an answer for every subnet kept")
	}
	// purge finds the entry for every subnet by its name
	if n := c.store.purge("zero.example.org", false, dns.TypeA); n != 2 {
		t.Errorf("purge zero.example.org: %d entries, want 2 (every subnet's, no option's)", n)
	}
}

// TestServeStale: when the upstream fails, an expired entry younger than
// stale is answered with TTL 30 (RFC 8767), and the upstream is not asked
// again for failure_ttl; once it is back, fresh answers again.
func TestServeStale(t *testing.T) {
	ch, c, u := newCache(t, `{"name":"stale","failure_ttl":"5s"}`)
	q := query("www.example.org.", dns.TypeA)
	ask(t, ch, q)
	age(t, c, q, time.Hour)
	u.fail.Store(true)
	m, a := ask(t, ch, q)
	if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 2 || m.Answer[0].Header().Ttl != StaleTTL || a.TTL != StaleTTL {
		t.Fatalf("stale answer: %v", m)
	}
	asked := u.asked.Load()
	if m, _ := ask(t, ch, q); m.Answer[0].Header().Ttl != StaleTTL || u.asked.Load() != asked {
		t.Fatalf("within failure_ttl: asked again (%d, %d) or %v", asked, u.asked.Load(), m)
	}
	if c.store.staleServed.Load() != 2 {
		t.Fatalf("stale served %d, want 2", c.store.staleServed.Load())
	}
	u.fail.Store(false)
	edit(t, c, q, func(h *header) { h.failedFor = 0 }) // failure_ttl over
	if m, _ := ask(t, ch, q); m.Answer[0].Header().Ttl != 300 || u.asked.Load() != asked+1 {
		t.Fatalf("upstream back: %v", m)
	}
	// past the stale window: SERVFAIL
	age(t, c, q, 48*time.Hour)
	u.fail.Store(true)
	if m, _ := ask(t, ch, q); m.Rcode != dns.RcodeServerFailure {
		t.Fatalf("past stale: %s", dns.RcodeToString[m.Rcode])
	}
}

// TestStaleEDE: a stale answer carries Extended DNS Error 3 (Stale
// Answer), an NXDOMAIN 19 (Stale NXDOMAIN Answer) (RFC 8914), to a client
// that sent EDNS; a fresh one carries none, nor one to a client without
// EDNS.
func TestStaleEDE(t *testing.T) {
	ch, c, u := newCache(t, `{"name":"stale-ede"}`)
	ede := func(m *dns.Msg) int {
		if opt := m.IsEdns0(); opt != nil {
			for _, o := range opt.Option {
				if e, ok := o.(*dns.EDNS0_EDE); ok {
					return int(e.InfoCode)
				}
			}
		}
		return -1
	}
	for _, tc := range []struct {
		name string
		edns bool
		want int
	}{
		{"www.example.org.", true, int(dns.ExtendedErrorCodeStaleAnswer)},
		{"nx.example.org.", true, int(dns.ExtendedErrorCodeStaleNXDOMAINAnswer)},
		{"www.example.net.", false, -1},
	} {
		u.fail.Store(false)
		q := query(tc.name, dns.TypeA)
		if tc.edns {
			q.SetEdns0(1232, false)
		}
		if m, _ := ask(t, ch, q); ede(m) != -1 {
			t.Errorf("%s: a fresh answer carries EDE %d", tc.name, ede(m))
		}
		age(t, c, q, time.Hour)
		u.fail.Store(true)
		if m, _ := ask(t, ch, q); ede(m) != tc.want {
			t.Errorf("%s (EDNS %v): stale answer with EDE %d, want %d:\n%v", tc.name, tc.edns, ede(m), tc.want, m)
		}
	}
}

// TestStaleAnswerTimeout: with stale_answer_timeout, a slow upstream's
// client gets the stale answer in time, and the refresh still lands.
func TestStaleAnswerTimeout(t *testing.T) {
	ch, c, u := newCache(t, `{"name":"timer","stale_answer_timeout":"50ms"}`)
	q := query("www.example.org.", dns.TypeA)
	ask(t, ch, q)
	age(t, c, q, time.Hour)
	u.hold = make(chan struct{})
	m, _ := ask(t, ch, q)
	if m.Answer[0].Header().Ttl != StaleTTL {
		t.Fatalf("slow upstream: %v, want the stale answer", m)
	}
	close(u.hold)
	waitFlight(c, q) // the refresh goes on after the stale answer
	if e := entryOf(c, q); e == nil || time.Now().UnixNano() >= e.expires {
		t.Fatal("the refresh did not land")
	}
}

// waitFlight waits until no query for q is in flight (registered before
// the client that started it was answered), and its answer is stored.
func waitFlight(c *Cache, q *dns.Msg) {
	if done := c.store.flights.waitFor(hashKey(appendKey(nil, q, true, nil))); done != nil {
		<-done
	}
}

// TestPrefetch: an entry hit prefetch times in the last tenth of its TTL
// is refreshed once in the background; the client does not wait for it.
func TestPrefetch(t *testing.T) {
	ch, c, u := newCache(t, `{"name":"prefetch","prefetch":2}`)
	q := query("www.example.org.", dns.TypeA)
	ask(t, ch, q)
	ask(t, ch, q) // hit 1
	age(t, c, q, 280*time.Second)
	u.hold = make(chan struct{})
	done := make(chan struct{})
	go func() {
		ask(t, ch, q) // hit 2, in the last tenth: prefetch, answered from the cache
		ask(t, ch, q) // a prefetch is already under way
		close(done)
	}()
	<-done // answered while the upstream is held
	if c.store.prefetches.Load() != 1 {
		t.Fatalf("prefetches %d, want 1", c.store.prefetches.Load())
	}
	close(u.hold)
	waitFlight(c, q)
	if e := entryOf(c, q); e.stored < time.Now().Add(-time.Minute).UnixNano() {
		t.Fatal("the prefetch did not replace the entry")
	}
	if u.asked.Load() != 2 {
		t.Fatalf("upstream asked %d times, want 2 (the miss and one prefetch)", u.asked.Load())
	}
}

// TestCoalescing: 100 concurrent identical misses make one upstream
// query, and each client gets the answer with its own ID.
func TestCoalescing(t *testing.T) {
	ch, c, u := newCache(t, `{"name":"coalesce"}`)
	u.hold = make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := query("www.example.org.", dns.TypeA)
			q.Id = uint16(i + 1)
			m, _ := ask(t, ch, q)
			if m.Id != q.Id || len(m.Answer) != 2 {
				errs <- fmt.Errorf("client %d: %v", i, m)
			}
		}()
	}
	for c.store.coalesced.Load() < 99 {
		runtime.Gosched() // until every other miss waits on the first
	}
	close(u.hold)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := u.asked.Load(); n != 1 {
		t.Fatalf("100 identical misses asked the upstream %d times", n)
	}
}

// TestBounded: a flood of unique names stays within max_entries and
// max_bytes.
func TestBounded(t *testing.T) {
	ch, c, _ := newCache(t, `{"name":"bounded","max_entries":1000,"max_bytes":1000000}`)
	for i := 0; i < 20000; i++ {
		ask(t, ch, query(fmt.Sprintf("n%d.example.org.", i), dns.TypeA))
	}
	if n := c.store.entries(); n > 1000 {
		t.Fatalf("%d entries, max_entries 1000", n)
	}
	if b := c.store.bytes.Load(); b > 1000000 {
		t.Fatalf("%d bytes, max_bytes 1000000", b)
	}
	if c.store.evictions.Load() == 0 {
		t.Fatal("no evictions counted")
	}
}

// TestFlood: 1,000,000 unique names keep the cache within max_bytes
// (its rings, outside the Go heap) and its entries within max_entries,
// the index at most indexBudget an entry, and the Go heap as it was; a
// name asked all along stays cached.
func TestFlood(t *testing.T) {
	const maxBytes, maxEntries, indexBudget = 2 << 20, 100_000, 32
	_, c, _ := newCache(t, fmt.Sprintf(`{"name":"flood","max_entries":%d,"max_bytes":%d}`, maxEntries, maxBytes))
	hot := query("hot.example.org.", dns.TypeA)
	hr := &caddydns.Request{Msg: hot, Size: caddydns.MaxMessage}
	q := query("x.", dns.TypeA)
	r := &caddydns.Request{Msg: q, Size: caddydns.MaxMessage}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range 1_000_000 {
		q.Question[0].Name = "n" + strconv.Itoa(i) + ".flood.test."
		res, err := c.ServeDNS(context.Background(), r, wireUpstream)
		if err != nil {
			t.Fatal(err)
		}
		res.Wire.Release()
		if i%100 == 0 {
			res, _ := c.ServeDNS(context.Background(), hr, wireUpstream)
			res.Wire.Release()
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	n := c.store.entries()
	if n > maxEntries || n < 1000 {
		t.Fatalf("%d entries, max_entries %d", n, maxEntries)
	}
	if rings := c.store.rings(); rings > maxBytes {
		t.Fatalf("the rings take %d octets, max_bytes %d", rings, maxBytes)
	}
	if b := c.store.bytes.Load(); b > maxBytes {
		t.Fatalf("%d octets of entries, max_bytes %d", b, maxBytes)
	}
	if x := c.store.indexBytes(); x > n*indexBudget {
		t.Fatalf("the index takes %d octets for %d entries: over %d an entry", x, n, indexBudget)
	}
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	if ringsOnHeap {
		grew -= int64(c.store.indexBytes()) // the rings were there before
	}
	grew -= int64(c.store.doorkeeperBytes()) // made once, when the shards fill: 1-2 octets an entry of max_entries
	if dk := c.store.doorkeeperBytes(); dk == 0 || dk > 2*maxEntries {
		t.Fatalf("the doorkeeper takes %d octets for max_entries %d", dk, maxEntries)
	}
	if grew > 64<<10 {
		t.Fatalf("the heap grew by %d octets", grew)
	}
	if misses := c.store.misses.Load(); misses > 1_000_000+1_000 {
		t.Fatalf("%d misses: the name asked all along was evicted", misses)
	}
	t.Logf("%d entries; rings %d octets, entries %d, index %d; heap %+d", n, c.store.rings(), c.store.bytes.Load(), c.store.indexBytes(), grew)
	runtime.KeepAlive(c)
}

// TestShared: caches with the same config share a store (across servers
// and reloads); another config has its own.
func TestShared(t *testing.T) {
	_, a, _ := newCache(t, `{"name":"shared"}`)
	_, b, _ := newCache(t, `{"name":"shared"}`)
	_, other, _ := newCache(t, `{"name":"shared","max_entries":5}`)
	if a.store != b.store || a.store == other.store {
		t.Fatal("same config, other store; or other config, same store")
	}
}

// TestPurge: by name, by subtree, all.
func TestPurge(t *testing.T) {
	ch, c, _ := newCache(t, `{"name":"purge"}`)
	for _, n := range []string{"example.org.", "www.example.org.", "a.b.example.org.", "notexample.org.", "other.net."} {
		ask(t, ch, query(n, dns.TypeA))
	}
	ask(t, ch, query("www.example.org.", dns.TypeAAAA))
	if n := c.store.purge("www.example.org", false, dns.TypeTXT); n != 0 {
		t.Fatalf("purge www TXT: %d, want 0", n)
	}
	if n := c.store.purge("www.example.org", false, dns.TypeAAAA); n != 1 {
		t.Fatalf("purge www AAAA: %d, want 1", n)
	}
	if n := c.store.purge("WWW.example.org", false, 0); n != 1 {
		t.Fatalf("purge www: %d", n)
	}
	if n := c.store.purge("example.org", true, 0); n != 2 {
		t.Fatalf("purge example.org and under: %d, want 2 (not notexample.org)", n)
	}
	if n := c.store.purge("", false, 0); n != 2 {
		t.Fatalf("purge all: %d, want 2", n)
	}
}

// TestPurgeParams: purge's type= takes a mnemonic, TYPEnnn or a number;
// name= may be given again; anything else unknown, repeated, empty or
// unreadable is an error that names it, rather than a purge of every
// entry.
func TestPurgeParams(t *testing.T) {
	for in, want := range map[string]uint16{"AAAA": dns.TypeAAAA, "aaaa": dns.TypeAAAA, "TYPE65": 65, "type65": 65, "65": 65, "65535": 65535} {
		if p, err := purgeParams(url.Values{"type": {in}}); err != nil || p.qtype != want {
			t.Errorf("type=%q: %d %v, want %d", in, p.qtype, err, want)
		}
	}
	p, err := purgeParams(url.Values{"name": {"a.example.org", "B.example.org."}, "subtree": {"1"}, "cache": {"dot"}})
	if err != nil || len(p.names) != 2 || !p.subtree || p.cache != "dot" || p.qtype != 0 {
		t.Errorf("two names, subtree, cache: %+v %v", p, err)
	}
	for q, want := range map[string]string{
		"type=0":               `type="0"`,
		"type=TYPE0":           `type="TYPE0"`,
		"type=65536":           `type="65536"`,
		"type=AAAAA":           `type="AAAAA"`,
		"type=-1":              `type="-1"`,
		"type=":                "type is empty",
		"nmae=example.org":     `unknown parameter "nmae"`,
		"name=":                "name is empty",
		"name=a..b":            `name="a..b"`,
		"type=A&type=AAAA":     "type given 2 times",
		"cache=a&cache=b":      "cache given 2 times",
		"subtree=yes&name=a.b": `subtree="yes"`,
		"subtree=1":            "subtree needs a name",
	} {
		v, _ := url.ParseQuery(q)
		if _, err := purgeParams(v); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error with %s", q, err, want)
		}
	}
}

// FuzzAnswer: any answer an upstream may send, kept and served back,
// walks, and its TTLs are never raised.
func FuzzAnswer(f *testing.F) {
	_, c, _ := newCache(f, `{"name":"fuzz","stale":"0s"}`)
	for _, name := range []string{"www.example.org.", "nx.example.org."} {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		resp, _ := (&upstream{}).ServeDNS(context.Background(), &caddydns.Request{Msg: m}, nil)
		b, _ := resp.Msg.Pack()
		f.Add(b, uint16(5))
	}
	f.Fuzz(func(t *testing.T, msg []byte, agedBy uint16) {
		q := new(dns.Msg)
		name, _, err := dns.UnpackDomainName(msg, 12)
		if err != nil || len(msg) < 12 {
			return
		}
		q.SetQuestion(name, dns.TypeA)
		l, ok := dnswireWalk(msg)
		if !ok {
			return
		}
		key := appendKey(nil, q, true, nil)
		h := hashKey(key)
		c.keep(h, key, msg, &l, &caddydns.Request{Msg: q}, false)
		var e *entry
		sh := c.store.shard(h)
		if _, off, ok := sh.idx.find(h, key, sh.buf); ok {
			e = snapshot(sh.hdr(off), sh.body(off, sh.hdr(off)))
		}
		if e == nil {
			return
		}
		w := e.answer(e.stored+int64(agedBy)*int64(time.Second), -1)
		defer w.Release()
		if _, ok := dnswireWalk(w.Bytes()); !ok {
			t.Fatal("a served entry does not walk")
		}
	})
}

// BenchmarkHit is the hit path: key, look-up, copy, TTLs lowered.
func BenchmarkHit(b *testing.B) {
	ch, _, _ := newCache(b, `{"name":"bench"}`)
	q := query("www.example.org.", dns.TypeA)
	q.SetEdns0(1232, true)
	ask(b, ch, q)
	packed, _ := q.Pack()
	buf := make([]byte, 0, 512)
	r := &caddydns.Request{Size: caddydns.MaxMessage}
	b.ReportAllocs()
	for b.Loop() {
		a := ch.Serve(context.Background(), r, packed, buf)
		buf = a.Wire[:0]
	}
}

var netipClient = netip.MustParseAddrPort("192.0.2.99:53000")

func dnswireWalk(b []byte) (dnswire.Layout, bool) { return dnswire.Walk(b) }

// BenchmarkHitHandler is the cache's own part of a hit (the query already
// decoded): it should allocate nothing.
func BenchmarkHitHandler(b *testing.B) {
	ch, c, _ := newCache(b, `{"name":"bench"}`)
	q := query("www.example.org.", dns.TypeA)
	q.SetEdns0(1232, true)
	ask(b, ch, q)
	r := &caddydns.Request{Msg: q, Size: caddydns.MaxMessage}
	b.ReportAllocs()
	for b.Loop() {
		res, err := c.ServeDNS(context.Background(), r, nil)
		if err != nil || res.Wire == nil {
			b.Fatal("not a hit")
		}
		res.Wire.Release()
	}
}

// FuzzKey: any query that decodes has a key, the same for a copy with
// another ID, name case and hop options, and one that names its name.
func FuzzKey(f *testing.F) {
	for _, q := range []*dns.Msg{query("www.example.org.", dns.TypeA), query("A.b.C.", dns.TypeTXT)} {
		q.SetEdns0(1232, true)
		q.IsEdns0().Option = append(q.IsEdns0().Option, &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.IPv4(192, 0, 2, 1).To4()})
		b, _ := q.Pack()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		q := new(dns.Msg)
		if q.Unpack(b) != nil || len(q.Question) != 1 {
			return
		}
		key := appendKey(nil, q, true, nil)
		if key == nil {
			return // options that do not pack again: not cached
		}
		if raw := appendKey(nil, q, true, b); raw != nil && string(raw) != string(key) {
			t.Fatalf("the key from the octets %q differs from the message's %q", raw, key)
		}
		other := q.Copy()
		other.Id++
		other.Question[0].Name = strings.ToUpper(q.Question[0].Name)
		if opt := other.IsEdns0(); opt != nil {
			opt.Option = append(opt.Option, &dns.EDNS0_PADDING{Padding: make([]byte, 8)})
		}
		if got := appendKey(nil, other, true, nil); string(got) != string(key) {
			t.Fatalf("keys differ for the same question: %q %q", key, got)
		}
		if name := keyName(key); !strings.EqualFold(name, q.Question[0].Name) {
			t.Fatalf("key names %q, query %q", name, q.Question[0].Name)
		}
		if zk, ok := zeroKey(nil, key); ok {
			if keyName(zk) != keyName(key) || string(zk[:5]) != string(key[:5]) || string(zk) == string(appendKey(nil, q, false, nil)) {
				t.Fatalf("zero key %q of %q: another name or question, or the key without ECS", zk, key)
			}
		}
	})
}

// TestKeyOptions: the options that go upstream are in the key (an
// upstream may answer by them: a filtering service's device option), as
// octets in their order, whether read from the query's octets or its
// message; the hop's options and a stripped ECS are not; the key still
// names its question, after an ECS address holding a 0 octet too.
func TestKeyOptions(t *testing.T) {
	key := func(ecs bool, opts ...dns.EDNS0) []byte {
		q := query("www.Example.org.", dns.TypeA)
		q.SetEdns0(1232, false)
		q.IsEdns0().Option = opts
		b, err := q.Pack()
		if err != nil {
			t.Fatal(err)
		}
		k, fromOctets := appendKey(nil, q, ecs, nil), appendKey(nil, q, ecs, b)
		if string(k) != string(fromOctets) {
			t.Fatalf("key from the message %q, from the octets %q", k, fromOctets)
		}
		if keyName(k) != "www.example.org." {
			t.Fatalf("key %q names %q", k, keyName(k))
		}
		return k
	}
	device := func(id string) dns.EDNS0 { return &dns.EDNS0_LOCAL{Code: 65073, Data: []byte(id)} }
	hop := []dns.EDNS0{&dns.EDNS0_PADDING{Padding: make([]byte, 12)}, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"},
		&dns.EDNS0_NSID{Code: dns.EDNS0NSID}, &dns.EDNS0_TCP_KEEPALIVE{Code: dns.EDNS0TCPKEEPALIVE}}
	subnet := &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.IPv4(192, 0, 2, 0).To4()}
	none, a, b := key(false), key(false, device("a")), key(false, device("b"))
	if string(none) == string(a) || string(a) == string(b) {
		t.Fatalf("a device option not in the key: %q %q %q", none, a, b)
	}
	if string(key(false, hop...)) != string(none) || string(key(false, append(slices.Clone(hop), device("a"))...)) != string(a) {
		t.Fatal("the hop's options changed the key")
	}
	if string(key(false, subnet)) != string(none) || string(key(false, subnet, device("a"))) != string(a) {
		t.Fatal("a stripped ECS option changed the key")
	}
	if withECS := key(true, subnet, device("a")); string(withECS) == string(key(true, subnet)) || string(withECS) == string(a) {
		t.Fatal("ECS that goes upstream and a device option: not both in the key")
	}
	// an EDNS flag but DO (CO, RFC 9824: compact answers) goes upstream
	co := query("www.example.org.", dns.TypeA)
	co.SetEdns0(1232, true)
	do := co.Copy()
	co.IsEdns0().Hdr.Ttl |= 0x4000
	if string(appendKey(nil, co, false, nil)) == string(appendKey(nil, do, false, nil)) || keyName(appendKey(nil, co, false, nil)) != "www.example.org." {
		t.Fatal("the CO flag not in the key, or the name lost with it")
	}
}

// TestCacheOptions: through a chain, the answer to a query with a device
// option is not the answer to one without it, or with another.
func TestCacheOptions(t *testing.T) {
	ch, _, u := newCache(t, `{}`)
	for i, id := range []string{"a", "", "b", "a", ""} {
		q := query("www.example.org.", dns.TypeA)
		q.SetEdns0(1232, false)
		if id != "" {
			q.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_LOCAL{Code: 65073, Data: []byte(id)}}
		}
		if m, _ := ask(t, ch, q); len(m.Answer) == 0 {
			t.Fatalf("query %d: %v", i, m)
		}
		if want := min(i+1, 3); int(u.asked.Load()) != want {
			t.Fatalf("after query %d (device %q): the upstream was asked %d times, want %d", i, id, u.asked.Load(), want)
		}
	}
}

// TestKeyNameWithOddECS: a key built from an ECS option of an unknown
// family, or with a prefix longer than its address (which miekg/dns does
// not decode off the wire, but a handler may build), still names its
// question, so that purge finds it.
func TestKeyNameWithOddECS(t *testing.T) {
	for _, ecs := range []*dns.EDNS0_SUBNET{
		{Code: dns.EDNS0SUBNET, Family: 3, SourceNetmask: 24, Address: net.IPv4(192, 0, 2, 1).To4()},
		{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 200, Address: net.IPv4(192, 0, 2, 1).To4()},
		{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.IPv4(192, 0, 2, 1).To4()},
	} {
		q := query("www.example.org.", dns.TypeA)
		q.SetEdns0(1232, false)
		q.IsEdns0().Option = []dns.EDNS0{ecs}
		if name := keyName(appendKey(nil, q, true, nil)); name != "www.example.org." {
			t.Errorf("ECS family %d /%d: key name %q", ecs.Family, ecs.SourceNetmask, name)
		}
	}
}

// TestOtherQuestion: an answer to another question than the query's is
// not kept, the query coming through the chain (its question compared as
// the client sent it) or not (packed again); one that differs only in
// letter case is.
func TestOtherQuestion(t *testing.T) {
	ch, c, u := newCache(t, `{"name":"otherq"}`)
	u.edit = func(m *dns.Msg) {
		switch m.Question[0].Name {
		case "www.example.org.":
			m.Question[0].Name = "other.example.org."
		case "case.example.org.":
			m.Question[0].Name = "CaSe.ExAmple.org."
		}
	}
	direct := func(name string) {
		r := &caddydns.Request{Msg: query(name, dns.TypeA), Size: caddydns.MaxMessage}
		next := func(ctx context.Context, r *caddydns.Request) (caddydns.Response, error) {
			return u.ServeDNS(ctx, r, nil)
		}
		if res, err := c.ServeDNS(context.Background(), r, next); err == nil && res.Wire != nil {
			res.Wire.Release()
		}
	}
	for _, tc := range []struct {
		name  string
		serve func(name string)
		asked int32
	}{
		{"www.example.org.", func(n string) { ask(t, ch, query(n, dns.TypeA)) }, 2},
		{"case.example.org.", func(n string) { ask(t, ch, query(n, dns.TypeA)) }, 1},
		{"www.example.org.", direct, 2},
		{"case.example.org.", direct, 1},
	} {
		c.store.purge("", false, 0)
		u.asked.Store(0)
		tc.serve(tc.name)
		tc.serve(tc.name)
		if got := u.asked.Load(); got != tc.asked {
			t.Errorf("%s: upstream asked %d times for 2 queries, want %d", tc.name, got, tc.asked)
		}
	}
}

// TestFirstAnswerTTL: the client whose query filled the cache gets the
// upstream's answer, its Cache-Control TTL that answer's own (max_ttl
// clamps what is kept, not what this client sees).
func TestFirstAnswerTTL(t *testing.T) {
	ch, _, _ := newCache(t, `{"name":"first","max_ttl":"10s"}`)
	m, a := ask(t, ch, query("www.example.org.", dns.TypeA))
	if m.Answer[0].Header().Ttl != 300 || a.TTL != 300 {
		t.Fatalf("first answer: record TTL %d, Answer TTL %d; want both 300", m.Answer[0].Header().Ttl, a.TTL)
	}
	m, a = ask(t, ch, query("www.example.org.", dns.TypeA))
	if m.Answer[0].Header().Ttl != 10 || a.TTL != 10 {
		t.Fatalf("hit: record TTL %d, Answer TTL %d; want both 10", m.Answer[0].Header().Ttl, a.TTL)
	}
}

// wireUpstream answers every query as forward does, with octets: the
// query's header and question, then one A record (its owner a pointer to
// the question).
func wireUpstream(_ context.Context, r *caddydns.Request) (caddydns.Response, error) {
	var b [512]byte
	q, err := r.Msg.PackBuffer(b[:0])
	if err != nil {
		return caddydns.Response{}, err
	}
	l, _ := dnswire.Walk(q)
	msg := append(q[:l.QEnd:l.QEnd], 0xC0, 12, 0, 1, 0, 1, 0, 0, 0x0E, 0x10, 0, 4, 192, 0, 2, 1)
	msg[2] |= 0x80
	msg[7], msg[10], msg[11] = 1, 0, 0
	l, ok := dnswire.Walk(msg)
	if !ok {
		return caddydns.Response{}, errors.New("wireUpstream: bad answer")
	}
	return caddydns.Response{Wire: caddydns.NewWire(msg, &l)}, nil
}

// BenchmarkMissHandler is the cache's part of a miss (every name new):
// the flight, the answer kept, the client's copy.
func BenchmarkMissHandler(b *testing.B) {
	_, c, _ := newCache(b, `{"name":"miss","max_entries":1000000}`)
	q := query("www.example.org.", dns.TypeA)
	q.SetEdns0(1232, false)
	r := &caddydns.Request{Msg: q, Size: caddydns.MaxMessage}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		q.Question[0].Name = "n" + strconv.Itoa(i) + ".zipf.test."
		res, err := c.ServeDNS(context.Background(), r, wireUpstream)
		if err != nil || res.Wire == nil {
			b.Fatal("no answer")
		}
		res.Wire.Release()
	}
	if c.store.misses.Load() < uint64(b.N) {
		b.Fatal("not every query was a miss")
	}
}

// BenchmarkMissFull is a miss of a new name on a full cache, names asked
// once (a flood): the doorkeeper keeps them out. With a million entries
// the index and the doorkeeper's bits are far larger than the processor's
// caches, as in the bench's 0%-hit row.
func BenchmarkMissFull(b *testing.B) {
	for _, n := range []int{10_000, 1_000_000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			_, c, _ := newCache(b, `{"name":"missfull","max_entries":`+strconv.Itoa(n)+`}`)
			q := query("www.example.org.", dns.TypeA)
			q.SetEdns0(1232, false)
			r := &caddydns.Request{Msg: q, Size: caddydns.MaxMessage}
			ask := func(i int) {
				q.Question[0].Name = "n" + strconv.Itoa(i) + ".flood.test."
				res, err := c.ServeDNS(context.Background(), r, wireUpstream)
				if err != nil || res.Wire == nil {
					b.Fatal("no answer")
				}
				res.Wire.Release()
			}
			for i := range 2 * n { // full, and past the doorkeeper's first window
				ask(i)
			}
			if c.store.entries() < 8*n/10 {
				b.Fatalf("%d entries: not full", c.store.entries())
			}
			b.ReportAllocs()
			i := 2 * n
			for b.Loop() {
				i++
				ask(i)
			}
		})
	}
}

// BenchmarkEntryMemory is what an entry takes, with the names of the
// bench's Zipf file: on the Go heap (live bytes after a collection, per
// entry), in the rings (the octets of its record, and the rings' size
// per entry: what they have touched) and in the index's tables.
func BenchmarkEntryMemory(b *testing.B) {
	const n = 200_000
	for b.Loop() {
		_, c, _ := newCache(b, `{"name":"memory","max_entries":1000000}`)
		q := query("x.", dns.TypeA)
		r := &caddydns.Request{Msg: q, Size: caddydns.MaxMessage}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for i := range n {
			q.Question[0].Name = "n" + strconv.Itoa(i) + ".zipf.test."
			res, _ := c.ServeDNS(context.Background(), r, wireUpstream)
			res.Wire.Release()
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if got := c.store.entries(); got != n {
			b.Fatalf("%d entries, want %d", got, n)
		}
		heap := int64(after.HeapAlloc - before.HeapAlloc)
		if ringsOnHeap {
			heap -= int64(c.store.indexBytes()) // counted below; the rings were there before
		}
		b.ReportMetric(float64(heap)/n, "heap-B/entry")
		b.ReportMetric(float64(c.store.bytes.Load())/n, "record-B/entry")
		b.ReportMetric(float64(c.store.rings())/n, "ring-B/entry")
		b.ReportMetric(float64(c.store.indexBytes())/n, "index-B/entry")
		runtime.KeepAlive(c)
		_ = c.Cleanup()
	}
}

// TestDoorkeeperAtLookup: in a full cache (one shard: its doorkeeper's
// bitset is made empty when it fills), the doorkeeper judges a new name
// at its look-up: its first answer is not kept (counted not admitted),
// its second is, and the third query is a hit.
func TestDoorkeeperAtLookup(t *testing.T) {
	ch, c, u := newCache(t, `{"max_entries":32,"max_bytes":98304}`)
	if len(c.store.shards) != 1 {
		t.Fatalf("%d shards, want 1", len(c.store.shards))
	}
	for i := range 32 { // full, with nothing turned away yet
		ask(t, ch, query("fill"+strconv.Itoa(i)+".example.org.", dns.TypeA))
	}
	if n, na := c.store.entries(), c.store.notAdmitted.Load(); n != 32 || na != 0 {
		t.Fatalf("%d entries after the fill, %d not admitted; want 32 and 0", n, na)
	}
	asked := u.asked.Load()
	q := query("new.example.org.", dns.TypeA)
	for i, want := range []struct {
		asked int32
		not   uint64
	}{{1, 1}, {2, 1}, {2, 1}} {
		if m, _ := ask(t, ch, q); m.Rcode != dns.RcodeSuccess || len(m.Answer) == 0 {
			t.Fatalf("query %d: %v", i+1, m)
		}
		if got, na := u.asked.Load()-asked, c.store.notAdmitted.Load(); got != want.asked || na != want.not {
			t.Fatalf("query %d: upstream asked %d times in all, %d not admitted; want %d and %d", i+1, got, na, want.asked, want.not)
		}
	}
}
