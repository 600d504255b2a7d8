// Package ratelimit is `dns.handlers.ratelimit`: a token bucket per
// client prefix, in bounded memory whatever the number of clients.
package ratelimit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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
// with bursts of Burst, and, per Rcodes, its answers of an rcode; with
// BlockFor, a prefix over a limit is blocked for that long.
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
	// BlockFor blocks a prefix that goes over a limit for this long:
	// all its queries get the action until it has passed, whatever its
	// rate meanwhile (dnsdist's dynamic blocks). Default 0: only the
	// queries over the rate are limited.
	BlockFor caddy.Duration `json:"block_for,omitempty"`
	// Rcodes limits the answers of an rcode each prefix gets: past one's
	// rate, the prefix's queries are limited (blocked for BlockFor, if
	// set). NXDOMAIN stops a random-subdomain flood through this server,
	// SERVFAIL a client that keeps asking what fails upstream.
	Rcodes []RcodeLimit `json:"rcodes,omitempty"`
	// MaxClients bounds the prefixes tracked at once (memory: about 140
	// bytes each). Past it the least active are forgotten first.
	// Default 100000.
	MaxClients int `json:"max_clients,omitempty"`

	exempt netprefix.List
	lim    *limiter
	key    string
}

// RcodeLimit is a limit on the answers of one rcode to a prefix.
type RcodeLimit struct {
	// Rcode is the rcode's name, as in dig's output: NXDOMAIN, SERVFAIL,
	// REFUSED, NOERROR, ...
	Rcode string `json:"rcode"`
	// QPS is the rate of such answers a prefix may keep up.
	QPS float64 `json:"qps"`
	// Burst is how many a prefix may get at once. Default 2 x QPS.
	Burst int `json:"burst,omitempty"`

	rcode int
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
	if rl.BlockFor < 0 {
		return fmt.Errorf("ratelimit: block_for %v: must not be negative", time.Duration(rl.BlockFor))
	}
	seen := map[int]bool{}
	for i := range rl.Rcodes {
		rc := &rl.Rcodes[i]
		code, ok := dns.StringToRcode[strings.ToUpper(rc.Rcode)]
		switch {
		case !ok || code > 0xF:
			return fmt.Errorf("ratelimit: rcodes[%d]: rcode %q: want a name such as NXDOMAIN or SERVFAIL", i, rc.Rcode)
		case seen[code]:
			return fmt.Errorf("ratelimit: rcodes[%d]: rcode %s is limited twice", i, rc.Rcode)
		case !(rc.QPS > 0) || math.IsInf(rc.QPS, 0):
			return fmt.Errorf("ratelimit: rcodes[%d] (%s): qps %v: want a positive rate", i, rc.Rcode, rc.QPS)
		case rc.Burst < 0:
			return fmt.Errorf("ratelimit: rcodes[%d] (%s): burst %d: want at least 1", i, rc.Rcode, rc.Burst)
		}
		seen[code] = true
		rc.rcode = code
		rc.Rcode = dns.RcodeToString[code]
		if rc.Burst == 0 {
			rc.Burst = int(math.Ceil(2 * rc.QPS))
		}
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
		return newLimiter(rl)
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
// limits and not blocked, and refuses or drops it otherwise; with rcode
// limits, it counts the answer's rcode against them.
func (rl *RateLimit) ServeDNS(ctx context.Context, r *caddydns.Request, next caddydns.Next) (caddydns.Response, error) {
	client := r.Client.Addr().Unmap()
	if !client.IsValid() || (len(rl.exempt) > 0 && rl.exempt.Contains(client)) {
		return next(ctx, r)
	}
	now := r.Now()
	if rl.lim.admit(client, now) {
		if len(rl.lim.rules) == 0 {
			return next(ctx, r)
		}
		res, err := next(ctx, r)
		rl.lim.answered(client, rcodeOf(res, err), now)
		return res, err
	}
	if rl.Action == "drop" {
		return caddydns.Response{}, errLimited
	}
	m := new(dns.Msg)
	m.SetRcode(r.Msg, dns.RcodeRefused)
	return caddydns.Response{Msg: m}, nil
}

// rcodeOf is the rcode a client gets for res and err: -1 for none (the
// query is dropped).
func rcodeOf(res caddydns.Response, err error) int {
	switch {
	case errors.Is(err, caddydns.ErrDrop):
		return -1
	case err != nil:
		return dns.RcodeServerFailure // what the chain answers
	case res.Msg != nil:
		return res.Msg.Rcode
	case res.Wire != nil:
		return res.Wire.Layout().Rcode
	}
	return -1
}

// limiter is the buckets of one config, with its name and count.
type limiter struct {
	*clientrate.Limiter // the queries'
	name                string
	blockFor            time.Duration
	rules               []*rule // the rcodes'
	limited             atomic.Uint64
}

// rule is the buckets of one rcode limit.
type rule struct {
	*clientrate.Limiter
	rcode   int
	limited atomic.Uint64
}

// admit takes a token of the query's bucket for client at now, unless the
// prefix is over an rcode limit or blocked: false, counted, when the
// query is to be limited.
func (l *limiter) admit(client netip.Addr, now int64) bool {
	for _, ru := range l.rules {
		if !ru.Ready(client, now) {
			ru.limited.Add(1)
			l.limited.Add(1)
			return false
		}
	}
	if l.Allow(client, now) {
		return true
	}
	l.limited.Add(1)
	return false
}

// answered counts an answer of rcode to client against its rcode limit.
func (l *limiter) answered(client netip.Addr, rcode int, now int64) {
	for _, ru := range l.rules {
		if ru.rcode == rcode {
			ru.Spend(client, now)
			return
		}
	}
}

var (
	limiters = caddy.NewUsagePool()
	live     sync.Map // *limiter -> struct{}
)

func newLimiter(rl *RateLimit) (*limiter, error) {
	l := &limiter{name: rl.Name, blockFor: time.Duration(rl.BlockFor)}
	var err error
	if l.Limiter, err = clientrate.New(rl.QPS, rl.Burst, rl.PrefixV4, rl.PrefixV6, rl.MaxClients); err != nil {
		return nil, err
	}
	l.SetBlock(l.blockFor)
	for _, rc := range rl.Rcodes {
		cl, err := clientrate.New(rc.QPS, rc.Burst, rl.PrefixV4, rl.PrefixV6, rl.MaxClients)
		if err != nil {
			l.close()
			return nil, err
		}
		cl.SetBlock(l.blockFor)
		l.rules = append(l.rules, &rule{Limiter: cl, rcode: rc.rcode})
	}
	live.Store(l, struct{}{})
	return l, nil
}

// Destruct implements caddy.Destructor.
func (l *limiter) Destruct() error {
	live.Delete(l)
	l.close()
	return nil
}

func (l *limiter) close() {
	l.Close()
	for _, ru := range l.rules {
		ru.Close()
	}
}

// Interface guards
var (
	_ caddydns.Handler   = (*RateLimit)(nil)
	_ caddy.Provisioner  = (*RateLimit)(nil)
	_ caddy.CleanerUpper = (*RateLimit)(nil)
)
