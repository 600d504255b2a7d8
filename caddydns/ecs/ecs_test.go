package ecs

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/internal/handlertest"
)

// sent runs a query with ECS option o (nil: none) from client through
// an ecs handler of cfg, and returns the option the next handler saw
// (as "192.0.2.0/24", or "") and whether it was to go upstream.
func sent(t *testing.T, cfg, client string, o *dns.EDNS0_SUBNET) (string, bool) {
	t.Helper()
	e := new(ECS)
	handlertest.Provision(t, e, cfg)
	q := new(dns.Msg)
	q.SetQuestion("example.org.", dns.TypeA)
	if o != nil {
		q.SetEdns0(1232, false)
		q.IsEdns0().Option = []dns.EDNS0{o}
	}
	r := &caddydns.Request{Msg: q, Client: netip.AddrPortFrom(netip.MustParseAddr(client), 5300)}
	var got string
	var upstream bool
	_, _ = e.ServeDNS(context.Background(), r, func(_ context.Context, r *caddydns.Request) (caddydns.Response, error) {
		if s := clientOption(r.Msg); s != nil {
			got = s.Address.String() + "/" + strconv.Itoa(int(s.SourceNetmask))
		}
		upstream = r.ECS
		m := new(dns.Msg)
		m.SetReply(r.Msg)
		return caddydns.Response{Msg: m}, nil
	})
	if r.Msg != q {
		t.Fatal("the request does not have the client's query back")
	}
	return got, upstream
}

func subnet(s string) *dns.EDNS0_SUBNET {
	p := netip.MustParsePrefix(s)
	o := &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: uint8(p.Bits()), Address: net.IP(p.Addr().AsSlice())}
	if p.Addr().Is6() {
		o.Family = 2
	}
	return o
}

func TestPolicies(t *testing.T) {
	for _, tc := range []struct {
		cfg, client string
		o           *dns.EDNS0_SUBNET
		want        string
		upstream    bool
	}{
		{`{}`, "192.0.2.7", subnet("198.51.100.0/24"), "198.51.100.0/24", false},
		{`{"policy":"pass"}`, "192.0.2.7", subnet("198.51.100.0/24"), "198.51.100.0/24", true},
		{`{"policy":"add"}`, "192.0.2.7", nil, "192.0.2.0/24", true},
		{`{"policy":"add"}`, "192.0.2.7", subnet("198.51.100.0/24"), "192.0.2.0/24", true},
		{`{"policy":"add"}`, "2001:db8:aa:bbcc::1", nil, "2001:db8:aa:bb00::/56", true},
		{`{"policy":"add","prefix_v4":16}`, "192.0.2.7", nil, "192.0.0.0/16", true},
		{`{"policy":"add","subnet":"203.0.113.0/24"}`, "192.0.2.7", nil, "203.0.113.0/24", true},
	} {
		got, up := sent(t, tc.cfg, tc.client, tc.o)
		if got != tc.want || up != tc.upstream {
			t.Errorf("%s from %s: next saw %q (to go upstream: %v), want %q (%v)", tc.cfg, tc.client, got, up, tc.want, tc.upstream)
		}
	}
}

func TestBadConfig(t *testing.T) {
	ctx, _ := caddy.ProvisionContext(&caddy.Config{})
	for cfg, msg := range map[string]*ECS{
		`policy "forward"`:      {Policy: "forward"},
		"prefix_v4 33":          {Policy: "add", PrefixV4: 33},
		"subnet is for the add": {Policy: "pass", Subnet: "10.0.0.0/8"},
		"bits set past":         {Policy: "add", Subnet: "10.0.0.1/8"},
	} {
		if err := msg.Provision(ctx); err == nil || !strings.Contains(err.Error(), cfg) {
			t.Errorf("%+v: %v, want %q", msg, err, cfg)
		}
	}
}

func TestCaddyfile(t *testing.T) {
	e := new(ECS)
	if err := e.UnmarshalCaddyfile(caddyfile.NewTestDispenser("ecs add {\n\tprefix 20 48\n}")); err != nil || e.Policy != Add || e.PrefixV4 != 20 || e.PrefixV6 != 48 {
		t.Fatalf("%+v %v", e, err)
	}
	for in, msg := range map[string]string{
		"ecs hide":                           `ecs "hide"`,
		"ecs pass {\n\tsubnet 10.0.0.0/8\n}": "for ecs add",
		"ecs add {\n\tprefix 33 56\n}":       "prefix 33 56: want 0-32 and 0-128, at Testfile:2",
	} {
		err := new(ECS).UnmarshalCaddyfile(caddyfile.NewTestDispenser(in))
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q: %v, want %q", in, err, msg)
		}
	}
}
