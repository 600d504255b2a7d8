package acl

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/dnsfront/dnsfront/internal/cfparse"
)

// UnmarshalCaddyfile sets up the ACL from Caddyfile tokens, one rule a
// line, tried in order:
//
//	acl {
//		allow <prefixes...>
//		deny <prefixes...>
//		default allow|deny
//		action refused|drop
//	}
func (a *ACL) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // handler name
	if d.NextArg() {
		return d.ArgErr()
	}
	for n := d.Nesting(); d.NextBlock(n); {
		switch opt := d.Val(); opt {
		case "allow", "deny":
			list, err := cfparse.Prefixes(d)
			if err != nil {
				return err
			}
			if opt == "allow" {
				a.Rules = append(a.Rules, Rule{Allow: list})
			} else {
				a.Rules = append(a.Rules, Rule{Deny: list})
			}
		case "default":
			if err := cfparse.OneOf(d, &a.Default, "allow", "deny"); err != nil {
				return err
			}
		case "action":
			if err := cfparse.OneOf(d, &a.Action, ActionRefused, ActionDrop); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized subdirective '%s'", opt)
		}
	}
	return nil
}

var _ caddyfile.Unmarshaler = (*ACL)(nil)
