package cache

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"

	"github.com/dnsfront/dnsfront/internal/cfparse"
)

// UnmarshalCaddyfile sets up the cache from Caddyfile tokens; a bare
// `cache` takes the defaults. Syntax:
//
//	cache {
//		name <label>
//		max_entries <n>
//		max_bytes <size>               # e.g. 64MiB
//		max_entry_size <octets>
//		min_ttl <duration>
//		max_ttl <duration>
//		max_negative_ttl <duration>
//		failure_ttl <duration>
//		stale <duration>|off
//		stale_answer_timeout <duration>
//		prefetch <hits>
//	}
func (c *Cache) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // handler name
	if d.NextArg() {
		return d.ArgErr()
	}
	for n := d.Nesting(); d.NextBlock(n); {
		switch opt := d.Val(); opt {
		case "name":
			if !d.AllArgs(&c.Name) {
				return d.ArgErr()
			}
		case "max_entries":
			if err := cfparse.Int(d, &c.MaxEntries, 1); err != nil {
				return err
			}
		case "max_entry_size":
			if err := cfparse.Int(d, &c.MaxEntrySize, 1); err != nil {
				return err
			}
		case "prefetch":
			if err := cfparse.Int(d, &c.Prefetch, 1); err != nil {
				return err
			}
		case "max_bytes":
			var s string
			if !d.AllArgs(&s) {
				return d.ArgErr()
			}
			n, err := humanize.ParseBytes(s)
			if err != nil || n == 0 || n > 1<<50 {
				return d.Errf("max_bytes %q: want a size such as 64MiB", s)
			}
			c.MaxBytes = int64(n)
		case "min_ttl", "max_ttl", "max_negative_ttl", "failure_ttl", "stale_answer_timeout":
			into := map[string]*caddy.Duration{"min_ttl": &c.MinTTL, "max_ttl": &c.MaxTTL, "max_negative_ttl": &c.MaxNegativeTTL,
				"failure_ttl": &c.FailureTTL, "stale_answer_timeout": &c.StaleAnswerTimeout}[opt]
			if err := cfparse.Duration(d, into, false); err != nil {
				return err
			}
		case "stale":
			var v caddy.Duration
			if d.NextArg() && d.Val() == "off" {
				if d.NextArg() {
					return d.ArgErr()
				}
			} else {
				d.Prev()
				if err := cfparse.Duration(d, &v, false); err != nil {
					return err
				}
			}
			c.Stale = &v
		default:
			return d.Errf("unrecognized subdirective '%s'", opt)
		}
	}
	return nil
}

var _ caddyfile.Unmarshaler = (*Cache)(nil)
