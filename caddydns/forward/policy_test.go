package forward

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns"
)

func policyUpstreams(names ...string) []*upstream {
	ups := make([]*upstream, len(names))
	for i, n := range names {
		ups[i] = &upstream{name: n, hashKey: fnv64Lower(n)}
	}
	return ups
}

func nameRequest(name string) *caddydns.Request {
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeA)
	return &caddydns.Request{Msg: q}
}

// TestPolicies: each policy's first pick among healthy upstreams.
func TestPolicies(t *testing.T) {
	ups := policyUpstreams("udp://127.0.0.1:5301", "udp://127.0.0.1:5302", "udp://127.0.0.1:5303")
	r := nameRequest("www.example.org.")
	pick := func(p policy) string { return ordered(ups, time.Now(), p, r)[0].name }

	if got := pick(firstPolicy{}); got != ups[0].name {
		t.Errorf("first: %s", got)
	}
	rr := new(roundRobin)
	for i := range 6 {
		if got := pick(rr); got != ups[i%3].name {
			t.Errorf("round_robin, pick %d: %s, want %s", i, got, ups[i%3].name)
		}
	}
	ups[0].outstanding.Store(5)
	ups[1].outstanding.Store(1)
	ups[2].outstanding.Store(3)
	if got := pick(leastOutstanding{}); got != ups[1].name {
		t.Errorf("least_outstanding: %s, want the one with 1 in flight", got)
	}
	ups[0].outstanding.Store(0)
	ups[1].outstanding.Store(0)
	ups[2].outstanding.Store(0)
	seen := map[string]int{}
	for range 300 {
		seen[pick(randomPolicy{})]++
	}
	if len(seen) != 3 {
		t.Errorf("random: %v, want all three", seen)
	}

	// an upstream down is not picked first, and keeps its place last
	ups[0].downUntil.Store(time.Now().Add(time.Hour).UnixNano())
	if order := ordered(ups, time.Now(), firstPolicy{}, r); order[0] != ups[1] || order[2] != ups[0] {
		t.Errorf("first with the first down: %s, %s, %s", order[0].name, order[1].name, order[2].name)
	}
	ups[0].downUntil.Store(0)
}

// TestHashPolicy: one upstream per name, whatever its case, the same in
// another instance; the names spread over the upstreams; an upstream
// that goes down moves only its own names.
func TestHashPolicy(t *testing.T) {
	specs := []string{"udp://127.0.0.1:5301", "udp://127.0.0.1:5302", "tls://192.0.2.1:853", "https://dns.example/dns-query"}
	ups := policyUpstreams(specs...)
	other := policyUpstreams(specs...) // another instance's
	const n = 4000
	home := make([]*upstream, n)
	share := map[string]int{}
	for i := range n {
		name := fmt.Sprintf("n%d.example.org.", i)
		home[i] = ordered(ups, time.Now(), hashPolicy{}, nameRequest(name))[0]
		share[home[i].name]++
		if again := ordered(ups, time.Now(), hashPolicy{}, nameRequest(strings.ToUpper(name)))[0]; again != home[i] {
			t.Fatalf("%s: %s, in upper case %s", name, home[i].name, again.name)
		}
		if o := ordered(other, time.Now(), hashPolicy{}, nameRequest(name))[0]; o.name != home[i].name {
			t.Fatalf("%s: %s here, %s in another instance", name, home[i].name, o.name)
		}
	}
	for _, u := range ups {
		if s := share[u.name]; s < n/4*7/10 || s > n/4*13/10 {
			t.Errorf("%s has %d of %d names, want about a quarter: %v", u.name, s, n, share)
		}
	}
	down := ups[2]
	down.downUntil.Store(time.Now().Add(time.Hour).UnixNano())
	moved := 0
	for i := range n {
		now := ordered(ups, time.Now(), hashPolicy{}, nameRequest(fmt.Sprintf("n%d.example.org.", i)))[0]
		switch {
		case now == down:
			t.Fatalf("n%d: sent to the upstream that is down", i)
		case home[i] != down && now != home[i]:
			t.Fatalf("n%d moved from %s, which is up, to %s", i, home[i].name, now.name)
		case home[i] == down:
			moved++
		}
	}
	if moved != share[down.name] {
		t.Errorf("%d names moved, want the %d of the upstream down", moved, share[down.name])
	}
}

// BenchmarkHashPolicy: the hash policy's pick among 4 upstreams.
func BenchmarkHashPolicy(b *testing.B) {
	ups := policyUpstreams("udp://127.0.0.1:5301", "udp://127.0.0.1:5302", "udp://127.0.0.1:5303", "udp://127.0.0.1:5304")
	r := nameRequest("www.some-longer-name.example.org.")
	b.ReportAllocs()
	for b.Loop() {
		_ = hashPolicy{}.first(ups, r)
	}
}

// TestUpstreamStatus: what GET /dns/upstreams says of an upstream: up,
// down by its active checks, down by failed queries until a time.
func TestUpstreamStatus(t *testing.T) {
	spec, err := parseUpstream("udp://127.0.0.1:5399")
	if err != nil {
		t.Fatal(err)
	}
	u := newUpstream(spec, nil)
	defer u.Destruct()
	now := time.Now()
	if s := u.status(now); !s.Healthy || s.Down != "" || s.DownUntil != nil || s.Upstream != "udp://127.0.0.1:5399" || !s.CaseRandomized {
		t.Errorf("up: %+v", s)
	}
	u.activeDown.Store(true)
	if s := u.status(now); s.Healthy || s.Down != "active" {
		t.Errorf("down by its checks: %+v", s)
	}
	u.activeDown.Store(false)
	until := now.Add(time.Minute)
	u.downUntil.Store(until.UnixNano())
	u.fails.Store(3)
	if s := u.status(now); s.Healthy || s.Down != "passive" || s.DownUntil == nil || !s.DownUntil.Equal(until) || s.ConsecutiveFailures != 3 {
		t.Errorf("down by failed queries: %+v", s)
	}
	u.caseOff.Store(true)
	if s := u.status(now); s.CaseRandomized {
		t.Errorf("0x20 off: %+v", s)
	}
}
