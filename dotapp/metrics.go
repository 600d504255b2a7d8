package dotapp

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dnsfront/dnsfront/internal/promreg"
)

var (
	connsOpen = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "dnsfront", Subsystem: "dot", Name: "connections_open",
		Help: "DNS over TLS connections open, after the handshake.",
	}, []string{"server"})
	connsParked = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "dnsfront", Subsystem: "dot", Name: "connections_parked",
		Help: "Open DNS over TLS connections parked while quiet: no goroutine or buffer of their own until the client sends again.",
	}, []string{"server"})
	handshakeFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "dnsfront", Subsystem: "dot", Name: "handshake_failures_total",
		Help: "TLS handshakes that failed or timed out.",
	}, []string{"server"})
	connsRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "dnsfront", Subsystem: "dot", Name: "connections_refused_total",
		Help: "Connections closed at once by a limit, by reason.",
	}, []string{"server", "reason"})
	badFrames = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "dnsfront", Subsystem: "dot", Name: "bad_frames_total",
		Help: "Connections closed for a length prefix shorter than a DNS header.",
	}, []string{"server"})
)

type dotMetrics struct {
	open              prometheus.Gauge
	parked            prometheus.Gauge
	handshakeFailures prometheus.Counter
	refused           *prometheus.CounterVec
	badFrames         prometheus.Counter
}

func newDotMetrics(ctx caddy.Context, server string) *dotMetrics {
	_ = promreg.Register(ctx.GetMetricsRegistry(), connsOpen, connsParked, handshakeFailures, connsRefused, badFrames)
	return &dotMetrics{
		open:              connsOpen.WithLabelValues(server),
		parked:            connsParked.WithLabelValues(server),
		handshakeFailures: handshakeFailures.WithLabelValues(server),
		refused:           connsRefused.MustCurryWith(prometheus.Labels{"server": server}),
		badFrames:         badFrames.WithLabelValues(server),
	}
}
