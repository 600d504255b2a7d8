package route

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/internal/cfparse"
)

// UnmarshalCaddyfile sets up the route from Caddyfile tokens: its
// matchers, then its handlers.
//
//	route [<name>] {         # the name labels its metric
//		server_name <names...>
//		client <prefixes...>
//		name <names...>
//		name_file <files...>    # block lists: names, hosts lines or ||name^
//		name_file_poll <interval>
//		name_regexp <regular expressions...>  # of the whole name, lower case, no final dot
//		type <types...>
//		path <DoH paths...>
//		not {
//			<matchers...>   # the route leaves what they all hold; repeatable
//		}
//		<dns handlers...>
//	}
func (rt *Route) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // handler name
	if d.NextArg() {
		rt.Name = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	var chain caddydns.Chain
	for n := d.Nesting(); d.NextBlock(n); {
		if d.Val() == "name_file_poll" {
			if rt.NameFilePoll != 0 {
				return d.Err("name_file_poll already specified")
			}
			if err := cfparse.Duration(d, &rt.NameFilePoll, false); err != nil {
				return err
			}
			continue
		}
		ok, err := rt.Match.unmarshalMatcher(d, true)
		switch {
		case err != nil:
			return err
		case ok:
			continue
		}
		if ok, err = chain.UnmarshalHandler(d); err != nil {
			return err
		}
		if !ok {
			return d.Errf("unrecognized subdirective '%s' (not a route matcher nor a dns handler)", d.Val())
		}
	}
	rt.HandlersRaw = chain.HandlersRaw
	return nil
}

// unmarshalMatcher reads the matcher at d into m, and reports whether
// there was one: server_name, client, name, type, path, and (when
// withNot) a not block of them.
func (m *Match) unmarshalMatcher(d *caddyfile.Dispenser, withNot bool) (bool, error) {
	switch opt := d.Val(); opt {
	case "server_name", "name", "name_file", "name_regexp", "type", "path":
		args := d.RemainingArgs()
		if len(args) == 0 {
			return true, d.Errf("%s takes one or more values", opt)
		}
		switch opt {
		case "server_name":
			m.ServerName = append(m.ServerName, args...)
		case "name":
			m.Name = append(m.Name, args...)
		case "name_file":
			m.NameFile = append(m.NameFile, args...)
		case "name_regexp":
			m.NameRegexp = append(m.NameRegexp, args...)
		case "path":
			m.Path = append(m.Path, args...)
		default:
			m.Type = append(m.Type, args...)
		}
	case "client":
		list, err := cfparse.Prefixes(d)
		if err != nil {
			return true, err
		}
		m.Client = append(m.Client, list...)
	case "not":
		if !withNot {
			return true, d.Err("a not block has no not of its own")
		}
		if d.NextArg() {
			return true, d.ArgErr()
		}
		var not Match
		for n := d.Nesting(); d.NextBlock(n); {
			ok, err := not.unmarshalMatcher(d, false)
			if err != nil {
				return true, err
			}
			if !ok {
				return true, d.Errf("unrecognized matcher '%s' in not (server_name, client, name, name_file, name_regexp, type, path)", d.Val())
			}
		}
		m.Not = append(m.Not, not)
	default:
		return false, nil
	}
	return true, nil
}

var _ caddyfile.Unmarshaler = (*Route)(nil)
