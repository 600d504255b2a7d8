package ratelimit

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/dnsfront/dnsfront/internal/cfparse"
)

// UnmarshalCaddyfile sets up the limiter from Caddyfile tokens; a bare
// `ratelimit` takes the defaults. Syntax:
//
//	ratelimit {
//		name <label>
//		qps <rate>
//		burst <n>
//		prefix <v4len> <v6len>
//		action refused|drop
//		exempt <prefixes...>
//		max_clients <n>
//	}
func (rl *RateLimit) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // handler name
	if d.NextArg() {
		return d.ArgErr()
	}
	for n := d.Nesting(); d.NextBlock(n); {
		switch opt := d.Val(); opt {
		case "name":
			if !d.AllArgs(&rl.Name) {
				return d.ArgErr()
			}
		case "qps":
			if err := cfparse.Rate(d, &rl.QPS); err != nil {
				return err
			}
		case "burst":
			if err := cfparse.Int(d, &rl.Burst, 1); err != nil {
				return err
			}
		case "max_clients":
			if err := cfparse.Int(d, &rl.MaxClients, 1); err != nil {
				return err
			}
		case "prefix":
			if err := cfparse.PrefixLengths(d, &rl.PrefixV4, &rl.PrefixV6); err != nil {
				return err
			}
			if rl.PrefixV4 == 0 || rl.PrefixV6 == 0 {
				return d.Errf("prefix %d %d: a rate limit groups by at least 1 bit", rl.PrefixV4, rl.PrefixV6)
			}
		case "action":
			if err := cfparse.OneOf(d, &rl.Action, "refused", "drop"); err != nil {
				return err
			}
		case "exempt":
			list, err := cfparse.Prefixes(d)
			if err != nil {
				return err
			}
			rl.Exempt = append(rl.Exempt, list...)
		default:
			return d.Errf("unrecognized subdirective '%s'", opt)
		}
	}
	return nil
}

var _ caddyfile.Unmarshaler = (*RateLimit)(nil)
