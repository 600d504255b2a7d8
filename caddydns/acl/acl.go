// Package acl is `dns.handlers.acl`: who may ask, by the client's address
// (the real client's: PROXY protocol on DoT, trusted proxies on DoH).
package acl

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/internal/netprefix"
	"github.com/dnsfront/dnsfront/internal/promreg"
)

func init() {
	caddy.RegisterModule(ACL{})
}

// Actions on a denied query.
const (
	ActionRefused = "refused"
	ActionDrop    = "drop"
)

// ACL allows or denies queries by the client's address: the first rule
// whose prefixes hold the client decides.
type ACL struct {
	// Rules are tried in order.
	Rules []Rule `json:"rules,omitempty"`
	// Default decides a query no rule matches: "allow" or "deny". Default:
	// deny when a rule allows (a list of who may ask), allow when every
	// rule denies (a list of who may not).
	Default string `json:"default,omitempty"`
	// Action on a denied query: "refused" (the default: answered REFUSED)
	// or "drop" (not answered: DoT closes the connection, DoH resets the
	// stream).
	Action string `json:"action,omitempty"`

	rules  []rule
	deny   bool // the default
	denied *prometheus.CounterVec
}

// Rule is one line of the list: prefixes to allow, or to deny (one of
// the two). A bare address is a prefix of its full length.
type Rule struct {
	Allow []string `json:"allow,omitempty"`
	Deny  []string `json:"deny,omitempty"`
}

type rule struct {
	prefixes netprefix.List
	deny     bool
	label    string // the metric's: "deny 192.0.2.0/24 ..."
}

// CaddyModule returns the Caddy module information.
func (ACL) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "dns.handlers.acl", New: func() caddy.Module { return new(ACL) }}
}

var denied = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "dnsfront",
	Name:      "acl_denied_total",
	Help:      "Queries an ACL denied, by server and by the rule that denied them (\"default\": no rule matched).",
}, []string{"server", "rule"})

// Provision reads the rules.
func (a *ACL) Provision(ctx caddy.Context) error {
	allows := false
	for i, r := range a.Rules {
		field, list, deny := "allow", r.Allow, false
		switch {
		case len(r.Allow) > 0 && len(r.Deny) > 0:
			return fmt.Errorf("acl: rules[%d]: both allow and deny; a rule is one or the other", i)
		case len(r.Deny) > 0:
			field, list, deny = "deny", r.Deny, true
		case len(r.Allow) == 0:
			return fmt.Errorf("acl: rules[%d]: no prefixes", i)
		}
		ps, err := netprefix.ParseList(fmt.Sprintf("acl: rules[%d].%s", i, field), list)
		if err != nil {
			return err
		}
		allows = allows || !deny
		a.rules = append(a.rules, rule{prefixes: ps, deny: deny, label: field + " " + strings.Join(list, " ")})
	}
	switch a.Default {
	case "":
		a.deny = allows
	case "allow", "deny":
		a.deny = a.Default == "deny"
	default:
		return fmt.Errorf("acl: default %q: want allow or deny", a.Default)
	}
	switch a.Action {
	case "":
		a.Action = ActionRefused
	case ActionRefused, ActionDrop:
	default:
		return fmt.Errorf("acl: action %q: want refused or drop", a.Action)
	}
	a.denied = denied
	return promreg.Register(ctx.GetMetricsRegistry(), denied)
}

// errDenied is never seen: Chain.Serve drops the query.
var errDenied = fmt.Errorf("acl: %w", caddydns.ErrDrop)

// decide says whether client is denied, and by which rule's label.
func (a *ACL) decide(client netip.Addr) (deny bool, label string) {
	for i := range a.rules {
		if a.rules[i].prefixes.Contains(client) {
			return a.rules[i].deny, a.rules[i].label
		}
	}
	return a.deny, "default"
}

// DropsClient reports whether every query of client is dropped: denied,
// with action drop. A DoT or dedicated DoH server whose chain starts
// with this acl closes such a client's connections as it accepts them.
func (a *ACL) DropsClient(client netip.Addr) bool {
	deny, _ := a.decide(client)
	return deny && a.Action == ActionDrop
}

// ServeDNS passes an allowed query on, and refuses or drops a denied one.
func (a *ACL) ServeDNS(ctx context.Context, r *caddydns.Request, next caddydns.Next) (caddydns.Response, error) {
	deny, label := a.decide(r.Client.Addr())
	if !deny {
		return next(ctx, r)
	}
	a.denied.WithLabelValues(r.Server, label).Inc()
	if a.Action == ActionDrop {
		return caddydns.Response{}, errDenied
	}
	m := new(dns.Msg)
	m.SetRcode(r.Msg, dns.RcodeRefused)
	if r.Msg.IsEdns0() != nil {
		// why, for a client that can read it (RFC 8914 4.19: a REFUSED to
		// an unauthorized client); the chain's finish keeps the option
		m.Extra = append(m.Extra, &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}, Option: []dns.EDNS0{prohibited}})
	}
	return caddydns.Response{Msg: m}, nil
}

// prohibited is the Extended DNS Error of a refused client's answer.
var prohibited = &dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeProhibited}

// Interface guards
var (
	_ caddydns.Handler       = (*ACL)(nil)
	_ caddydns.ClientDropper = (*ACL)(nil)
	_ caddy.Provisioner      = (*ACL)(nil)
)
