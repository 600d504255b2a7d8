// Package handlertest provisions DNS handlers outside Caddy, for their
// tests, and tells what a handler did with a query.
package handlertest

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/dnsfront/dnsfront/caddydns"
)

// Provision decodes the JSON config cfg into m and provisions it in a
// context of its own; m is cleaned up when the test ends.
func Provision(t testing.TB, m caddy.Provisioner, cfg string) {
	t.Helper()
	ctx, err := caddy.ProvisionContext(&caddy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(cfg), m); err != nil {
		t.Fatal(err)
	}
	if err := m.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if c, ok := m.(caddy.CleanerUpper); ok {
		t.Cleanup(func() { _ = c.Cleanup() })
	}
}

// The verdicts of a handler on a query.
const (
	Pass    = "pass"    // passed on to the next handler
	Refused = "refused" // answered REFUSED
	Drop    = "drop"    // dropped (caddydns.ErrDrop)
)

// Verdict asks h for example.org A from client and says what it did.
func Verdict(t testing.TB, h caddydns.Handler, client string) string {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion("example.org.", dns.TypeA)
	r := &caddydns.Request{Msg: q, Server: "test", Client: netip.AddrPortFrom(netip.MustParseAddr(client), 5300)}
	res, err := h.ServeDNS(context.Background(), r, func(_ context.Context, r *caddydns.Request) (caddydns.Response, error) {
		m := new(dns.Msg)
		m.SetReply(r.Msg)
		return caddydns.Response{Msg: m}, nil
	})
	switch {
	case errors.Is(err, caddydns.ErrDrop):
		return Drop
	case err != nil:
		t.Fatal(err)
	case res.Msg.Rcode == dns.RcodeRefused:
		return Refused
	}
	return Pass
}

// BadConfigs provisions each JSON config of cases (config: the text its
// error must hold) into a module from newModule, and fails the test for
// each that provisions, or fails with another error.
func BadConfigs(t *testing.T, newModule func() caddy.Provisioner, cases map[string]string) {
	t.Helper()
	ctx, err := caddy.ProvisionContext(&caddy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	for cfg, want := range cases {
		m := newModule()
		if err := json.Unmarshal([]byte(cfg), m); err != nil {
			t.Fatalf("%s: %v", cfg, err)
		}
		if err := m.Provision(ctx); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error with %q", cfg, err, want)
		}
	}
}

// MetricValue reads a counter or a gauge.
func MetricValue(m prometheus.Metric) float64 {
	var out dto.Metric
	_ = m.Write(&out)
	if out.Counter != nil {
		return out.GetCounter().GetValue()
	}
	return out.GetGauge().GetValue()
}
