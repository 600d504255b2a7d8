package ocspfile

import (
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/dnsfront/dnsfront/internal/promreg"
)

// The staple metrics live as long as the process, so counters survive
// config reloads; each config's registry gets them registered.
var (
	nextUpdate = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "dnsfront",
		Subsystem: "ocsp",
		Name:      "staple_next_update_timestamp_seconds",
		Help:      "nextUpdate of the OCSP staple served for a certificate, as a Unix time; 0 when none is served.",
	}, []string{"certificate", "serial"})
	refreshes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "dnsfront",
		Subsystem: "ocsp",
		Name:      "staple_refresh_total",
		Help:      "OCSP staple refreshes by result: updated, unchanged, failed, revoked, refused_stored (a response in the fleet's storage failed validation).",
	}, []string{"certificate", "serial", "result"})
	writes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "dnsfront",
		Subsystem: "ocsp",
		Name:      "staple_write_total",
		Help:      "Writes of a made OCSP staple through to its write_to file, by result: ok, failed.",
	}, []string{"certificate", "serial", "result"})
)

func registerMetrics(reg *prometheus.Registry, logger *zap.Logger) {
	if err := promreg.Register(reg, nextUpdate, refreshes, writes); err != nil {
		logger.Warn("registering ocsp metrics", zap.Error(err))
	}
}
