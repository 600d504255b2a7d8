// Package whoami is the worked example of docs/architecture.md: a DNS
// handler of its own package, answering TXT queries for whoami. with the
// client's address. Build it in with --with, or import it for its init.
package whoami

import (
	"context"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns"
)

func init() {
	caddy.RegisterModule(Whoami{})
}

// Whoami answers `whoami. TXT` with the client's address; any other
// query goes on down the chain.
type Whoami struct{}

// CaddyModule returns the Caddy module information.
func (Whoami) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "dns.handlers.whoami", New: func() caddy.Module { return new(Whoami) }}
}

// ServeDNS answers or calls next. The chain has checked the query (one
// question, opcode QUERY) and finishes the answer (ID, EDNS, padding).
func (Whoami) ServeDNS(ctx context.Context, r *caddydns.Request, next caddydns.Next) (caddydns.Response, error) {
	if r.Name() != "whoami." || r.Type() != dns.TypeTXT {
		return next(ctx, r)
	}
	m := new(dns.Msg)
	m.SetReply(r.Msg)
	m.Answer = append(m.Answer, &dns.TXT{
		Hdr: dns.RR_Header{Name: r.Msg.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET},
		Txt: []string{r.Client.Addr().String()},
	})
	return caddydns.Response{Msg: m}, nil
}

// UnmarshalCaddyfile reads `whoami`, which takes no arguments.
func (*Whoami) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the handler's name
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// Interface guards
var (
	_ caddydns.Handler      = Whoami{}
	_ caddyfile.Unmarshaler = (*Whoami)(nil)
)
