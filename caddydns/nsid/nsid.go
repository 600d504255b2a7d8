// Package nsid is `dns.handlers.nsid`: the server's identity in the
// answers to the queries that ask for it (RFC 5001), and as the answer to
// `id.server. CH TXT` (RFC 4892), so that an operator sees which instance
// of a fleet behind one address answered.
package nsid

import (
	"context"
	"fmt"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns"
)

func init() {
	caddy.RegisterModule(NSID{})
}

// DefaultID is the identity when none is given: the host's name.
const DefaultID = "{system.hostname}"

// MaxID bounds the identity, in octets: an identifier, not a message.
const MaxID = 255

// NSID puts ID in an NSID option of the answer to each query with an
// NSID option (RFC 5001 2.1: and to no other). The option is not
// transitive (RFC 5001 2.3): forward neither asks upstreams for theirs
// nor passes it on, so a client asks the server it talks to and hears
// from it alone. It also answers the TXT (or ANY) queries of class CHAOS
// for id.server. and hostname.bind. with ID (RFC 4892), for clients
// without EDNS; other queries go on.
type NSID struct {
	// ID is the identity: text, in which Caddy's global placeholders
	// ({system.hostname}, {env.NAME}) are replaced once, at provisioning.
	// Default {system.hostname}.
	ID string `json:"id,omitempty"`

	id  []byte
	txt string // id as a TXT string (miekg/dns's presentation form)
}

// CaddyModule returns the Caddy module information.
func (NSID) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "dns.handlers.nsid", New: func() caddy.Module { return new(NSID) }}
}

// Provision replaces the placeholders of the identity.
func (n *NSID) Provision(caddy.Context) error {
	in := n.ID
	if in == "" {
		in = DefaultID
	}
	id := caddy.NewReplacer().ReplaceKnown(in, "")
	switch {
	case id == "":
		return fmt.Errorf("nsid: id %q is empty once its placeholders are replaced", in)
	case len(id) > MaxID:
		return fmt.Errorf("nsid: id %q is %d octets: at most %d", in, len(id), MaxID)
	}
	n.id = []byte(id)
	n.txt = txtEscape(id)
	return nil
}

// ServeDNS notes the identity for the answer of a query that asks for
// it, and answers the CHAOS queries for it.
func (n *NSID) ServeDNS(ctx context.Context, r *caddydns.Request, next caddydns.Next) (caddydns.Response, error) {
	if q := r.Msg.Question[0]; q.Qclass == dns.ClassCHAOS && (q.Qtype == dns.TypeTXT || q.Qtype == dns.TypeANY) &&
		(strings.EqualFold(q.Name, "id.server.") || strings.EqualFold(q.Name, "hostname.bind.")) {
		return n.chaos(r), nil
	}
	if opt := r.Msg.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if o.Option() == dns.EDNS0NSID {
				r.NSID = n.id
				break
			}
		}
	}
	return next(ctx, r)
}

// txtEscape writes s as miekg/dns reads a TXT string: a backslash and a
// quote escaped, octets outside printable ASCII as \DDD.
func txtEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' || c == '"':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < ' ' || c > '~':
			fmt.Fprintf(&b, "\\%03d", c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// chaos is the answer to id.server. (or hostname.bind.) CH TXT: the
// identity, authoritative, TTL 0 (it is this server's, now).
func (n *NSID) chaos(r *caddydns.Request) caddydns.Response {
	m := new(dns.Msg)
	m.SetReply(r.Msg)
	m.Authoritative = true
	m.Answer = []dns.RR{&dns.TXT{
		Hdr: dns.RR_Header{Name: r.Msg.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassCHAOS},
		Txt: []string{n.txt},
	}}
	return caddydns.Response{Msg: m}
}

// UnmarshalCaddyfile reads `nsid [<id>]`.
func (n *NSID) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // handler name
	if d.NextArg() {
		n.ID = d.Val()
	}
	if d.NextArg() {
		return d.Errf("nsid takes one identity; quote one with spaces")
	}
	if d.NextBlock(d.Nesting()) {
		return d.Errf("nsid takes no block")
	}
	return nil
}

// Interface guards
var (
	_ caddydns.Handler      = (*NSID)(nil)
	_ caddy.Provisioner     = (*NSID)(nil)
	_ caddyfile.Unmarshaler = (*NSID)(nil)
)
