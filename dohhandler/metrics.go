package dohhandler

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dnsfront/dnsfront/internal/promreg"
)

var responsesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "dnsfront", Subsystem: "doh", Name: "responses_total",
	Help: "DNS over HTTPS responses by handler and HTTP status.",
}, []string{"server", "code"})

// responseMetrics binds the handler's label; 200 is resolved up front.
type responseMetrics struct {
	server string
	ok     prometheus.Counter
}

func newResponseMetrics(ctx caddy.Context, server string) *responseMetrics {
	_ = promreg.Register(ctx.GetMetricsRegistry(), responsesTotal)
	return &responseMetrics{server: server, ok: responsesTotal.WithLabelValues(server, "200")}
}

func (m *responseMetrics) count(status int) {
	if status == 200 {
		m.ok.Inc()
		return
	}
	responsesTotal.WithLabelValues(m.server, strconv.Itoa(status)).Inc()
}
