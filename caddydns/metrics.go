package caddydns

import (
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dnsfront/dnsfront/internal/promreg"
)

// Process-wide metrics (counters survive config reloads), registered in
// each config's registry.
var (
	queriesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "dnsfront",
		Name:      "queries_total",
		Help:      "DNS queries answered, by server, transport and response code.",
	}, []string{"server", "transport", "rcode"})
	queryDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "dnsfront",
		Name:      "query_duration_seconds",
		Help:      "Time from a decoded query to its response, by server and transport.",
		Buckets:   []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	}, []string{"server", "transport"})
)

func registerMetrics(ctx caddy.Context) {
	_ = promreg.Register(ctx.GetMetricsRegistry(), queriesTotal, queryDuration)
}

// serverMetrics are one server's query metrics with their labels bound,
// so the query path does no label look-up for the common rcodes.
type serverMetrics struct {
	server, transport string
	byRcode           [24]prometheus.Counter
	duration          prometheus.Observer
}

func newServerMetrics(server, transport string) *serverMetrics {
	m := &serverMetrics{server: server, transport: transport, duration: queryDuration.WithLabelValues(server, transport)}
	for rc := range m.byRcode {
		if name, ok := dns.RcodeToString[rc]; ok {
			m.byRcode[rc] = queriesTotal.WithLabelValues(server, transport, name)
		}
	}
	return m
}

func (m *serverMetrics) observe(rcode int, d time.Duration) {
	if rcode >= 0 && rcode < len(m.byRcode) && m.byRcode[rcode] != nil {
		m.byRcode[rcode].Inc()
	} else {
		queriesTotal.WithLabelValues(m.server, m.transport, dns.RcodeToString[rcode]).Inc()
	}
	m.duration.Observe(d.Seconds())
}
