package caddydns

import (
	"encoding/binary"
	"encoding/hex"
	"time"

	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns/dnswire"
)

// Protocol limits.
const (
	// MinMessage is the size of a DNS header: a shorter message is not DNS.
	MinMessage = dnswire.HeaderLen
	// MaxMessage is the largest DNS message (RFC 1035 over TCP, RFC 8484).
	MaxMessage = dnswire.MaxMessage
	// AdvertisedUDPSize is the EDNS buffer size announced (DNS Flag Day
	// 2020): to clients, whose transports are streams, so it only informs
	// them, and to UDP upstreams.
	AdvertisedUDPSize = 1232
)

// decode unpacks a query into the message into (emptied first), with
// decodeQuick when it can (into quick, the storage it decodes into) and
// else miekg/dns's Unpack. When it does not parse, the returned response
// is a FORMERR with the query's ID and opcode (if there is a header at
// all), to be sent back instead.
func decode(b []byte, into *dns.Msg, quick *quickMsg) (q *dns.Msg, formErr *dns.Msg) {
	q = into
	*q = dns.Msg{}
	if decodeQuick(b, q, quick) {
		return q, nil
	}
	if err := q.Unpack(b); err == nil {
		return q, nil
	}
	if len(b) < MinMessage {
		return nil, nil
	}
	m := new(dns.Msg)
	m.Id = binary.BigEndian.Uint16(b)
	m.Response = true
	m.Opcode = int(b[2]>>3) & 0xF
	m.RecursionDesired = b[2]&1 == 1
	m.Rcode = dns.RcodeFormatError
	return nil, m
}

// quickMsg is where decodeQuick puts a query's question and OPT record:
// in its Request, reused with it, so that decoding the common query
// allocates nothing but its name, and that only when the name was not
// asked lately (internName).
type quickMsg struct {
	question [1]dns.Question
	extra    [1]dns.RR
	opt      dns.OPT
	options  [1]dns.EDNS0
	padding  dns.EDNS0_PADDING
}

// decodeQuick decodes the common query into q (empty) as miekg/dns's
// Unpack would (FuzzDecodeQuick compares them), keeping its question and
// OPT record in s: a header with one question and nothing else but, at
// most, an OPT record with no option but padding (RFC 7830, as DoT and
// DoH clients send); a name of plain labels (letters, digits, '-', '_',
// '*': none that presentation form escapes), without compression; no
// octets after it. Padding of zeros (RFC 7830 3), up to a block, is
// quickZeros: the message holds nothing of b, which the transport may
// reuse for the answer. It reports false, with q untouched, for any
// other message, which Unpack then decodes.
func decodeQuick(b []byte, q *dns.Msg, s *quickMsg) bool {
	const h = dnswire.HeaderLen
	if len(b) < h+5 || binary.BigEndian.Uint16(b[4:]) != 1 || b[6]|b[7]|b[8]|b[9]|b[10] != 0 || b[11] > 1 {
		return false
	}
	var name [255]byte // the presentation form is no longer than the wire form
	n, off := 0, h
	for {
		if off >= len(b) {
			return false
		}
		l := int(b[off])
		off++
		if l == 0 {
			break
		}
		if l > 63 || off+l > len(b) || off+l-h >= 255 {
			return false // a pointer, or past the message, or a name over 255 octets
		}
		for _, c := range b[off : off+l] {
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '*') {
				return false
			}
		}
		n += copy(name[n:], b[off:off+l])
		name[n] = '.'
		n++
		off += l
	}
	if n == 0 {
		name[0], n = '.', 1
	}
	qend := off + 4
	var padding []byte // the padding option's, when the OPT record has one
	switch {
	case b[11] == 0 && qend == len(b):
	case b[11] == 1 && qend+11 <= len(b) && b[qend] == 0 && binary.BigEndian.Uint16(b[qend+1:]) == dns.TypeOPT:
		// root owner; RDLENGTH: no options, or one padding option
		rdata := b[qend+11:]
		switch rdlen := int(binary.BigEndian.Uint16(b[qend+9:])); {
		case rdlen != len(rdata):
			return false
		case rdlen == 0:
		case rdlen < 4 || binary.BigEndian.Uint16(rdata) != dns.EDNS0PADDING || 4+int(binary.BigEndian.Uint16(rdata[2:])) != rdlen ||
			binary.BigEndian.Uint16(b[qend+3:]) == dns.ClassANY: // Unpack reads no options then
			return false
		default:
			padding = rdata[4:]
			if len(padding) > len(quickZeros) || !allZero(padding) {
				return false
			}
		}
	default:
		return false
	}
	bits := binary.BigEndian.Uint16(b[2:])
	q.Id = binary.BigEndian.Uint16(b)
	q.Response = bits&(1<<15) != 0
	q.Opcode = int(bits>>11) & 0xF
	q.Authoritative = bits&(1<<10) != 0
	q.Truncated = bits&(1<<9) != 0
	q.RecursionDesired = bits&(1<<8) != 0
	q.RecursionAvailable = bits&(1<<7) != 0
	q.Zero = bits&(1<<6) != 0
	q.AuthenticatedData = bits&(1<<5) != 0
	q.CheckingDisabled = bits&(1<<4) != 0
	q.Rcode = int(bits & 0xF)
	s.question[0] = dns.Question{Name: internName(name[:n]), Qtype: binary.BigEndian.Uint16(b[off:]), Qclass: binary.BigEndian.Uint16(b[off+2:])}
	q.Question = s.question[:1:1]
	if b[11] == 1 {
		s.opt = dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT,
			Class: binary.BigEndian.Uint16(b[qend+3:]), Ttl: binary.BigEndian.Uint32(b[qend+5:]),
			Rdlength: binary.BigEndian.Uint16(b[qend+9:])}}
		if padding != nil {
			s.padding.Padding = nil // Unpack's, for a padding of no octets
			if len(padding) > 0 {
				s.padding.Padding = quickZeros[:len(padding):len(padding)]
			}
			s.options[0] = &s.padding
			s.opt.Option = s.options[:1:1]
		}
		s.extra[0] = &s.opt
		q.Extra = s.extra[:1:1]
		q.Rcode |= s.opt.ExtendedRcode()
	}
	return true
}

// quickZeros is the padding decodeQuick gives a message; nothing writes
// to it (Copy copies it).
var quickZeros [dnswire.PaddingBlock]byte

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// checkQuery returns the response to a query that must not reach the
// handlers, or nil for a query they may answer. raw is the query as it
// came (nil for one made here).
func checkQuery(r *Request, raw []byte) *dns.Msg {
	q := r.Msg
	reply := func(rcode int) *dns.Msg {
		m := new(dns.Msg)
		m.SetRcode(q, rcode)
		return m
	}
	switch {
	case q.Response:
		return reply(dns.RcodeFormatError)
	case q.Opcode != dns.OpcodeQuery:
		return reply(dns.RcodeNotImplemented)
	case len(q.Question) != 1:
		return reply(dns.RcodeFormatError)
	case q.Truncated, len(q.Answer) > 0, len(q.Ns) > 0:
		// a query is never cut short on a stream, and has no answer or
		// authority records: nothing an honest client sends, which would
		// otherwise go upstream (unbound answers FORMERR too)
		return reply(dns.RcodeFormatError)
	case raw != nil && !wellFormed(raw):
		return reply(dns.RcodeFormatError)
	case q.Question[0].Qtype == dns.TypeAXFR || q.Question[0].Qtype == dns.TypeIXFR:
		return reply(dns.RcodeNotImplemented)
	case metaType(q.Question[0].Qtype):
		return reply(dns.RcodeFormatError)
	}
	opts := 0
	for _, rr := range q.Extra {
		opt, ok := rr.(*dns.OPT)
		if !ok {
			// an additional record but the OPT record (TSIG and SIG(0)
			// included: dnsfront verifies neither, and a front end's
			// clients sign nothing)
			return reply(dns.RcodeFormatError)
		}
		opts++
		if opt.Hdr.Name != "." {
			return reply(dns.RcodeFormatError) // RFC 6891 6.1.2: owned by the root
		}
		if opt.Version() > 0 {
			return reply(dns.RcodeBadVers)
		}
		if badECSOption(opt, raw) {
			return reply(dns.RcodeFormatError) // RFC 7871 6
		}
		if r.Keepalive != 0 && badKeepalive(opt) {
			// a client sends the option without a TIMEOUT (RFC 7828
			// 3.2.1); unbound answers FORMERR too
			return reply(dns.RcodeFormatError)
		}
	}
	if opts > 1 {
		return reply(dns.RcodeFormatError)
	}
	return nil
}

// metaType reports a type no query asks for: OPT, TSIG and TKEY (a
// message's own records, RFC 6895 3.1), MAILA and MAILB (obsolete), and
// the meta-types not assigned (128 to 248). unbound answers them FORMERR;
// passed on, they would reach an upstream as no honest client sends them.
func metaType(t uint16) bool {
	switch t {
	case dns.TypeOPT, dns.TypeTSIG, dns.TypeTKEY, dns.TypeMAILA, dns.TypeMAILB:
		return true
	}
	return t >= 128 && t <= 248
}

// wellFormed says whether every count, name and length in the query
// raw is within it. miekg/dns decodes a question cut short of its type or
// class as if they were 0, and stops quietly at the end of the message
// whatever the header's counts say, so such a query would otherwise reach
// the handlers, and forward would send an upstream octets that no honest
// client sends (and wait for an answer that never matches).
func wellFormed(raw []byte) bool {
	_, ok := dnswire.Walk(raw)
	return ok
}

// finish makes resp an answer to r as the client sent it: the client's ID,
// opcode, RD and question (its casing too), an OPT record exactly when the
// query had one (with the DO bit echoed), and truncation to what the
// client accepts. Padding is added once it is packed (see Chain.pack).
func finish(r *Request, resp *dns.Msg) {
	q := r.Msg
	resp.Id = q.Id
	resp.Response = true
	resp.Opcode = q.Opcode
	resp.RecursionDesired = q.RecursionDesired
	resp.CheckingDisabled = q.CheckingDisabled
	if !wantsAD(q, q.IsEdns0()) {
		resp.AuthenticatedData = false
	}
	if len(q.Question) > 0 {
		resp.Question = q.Question
	}
	resp.Compress = true

	qopt := q.IsEdns0()
	ropt := removeOPT(resp)
	if qopt == nil {
		if resp.Rcode > 0xF {
			// an extended rcode needs an OPT the client did not offer
			resp.Rcode = dns.RcodeServerFailure
		}
		truncate(resp, r.Size)
		return
	}
	if ropt == nil {
		ropt = new(dns.OPT)
		ropt.Hdr.Name = "."
		ropt.Hdr.Rrtype = dns.TypeOPT
	}
	ropt.SetVersion(0)
	ropt.SetUDPSize(AdvertisedUDPSize)
	ropt.SetDo(qopt.Do())
	// padding, cookies and keepalive are per hop: drop the upstream's;
	// and an ECS option goes only to a client that sent one (RFC 7871 7.2.2)
	clientECS := hasECS(qopt)
	kept := ropt.Option[:0]
	for _, o := range ropt.Option {
		if code := o.Option(); !dnswire.HopOption(code) && (clientECS || code != dns.EDNS0SUBNET) {
			kept = append(kept, o)
		}
	}
	if t, ok := keepalive(r, qopt); ok {
		kept = append(kept, &dns.EDNS0_LOCAL{Code: dns.EDNS0TCPKEEPALIVE, Data: []byte{byte(t >> 8), byte(t)}})
	}
	if r.NSID != nil {
		kept = append(kept, &dns.EDNS0_NSID{Code: dns.EDNS0NSID, Nsid: hex.EncodeToString(r.NSID)})
	}
	if code, ok := staleEDE(r, resp.Rcode); ok {
		kept = append(kept, &dns.EDNS0_EDE{InfoCode: code})
	}
	ropt.Option = kept
	resp.Extra = append(resp.Extra, ropt)
	truncate(resp, r.Size)
}

// wantsAD reports whether the answer to q may have the AD bit: only when
// q has AD or DO set (RFC 6840 5.8). An upstream's AD is kept for such a
// query and cleared for any other: a cached answer to a client that set
// AD (dig does by default) does not tell one that did not.
func wantsAD(q *dns.Msg, qopt *dns.OPT) bool {
	return q.AuthenticatedData || (qopt != nil && qopt.Do())
}

// staleEDE is the Extended DNS Error (RFC 8914 4.4, 4.20) an answer to r
// carries when the cache served it stale (RFC 8767): Stale Answer, or
// Stale NXDOMAIN Answer for an NXDOMAIN, so that a client (kdig shows it)
// and its operator can tell. Only to a client that sent EDNS.
func staleEDE(r *Request, rcode int) (uint16, bool) {
	switch {
	case r.Cache != CacheStale:
		return 0, false
	case rcode == dns.RcodeNameError:
		return dns.ExtendedErrorCodeStaleNXDOMAINAnswer, true
	}
	return dns.ExtendedErrorCodeStaleAnswer, true
}

// keepalive returns the TIMEOUT of the edns-tcp-keepalive option that the
// answer to r carries (see Request.Keepalive), if it carries one: when
// the query, with an OPT record qopt, has the option as a client sends
// it (with no TIMEOUT).
func keepalive(r *Request, qopt *dns.OPT) (uint16, bool) {
	if r.Keepalive == 0 || qopt == nil {
		return 0, false
	}
	for _, o := range qopt.Option {
		if k, ok := o.(*dns.EDNS0_TCP_KEEPALIVE); ok && k.Timeout == 0 {
			return uint16(min(max(r.Keepalive/(100*time.Millisecond), 0), 0xFFFF)), true
		}
	}
	return 0, false
}

// badKeepalive reports an edns-tcp-keepalive option with a TIMEOUT in a
// query. (miekg/dns reads a TIMEOUT of 0 as no TIMEOUT, and refuses to
// decode other lengths.)
func badKeepalive(opt *dns.OPT) bool {
	for _, o := range opt.Option {
		if k, ok := o.(*dns.EDNS0_TCP_KEEPALIVE); ok && k.Timeout != 0 {
			return true
		}
	}
	return false
}

// truncate cuts resp to what the client accepts (RFC 2181 9: set TC).
// Measuring a message costs a compression map, so stream clients (which
// take up to MaxMessage) are not measured here: fitMessage truncates the
// rare answer that packs larger.
func truncate(resp *dns.Msg, size int) {
	if size <= 0 || size >= MaxMessage {
		return
	}
	if resp.Len() > size {
		resp.Truncate(size)
	}
}

// fitMessage packs resp into buf, truncated (TC set) if it would pass
// MaxMessage octets.
func fitMessage(resp *dns.Msg, buf []byte) ([]byte, error) {
	out, err := resp.PackBuffer(buf)
	if err == nil && len(out) <= MaxMessage {
		return out, nil
	}
	resp.Truncate(MaxMessage)
	return resp.PackBuffer(buf)
}

func removeOPT(m *dns.Msg) *dns.OPT {
	var found *dns.OPT
	kept := m.Extra[:0]
	for _, rr := range m.Extra {
		if opt, ok := rr.(*dns.OPT); ok {
			if found == nil {
				found = opt
			}
			continue
		}
		kept = append(kept, rr)
	}
	m.Extra = kept
	return found
}

// hasOption reports whether opt, which may be nil, holds an option of
// the given code.
func hasOption(opt *dns.OPT, code uint16) bool {
	if opt == nil {
		return false
	}
	for _, o := range opt.Option {
		if o.Option() == code {
			return true
		}
	}
	return false
}

// msgTTL is dnswire.CacheTTL for an answer that is a message: the
// smallest TTL of its records (the OPT record is not one), or with no
// answer records the smallest of its authority SOA's TTL and negative
// TTL; none for an rcode other than NOERROR and NXDOMAIN. A test holds
// the two to the same result.
func msgTTL(m *dns.Msg) (uint32, bool) {
	if !dnswire.CacheableRcode(m.Rcode) {
		return 0, false
	}
	var ttl uint32
	ok := false
	take := func(t uint32) {
		if !ok || t < ttl {
			ttl, ok = t, true
		}
	}
	if len(m.Answer) == 0 {
		for _, rr := range m.Ns {
			if soa, isSOA := rr.(*dns.SOA); isSOA {
				take(min(soa.Hdr.Ttl, soa.Minttl))
			}
		}
		return ttl, ok
	}
	for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			if rr.Header().Rrtype != dns.TypeOPT {
				take(rr.Header().Ttl)
			}
		}
	}
	return ttl, ok
}

// EchoECS gives a client that sent an ECS option its own back in the
// answer (RFC 7871 7.2.2: the same family, prefix and address), with the
// upstream's scope, or 0 when the upstream echoed none. The ecs handler
// and the cache (an answer kept for every subnet) use it.
func EchoECS(res Response, client *dns.EDNS0_SUBNET) (Response, error) {
	m, err := res.Message()
	if err != nil {
		return res, err
	}
	if res.Wire != nil {
		res.Wire.Release()
	}
	own := *client
	own.SourceScope = 0
	if opt := m.IsEdns0(); opt != nil {
		kept := opt.Option[:0]
		for _, o := range opt.Option {
			if s, ok := o.(*dns.EDNS0_SUBNET); ok {
				own.SourceScope = min(s.SourceScope, own.SourceNetmask)
				continue
			}
			kept = append(kept, o)
		}
		opt.Option = append(kept, &own)
	} else {
		m.SetEdns0(AdvertisedUDPSize, false)
		m.IsEdns0().Option = []dns.EDNS0{&own}
	}
	return Response{Msg: m}, nil
}

// hasECS reports whether an OPT record carries an EDNS Client Subnet
// option.
func hasECS(opt *dns.OPT) bool {
	for _, o := range opt.Option {
		if o.Option() == dns.EDNS0SUBNET {
			return true
		}
	}
	return false
}

// badECSOption reports an ECS option a query must not carry (RFC 7871 6,
// dnswire.BadECS), read from the query's octets raw (the decoded option
// has lost how many address octets were sent); nil raw (a query made
// here, not received) is not checked.
func badECSOption(opt *dns.OPT, raw []byte) bool {
	if raw == nil || !hasECS(opt) {
		return false
	}
	l, ok := dnswire.Walk(raw)
	if !ok {
		return true
	}
	data, n := dnswire.Option(raw, &l, dns.EDNS0SUBNET)
	return n != 1 || dnswire.BadECS(data)
}
