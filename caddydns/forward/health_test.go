package forward

import (
	"context"
	"encoding/json"
	"net"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/internal/handlertest"
)

// slowUpstream answers every query over UDP after delay, until the test
// ends.
func slowUpstream(t *testing.T, delay time.Duration) string {
	t.Helper()
	return udpUpstream(t, dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		time.Sleep(delay)
		m := new(dns.Msg)
		m.SetReply(q)
		_ = w.WriteMsg(m)
	}))
}

// udpUpstream serves h over UDP on loopback until the test ends, and
// returns its address.
func udpUpstream(t *testing.T, h dns.Handler) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &dns.Server{PacketConn: pc, Handler: h}
	done := make(chan struct{})
	go func() { defer close(done); _ = s.ActivateAndServe() }()
	t.Cleanup(func() { _ = s.Shutdown(); <-done })
	return pc.LocalAddr().String()
}

// forwardTo provisions a forward handler with cfg (its "to" set to up).
func forwardTo(t testing.TB, up string, cfg map[string]any) *Forward {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	cfg["to"] = []string{up}
	b, _ := json.Marshal(cfg)
	f := new(Forward)
	if err := json.Unmarshal(b, f); err != nil {
		t.Fatal(err)
	}
	if err := f.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Cleanup() })
	return f
}

// TestClientGivesUp: queries whose clients give up before a slow
// upstream answers (curl --max-time, the end of an h2load run) do not
// count against the upstream; only its own failures do, against the
// forward's timeout. A passive mark-down ends after fail_duration, and
// the healthy gauge says so then, without waiting for another query.
func TestClientGivesUp(t *testing.T) {
	up := slowUpstream(t, 300*time.Millisecond)
	f := forwardTo(t, up, map[string]any{"max_fails": 1, "fail_duration": "300ms", "tries": 1, "timeout": "2s"})
	u := f.ups[0]
	gauge := upstreamHealthy.WithLabelValues(u.name)
	errs := metricValue(t, upstreamErrors.WithLabelValues(u.name))

	for i := 0; i < 5; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		_, err := f.ServeDNS(ctx, &caddydns.Request{Msg: query("slow.example.org.", dns.TypeA)}, nil)
		cancel()
		if err == nil {
			t.Fatalf("query %d: answered after its client gave up", i)
		}
	}
	if !u.isHealthy(time.Now()) || metricValue(t, gauge) != 1 {
		t.Fatalf("5 queries abandoned by their clients marked the upstream down (healthy %v, gauge %v)",
			u.isHealthy(time.Now()), metricValue(t, gauge))
	}
	if got := metricValue(t, upstreamErrors.WithLabelValues(u.name)) - errs; got != 0 {
		t.Fatalf("%v upstream errors counted for queries the clients abandoned", got)
	}

	// the upstream's own failure (its answer later than the forward's
	// timeout) counts: with max_fails 1 it is down at once
	g := forwardTo(t, up, map[string]any{"max_fails": 1, "fail_duration": "300ms", "tries": 1, "timeout": "50ms"})
	if g.ups[0] != u {
		t.Fatal("two handlers naming one upstream do not share it")
	}
	if _, err := g.ServeDNS(context.Background(), &caddydns.Request{Msg: query("slow.example.org.", dns.TypeA)}, nil); err == nil {
		t.Fatal("answered past the timeout")
	}
	if u.isHealthy(time.Now()) || metricValue(t, gauge) != 0 {
		t.Fatal("a timeout against the forward's own deadline did not mark the upstream down")
	}
	if u.failLogged.Load() == 0 || u.failsUnlogged.Load() != 0 {
		t.Fatalf("the upstream's first failure was not logged (last logged %d, unlogged %d)", u.failLogged.Load(), u.failsUnlogged.Load())
	}
	// and it is up again after fail_duration, in the gauge too
	deadline := time.Now().Add(10 * time.Second)
	for metricValue(t, gauge) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("dnsfront_upstream_healthy still 0 %v after a 300ms mark-down (isHealthy %v)",
				10*time.Second, u.isHealthy(time.Now()))
		}
		time.Sleep(20 * time.Millisecond) // polling the gauge, which has no event
	}
	if !u.isHealthy(time.Now()) {
		t.Fatal("the gauge says up, the forward says down")
	}
}

// metricValue reads a gauge's or counter's value.
func metricValue(_ *testing.T, m prometheus.Metric) float64 { return handlertest.MetricValue(m) }
