package route

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/internal/cfparse"
)

// UnmarshalCaddyfile sets up the route from Caddyfile tokens: its
// matchers, then its handlers.
//
//	route {
//		server_name <names...>
//		client <prefixes...>
//		name <names...>
//		type <types...>
//		path <DoH paths...>
//		<dns handlers...>
//	}
func (rt *Route) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // handler name
	if d.NextArg() {
		return d.ArgErr()
	}
	var chain caddydns.Chain
	for n := d.Nesting(); d.NextBlock(n); {
		switch opt := d.Val(); opt {
		case "server_name", "name", "type", "path":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Errf("%s takes one or more values", opt)
			}
			switch opt {
			case "server_name":
				rt.Match.ServerName = append(rt.Match.ServerName, args...)
			case "name":
				rt.Match.Name = append(rt.Match.Name, args...)
			case "path":
				rt.Match.Path = append(rt.Match.Path, args...)
			default:
				rt.Match.Type = append(rt.Match.Type, args...)
			}
		case "client":
			list, err := cfparse.Prefixes(d)
			if err != nil {
				return err
			}
			rt.Match.Client = append(rt.Match.Client, list...)
		default:
			ok, err := chain.UnmarshalHandler(d)
			if err != nil {
				return err
			}
			if !ok {
				return d.Errf("unrecognized subdirective '%s' (not a route matcher nor a dns handler)", opt)
			}
		}
	}
	rt.HandlersRaw = chain.HandlersRaw
	return nil
}

var _ caddyfile.Unmarshaler = (*Route)(nil)
