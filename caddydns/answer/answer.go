// Package answer is `dns.handlers.answer`: a fixed answer to every query
// that reaches it, an rcode (NXDOMAIN for a blocked name, REFUSED) or
// addresses (a block page, a sinkhole), as dnsdist's RCodeAction and
// SpoofAction. Behind a `route` it answers the queries the route takes.
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

// Answer answers every query with Rcode, or with Addresses: the A
// records among them to an A query, the AAAA records to an AAAA query,
// both to ANY, and no records (NODATA) to any other type. One of the two
// is set.
type Answer struct {
	// Rcode is the answer's rcode: NXDOMAIN, REFUSED, SERVFAIL or
	// NOERROR (NODATA), in any case.
	Rcode string `json:"rcode,omitempty"`
	// Addresses are IPv4 and IPv6 addresses.
	Addresses []string `json:"addresses,omitempty"`
	// TTL of the address records. Default: 1m.
	TTL caddy.Duration `json:"ttl,omitempty"`
	// EDE is an Extended DNS Error (RFC 8914) the answer carries to a
	// client that sent EDNS: why it is what it is (15 Blocked, 16
	// Censored, 17 Filtered, 18 Prohibited, ...).
	EDE *EDE `json:"ede,omitempty"`

	rcode int
	ede   *dns.EDNS0_EDE
	v4    []netip.Addr
	v6    []netip.Addr
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
	switch {
	case a.Rcode == "" && len(a.Addresses) == 0:
		return fmt.Errorf("answer: give an rcode (nxdomain, refused, servfail, noerror) or addresses")
	case a.Rcode != "" && len(a.Addresses) > 0:
		return fmt.Errorf("answer: rcode %s and addresses: give one or the other", a.Rcode)
	case a.Rcode != "":
		rc, ok := rcodes[strings.ToUpper(a.Rcode)]
		if !ok {
			return fmt.Errorf("answer: rcode %q: want nxdomain, refused, servfail or noerror", a.Rcode)
		}
		a.rcode = rc
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

// ServeDNS answers the query; it never passes it on.
func (a *Answer) ServeDNS(_ context.Context, r *caddydns.Request, _ caddydns.Next) (caddydns.Response, error) {
	m := new(dns.Msg)
	if len(a.v4)+len(a.v6) == 0 {
		m.SetRcode(r.Msg, a.rcode)
	} else {
		m.SetReply(r.Msg)
		q := r.Msg.Question[0]
		hdr := func(t uint16) dns.RR_Header {
			return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET, Ttl: a.ttl}
		}
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

// Interface guards.
var (
	_ caddy.Provisioner = (*Answer)(nil)
	_ caddydns.Handler  = (*Answer)(nil)
)
