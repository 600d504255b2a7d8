package forward

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/internal/handlertest"
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
	pick := func(p policy) string { return ordered(ups, time.Now(), p, weights{}, r)[0].name }

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
	if order := ordered(ups, time.Now(), firstPolicy{}, weights{}, r); order[0] != ups[1] || order[2] != ups[0] {
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
		home[i] = ordered(ups, time.Now(), hashPolicy{}, weights{}, nameRequest(name))[0]
		share[home[i].name]++
		if again := ordered(ups, time.Now(), hashPolicy{}, weights{}, nameRequest(strings.ToUpper(name)))[0]; again != home[i] {
			t.Fatalf("%s: %s, in upper case %s", name, home[i].name, again.name)
		}
		if o := ordered(other, time.Now(), hashPolicy{}, weights{}, nameRequest(name))[0]; o.name != home[i].name {
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
		now := ordered(ups, time.Now(), hashPolicy{}, weights{}, nameRequest(fmt.Sprintf("n%d.example.org.", i)))[0]
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
		_ = hashPolicy{}.first(ups, weights{}, r)
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

// TestWeights: with weights 1 and 3, random and round_robin send the
// second three queries in four, hash three names in four, and
// least_outstanding compares queries in flight per unit of weight; a
// weighted hash still moves only the names of an upstream that goes
// down.
func TestWeights(t *testing.T) {
	ups := policyUpstreams("udp://127.0.0.1:5301", "udp://127.0.0.1:5302")
	ws := weights{ups: ups, w: []uint32{1, 3}}
	r := nameRequest("www.example.org.")
	const n = 4000
	share := func(p policy, name func(i int) string) float64 {
		second := 0
		for i := range n {
			if ordered(ups, time.Now(), p, ws, nameRequest(name(i)))[0] == ups[1] {
				second++
			}
		}
		return float64(second) / n
	}
	same := func(int) string { return "www.example.org." }
	if s := share(new(roundRobin), same); s != 0.75 {
		t.Errorf("round_robin: the second has %.3f of the queries, want 0.75", s)
	}
	if s := share(randomPolicy{}, same); s < 0.70 || s > 0.80 {
		t.Errorf("random: the second has %.3f of the queries, want about 0.75", s)
	}
	names := func(i int) string { return fmt.Sprintf("n%d.example.org.", i) }
	if s := share(hashPolicy{}, names); s < 0.70 || s > 0.80 {
		t.Errorf("hash: the second has %.3f of the names, want about 0.75", s)
	}
	ups[0].outstanding.Store(2)
	ups[1].outstanding.Store(5) // 5/3 in flight per unit of weight, against 2/1
	if got := ordered(ups, time.Now(), leastOutstanding{}, ws, r)[0]; got != ups[1] {
		t.Errorf("least_outstanding: %s, want the second (fewer in flight per weight)", got.name)
	}
	ups[1].outstanding.Store(7) // 7/3 against 2
	if got := ordered(ups, time.Now(), leastOutstanding{}, ws, r)[0]; got != ups[0] {
		t.Errorf("least_outstanding: %s, want the first", got.name)
	}
	ups[0].outstanding.Store(0)
	ups[1].outstanding.Store(0)

	three := policyUpstreams("udp://127.0.0.1:5301", "udp://127.0.0.1:5302", "udp://127.0.0.1:5303")
	ws3 := weights{ups: three, w: []uint32{2, 1, 5}}
	home := make([]*upstream, n)
	for i := range n {
		home[i] = ordered(three, time.Now(), hashPolicy{}, ws3, nameRequest(names(i)))[0]
	}
	three[2].downUntil.Store(time.Now().Add(time.Hour).UnixNano())
	for i := range n {
		now := ordered(three, time.Now(), hashPolicy{}, ws3, nameRequest(names(i)))[0]
		if now == three[2] || (home[i] != three[2] && now != home[i]) {
			t.Fatalf("%s: %s, then %s with the third down", names(i), home[i].name, now.name)
		}
	}
}

// TestWeightsConfig: weights must match the upstreams, be 1 to 1000,
// and go with a policy that uses them.
func TestWeightsConfig(t *testing.T) {
	handlertest.BadConfigs(t, func() caddy.Provisioner { return new(Forward) }, map[string]string{
		`{"to":["udp://127.0.0.1:5301","udp://127.0.0.1:5302"],"weights":[1]}`:                    "forward: weights: 1 given for 2 upstreams (one each, in the order of to)",
		`{"to":["udp://127.0.0.1:5301","udp://127.0.0.1:5302"],"weights":[1,0]}`:                  "forward: weights[1] 0: want 1 to 1000",
		`{"to":["udp://127.0.0.1:5301","udp://127.0.0.1:5302"],"weights":[1001,1]}`:               "forward: weights[0] 1001: want 1 to 1000",
		`{"to":["udp://127.0.0.1:5301","udp://127.0.0.1:5302"],"weights":[2,1],"policy":"first"}`: "forward: weights: policy first takes none",
	})
	for in, want := range map[string]string{
		"forward udp://127.0.0.1:5301 udp://127.0.0.1:5302 {\n\tweights\n}":     "weights takes one weight for each upstream, in order",
		"forward udp://127.0.0.1:5301 udp://127.0.0.1:5302 {\n\tweights 3 x\n}": `weights: "x" is not a whole number`,
	} {
		if err := new(Forward).UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", in, err, want)
		}
	}
	f := new(Forward)
	if err := f.UnmarshalCaddyfile(caddyfile.NewTestDispenser("forward udp://127.0.0.1:5301 udp://127.0.0.1:5302 {\n\tweights 3 1\n}")); err != nil || len(f.Weights) != 2 || f.Weights[0] != 3 {
		t.Errorf("weights 3 1: %v %v", f.Weights, err)
	}
}
