package forward

import (
	"context"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/miekg/dns"
	"go.uber.org/zap"
)

// HealthCheck configures active health checks of upstreams: a query sent
// every Interval; Fails failed checks in a row mark the upstream down,
// Passes good ones bring it back. An answer counts as good unless it is
// SERVFAIL (an upstream that answers REFUSED for the check name is up).
type HealthCheck struct {
	// Name of the check query. Default: "." (root).
	Name string `json:"name,omitempty"`
	// Type of the check query. Default: NS.
	Type string `json:"type,omitempty"`
	// Interval between checks. Default: 5s.
	Interval caddy.Duration `json:"interval,omitempty"`
	// Timeout of one check. Default: 2s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// Fails in a row that mark an upstream down. Default: 3.
	Fails int `json:"fails,omitempty"`
	// Passes in a row that bring it back. Default: 1.
	Passes int `json:"passes,omitempty"`
}

// passiveHealth is how a forward's own queries mark an upstream down:
// maxFails failed in a row (0: never) keep it down for failDuration.
type passiveHealth struct {
	maxFails     int
	failDuration time.Duration
}

// newPassiveHealth applies the defaults: max_fails 3 (-1 turns it off),
// fail_duration 5s.
func newPassiveHealth(maxFails int, failDuration time.Duration) passiveHealth {
	switch {
	case maxFails == 0:
		maxFails = 3
	case maxFails < 0:
		maxFails = 0
	}
	if failDuration <= 0 {
		failDuration = 5 * time.Second
	}
	return passiveHealth{maxFails: maxFails, failDuration: failDuration}
}

// healthConfig is a HealthCheck with its defaults applied and query built.
type healthConfig struct {
	query         *dns.Msg
	interval      time.Duration
	timeout       time.Duration
	fails, passes int
}

func (h *HealthCheck) compile() (*healthConfig, error) {
	name, typ := h.Name, h.Type
	if name == "" {
		name = "."
	}
	if typ == "" {
		typ = "NS"
	}
	qtype, ok := dns.StringToType[typ]
	if !ok {
		return nil, fmt.Errorf("health_check: unknown query type %q", typ)
	}
	if _, ok := dns.IsDomainName(name); !ok {
		return nil, fmt.Errorf("health_check: %q is not a domain name", name)
	}
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), qtype)
	c := &healthConfig{query: q, interval: time.Duration(h.Interval), timeout: time.Duration(h.Timeout), fails: h.Fails, passes: h.Passes}
	if c.interval <= 0 {
		c.interval = 5 * time.Second
	}
	if c.timeout <= 0 {
		c.timeout = 2 * time.Second
	}
	if c.fails <= 0 {
		c.fails = 3
	}
	if c.passes <= 0 {
		c.passes = 1
	}
	return c, nil
}

// useChecks sets (or, with nil, turns off) the upstream's active checks;
// the latest config to load the upstream wins.
func (u *upstream) useChecks(cfg *healthConfig, logger *zap.Logger) {
	u.healthLogger.Store(logger)
	u.checks.Store(cfg)
	if cfg == nil {
		u.activeDown.Store(false)
		u.updateGauge(time.Now())
	}
	u.checkerMu.Lock()
	if cfg != nil && !u.checkerRunning {
		u.checkerRunning = true
		go u.runChecks()
	}
	u.checkerMu.Unlock()
	select {
	case u.checkerKick <- struct{}{}:
	default:
	}
}

func (u *upstream) runChecks() {
	defer close(u.checkerDone)
	passes, fails := 0, 0
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-u.checkerStop:
			return
		case <-u.checkerKick:
			// the config changed: check now with the new one
			timer.Reset(0)
			continue
		case <-timer.C:
		}
		cfg := u.checks.Load()
		if cfg == nil {
			continue // off until a config turns checks on again (kick)
		}
		ok := u.check(cfg)
		if ok {
			passes, fails = passes+1, 0
		} else {
			fails, passes = fails+1, 0
		}
		logger := u.healthLogger.Load()
		switch {
		case !ok && fails >= cfg.fails && !u.activeDown.Load():
			u.activeDown.Store(true)
			logger.Warn("upstream down: health checks failed", zap.String("upstream", u.name), zap.Int("fails", fails))
		case ok && passes >= cfg.passes && u.activeDown.Load():
			u.activeDown.Store(false)
			u.downUntil.Store(0)
			logger.Info("upstream up: health checks pass", zap.String("upstream", u.name), zap.Int("passes", passes))
		case ok && u.downUntil.Load() != 0:
			u.downUntil.Store(0) // a passing check ends a passive mark-down
		}
		u.updateGauge(time.Now())
		timer.Reset(cfg.interval)
	}
}

// check sends one health query; any answer but SERVFAIL passes.
func (u *upstream) check(cfg *healthConfig) bool {
	packed, err := cfg.query.Pack()
	if err != nil {
		return false
	}
	a, err := u.query(context.Background(), nil, time.Now().Add(cfg.timeout), packed)
	if err != nil {
		return false
	}
	defer a.Release()
	return a.Layout().Rcode != dns.RcodeServerFailure
}
