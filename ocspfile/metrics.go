package ocspfile

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
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
		Help:      "OCSP staple refreshes by result: updated, unchanged, failed, revoked.",
	}, []string{"certificate", "serial", "result"})

	metricsMu sync.Mutex
)

func registerMetrics(reg *prometheus.Registry, logger *zap.Logger) {
	if reg == nil {
		return
	}
	metricsMu.Lock()
	defer metricsMu.Unlock()
	for _, c := range []prometheus.Collector{nextUpdate, refreshes} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				logger.Warn("registering ocsp metrics", zap.Error(err))
			}
		}
	}
}
