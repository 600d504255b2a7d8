package answer

import (
	"net/netip"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/dnsfront/dnsfront/internal/cfparse"
)

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	answer nxdomain|refused|servfail|noerror {
//		soa                    # nxdomain and noerror: an SOA, for caches
//		ttl <duration>         # with soa
//		ede <info code> [<text>]
//	}
//	answer <addresses...> {
//		soa                    # to the other types' NODATA
//		ttl <duration>
//		ede <info code> [<text>]
//	}
//	answer cname <target> {
//		ttl <duration>
//		ede <info code> [<text>]
//	}
func (a *Answer) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // handler name
	args := d.RemainingArgs()
	switch {
	case len(args) == 0:
		return d.Err("answer takes an rcode (nxdomain, refused, servfail, noerror), addresses, or cname <target>")
	case args[0] == "cname":
		if len(args) != 2 {
			return d.Err("answer cname takes one target name, e.g. answer cname forcesafesearch.google.com")
		}
		a.CNAME = args[1]
	case len(args) == 1 && !isAddr(args[0]):
		if _, ok := rcodes[strings.ToUpper(args[0])]; !ok {
			return d.Errf("answer %s: not an rcode (nxdomain, refused, servfail, noerror) nor an IP address", args[0])
		}
		a.Rcode = strings.ToLower(args[0])
	default:
		for _, s := range args {
			if !isAddr(s) {
				return d.Errf("answer: %q is not an IP address", s)
			}
		}
		a.Addresses = args
	}
	var ttlErr error // ttl for an rcode answer: an error unless soa comes
	for n := d.Nesting(); d.NextBlock(n); {
		switch opt := d.Val(); opt {
		case "soa":
			if d.NextArg() {
				return d.ArgErr()
			}
			a.SOA = true
		case "ede":
			args := d.RemainingArgs()
			if len(args) == 0 || len(args) > 2 {
				return d.Err("ede takes an info code and an optional text, e.g. ede 15 \"blocked by policy\"")
			}
			code, err := strconv.ParseUint(args[0], 10, 16)
			if err != nil {
				return d.Errf("ede %s: not an info code (0 to 65535; 15 Blocked, 17 Filtered)", args[0])
			}
			a.EDE = &EDE{Code: uint16(code)}
			if len(args) == 2 {
				a.EDE.Text = args[1]
			}
		case "ttl":
			if a.Rcode != "" {
				ttlErr = d.Err("ttl: an rcode answer has no records (but with soa)")
			}
			if err := cfparse.Duration(d, &a.TTL, false); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized subdirective '%s'", opt)
		}
	}
	if ttlErr != nil && !a.SOA {
		return ttlErr
	}
	return nil
}

func isAddr(s string) bool {
	_, err := netip.ParseAddr(s)
	return err == nil
}

var _ caddyfile.Unmarshaler = (*Answer)(nil)
