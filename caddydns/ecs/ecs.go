// Package ecs is `dns.handlers.ecs`: what the upstreams learn of the
// client's address through EDNS Client Subnet (RFC 7871).
package ecs

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/internal/cfparse"
	"github.com/dnsfront/dnsfront/internal/netprefix"
)

func init() {
	caddy.RegisterModule(ECS{})
}

// Policies.
const (
	Strip = "strip" // send no ECS upstream (also what forward does with no ecs handler)
	Pass  = "pass"  // send the client's own option on, as it came
	Add   = "add"   // send the client's subnet (or a fixed one), never the client's option
)

// Defaults of the add policy.
const (
	DefaultPrefixV4 = 24
	DefaultPrefixV6 = 56
)

// ECS sets the EDNS Client Subnet option that goes upstream. Place it
// before `cache` (the cache keys entries by the option that goes
// upstream) and `forward`. Whatever the policy, a malformed option is
// answered FORMERR, and a client that sent no option gets none back
// (dnsfront's core does both).
type ECS struct {
	// Policy is strip (the default), pass or add.
	Policy string `json:"policy,omitempty"`
	// PrefixV4 and PrefixV6 are how much of the client's address add
	// sends. Default 24 and 56 (RFC 7871 11.1 recommends at most 24 and 56).
	PrefixV4 int `json:"prefix_v4,omitempty"`
	PrefixV6 int `json:"prefix_v6,omitempty"`
	// Subnet, with add, is sent for every client instead of its own.
	Subnet string `json:"subnet,omitempty"`

	subnet netip.Prefix
}

// CaddyModule returns the Caddy module information.
func (ECS) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "dns.handlers.ecs", New: func() caddy.Module { return new(ECS) }}
}

// Provision checks the policy.
func (e *ECS) Provision(caddy.Context) error {
	if e.Policy == "" {
		e.Policy = Strip
	}
	if e.PrefixV4 == 0 {
		e.PrefixV4 = DefaultPrefixV4
	}
	if e.PrefixV6 == 0 {
		e.PrefixV6 = DefaultPrefixV6
	}
	switch {
	case e.Policy != Strip && e.Policy != Pass && e.Policy != Add:
		return fmt.Errorf("ecs: policy %q: want strip, pass or add", e.Policy)
	case e.PrefixV4 < 0 || e.PrefixV4 > 32:
		return fmt.Errorf("ecs: prefix_v4 %d: want 0 to 32", e.PrefixV4)
	case e.PrefixV6 < 0 || e.PrefixV6 > 128:
		return fmt.Errorf("ecs: prefix_v6 %d: want 0 to 128", e.PrefixV6)
	case e.Subnet != "" && e.Policy != Add:
		return fmt.Errorf("ecs: subnet is for the add policy, not %s", e.Policy)
	}
	if e.Subnet != "" {
		p, err := netprefix.Parse(e.Subnet)
		if err != nil {
			return fmt.Errorf("ecs: subnet: %w", err)
		}
		e.subnet = p
	}
	return nil
}

// ServeDNS sets what goes upstream, and gives a client that sent an
// option its own back: with the upstream's scope when its option went
// upstream as it was or in its place (add), with scope 0 when none went
// (strip: the answer is the same for every subnet).
func (e *ECS) ServeDNS(ctx context.Context, r *caddydns.Request, next caddydns.Next) (caddydns.Response, error) {
	switch e.Policy {
	case Strip:
		r.ECS = false // forward strips it
		client := clientOption(r.Msg)
		res, err := next(ctx, r)
		if err != nil || client == nil {
			return res, err
		}
		return caddydns.EchoECS(res, client) // scope 0: the answer is for every subnet
	case Pass:
		r.ECS = true
		return next(ctx, r)
	}
	sub := e.subnet
	if !sub.IsValid() {
		a := r.Client.Addr().Unmap()
		if !a.IsValid() {
			r.ECS = false
			return next(ctx, r)
		}
		bits := e.PrefixV6
		if a.Is4() {
			bits = e.PrefixV4
		}
		sub, _ = a.Prefix(bits)
	}
	orig := r.Msg
	q := orig.Copy()
	opt := q.IsEdns0()
	if opt == nil {
		q.SetEdns0(caddydns.AdvertisedUDPSize, false)
		opt = q.IsEdns0()
	}
	client := clientOption(orig)
	kept := opt.Option[:0]
	for _, o := range opt.Option {
		if o.Option() != dns.EDNS0SUBNET {
			kept = append(kept, o)
		}
	}
	opt.Option = append(kept, option(sub))
	r.Msg, r.ECS = q, true
	res, err := next(ctx, r)
	r.Msg = orig // the answer is finished for the query the client sent
	if err != nil || client == nil {
		return res, err // an upstream's echo of our option goes to no client that sent none
	}
	return caddydns.EchoECS(res, client)
}

// clientOption is the query's ECS option, or nil.
func clientOption(q *dns.Msg) *dns.EDNS0_SUBNET {
	if opt := q.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if s, ok := o.(*dns.EDNS0_SUBNET); ok {
				return s
			}
		}
	}
	return nil
}

// option is the ECS option for sub.
func option(sub netip.Prefix) *dns.EDNS0_SUBNET {
	o := &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 2, SourceNetmask: uint8(sub.Bits()), Address: net.IP(sub.Addr().AsSlice())}
	if sub.Addr().Is4() {
		o.Family = 1
	}
	return o
}

// UnmarshalCaddyfile reads:
//
//	ecs strip|pass|add {
//		prefix <v4len> <v6len>   # add
//		subnet <prefix>          # add: this one for every client
//	}
func (e *ECS) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // handler name
	if d.NextArg() {
		e.Policy = d.Val()
		if e.Policy != Strip && e.Policy != Pass && e.Policy != Add {
			return d.Errf("ecs %q: want strip, pass or add", e.Policy)
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for n := d.Nesting(); d.NextBlock(n); {
		switch opt := d.Val(); opt {
		case "prefix":
			var v4, v6 int
			if err := cfparse.PrefixLengths(d, &v4, &v6); err != nil {
				return err
			}
			e.PrefixV4, e.PrefixV6 = v4, v6
		case "subnet":
			list, err := cfparse.Prefixes(d)
			if err != nil {
				return err
			}
			if len(list) != 1 {
				return d.Errf("subnet: want one prefix")
			}
			e.Subnet = list[0]
		default:
			return d.Errf("unrecognized subdirective '%s'", opt)
		}
	}
	if e.Policy != Add && (e.Subnet != "" || e.PrefixV4 != 0) {
		return d.Errf("prefix and subnet are for ecs add")
	}
	return nil
}

// Interface guards
var (
	_ caddydns.Handler      = (*ECS)(nil)
	_ caddy.Provisioner     = (*ECS)(nil)
	_ caddyfile.Unmarshaler = (*ECS)(nil)
)
