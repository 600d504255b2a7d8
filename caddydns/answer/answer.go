// Package answer is `dns.handlers.answer`: a fixed answer to every query
// that reaches it, an rcode (NXDOMAIN for a blocked name, REFUSED),
// addresses (a block page, a sinkhole), as dnsdist's RCodeAction and
// SpoofAction, or a CNAME to another name with that name's records
// (SafeSearch), as dnsdist's SpoofCNAMEAction with the target resolved.
// Behind a `route` it answers the queries the route takes.
package answer

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns"
)

func init() {
	caddy.RegisterModule(Answer{})
}

// DefaultTTL is the TTL of the addresses answered.
const DefaultTTL = time.Minute

// Answer answers every query with Rcode; or with Addresses: the A
// records among them to an A query, the AAAA records to an AAAA query,
// both to ANY, and no records (NODATA) to any other type; or with a
// CNAME record to CNAME and the records of the same type the handlers
// after it answer for CNAME (to a CNAME query, the record alone). One of
// the three is set.
type Answer struct {
	// Rcode is the answer's rcode: NXDOMAIN, REFUSED, SERVFAIL or
	// NOERROR (NODATA), in any case.
	Rcode string `json:"rcode,omitempty"`
	// Addresses are IPv4 and IPv6 addresses.
	Addresses []string `json:"addresses,omitempty"`
	// CNAME is the name the query's name is an alias of: the answer is a
	// CNAME record to it, followed by the answer the rest of the chain
	// gives for it (forcesafesearch.google.com for www.google.com).
	CNAME string `json:"cname,omitempty"`
	// SOA adds an SOA record to a negative answer (NXDOMAIN, or NODATA:
	// rcode noerror, or addresses of other types than the query's), so
	// that the caches behind the client keep it for TTL (RFC 2308): owned
	// by the query's name, with TTL for its TTL and its minimum.
	SOA bool `json:"soa,omitempty"`
	// TTL of the address records, the CNAME record or the SOA record.
	// Default: 1m.
	TTL caddy.Duration `json:"ttl,omitempty"`
	// EDE is an Extended DNS Error (RFC 8914) the answer carries to a
	// client that sent EDNS: why it is what it is (15 Blocked, 16
	// Censored, 17 Filtered, 18 Prohibited, ...).
	EDE *EDE `json:"ede,omitempty"`

	rcode int
	ede   *dns.EDNS0_EDE
	v4    []netip.Addr
	v6    []netip.Addr
	cname string // fully qualified
	ttl   uint32
}

// EDE is an Extended DNS Error: its INFO-CODE and EXTRA-TEXT.
type EDE struct {
	Code uint16 `json:"code"`
	Text string `json:"text,omitempty"`
}

// maxEDEText bounds an EDE's EXTRA-TEXT: a note for an operator, not a
// page.
const maxEDEText = 255

// CaddyModule returns the Caddy module information.
func (Answer) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "dns.handlers.answer", New: func() caddy.Module { return new(Answer) }}
}

// rcodes are the rcodes an Answer gives.
var rcodes = map[string]int{
	"NOERROR":  dns.RcodeSuccess,
	"NXDOMAIN": dns.RcodeNameError,
	"REFUSED":  dns.RcodeRefused,
	"SERVFAIL": dns.RcodeServerFailure,
}

// Provision checks the config.
func (a *Answer) Provision(caddy.Context) error {
	given := 0
	for _, set := range []bool{a.Rcode != "", len(a.Addresses) > 0, a.CNAME != ""} {
		if set {
			given++
		}
	}
	switch {
	case given == 0:
		return fmt.Errorf("answer: give an rcode (nxdomain, refused, servfail, noerror), addresses or a cname")
	case given > 1:
		return fmt.Errorf("answer: rcode %q, addresses %q, cname %q: give one of them", a.Rcode, a.Addresses, a.CNAME)
	case a.CNAME != "":
		if _, ok := dns.IsDomainName(a.CNAME); !ok || a.CNAME == "." || a.CNAME == "" {
			return fmt.Errorf("answer: cname %q is not a domain name", a.CNAME)
		}
		a.cname = dns.CanonicalName(a.CNAME)
	case a.Rcode != "":
		rc, ok := rcodes[strings.ToUpper(a.Rcode)]
		if !ok {
			return fmt.Errorf("answer: rcode %q: want nxdomain, refused, servfail or noerror", a.Rcode)
		}
		a.rcode = rc
	}
	switch {
	case a.SOA && (a.CNAME != "" || a.rcode == dns.RcodeRefused || a.rcode == dns.RcodeServerFailure):
		return fmt.Errorf("answer: soa: only a negative answer (nxdomain, noerror, addresses) carries one")
	case a.Rcode != "" && a.TTL != 0 && !a.SOA:
		return fmt.Errorf("answer: ttl: an rcode answer has no records (but with soa)")
	}
	for i, s := range a.Addresses {
		ip, err := netip.ParseAddr(s)
		if err != nil || ip.Zone() != "" {
			return fmt.Errorf("answer: addresses[%d]: %q is not an IP address", i, s)
		}
		if ip = ip.Unmap(); ip.Is4() {
			a.v4 = append(a.v4, ip)
		} else {
			a.v6 = append(a.v6, ip)
		}
	}
	ttl := time.Duration(a.TTL)
	switch {
	case ttl == 0:
		ttl = DefaultTTL
	case ttl < 0 || ttl%time.Second != 0 || ttl > 1<<31*time.Second:
		return fmt.Errorf("answer: ttl %s: want whole seconds, 1s to 68 years", ttl)
	}
	a.ttl = uint32(ttl / time.Second)
	if a.EDE != nil {
		if len(a.EDE.Text) > maxEDEText || !utf8.ValidString(a.EDE.Text) || strings.ContainsFunc(a.EDE.Text, unicode.IsControl) {
			return fmt.Errorf("answer: ede text %q: want at most %d octets of UTF-8 without control characters", a.EDE.Text, maxEDEText)
		}
		a.ede = &dns.EDNS0_EDE{InfoCode: a.EDE.Code, ExtraText: a.EDE.Text}
	}
	return nil
}

// ServeDNS answers the query. Only a CNAME answer passes anything on:
// the question for its target.
func (a *Answer) ServeDNS(ctx context.Context, r *caddydns.Request, next caddydns.Next) (caddydns.Response, error) {
	m := new(dns.Msg)
	q := r.Msg.Question[0]
	hdr := func(t uint16) dns.RR_Header {
		return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET, Ttl: a.ttl}
	}
	switch {
	case a.cname != "":
		m.SetReply(r.Msg)
		m.Answer = append(m.Answer, &dns.CNAME{Hdr: hdr(dns.TypeCNAME), Target: a.cname})
		if q.Qtype != dns.TypeCNAME {
			if err := a.follow(ctx, r, next, m); err != nil {
				return caddydns.Response{}, err
			}
		}
	case len(a.v4)+len(a.v6) == 0:
		m.SetRcode(r.Msg, a.rcode)
		if a.SOA && (a.rcode == dns.RcodeNameError || a.rcode == dns.RcodeSuccess) {
			m.Ns = append(m.Ns, a.soa(q.Name))
		}
	default:
		m.SetReply(r.Msg)
		if q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY {
			for _, ip := range a.v4 {
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr(dns.TypeA), A: ip.AsSlice()})
			}
		}
		if q.Qtype == dns.TypeAAAA || q.Qtype == dns.TypeANY {
			for _, ip := range a.v6 {
				m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr(dns.TypeAAAA), AAAA: ip.AsSlice()})
			}
		}
		if len(m.Answer) == 0 && a.SOA {
			m.Ns = append(m.Ns, a.soa(q.Name)) // NODATA
		}
	}
	// a resolver's answer, as the forward's would be: RA when the client
	// asked for recursion (dnsdist's SpoofAction and RCodeAction copy RD
	// to RA too), or a stub takes the server for one that does not recurse
	m.RecursionAvailable = r.Msg.RecursionDesired
	if a.ede != nil && r.Msg.IsEdns0() != nil {
		// the chain's finish keeps the option in the OPT record it gives
		// the client
		m.Extra = append(m.Extra, &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}, Option: []dns.EDNS0{a.ede}})
	}
	return caddydns.Response{Msg: m}, nil
}

// soa is the SOA record of a negative answer for name: owned by the
// name (the zone of one name, for the caches), TTL and minimum the
// answer's TTL (RFC 2308 5: a cache keeps the answer for the smaller).
func (a *Answer) soa(name string) *dns.SOA {
	return &dns.SOA{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: a.ttl},
		Ns: ".", Mbox: ".", Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: a.ttl}
}

// follow asks the rest of the chain for the CNAME's target, with the
// query's type, and adds its answer to m (which holds the CNAME record):
// its records, its authority section (a negative answer's SOA) and its
// rcode, which is the target's (RFC 6604: NXDOMAIN when the target does
// not exist). An rcode other than NOERROR and NXDOMAIN is the answer's
// alone, without the CNAME.
func (a *Answer) follow(ctx context.Context, r *caddydns.Request, next caddydns.Next, m *dns.Msg) error {
	q := r.Msg.Question[0]
	sub := r.Ask(dns.Question{Name: a.cname, Qtype: q.Qtype, Qclass: q.Qclass})
	res, err := next(ctx, sub)
	if err != nil {
		return err
	}
	r.Upstream, r.Cache = sub.Upstream, sub.Cache // for the query log
	t := res.Msg
	if res.Wire != nil {
		t = new(dns.Msg)
		err := t.Unpack(res.Wire.Bytes())
		res.Wire.Release()
		if err != nil {
			return fmt.Errorf("answer: the answer for cname %s does not decode: %w", a.cname, err)
		}
	}
	if t == nil {
		return fmt.Errorf("answer: no answer for cname %s", a.cname)
	}
	m.Rcode = t.Rcode
	if t.Rcode > 0xF {
		m.Rcode = dns.RcodeServerFailure // an extended rcode is the target query's own (BADVERS, BADCOOKIE)
	}
	if m.Rcode != dns.RcodeSuccess && m.Rcode != dns.RcodeNameError {
		m.Answer = nil
		return nil
	}
	m.Answer = append(m.Answer, t.Answer...)
	m.Ns = t.Ns
	return nil
}

// Interface guards.
var (
	_ caddy.Provisioner = (*Answer)(nil)
	_ caddydns.Handler  = (*Answer)(nil)
)
