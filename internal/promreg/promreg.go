// Package promreg registers process-wide Prometheus collectors in each
// config's registry (Caddy makes a new registry per config load).
package promreg

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

var mu sync.Mutex

// Register registers collectors in reg, tolerating ones registered
// already; a nil reg (no metrics) is fine.
func Register(reg *prometheus.Registry, cs ...prometheus.Collector) error {
	if reg == nil {
		return nil
	}
	mu.Lock()
	defer mu.Unlock()
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}
