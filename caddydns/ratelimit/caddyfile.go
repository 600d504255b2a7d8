package ratelimit

import (
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/miekg/dns"

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
//		block_for <duration>
//		rcode <rcode> <rate> [<burst>]
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
		case "block_for":
			if err := cfparse.Duration(d, &rl.BlockFor, true); err != nil {
				return err
			}
		case "rcode":
			args := d.RemainingArgs()
			if len(args) < 2 || len(args) > 3 {
				return d.Errf("rcode: want <rcode> <rate> [<burst>], such as rcode NXDOMAIN 20")
			}
			code, ok := dns.StringToRcode[strings.ToUpper(args[0])]
			if !ok || code > 0xF {
				return d.Errf("rcode %q: want a name such as NXDOMAIN or SERVFAIL", args[0])
			}
			rc := RcodeLimit{Rcode: dns.RcodeToString[code]}
			var err error
			if rc.QPS, err = strconv.ParseFloat(args[1], 64); err != nil || !(rc.QPS > 0) || rc.QPS > 1e9 {
				return d.Errf("rcode %s: rate %q: want a positive number of answers a second", rc.Rcode, args[1])
			}
			if len(args) == 3 {
				if rc.Burst, err = strconv.Atoi(args[2]); err != nil || rc.Burst < 1 {
					return d.Errf("rcode %s: burst %q: want a whole number, at least 1", rc.Rcode, args[2])
				}
			}
			for _, o := range rl.Rcodes {
				if o.Rcode == rc.Rcode {
					return d.Errf("rcode %s: limited twice", rc.Rcode)
				}
			}
			rl.Rcodes = append(rl.Rcodes, rc)
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
