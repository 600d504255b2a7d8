// Package ratelimit is `dns.handlers.ratelimit`: a token bucket per
// client prefix, in bounded memory whatever the number of clients.
package ratelimit

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/internal/clientrate"
	"github.com/dnsfront/dnsfront/internal/netprefix"
)

func init() {
	caddy.RegisterModule(RateLimit{})
}

// Defaults. A prefix of /24 (/56) is a household, an office or a
// carrier's NAT pool: many people. A browser's page load is a burst of
// 20 to 50 lookups, and a person at work averages well under 1 query a
// second through a caching stub; 100 a second with bursts of 200 lets a
// busy /24 of people through and stops a single flooding host within a
// second. See docs/ratelimit.md for sizing.
const (
	DefaultQPS        = 100
	DefaultPrefixV4   = 24
	DefaultPrefixV6   = 56
	DefaultMaxClients = 100_000
)

// RateLimit limits the queries of each client prefix to QPS a second,
// with bursts of Burst.
type RateLimit struct {
	// Name labels the limiter in metrics and the admin API. Default
	// "ratelimit".
	Name string `json:"name,omitempty"`
	// QPS is the rate a prefix may keep up. Default 100.
	QPS float64 `json:"qps,omitempty"`
	// Burst is how many queries a prefix may send at once. Default 2 x QPS.
	Burst int `json:"burst,omitempty"`
	// PrefixV4 and PrefixV6 are the lengths clients are grouped by.
	// Default 24 and 56.
	PrefixV4 int `json:"prefix_v4,omitempty"`
	PrefixV6 int `json:"prefix_v6,omitempty"`
	// Action on a query over the limit: "refused" (the default) or "drop".
	Action string `json:"action,omitempty"`
	// Exempt prefixes are never limited.
	Exempt []string `json:"exempt,omitempty"`
	// MaxClients bounds the prefixes tracked at once (memory: about 140
	// bytes each). Past it the least active are forgotten first.
	// Default 100000.
	MaxClients int `json:"max_clients,omitempty"`

	exempt netprefix.List
	lim    *limiter
	key    string
}

// CaddyModule returns the Caddy module information.
func (RateLimit) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "dns.handlers.ratelimit", New: func() caddy.Module { return new(RateLimit) }}
}

// Provision applies the defaults and takes the limiter of this config:
// limiters with the same config are one, across servers and reloads.
func (rl *RateLimit) Provision(ctx caddy.Context) error {
	if rl.Name == "" {
		rl.Name = "ratelimit"
	}
	if rl.QPS == 0 {
		rl.QPS = DefaultQPS
	}
	if rl.Burst == 0 {
		rl.Burst = int(math.Ceil(2 * rl.QPS))
	}
	if rl.PrefixV4 == 0 {
		rl.PrefixV4 = DefaultPrefixV4
	}
	if rl.PrefixV6 == 0 {
		rl.PrefixV6 = DefaultPrefixV6
	}
	if rl.MaxClients == 0 {
		rl.MaxClients = DefaultMaxClients
	}
	switch {
	case rl.QPS < 0 || math.IsInf(rl.QPS, 0) || math.IsNaN(rl.QPS):
		return fmt.Errorf("ratelimit: qps %v: want a positive rate", rl.QPS)
	case rl.Burst < 1:
		return fmt.Errorf("ratelimit: burst %d: want at least 1", rl.Burst)
	case rl.PrefixV4 < 1 || rl.PrefixV4 > 32:
		return fmt.Errorf("ratelimit: prefix_v4 %d: want 1 to 32", rl.PrefixV4)
	case rl.PrefixV6 < 1 || rl.PrefixV6 > 128:
		return fmt.Errorf("ratelimit: prefix_v6 %d: want 1 to 128", rl.PrefixV6)
	case rl.MaxClients < 0:
		return fmt.Errorf("ratelimit: max_clients %d: must not be negative", rl.MaxClients)
	}
	switch rl.Action {
	case "":
		rl.Action = "refused"
	case "refused", "drop":
	default:
		return fmt.Errorf("ratelimit: action %q: want refused or drop", rl.Action)
	}
	var err error
	if rl.exempt, err = netprefix.ParseList("ratelimit: exempt", rl.Exempt); err != nil {
		return err
	}
	cfg, err := json.Marshal(rl)
	if err != nil {
		return err
	}
	rl.key = string(cfg)
	v, _, err := limiters.LoadOrNew(rl.key, func() (caddy.Destructor, error) {
		return newLimiter(rl.Name, rl.QPS, rl.Burst, rl.PrefixV4, rl.PrefixV6, rl.MaxClients)
	})
	if err != nil {
		return fmt.Errorf("ratelimit: %w", err)
	}
	rl.lim = v.(*limiter)
	return registerMetrics(ctx)
}

// Cleanup releases the limiter; it lives on while another config uses it.
func (rl *RateLimit) Cleanup() error {
	if rl.key != "" {
		_, _ = limiters.Delete(rl.key)
	}
	return nil
}

// errLimited is never seen: Chain.Serve drops the query.
var errLimited = fmt.Errorf("ratelimit: %w", caddydns.ErrDrop)

// ServeDNS passes a query on while its client's prefix is within its
// rate, and refuses or drops it past it.
func (rl *RateLimit) ServeDNS(ctx context.Context, r *caddydns.Request, next caddydns.Next) (caddydns.Response, error) {
	client := r.Client.Addr().Unmap()
	if !client.IsValid() || (len(rl.exempt) > 0 && rl.exempt.Contains(client)) || rl.lim.Allow(client, r.Now()) {
		return next(ctx, r)
	}
	rl.lim.limited.Add(1)
	if rl.Action == "drop" {
		return caddydns.Response{}, errLimited
	}
	m := new(dns.Msg)
	m.SetRcode(r.Msg, dns.RcodeRefused)
	return caddydns.Response{Msg: m}, nil
}

// limiter is the buckets of one config, with its name and count.
type limiter struct {
	*clientrate.Limiter
	name    string
	limited atomic.Uint64
}

var (
	limiters = caddy.NewUsagePool()
	live     sync.Map // *limiter -> struct{}
)

func newLimiter(name string, qps float64, burst, v4, v6, maxClients int) (*limiter, error) {
	cl, err := clientrate.New(qps, burst, v4, v6, maxClients)
	if err != nil {
		return nil, err
	}
	l := &limiter{Limiter: cl, name: name}
	live.Store(l, struct{}{})
	return l, nil
}

// Destruct implements caddy.Destructor.
func (l *limiter) Destruct() error {
	live.Delete(l)
	l.Close()
	return nil
}

// Interface guards
var (
	_ caddydns.Handler   = (*RateLimit)(nil)
	_ caddy.Provisioner  = (*RateLimit)(nil)
	_ caddy.CleanerUpper = (*RateLimit)(nil)
)
