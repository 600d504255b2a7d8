package dotapp

import (
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"

	"github.com/dnsfront/dnsfront/internal/cfparse"
)

// UnmarshalCaddyfile sets up a server from the tokens of a `dot` global
// option. Syntax:
//
//	dot [<listen addresses...>] {
//		listen <addresses...>
//		server_name <names...>
//		connection_policy {     # Caddy's TLS connection policy, e.g.
//			cert_selection {    # the ocsp app's certificates tagged dot-a
//				any_tag dot-a
//			}
//		}
//		idle_timeout <duration>
//		read_timeout <duration>
//		handshake_timeout <duration>
//		write_timeout <duration>
//		grace_period <duration>
//		max_in_flight <n>
//		max_queries <n>
//		max_connections <n>
//		max_connections_per_client <n>
//		max_connection_rate_per_client <per second>
//		listener_wrappers {
//			proxy_protocol { ... }   # any caddy.listeners module
//		}
//		<dns handler> ...    # zone, forward: answered in this order
//	}
func (s *Server) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return s.unmarshal(d, "dot", 853, nil)
}

// UnmarshalCaddyfile sets up a server from the tokens of a `doh` global
// option: a server's options (see Server.UnmarshalCaddyfile) and:
//
//	doh [<listen addresses...>] {
//		path <request path>    # default /dns-query
//		sub_paths              # and the paths under it (per-client URLs)
//		cleartext              # no TLS, behind a TLS-terminating proxy (h2 prior knowledge, HTTP/1.1)
//		json off               # no JSON API
//		cache_control off      # no Cache-Control on answers
//		trusted_proxies <addresses or prefixes...>|private_ranges  # whose X-Forwarded-For is believed
//		header <name> <value>  # on every response; repeatable
//		respond <path> <status> [<body>] {   # a fixed response; repeatable
//			header <name> <value>
//		}
//		...                    # listen, server_name, limits, handlers
//	}
func (ds *DoHServer) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return ds.Server.unmarshal(d, "doh", 443, func(opt string) (bool, error) {
		switch opt {
		case "path":
			if !d.AllArgs(&ds.Path) {
				return true, d.ArgErr()
			}
		case "header":
			if err := headerLine(d, &ds.Headers); err != nil {
				return true, err
			}
		case "respond":
			var r DoHResponse
			var status string
			args := d.RemainingArgs()
			switch len(args) {
			case 3:
				r.Body = args[2]
				fallthrough
			case 2:
				r.Path, status = args[0], args[1]
			default:
				return true, d.Err("respond takes a path, a status and an optional body, e.g. respond /health 200 OK")
			}
			n, err := strconv.Atoi(status)
			if err != nil {
				return true, d.Errf("respond %s: status %q is not a number", r.Path, status)
			}
			r.Status = n
			for nesting := d.Nesting(); d.NextBlock(nesting); {
				if d.Val() != "header" {
					return true, d.Errf("respond %s: unrecognized option %q (want header)", r.Path, d.Val())
				}
				if err := headerLine(d, &r.Headers); err != nil {
					return true, err
				}
			}
			ds.Responses = append(ds.Responses, r)
		case "json", "cache_control":
			var v string
			if !d.AllArgs(&v) || (v != "on" && v != "off") {
				return true, d.Errf("%s takes on or off", opt)
			}
			if opt == "json" {
				ds.DisableJSON = v == "off"
			} else {
				ds.DisableCacheControl = v == "off"
			}
		case "sub_paths":
			if d.NextArg() {
				return true, d.ArgErr()
			}
			ds.SubPaths = true
		case "cleartext":
			if d.NextArg() {
				return true, d.ArgErr()
			}
			ds.Cleartext = true
		case "trusted_proxies":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return true, d.Err("trusted_proxies takes addresses or prefixes, or private_ranges")
			}
			ds.TrustedProxies = append(ds.TrustedProxies, args...)
		default:
			return false, nil
		}
		return true, nil
	})
}

// unmarshal reads a server's block; more, when not nil, reads the
// options of one kind of server.
func (s *Server) unmarshal(d *caddyfile.Dispenser, kind string, port int, more func(opt string) (bool, error)) error {
	d.Next() // option name
	s.Listen = append(s.Listen, d.RemainingArgs()...)
	for n := d.Nesting(); d.NextBlock(n); {
		opt := d.Val()
		switch opt {
		case "listen":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			s.Listen = append(s.Listen, args...)
		case "connection_policy":
			cp := new(caddytls.ConnectionPolicy)
			if err := cp.UnmarshalCaddyfile(d.NewFromNextSegment()); err != nil {
				return err
			}
			s.TLSConnPolicies = append(s.TLSConnPolicies, cp)
		case "server_name":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			s.ServerNames = append(s.ServerNames, args...)
		case "idle_timeout", "read_timeout", "handshake_timeout", "write_timeout", "grace_period", "max_connection_duration":
			into := map[string]*caddy.Duration{"idle_timeout": &s.IdleTimeout, "read_timeout": &s.ReadTimeout,
				"handshake_timeout": &s.HandshakeTimeout, "write_timeout": &s.WriteTimeout, "grace_period": &s.GracePeriod,
				"max_connection_duration": &s.MaxConnectionDuration}[opt]
			if err := cfparse.Duration(d, into, false); err != nil {
				return err
			}
		case "max_in_flight", "max_queries", "max_connections", "max_connections_per_client", "tcp_fast_open":
			into := map[string]*int{"max_in_flight": &s.MaxInFlight, "max_queries": &s.MaxQueries,
				"max_connections": &s.MaxConnections, "max_connections_per_client": &s.MaxConnectionsPerClient,
				"tcp_fast_open": &s.TCPFastOpen}[opt]
			if err := cfparse.Int(d, into, 0); err != nil {
				return err
			}
		case "max_connection_rate_per_client":
			if err := cfparse.Rate(d, &s.MaxConnectionRatePerClient); err != nil {
				return err
			}
		case "listener_wrappers":
			if d.NextArg() {
				return d.ArgErr()
			}
			for nesting := d.Nesting(); d.NextBlock(nesting); {
				modID := "caddy.listeners." + d.Val()
				unm, err := caddyfile.UnmarshalModule(d, modID)
				if err != nil {
					return err
				}
				lw, ok := unm.(caddy.ListenerWrapper)
				if !ok {
					return d.Errf("module %s is not a listener wrapper", modID)
				}
				s.ListenerWrappersRaw = append(s.ListenerWrappersRaw,
					caddyconfig.JSONModuleObject(lw, "wrapper", lw.(caddy.Module).CaddyModule().ID.Name(), nil))
			}
		default:
			if more != nil {
				if ok, err := more(opt); ok || err != nil {
					if err != nil {
						return err
					}
					continue
				}
			}
			ok, err := s.Chain.UnmarshalHandler(d)
			if err != nil {
				return err
			}
			if !ok {
				return d.Errf("unrecognized subdirective '%s' (not a %s option nor a dns handler)", opt, kind)
			}
		}
	}
	if len(s.Listen) == 0 {
		return d.Errf("%s needs a listen address, e.g. %s 127.0.0.1:%d", kind, kind, port)
	}
	return nil
}

var _ caddyfile.Unmarshaler = (*Server)(nil)

var _ caddyfile.Unmarshaler = (*DoHServer)(nil)

// headerLine reads `header <name> <value>` into h.
func headerLine(d *caddyfile.Dispenser, h *map[string]string) error {
	var name, value string
	if !d.AllArgs(&name, &value) {
		return d.Err("header takes a field name and a value, e.g. header Access-Control-Allow-Origin *")
	}
	if *h == nil {
		*h = make(map[string]string)
	}
	for k := range *h {
		if strings.EqualFold(k, name) {
			return d.Errf("header %s is given twice (names are not case-sensitive)", name)
		}
	}
	(*h)[name] = value
	return nil
}
