package zone

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns"
)

func init() {
	caddy.RegisterModule(Zone{})
}

// Zone answers authoritatively for the names under its origin, from an
// RFC 1035 zone file or inline records: exact matches, CNAME chains inside
// the zone, wildcards (RFC 4592), delegations (referrals with glue),
// NXDOMAIN and NODATA with the SOA in the authority section. Queries for
// names outside the origin go to the next handler.
type Zone struct {
	// Origin is the zone's apex, e.g. "example.org.".
	Origin string `json:"origin,omitempty"`
	// File is an RFC 1035 zone file (relative names are under Origin).
	File string `json:"file,omitempty"`
	// Records are zone file lines, added to File's records.
	Records []string `json:"records,omitempty"`
	// ECH answers the HTTPS and _dns SVCB records of the names Caddy
	// protects with Encrypted Client Hello, with their current ECH
	// config list (ech.go).
	ECH *ECH `json:"ech,omitempty"`

	zone *zoneData
}

// CaddyModule returns the Caddy module information.
func (Zone) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "dns.handlers.zone", New: func() caddy.Module { return new(Zone) }}
}

// Provision reads the zone; an error names the file and line.
func (z *Zone) Provision(ctx caddy.Context) error {
	if z.Origin == "" {
		return errors.New("zone: origin is required")
	}
	z.Origin = dns.CanonicalName(z.Origin)
	if _, ok := dns.IsDomainName(z.Origin); !ok {
		return fmt.Errorf("zone: origin %q is not a domain name", z.Origin)
	}
	var rrs []dns.RR
	if z.File != "" {
		f, err := os.Open(z.File)
		if err != nil {
			return fmt.Errorf("zone %s: %w", z.Origin, err)
		}
		defer f.Close()
		if rrs, err = parseZone(f, z.Origin, z.File); err != nil {
			return fmt.Errorf("zone %s: %w", z.Origin, err)
		}
	}
	if len(z.Records) > 0 {
		inline, err := parseZone(strings.NewReader(strings.Join(z.Records, "\n")), z.Origin, "records")
		if err != nil {
			return fmt.Errorf("zone %s: %w", z.Origin, err)
		}
		rrs = append(rrs, inline...)
	}
	zd, err := newZoneData(z.Origin, rrs)
	if err != nil {
		return fmt.Errorf("zone %s: %w", z.Origin, err)
	}
	z.zone = zd
	if z.ECH != nil {
		if err := z.ECH.provision(ctx, z.Origin); err != nil {
			return fmt.Errorf("zone %s: %w", z.Origin, err)
		}
	}
	return nil
}

// noTTL marks a record that has no TTL of its own, no $TTL and no
// earlier record's TTL to inherit (RFC 1035 5.1): such a zone is refused,
// not given a made-up TTL. (RFC 2181 8 caps TTLs at 2^31-1, so no real
// record carries this value.)
const noTTL = 1<<32 - 1

func parseZone(r io.Reader, origin, file string) ([]dns.RR, error) {
	text, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	zp := dns.NewZoneParser(bytes.NewReader(text), origin, file)
	zp.SetDefaultTTL(noTTL)
	var rrs []dns.RR
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		h := rr.Header()
		if h.Ttl == noTTL {
			return nil, fmt.Errorf("%s: %s %s has no TTL: start the zone with $TTL or give the record one",
				file, h.Name, dns.TypeToString[h.Rrtype])
		}
		if !dns.IsSubDomain(origin, dns.CanonicalName(h.Name)) {
			at := file
			if line := ownerLine(text, origin, h.Name); line > 0 {
				at = fmt.Sprintf("%s:%d", file, line)
			}
			return nil, fmt.Errorf("%s: record %q is outside the zone %s", at, rr.String(), origin)
		}
		rrs = append(rrs, rr)
	}
	if err := zp.Err(); err != nil {
		// a *dns.ParseError names file and line, but of where the parser
		// gave up: an unclosed parenthesis is seen lines later
		if line := unclosedParen(text); line > 0 {
			return nil, fmt.Errorf("%s:%d: '(' opened on this line is not closed (the parser then said: %w)", file, line, err)
		}
		return nil, err
	}
	return rrs, nil
}

// ownerLine returns the first line of a zone file's text that starts
// with the owner name name (absolute, or relative to the $ORIGIN in force
// there), or 0. The zone parser does not say which line a record it
// returns came from; this finds it for the errors that need it.
func ownerLine(text []byte, origin, name string) int {
	name = dns.CanonicalName(name)
	for i, l := range strings.Split(string(text), "\n") {
		if l == "" || l[0] == ' ' || l[0] == '\t' || l[0] == ';' {
			continue
		}
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		if strings.EqualFold(f[0], "$ORIGIN") {
			if len(f) > 1 {
				origin = absName(f[1], origin)
			}
			continue
		}
		if f[0][0] != '$' && dns.CanonicalName(absName(f[0], origin)) == name {
			return i + 1
		}
	}
	return 0
}

// absName makes a zone file's owner name absolute against origin.
func absName(n, origin string) string {
	switch {
	case n == "@":
		return origin
	case dns.IsFqdn(n):
		return n
	case origin == ".":
		return n + "."
	}
	return n + "." + origin
}

// unclosedParen returns the line of a '(' that no ')' closes in a zone
// file's text (outside quoted strings and comments), or 0.
func unclosedParen(text []byte) int {
	line, open, inQuote := 1, 0, false
	for i := 0; i < len(text); i++ {
		switch c := text[i]; {
		case c == '\\':
			i++ // an escaped character, whatever it is
		case c == '"':
			inQuote = !inQuote
		case inQuote:
			if c == '\n' {
				line++
			}
		case c == ';':
			for i < len(text) && text[i] != '\n' {
				i++
			}
			line++
		case c == '\n':
			line++
		case c == '(' && open == 0:
			open = line
		case c == ')':
			open = 0
		}
	}
	return open
}

// ExampleQuery implements caddydns.Exampler: the apex SOA.
func (z *Zone) ExampleQuery() (string, uint16) { return z.Origin, dns.TypeSOA }

// ServeDNS answers for names under the origin.
func (z *Zone) ServeDNS(ctx context.Context, r *caddydns.Request, next caddydns.Next) (caddydns.Response, error) {
	q := r.Msg.Question[0]
	name := dns.CanonicalName(q.Name)
	if !caddydns.InDomain(name, z.zone.origin) || (q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY) {
		return next(ctx, r)
	}
	if z.ECH != nil {
		if m := z.ECH.answer(r.Msg, z.zone.origin, name, q.Qtype, z.zone.negativeSOA()); m != nil {
			return caddydns.Response{Msg: m}, nil
		}
	}
	return caddydns.Response{Msg: z.zone.answer(r.Msg, name, q.Qtype)}, nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	zone <origin> [<file>] {
//		file <file>
//		record "<zone file line>"
//		ech [<names...>] {
//			dot <port>|off
//			doh <port>|off [<dohpath>]
//			ttl <seconds>
//		}
//	}
func (z *Zone) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // handler name
	if !d.NextArg() {
		return d.Errf("zone needs an origin, e.g. zone example.org")
	}
	z.Origin = d.Val()
	if d.NextArg() {
		z.File = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	for n := d.Nesting(); d.NextBlock(n); {
		switch d.Val() {
		case "file":
			if z.File != "" {
				return d.Err("zone file already specified")
			}
			if !d.AllArgs(&z.File) {
				return d.ArgErr()
			}
		case "ech":
			if z.ECH != nil {
				return d.Err("ech already specified")
			}
			z.ECH = new(ECH)
			if err := z.ECH.unmarshalCaddyfile(d); err != nil {
				return err
			}
		case "record":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			z.Records = append(z.Records, strings.Join(args, " "))
		default:
			return d.Errf("unrecognized subdirective '%s'", d.Val())
		}
	}
	return nil
}

// zoneData is a zone indexed for look-ups. Names are canonical (lower
// case, fully qualified).
type zoneData struct {
	origin string
	soa    *dns.SOA
	names  map[string]map[uint16][]dns.RR // every owner name, and empty non-terminals with no types
	cuts   map[string]bool                // delegation points below the apex
}

func newZoneData(origin string, rrs []dns.RR) (*zoneData, error) {
	z := &zoneData{origin: origin, names: make(map[string]map[uint16][]dns.RR), cuts: make(map[string]bool)}
	z.names[origin] = make(map[uint16][]dns.RR)
	for _, rr := range rrs {
		h := rr.Header()
		h.Name = dns.CanonicalName(h.Name)
		if !dns.IsSubDomain(origin, h.Name) {
			return nil, fmt.Errorf("record %q is outside the zone", rr.String())
		}
		if h.Rrtype == dns.TypeSOA {
			if h.Name != origin {
				return nil, fmt.Errorf("SOA record for %s is not at the apex", h.Name)
			}
			if z.soa != nil {
				return nil, errors.New("more than one SOA record")
			}
			z.soa = rr.(*dns.SOA)
		}
		if h.Rrtype == dns.TypeNS && h.Name != origin {
			z.cuts[h.Name] = true
		}
		// every ancestor up to the origin exists (empty non-terminals)
		for n := h.Name; n != origin; {
			if _, ok := z.names[n]; !ok {
				z.names[n] = make(map[uint16][]dns.RR)
			}
			i, end := dns.NextLabel(n, 0)
			if end {
				break
			}
			n = n[i:]
		}
		z.names[h.Name][h.Rrtype] = append(z.names[h.Name][h.Rrtype], rr)
	}
	if z.soa == nil {
		return nil, errors.New("no SOA record at the apex")
	}
	for name, types := range z.names {
		if cn, ok := types[dns.TypeCNAME]; ok && (len(types) > 1 || len(cn) > 1) {
			return nil, fmt.Errorf("CNAME at %s must be the only record there (RFC 1034 3.6.2)", name)
		}
	}
	return z, nil
}

// maxCNAMEChain bounds CNAME chasing inside the zone.
const maxCNAMEChain = 8

func (z *zoneData) answer(q *dns.Msg, name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(q)
	m.Authoritative = true
	for range maxCNAMEChain {
		if cut := z.cutFor(name); cut != "" {
			// referral: not authoritative below the cut
			m.Authoritative = len(m.Answer) > 0
			m.Ns = append(m.Ns, z.names[cut][dns.TypeNS]...)
			m.Extra = append(m.Extra, z.glue(z.names[cut][dns.TypeNS])...)
			return m
		}
		types, exact := z.names[name]
		if !exact {
			types = z.wildcard(name)
		}
		if types == nil {
			if len(m.Answer) == 0 {
				m.Rcode = dns.RcodeNameError
			}
			m.Ns = append(m.Ns, z.negativeSOA())
			return m
		}
		if qtype == dns.TypeANY {
			for _, rrs := range types {
				m.Answer = append(m.Answer, synthesize(rrs, name, !exact)...)
			}
			return m
		}
		if rrs, ok := types[qtype]; ok {
			m.Answer = append(m.Answer, synthesize(rrs, name, !exact)...)
			return m
		}
		cname, ok := types[dns.TypeCNAME]
		if !ok {
			m.Ns = append(m.Ns, z.negativeSOA()) // NODATA
			return m
		}
		m.Answer = append(m.Answer, synthesize(cname, name, !exact)...)
		target := dns.CanonicalName(cname[0].(*dns.CNAME).Target)
		if !caddydns.InDomain(target, z.origin) {
			return m // the resolver follows it
		}
		name = target
	}
	return m
}

// cutFor returns the delegation point at or above name, if any.
func (z *zoneData) cutFor(name string) string {
	if len(z.cuts) == 0 {
		return ""
	}
	for n := name; n != z.origin; {
		if z.cuts[n] {
			return n
		}
		i, end := dns.NextLabel(n, 0)
		if end {
			break
		}
		n = n[i:]
	}
	return ""
}

// wildcard finds the RRsets of the wildcard that covers name (RFC 4592):
// *.<closest encloser>, when the closest encloser exists.
func (z *zoneData) wildcard(name string) map[uint16][]dns.RR {
	for n := name; n != z.origin; {
		i, end := dns.NextLabel(n, 0)
		if end {
			return nil
		}
		n = n[i:]
		if _, ok := z.names[n]; ok || n == z.origin {
			return z.names["*."+n] // nil when there is none
		}
	}
	return nil
}

// synthesize returns rrs, with their owner set to name when they come
// from a wildcard.
func synthesize(rrs []dns.RR, name string, fromWildcard bool) []dns.RR {
	if !fromWildcard {
		return rrs
	}
	out := make([]dns.RR, len(rrs))
	for i, rr := range rrs {
		c := dns.Copy(rr)
		c.Header().Name = name
		out[i] = c
	}
	return out
}

// negativeSOA is the SOA for negative answers, with the TTL RFC 2308
// asks for: the smaller of its TTL and its minimum.
func (z *zoneData) negativeSOA() dns.RR {
	soa := dns.Copy(z.soa).(*dns.SOA)
	soa.Hdr.Ttl = min(soa.Hdr.Ttl, soa.Minttl)
	return soa
}

func (z *zoneData) glue(ns []dns.RR) []dns.RR {
	var out []dns.RR
	for _, rr := range ns {
		target := dns.CanonicalName(rr.(*dns.NS).Ns)
		if types, ok := z.names[target]; ok {
			out = append(out, types[dns.TypeA]...)
			out = append(out, types[dns.TypeAAAA]...)
		}
	}
	return out
}

// Interface guards
var (
	_ caddydns.Handler      = (*Zone)(nil)
	_ caddy.Provisioner     = (*Zone)(nil)
	_ caddydns.Exampler     = (*Zone)(nil)
	_ caddyfile.Unmarshaler = (*Zone)(nil)
)
