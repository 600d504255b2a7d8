package dotapp

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dnsfront/dnsfront/internal/promreg"
)

// connVecs are the connection metrics of one kind of server, under the
// subsystem dot (DNS over TLS) or doh (the dedicated DoH server).
type connVecs struct {
	open, parked                *prometheus.GaugeVec
	handshakeFailures, badFrame *prometheus.CounterVec
	refused                     *prometheus.CounterVec
}

func newConnVecs(sub, what, bad string) *connVecs {
	return &connVecs{
		open: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "dnsfront", Subsystem: sub, Name: "connections_open",
			Help: what + " connections open, after the handshake.",
		}, []string{"server"}),
		parked: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "dnsfront", Subsystem: sub, Name: "connections_parked",
			Help: "Open " + what + " connections parked while quiet: no goroutine or buffer of their own until the client sends again.",
		}, []string{"server"}),
		handshakeFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "dnsfront", Subsystem: sub, Name: "handshake_failures_total",
			Help: "TLS handshakes that failed or timed out.",
		}, []string{"server"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "dnsfront", Subsystem: sub, Name: "connections_refused_total",
			Help: "Connections closed at once by a limit, or by an acl that drops the client (reason acl), by reason.",
		}, []string{"server", "reason"}),
		badFrame: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "dnsfront", Subsystem: sub, Name: "bad_frames_total",
			Help: bad,
		}, []string{"server"}),
	}
}

var (
	dotVecs = newConnVecs("dot", "DNS over TLS", "Connections closed for a length prefix shorter than a DNS header.")
	dohVecs = newConnVecs("doh", "Dedicated DNS over HTTPS server", "HTTP/2 connections closed for a protocol error (a GOAWAY with an error code).")
)

type dotMetrics struct {
	open              prometheus.Gauge
	parked            prometheus.Gauge
	handshakeFailures prometheus.Counter
	refused           *prometheus.CounterVec
	badFrames         prometheus.Counter
}

func newDotMetrics(ctx caddy.Context, v *connVecs, server string) *dotMetrics {
	_ = promreg.Register(ctx.GetMetricsRegistry(), v.open, v.parked, v.handshakeFailures, v.refused, v.badFrame)
	return &dotMetrics{
		open:              v.open.WithLabelValues(server),
		parked:            v.parked.WithLabelValues(server),
		handshakeFailures: v.handshakeFailures.WithLabelValues(server),
		refused:           v.refused.MustCurryWith(prometheus.Labels{"server": server}),
		badFrames:         v.badFrame.WithLabelValues(server),
	}
}
