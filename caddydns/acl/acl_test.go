package acl

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/internal/handlertest"
)

func newACL(t testing.TB, cfg string) *ACL {
	t.Helper()
	a := new(ACL)
	handlertest.Provision(t, a, cfg)
	return a
}

func verdict(t testing.TB, a *ACL, client string) string {
	t.Helper()
	return handlertest.Verdict(t, a, client)
}

// TestRules: the first rule that holds the client decides; the default
// is deny for a list with allow rules, allow for one of deny rules only.
func TestRules(t *testing.T) {
	a := newACL(t, `{"rules":[{"deny":["127.0.0.3"]},{"allow":["127.0.0.0/8","::1"]}]}`)
	for client, want := range map[string]string{
		"127.0.0.2": "pass", "127.0.0.3": "refused", "::1": "pass", "::ffff:127.0.0.2": "pass", "192.0.2.1": "refused", "2001:db8::1": "refused",
	} {
		if got := verdict(t, a, client); got != want {
			t.Errorf("%s: %s, want %s", client, got, want)
		}
	}
	if n := count(a.denied.WithLabelValues("test", "deny 127.0.0.3")); n != 1 {
		t.Errorf("denied by rule 1: %v, want 1", n)
	}
	if n := count(a.denied.WithLabelValues("test", "default")); n != 2 {
		t.Errorf("denied by default: %v, want 2", n)
	}
	denyOnly := newACL(t, `{"rules":[{"deny":["192.0.2.0/24"]}],"action":"drop"}`)
	if got := verdict(t, denyOnly, "192.0.2.9"); got != "drop" {
		t.Errorf("deny with drop: %s", got)
	}
	if got := verdict(t, denyOnly, "198.51.100.1"); got != "pass" {
		t.Errorf("deny-only list, another client: %s", got)
	}
	explicit := newACL(t, `{"rules":[{"deny":["192.0.2.0/24"]}],"default":"deny"}`)
	if got := verdict(t, explicit, "198.51.100.1"); got != "refused" {
		t.Errorf("default deny: %s", got)
	}
}

// TestProhibited: a refused client that sent EDNS learns why (EDE 18,
// Prohibited); one without EDNS gets a plain REFUSED, and an allowed
// client no EDE.
func TestProhibited(t *testing.T) {
	a := newACL(t, `{"rules":[{"allow":["127.0.0.1"]}]}`)
	ch := caddydns.NewChain("test", "test", a, answerer{})
	ask := func(client string, edns bool) *dns.Msg {
		q := new(dns.Msg)
		q.SetQuestion("www.example.org.", dns.TypeA)
		if edns {
			q.SetEdns0(1232, false)
		}
		b, _ := q.Pack()
		ans := ch.Serve(context.Background(), &caddydns.Request{Client: netip.MustParseAddrPort(client + ":5300"), Size: caddydns.MaxMessage}, b, nil)
		m := new(dns.Msg)
		if err := m.Unpack(ans.Wire); err != nil {
			t.Fatal(err)
		}
		return m
	}
	ede := func(m *dns.Msg) []uint16 {
		var codes []uint16
		if opt := m.IsEdns0(); opt != nil {
			for _, o := range opt.Option {
				if e, ok := o.(*dns.EDNS0_EDE); ok {
					codes = append(codes, e.InfoCode)
				}
			}
		}
		return codes
	}
	if m := ask("127.0.0.2", true); m.Rcode != dns.RcodeRefused || len(ede(m)) != 1 || ede(m)[0] != dns.ExtendedErrorCodeProhibited {
		t.Fatalf("denied, EDNS: %v, want REFUSED with EDE 18", m)
	}
	if m := ask("127.0.0.2", false); m.Rcode != dns.RcodeRefused || m.IsEdns0() != nil {
		t.Fatalf("denied, no EDNS: %v, want REFUSED without OPT", m)
	}
	if m := ask("127.0.0.1", true); m.Rcode == dns.RcodeRefused || len(ede(m)) != 0 {
		t.Fatalf("allowed: %v", m)
	}
}

// TestDropsClient: a chain whose first handler past the watchers (the
// query log, dnstap) is an acl with action drop tells the transports
// which clients it drops; with action refused, or a handler that may
// answer before the acl, it tells none.
func TestDropsClient(t *testing.T) {
	drop := newACL(t, `{"rules":[{"allow":["127.0.0.1"]}],"action":"drop"}`)
	refuse := newACL(t, `{"rules":[{"allow":["127.0.0.1"]}]}`)
	denied, allowed := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.1")
	if !drop.DropsClient(denied) || drop.DropsClient(allowed) || refuse.DropsClient(denied) {
		t.Fatalf("DropsClient: drop %v/%v, refused %v", drop.DropsClient(denied), drop.DropsClient(allowed), refuse.DropsClient(denied))
	}
	for _, c := range []struct {
		name     string
		handlers []caddydns.Handler
		want     bool
	}{
		{"acl drop first", []caddydns.Handler{drop, answerer{}}, true},
		{"past a watcher", []caddydns.Handler{watcher{}, watcher{}, drop, answerer{}}, true},
		{"acl refused", []caddydns.Handler{refuse, answerer{}}, false},
		{"an answerer first", []caddydns.Handler{answerer{}, drop}, false},
		{"no acl", []caddydns.Handler{watcher{}, answerer{}}, false},
	} {
		if got := caddydns.NewChain("test", "dot", c.handlers...).DropsClient(denied); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

type watcher struct{}

func (watcher) WatchesOnly() {}
func (watcher) ServeDNS(ctx context.Context, r *caddydns.Request, next caddydns.Next) (caddydns.Response, error) {
	return next(ctx, r)
}

type answerer struct{}

func (answerer) ServeDNS(_ context.Context, r *caddydns.Request, _ caddydns.Next) (caddydns.Response, error) {
	m := new(dns.Msg)
	m.SetReply(r.Msg)
	return caddydns.Response{Msg: m}, nil
}

func count(c prometheus.Counter) float64 { return handlertest.MetricValue(c) }

func TestBadConfig(t *testing.T) {
	handlertest.BadConfigs(t, func() caddy.Provisioner { return new(ACL) }, map[string]string{
		`{"rules":[{"allow":["10.0.0.1/8"]}]}`:                `rules[0].allow[0]: "10.0.0.1/8" has bits set past its length`,
		`{"rules":[{"allow":["10.0.0.0/8"],"deny":["::1"]}]}`: "rules[0]: both allow and deny",
		`{"rules":[{}]}`:      "rules[0]: no prefixes",
		`{"action":"ignore"}`: `action "ignore"`,
		`{"default":"maybe"}`: `default "maybe"`,
	})
}

func TestCaddyfile(t *testing.T) {
	a := new(ACL)
	d := caddyfile.NewTestDispenser("acl {\n\tallow 10.0.0.0/8 ::1\n\tdeny 0.0.0.0/0\n\taction drop\n}")
	if err := a.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if len(a.Rules) != 2 || a.Rules[0].Allow[1] != "::1" || a.Rules[1].Deny[0] != "0.0.0.0/0" || a.Action != "drop" {
		t.Fatalf("%+v", a)
	}
	for in, msg := range map[string]string{
		"acl {\n\tallow\n}":             "allow: want one or more prefixes, at Testfile:2",
		"acl {\n\n\tdeny 10.1.0.0/8\n}": "Testfile:3",
		"acl {\n\taction stop\n}":       `action "stop"`,
	} {
		err := new(ACL).UnmarshalCaddyfile(caddyfile.NewTestDispenser(in))
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q: %v, want %q", in, err, msg)
		}
	}
}

// BenchmarkAllowed is an allowed query's cost: it allocates nothing.
func BenchmarkAllowed(b *testing.B) {
	a := newACL(b, `{"rules":[{"deny":["192.0.2.0/24","2001:db8::/32"]},{"allow":["10.0.0.0/8","127.0.0.0/8","::1"]}]}`)
	q := new(dns.Msg)
	q.SetQuestion("example.org.", dns.TypeA)
	r := &caddydns.Request{Msg: q, Client: netip.MustParseAddrPort("127.0.0.2:5300")}
	pass := func(context.Context, *caddydns.Request) (caddydns.Response, error) { return caddydns.Response{}, nil }
	b.ReportAllocs()
	for b.Loop() {
		_, _ = a.ServeDNS(context.Background(), r, pass)
	}
}
