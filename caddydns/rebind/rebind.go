// Package rebind is `dns.handlers.rebind_protection`: it keeps private
// addresses out of the answers the handlers after it give, so that a
// name on the internet cannot point a client's browser at the client's
// own network (DNS rebinding), as unbound's private-address and dnsmasq's
// stop-dns-rebind do.
package rebind

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/caddydns/dnswire"
	"github.com/dnsfront/dnsfront/internal/netprefix"
	"github.com/dnsfront/dnsfront/internal/promreg"
)

func init() {
	caddy.RegisterModule(Rebind{})
}

// DefaultPrivate is the list `private` stands for when it is not given,
// and what its word "default" stands for in it: the addresses of a
// client's own host and network, which no name on the internet has a
// reason to point at. IPv4-mapped IPv6 addresses (::ffff:10.0.0.1) are
// judged as the IPv4 address they carry.
var DefaultPrivate = []string{
	"0.0.0.0/8",      // "this network": 0.0.0.0 reaches the host itself on Linux and macOS
	"10.0.0.0/8",     // RFC 1918
	"100.64.0.0/10",  // carrier-grade NAT (RFC 6598)
	"127.0.0.0/8",    // loopback
	"169.254.0.0/16", // link-local
	"172.16.0.0/12",  // RFC 1918
	"192.168.0.0/16", // RFC 1918
	"::/128",         // unspecified
	"::1/128",        // loopback
	"fc00::/7",       // unique local (RFC 4193)
	"fe80::/10",      // link-local
}

// EDE is the Extended DNS Error (RFC 8914: 15, Blocked) an answer with
// records removed carries to a client that sent EDNS.
const EDE = dns.ExtendedErrorCodeBlocked

// Rebind removes from each answer of the handlers after it the A and AAAA
// records holding a private address, a whole RRset at a time, unless
// their owner is in an allowed domain.
type Rebind struct {
	// Private are the prefixes (or addresses) removed; "default" stands
	// for DefaultPrivate. Default: DefaultPrivate.
	Private []string `json:"private,omitempty"`
	// Allow are the domains whose names (a domain and the names under
	// it) may have private addresses: the operator's own, such as
	// corp.example or home.arpa.
	Allow []string `json:"allow,omitempty"`

	private netprefix.List
	allow   []string // fully qualified, lower case
	removed *prometheus.CounterVec
}

// CaddyModule returns the Caddy module information.
func (Rebind) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "dns.handlers.rebind_protection", New: func() caddy.Module { return new(Rebind) }}
}

var removed = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "dnsfront",
	Name:      "rebind_protection_answers_total",
	Help:      "Answers from which rebind_protection removed records with a private address, by server.",
}, []string{"server"})

// Provision reads the lists.
func (rb *Rebind) Provision(ctx caddy.Context) error {
	list := rb.Private
	if len(list) == 0 {
		list = []string{"default"}
	}
	var expanded []string
	for _, p := range list {
		if p == "default" {
			expanded = append(expanded, DefaultPrivate...)
		} else {
			expanded = append(expanded, p)
		}
	}
	var err error
	if rb.private, err = netprefix.ParseList("rebind_protection: private", expanded); err != nil {
		return err
	}
	for i, d := range rb.Allow {
		if !domainName(d) {
			return fmt.Errorf("rebind_protection: allow[%d]: %q is not a domain name", i, d)
		}
		rb.allow = append(rb.allow, dns.Fqdn(strings.ToLower(d)))
	}
	rb.removed = removed
	return promreg.Register(ctx.GetMetricsRegistry(), removed)
}

// ServeDNS passes the query on, and removes private addresses from the
// answer.
func (rb *Rebind) ServeDNS(ctx context.Context, r *caddydns.Request, next caddydns.Next) (caddydns.Response, error) {
	res, err := next(ctx, r)
	if err != nil {
		return res, err
	}
	switch {
	case res.Wire != nil:
		w := res.Wire
		if !rb.holdsPrivate(dnswire.Addresses(w.Bytes(), w.Layout())) {
			return res, nil // the common answer: read, not decoded
		}
		m := new(dns.Msg)
		if m.Unpack(w.Bytes()) != nil {
			// Walk took it, Unpack does not: an RDATA miekg/dns is stricter
			// about. It holds a private address: it does not go out.
			w.Release()
			return servfail(r), nil
		}
		if !rb.filter(r, m) {
			return res, nil // its private addresses are all allowed
		}
		w.Release()
		return caddydns.Response{Msg: m}, nil
	case res.Msg != nil:
		if rb.holdsPrivate(msgAddresses(res.Msg)) {
			m := res.Msg.Copy() // the handler's own may be shared (a zone's records)
			if rb.filter(r, m) {
				return caddydns.Response{Msg: m}, nil
			}
		}
	}
	return res, nil
}

// holdsPrivate reports whether one of addrs is private.
func (rb *Rebind) holdsPrivate(addrs func(func(netip.Addr) bool)) bool {
	for a := range addrs {
		if rb.private.Contains(a) {
			return true
		}
	}
	return false
}

// filter removes from m every RRset of A or AAAA records with a private
// address, or of SVCB or HTTPS records with one in a hint, whose owner is
// not allowed, with its signatures, in every section, and marks the
// answer with an Extended DNS Error; false when it removed nothing (the
// private addresses are all allowed).
func (rb *Rebind) filter(r *caddydns.Request, m *dns.Msg) bool {
	type rrset struct {
		name string
		typ  uint16
	}
	var bad []rrset
	for _, rr := range slices.Concat(m.Answer, m.Ns, m.Extra) {
		h := rr.Header()
		if rb.holdsPrivate(rrAddresses(rr)) && !rb.allowed(h.Name) {
			bad = append(bad, rrset{strings.ToLower(h.Name), h.Rrtype})
		}
	}
	if len(bad) == 0 {
		return false
	}
	drop := func(rr dns.RR) bool {
		h := rr.Header()
		typ := h.Rrtype
		if sig, ok := rr.(*dns.RRSIG); ok {
			typ = sig.TypeCovered // the RRset's signatures go with it
		}
		if h.Class != dns.ClassINET {
			return false
		}
		return slices.Contains(bad, rrset{strings.ToLower(h.Name), typ})
	}
	m.Answer = slices.DeleteFunc(m.Answer, drop)
	m.Ns = slices.DeleteFunc(m.Ns, drop)
	m.Extra = slices.DeleteFunc(m.Extra, drop)
	rb.removed.WithLabelValues(r.Server).Inc()
	if r.Msg.IsEdns0() != nil {
		// the chain's finish keeps the option in the OPT record it gives
		// the client
		opt := m.IsEdns0()
		if opt == nil {
			opt = &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
			m.Extra = append(m.Extra, opt)
		}
		opt.Option = append(opt.Option, &dns.EDNS0_EDE{InfoCode: EDE, ExtraText: "private address removed (rebind_protection)"})
	}
	return true
}

// allowed reports whether name is in an allowed domain.
func (rb *Rebind) allowed(name string) bool {
	for _, d := range rb.allow {
		if caddydns.InDomain(name, d) {
			return true
		}
	}
	return false
}

// domainName reports whether s is a domain name (not a wildcard).
func domainName(s string) bool {
	_, ok := dns.IsDomainName(s)
	return ok && s != "" && !strings.Contains(s, "*")
}

// rrAddresses yields the addresses a client may connect to that rr
// holds, for a record of class IN: an A or AAAA record's, an SVCB or
// HTTPS record's ipv4hint and ipv6hint (RFC 9460 7.3).
func rrAddresses(rr dns.RR) func(func(netip.Addr) bool) {
	return func(yield func(netip.Addr) bool) {
		if rr.Header().Class != dns.ClassINET {
			return
		}
		switch rr := rr.(type) {
		case *dns.A:
			yieldIPs(yield, rr.A)
		case *dns.AAAA:
			yieldIPs(yield, rr.AAAA)
		case *dns.SVCB:
			yieldHints(yield, rr.Value)
		case *dns.HTTPS:
			yieldHints(yield, rr.Value)
		}
	}
}

// yieldHints yields the addresses of an SVCB record's ipv4hint and
// ipv6hint; false when yield asked to stop.
func yieldHints(yield func(netip.Addr) bool, params []dns.SVCBKeyValue) bool {
	for _, p := range params {
		switch h := p.(type) {
		case *dns.SVCBIPv4Hint:
			if !yieldIPs(yield, h.Hint...) {
				return false
			}
		case *dns.SVCBIPv6Hint:
			if !yieldIPs(yield, h.Hint...) {
				return false
			}
		}
	}
	return true
}

// yieldIPs yields ips as addresses; false when yield asked to stop.
func yieldIPs(yield func(netip.Addr) bool, ips ...net.IP) bool {
	for _, ip := range ips {
		if a, ok := netip.AddrFromSlice(ip); ok && !yield(a) {
			return false
		}
	}
	return true
}

// msgAddresses yields the addresses of m's records (rrAddresses).
func msgAddresses(m *dns.Msg) func(func(netip.Addr) bool) {
	return func(yield func(netip.Addr) bool) {
		for _, section := range [...][]dns.RR{m.Answer, m.Ns, m.Extra} {
			for _, rr := range section {
				for a := range rrAddresses(rr) {
					if !yield(a) {
						return
					}
				}
			}
		}
	}
}

func servfail(r *caddydns.Request) caddydns.Response {
	m := new(dns.Msg)
	m.SetRcode(r.Msg, dns.RcodeServerFailure)
	return caddydns.Response{Msg: m}
}

// Interface guards
var (
	_ caddydns.Handler  = (*Rebind)(nil)
	_ caddy.Provisioner = (*Rebind)(nil)
)
