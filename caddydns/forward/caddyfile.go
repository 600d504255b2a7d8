package forward

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"strconv"

	"github.com/dnsfront/dnsfront/internal/cfparse"
)

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	forward <upstreams...> {
//		to <upstreams...>
//		tls_server_name <name>
//		tls_ca_files <pem files...>
//		policy least_outstanding|round_robin|random|first|hash
//		weights <weight...>    # one for each upstream, in order
//		timeout <duration>
//		tries <n>
//		max_concurrent <n>
//		max_fails <n>
//		fail_duration <duration>
//		disable_0x20
//		proxy_protocol
//		health_check [<name> [<type>]] {
//			interval <duration>
//			timeout <duration>
//			fails <n>
//			passes <n>
//		}
//	}
func (f *Forward) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // handler name
	f.To = append(f.To, d.RemainingArgs()...)
	for n := d.Nesting(); d.NextBlock(n); {
		opt := d.Val()
		switch opt {
		case "to":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			f.To = append(f.To, args...)
		case "tls_server_name":
			if !d.AllArgs(&f.TLSServerName) {
				return d.ArgErr()
			}
		case "tls_ca_files":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			f.TLSCAFiles = append(f.TLSCAFiles, args...)
		case "policy":
			if !d.AllArgs(&f.Policy) {
				return d.ArgErr()
			}
		case "weights":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Err("weights takes one weight for each upstream, in order, e.g. weights 3 1")
			}
			for _, a := range args {
				w, err := strconv.Atoi(a)
				if err != nil {
					return d.Errf("weights: %q is not a whole number", a)
				}
				f.Weights = append(f.Weights, w)
			}
		case "timeout":
			if err := cfparse.Duration(d, &f.Timeout, false); err != nil {
				return err
			}
		case "fail_duration":
			if err := cfparse.Duration(d, &f.FailDuration, false); err != nil {
				return err
			}
		case "tries":
			if err := cfparse.Int(d, &f.Tries, 0); err != nil {
				return err
			}
		case "max_concurrent":
			if err := cfparse.Int(d, &f.MaxConcurrent, 0); err != nil {
				return err
			}
		case "max_fails":
			if err := cfparse.Int(d, &f.MaxFails, -1); err != nil {
				return err
			}
		case "disable_0x20":
			if d.NextArg() {
				return d.ArgErr()
			}
			f.Disable0x20 = true
		case "proxy_protocol":
			if d.NextArg() {
				return d.ArgErr()
			}
			f.ProxyProtocol = true
		case "health_check":
			hc := new(HealthCheck)
			args := d.RemainingArgs()
			if len(args) > 2 {
				return d.ArgErr()
			}
			if len(args) > 0 {
				hc.Name = args[0]
			}
			if len(args) > 1 {
				hc.Type = args[1]
			}
			for n2 := d.Nesting(); d.NextBlock(n2); {
				switch sub := d.Val(); sub {
				case "interval":
					if err := cfparse.Duration(d, &hc.Interval, false); err != nil {
						return err
					}
				case "timeout":
					if err := cfparse.Duration(d, &hc.Timeout, false); err != nil {
						return err
					}
				case "fails":
					if err := cfparse.Int(d, &hc.Fails, 1); err != nil {
						return err
					}
				case "passes":
					if err := cfparse.Int(d, &hc.Passes, 1); err != nil {
						return err
					}
				default:
					return d.Errf("unrecognized subdirective '%s'", sub)
				}
			}
			f.HealthCheck = hc
		default:
			return d.Errf("unrecognized subdirective '%s'", opt)
		}
	}
	if len(f.To) == 0 {
		return d.Err("forward needs at least one upstream")
	}
	return nil
}
