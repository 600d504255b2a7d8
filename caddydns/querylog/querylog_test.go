package querylog

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/internal/handlertest"
)

// TestEntries: one entry a query, with the handlers' notes, for an
// answer, a dropped query and a failed one.
func TestEntries(t *testing.T) {
	q := new(QueryLog)
	handlertest.Provision(t, q, `{}`)
	core, logs := observer.New(zapcore.InfoLevel)
	q.logger = zap.New(core)
	ch := caddydns.NewChain("dot0", "dot", q, handler(func(r *caddydns.Request) (caddydns.Response, error) {
		switch r.Msg.Question[0].Name {
		case "drop.example.":
			return caddydns.Response{}, fmt.Errorf("acl: %w", caddydns.ErrDrop)
		case "fail.example.":
			return caddydns.Response{}, errors.New("no upstream answered")
		}
		r.Upstream, r.Cache = "udp://127.0.0.1:53", caddydns.CacheMiss
		m := new(dns.Msg)
		m.SetRcode(r.Msg, dns.RcodeNameError)
		return caddydns.Response{Msg: m}, nil
	}))
	for i, name := range []string{"Www.Example.", "drop.example.", "fail.example."} {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeAAAA)
		b, _ := m.Pack()
		sni := []string{"family.dns.example", "", ""}[i]
		ch.Serve(context.Background(), &caddydns.Request{Transport: "dot", Server: "dot0", ServerName: sni,
			Client: netip.MustParseAddrPort("[2001:db8::7]:5300"), Size: caddydns.MaxMessage}, b, nil)
	}
	entries := logs.All()
	if len(entries) != 3 {
		t.Fatalf("%d entries, want 3", len(entries))
	}
	want := []map[string]any{
		{"client": "2001:db8::7", "client_port": uint16(5300), "transport": "dot", "server": "dot0", "qname": "Www.Example.", "qtype": "AAAA", "rcode": "NXDOMAIN", "upstream": "udp://127.0.0.1:53", "cache": "miss", "server_name": "family.dns.example"},
		{"qname": "drop.example.", "rcode": "dropped"},
		{"qname": "fail.example.", "rcode": "SERVFAIL", "error": "no upstream answered"},
	}
	for i, e := range entries {
		got := e.ContextMap()
		if e.Message != "query" {
			t.Errorf("entry %d: message %q", i, e.Message)
		}
		for k, v := range want[i] {
			if got[k] != v {
				t.Errorf("entry %d: %s = %v (%T), want %v", i, k, got[k], got[k], v)
			}
		}
		if _, ok := got["duration"]; !ok {
			t.Errorf("entry %d has no duration", i)
		}
	}
	if _, ok := entries[1].ContextMap()["upstream"]; ok {
		t.Error("a dropped query names an upstream")
	}
	if _, ok := entries[1].ContextMap()["server_name"]; ok {
		t.Error("a query without SNI has a server_name")
	}
}

type handler func(r *caddydns.Request) (caddydns.Response, error)

func (h handler) ServeDNS(_ context.Context, r *caddydns.Request, _ caddydns.Next) (caddydns.Response, error) {
	return h(r)
}

// BenchmarkOff is the handler's cost when its logger is filtered out
// (Caddy's log config excludes it): no allocation.
func BenchmarkOff(b *testing.B) {
	q := &QueryLog{logger: zap.NewNop()}
	m := new(dns.Msg)
	m.SetQuestion("example.org.", dns.TypeA)
	r := &caddydns.Request{Msg: m}
	pass := func(context.Context, *caddydns.Request) (caddydns.Response, error) { return caddydns.Response{}, nil }
	b.ReportAllocs()
	for b.Loop() {
		_, _ = q.ServeDNS(context.Background(), r, pass)
	}
}
