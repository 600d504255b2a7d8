// Package nsid is `dns.handlers.nsid`: the server's identity in the
// answers to the queries that ask for it (RFC 5001), so that an operator
// sees which instance of a fleet behind one address answered.
package nsid

import (
	"context"
	"fmt"

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
// from it alone.
type NSID struct {
	// ID is the identity: text, in which Caddy's global placeholders
	// ({system.hostname}, {env.NAME}) are replaced once, at provisioning.
	// Default {system.hostname}.
	ID string `json:"id,omitempty"`

	id []byte
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
	return nil
}

// WatchesOnly marks the handler as one that passes every query on
// (caddydns.Watcher): an acl after it still drops its clients at accept.
func (*NSID) WatchesOnly() {}

// ServeDNS notes the identity for the answer of a query that asks for it.
func (n *NSID) ServeDNS(ctx context.Context, r *caddydns.Request, next caddydns.Next) (caddydns.Response, error) {
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
	_ caddydns.Watcher      = (*NSID)(nil)
	_ caddy.Provisioner     = (*NSID)(nil)
	_ caddyfile.Unmarshaler = (*NSID)(nil)
)
