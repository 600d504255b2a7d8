// Package cache is `dns.handlers.cache`: a packet cache in front of the
// handlers after it (usually forward), with negative caching (RFC 2308),
// serve-stale (RFC 8767), prefetch and the coalescing of identical misses.
package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/miekg/dns"
	"go.uber.org/zap"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/caddydns/dnswire"
)

func init() {
	caddy.RegisterModule(Cache{})
}

// Defaults.
const (
	DefaultMaxEntries   = 100_000
	DefaultMaxBytes     = 128 << 20
	DefaultMaxEntrySize = 4096
	DefaultMaxTTL       = 24 * time.Hour
	// DefaultMaxNegativeTTL caps negative answers, as unbound's
	// cache-max-negative-ttl and dnsdist's maxNegativeTTL do (RFC 2308 5
	// finds one to three hours sensible): a name created upstream is seen
	// within the hour.
	DefaultMaxNegativeTTL = time.Hour
	DefaultFailureTTL     = 5 * time.Second
	DefaultStale          = 24 * time.Hour
	// StaleTTL is the TTL of a stale answer (RFC 8767 4).
	StaleTTL = 30
	// maxFailureTTL caps failure_ttl (RFC 2308 7: 5 minutes).
	maxFailureTTL = 5 * time.Minute
)

// Cache answers from the answers it has kept of the handlers after it.
// Caches with the same configuration share one store, across servers and
// across config reloads.
type Cache struct {
	// Name labels the cache in metrics and the admin API. Default "cache".
	Name string `json:"name,omitempty"`
	// MaxEntries bounds the entries kept. Default 100000.
	MaxEntries int `json:"max_entries,omitempty"`
	// MaxBytes bounds the memory of the entries kept. Default 128 MiB.
	MaxBytes int64 `json:"max_bytes,omitempty"`
	// MaxEntrySize is the largest answer kept, in octets. Default 4096.
	MaxEntrySize int `json:"max_entry_size,omitempty"`
	// MinTTL and MaxTTL clamp the TTLs of what is kept. Default 0 and 1 day.
	MinTTL caddy.Duration `json:"min_ttl,omitempty"`
	MaxTTL caddy.Duration `json:"max_ttl,omitempty"`
	// MaxNegativeTTL caps what a negative answer (NXDOMAIN, NODATA) is
	// kept for, under max_ttl. Default 1h.
	MaxNegativeTTL caddy.Duration `json:"max_negative_ttl,omitempty"`
	// FailureTTL is how long a SERVFAIL, or an answer with nothing to
	// cache by, is kept. Default 5s, at most 5m (RFC 2308 7).
	FailureTTL caddy.Duration `json:"failure_ttl,omitempty"`
	// Stale is how long past its expiry an entry may be answered (with TTL
	// 30) when the upstreams fail (RFC 8767). Default 1 day; 0 turns it
	// off.
	Stale *caddy.Duration `json:"stale,omitempty"`
	// StaleAnswerTimeout, when set, answers an expired entry stale after
	// this long if the upstream has not answered yet (RFC 8767's client
	// response timer, 1.8s there); the refresh goes on. Default: off.
	StaleAnswerTimeout caddy.Duration `json:"stale_answer_timeout,omitempty"`
	// Prefetch, when set, refreshes an entry hit at least this many times
	// once it reaches the last tenth of its TTL, in the background.
	Prefetch int `json:"prefetch,omitempty"`

	store  *store
	key    string
	stale  time.Duration
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Cache) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "dns.handlers.cache", New: func() caddy.Module { return new(Cache) }}
}

// Provision applies the defaults and takes the store of this config.
func (c *Cache) Provision(ctx caddy.Context) error {
	c.logger = ctx.Logger()
	if c.Name == "" {
		c.Name = "cache"
	}
	if c.MaxEntries == 0 {
		c.MaxEntries = DefaultMaxEntries
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = DefaultMaxBytes
	}
	if c.MaxEntrySize == 0 {
		c.MaxEntrySize = DefaultMaxEntrySize
	}
	if c.MaxTTL == 0 {
		c.MaxTTL = caddy.Duration(DefaultMaxTTL)
	}
	if c.MaxNegativeTTL == 0 {
		// under max_ttl, and never under min_ttl unless set so
		c.MaxNegativeTTL = max(min(caddy.Duration(DefaultMaxNegativeTTL), c.MaxTTL), c.MinTTL)
	}
	if c.FailureTTL == 0 {
		c.FailureTTL = caddy.Duration(DefaultFailureTTL)
	}
	c.stale = DefaultStale
	if c.Stale != nil {
		c.stale = time.Duration(*c.Stale)
	}
	switch {
	case c.MaxEntries < 0 || c.MaxBytes < 0 || c.MaxEntrySize < 0 || c.Prefetch < 0:
		return errors.New("cache: max_entries, max_bytes, max_entry_size and prefetch must not be negative")
	case c.MaxEntrySize > dnswire.MaxMessage:
		return fmt.Errorf("cache: max_entry_size %d is over the largest DNS message (65535)", c.MaxEntrySize)
	case c.MinTTL < 0 || c.MaxTTL < 0 || c.MaxNegativeTTL < 0 || c.StaleAnswerTimeout < 0 || c.stale < 0:
		return errors.New("cache: durations must not be negative")
	case c.MinTTL > c.MaxTTL:
		return fmt.Errorf("cache: min_ttl %v is over max_ttl %v", time.Duration(c.MinTTL), time.Duration(c.MaxTTL))
	case c.MinTTL > c.MaxNegativeTTL:
		return fmt.Errorf("cache: min_ttl %v is over max_negative_ttl %v", time.Duration(c.MinTTL), time.Duration(c.MaxNegativeTTL))
	case time.Duration(c.FailureTTL) > maxFailureTTL:
		return fmt.Errorf("cache: failure_ttl %v is over 5m (RFC 2308 7)", time.Duration(c.FailureTTL))
	}
	cfg, err := json.Marshal(c)
	if err != nil {
		return err
	}
	c.key = string(cfg)
	v, _, err := stores.LoadOrNew(c.key, func() (caddy.Destructor, error) {
		return newStore(c.Name, c.MaxEntries, c.MaxBytes, c.MaxEntrySize, c.stale)
	})
	if err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	c.store = v.(*store)
	registerMetrics(ctx)
	return nil
}

// Cleanup releases the store; it lives on while another config uses it.
func (c *Cache) Cleanup() error {
	if c.key != "" {
		_, _ = stores.Delete(c.key)
	}
	return nil
}

// ServeDNS answers from the store, or asks the rest of the chain and
// keeps what may be kept.
func (c *Cache) ServeDNS(ctx context.Context, r *caddydns.Request, next caddydns.Next) (caddydns.Response, error) {
	var kb [320]byte // a name of 255 octets and all the rest; a longer one (escapes) grows it
	key := appendKey(kb[:0], r.Msg, r.ECS, r.Octets())
	if key == nil || len(key) > maxKey {
		return next(ctx, r) // no key, or none this long, is kept
	}
	hash := hashKey(key)
	now := r.Now()
	f := c.store.lookup(hash, key, now, c.Prefetch, true)
	zero := false
	if f.wire == nil && r.ECS {
		// an answer the upstream gave for every subnet (scope 0)
		var zb [320]byte
		if zk, ok := zeroKey(zb[:0], key); ok {
			if z := c.store.lookup(hashKey(zk), zk, now, c.Prefetch, false); z.wire != nil {
				f, zero = z, true
			}
		}
	}
	switch {
	case f.wire != nil && !f.stale:
		c.store.hits.Add(1)
		r.Cache = caddydns.CacheHit
		if f.prefetch {
			c.prefetch(f.old, hash, key, r, next)
		}
		return served(r, f.wire, zero)
	case f.wire != nil:
		c.store.staleServed.Add(1) // the upstream failed a moment ago: not asked again yet
		r.Cache = caddydns.CacheStale
		return served(r, f.wire, zero)
	}
	c.store.misses.Add(1)
	r.Cache = caddydns.CacheMiss
	return c.miss(ctx, r, next, hash, key, f.old, f.rejected)
}

// served is an answer from the store: one kept for every subnet (zero)
// carries the ECS option that went upstream with this query, with scope
// 0, rather than the one that went with the query it was kept from.
func served(r *caddydns.Request, w *caddydns.Wire, zero bool) (caddydns.Response, error) {
	res := caddydns.Response{Wire: w}
	if !zero {
		return res, nil
	}
	if opt := r.Msg.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if s, ok := o.(*dns.EDNS0_SUBNET); ok {
				return caddydns.EchoECS(res, s)
			}
		}
	}
	return res, nil
}

// Interface guards
var (
	_ caddydns.Handler   = (*Cache)(nil)
	_ caddy.Provisioner  = (*Cache)(nil)
	_ caddy.CleanerUpper = (*Cache)(nil)
)
