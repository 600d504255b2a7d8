package rebind

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/dnsfront/dnsfront/internal/netprefix"
)

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens; a bare
// `rebind_protection` takes the default private prefixes. Syntax:
//
//	rebind_protection {
//		private <prefixes...>   # "default" for DefaultPrivate
//		allow <domains...>
//	}
func (rb *Rebind) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // handler name
	if d.NextArg() {
		return d.ArgErr()
	}
	for n := d.Nesting(); d.NextBlock(n); {
		switch opt := d.Val(); opt {
		case "private":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			for _, a := range args {
				if a == "default" {
					continue
				}
				if _, err := netprefix.Parse(a); err != nil {
					return d.Errf("private: %v", err)
				}
			}
			rb.Private = append(rb.Private, args...)
		case "allow":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			for _, a := range args {
				if !domainName(a) {
					return d.Errf("allow: %q is not a domain name", a)
				}
			}
			rb.Allow = append(rb.Allow, args...)
		default:
			return d.Errf("unrecognized subdirective '%s'", opt)
		}
	}
	return nil
}

var _ caddyfile.Unmarshaler = (*Rebind)(nil)
