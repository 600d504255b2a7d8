package forward

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dnsfront/dnsfront/internal/promreg"
)

// Process-wide upstream metrics (counters survive config reloads, as the
// upstreams do), registered in each config's registry.
var (
	upstreamQueries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "dnsfront",
		Name:      "upstream_queries_total",
		Help:      "Queries sent to an upstream.",
	}, []string{"upstream"})
	upstreamErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "dnsfront",
		Name:      "upstream_errors_total",
		Help:      "Queries to an upstream that got no usable answer.",
	}, []string{"upstream"})
	upstreamDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "dnsfront",
		Name:      "upstream_duration_seconds",
		Help:      "Round trip of answered queries to an upstream.",
		Buckets:   []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	}, []string{"upstream"})
	upstreamHealthy = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "dnsfront",
		Name:      "upstream_healthy",
		Help:      "1 when the upstream is considered up, 0 when down.",
	}, []string{"upstream"})
	upstreamForged = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "dnsfront",
		Name:      "upstream_forged_answers_total",
		Help:      "UDP answers from an upstream's address dropped as forged, by reason: id (no query waits under that ID, also an answer after its query gave up), question (another question), case (the question's 0x20 letter case not echoed).",
	}, []string{"upstream", "reason"})
	upstreamCaseRandomized = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "dnsfront",
		Name:      "upstream_case_randomized",
		Help:      "1 while UDP queries to the upstream randomise the letter case of the question (0x20), 0 when it is off (configured, or the upstream was seen not to keep case).",
	}, []string{"upstream"})
)

func registerMetrics(ctx caddy.Context) {
	_ = promreg.Register(ctx.GetMetricsRegistry(),
		upstreamQueries, upstreamErrors, upstreamDuration, upstreamHealthy, upstreamForged, upstreamCaseRandomized)
}
