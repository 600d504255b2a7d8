package cache

import (
	"encoding/binary"
	"hash/maphash"
	"net"

	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns/dnswire"
)

// maxKey bounds a key: a name (at most 255 octets in presentation form
// without escapes, 4 times that with \DDD escapes), type, class, flags,
// an ECS option, and up to maxKeyOptions octets of other options. A
// query whose key is longer is not cached.
const maxKey = 4*255 + 4 + 1 + 4 + 16 + 1 + maxKeyOptions

// maxKeyOptions bounds the options of a key (see appendOptions).
const maxKeyOptions = 256

var seed = maphash.MakeSeed()

// appendKey appends the cache key of query q to dst: the question's type,
// class and name (ASCII letters in lower case), the DO, CD and RD bits,
// and, with ecs (the ECS option is what goes upstream: Request.ECS), the
// ECS option's family, source prefix length and address (masked to the
// prefix) when the query carries one; then every other option that goes
// upstream with it (appendOptions; raw is the query's octets, nil for a
// message made here). The ID and the hop's options (padding, cookie,
// keepalive, NSID) are not in it. nil: the query has no key (not cached).
func appendKey(dst []byte, q *dns.Msg, ecs bool, raw []byte) []byte {
	qn := q.Question[0]
	dst = binary.BigEndian.AppendUint16(dst, qn.Qtype)
	dst = binary.BigEndian.AppendUint16(dst, qn.Qclass)
	var flags byte
	if q.RecursionDesired {
		flags |= 1
	}
	if q.CheckingDisabled {
		flags |= 2
	}
	opt := q.IsEdns0()
	if opt != nil && opt.Do() {
		flags |= 4
	}
	dst = append(dst, flags)
	if opt != nil && ecs {
		for _, o := range opt.Option {
			if ecs, ok := o.(*dns.EDNS0_SUBNET); ok {
				dst = appendECS(dst, ecs)
				break
			}
		}
	}
	for i := 0; i < len(qn.Name); i++ {
		c := qn.Name[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	if opt != nil && (len(opt.Option) > 0 || ednsFlags(opt) != 0) {
		dst = appendOptions(dst, opt, q, raw)
	}
	return dst
}

// ednsFlags are the OPT record's flags but DO (in the key's flags octet):
// 0 from an honest client, but for flags defined since (CO, RFC 9824,
// which an upstream may answer by).
func ednsFlags(opt *dns.OPT) uint16 { return uint16(opt.Hdr.Ttl) &^ 0x8000 }

// optionsMark ends the name in a key with options (see appendOptions):
// no name in presentation form holds it (miekg/dns writes \000).
const optionsMark = 0

// appendOptions appends to a key what of the query's OPT record goes
// upstream and is not in the key otherwise (opt the record, raw the
// query's octets or nil): after optionsMark, its flags but DO
// (ednsFlags), then its options but the hop's (dnswire.HopOption) and
// ECS, as octets, in their order. An upstream may answer
// according to them (a filtering service's device or profile option):
// an answer to a query with one must not serve a query without it, or
// with another (dnsdist keys its cache by them too). A query with none
// appends nothing; nil when they cannot be read (the query is then not
// cached).
func appendOptions(dst []byte, opt *dns.OPT, q *dns.Msg, raw []byte) []byte {
	flags := ednsFlags(opt)
	upstream := flags != 0
	for _, o := range opt.Option {
		if code := o.Option(); code != dns.EDNS0SUBNET && !dnswire.HopOption(code) {
			upstream = true
			break
		}
	}
	if !upstream {
		return dst
	}
	dst = append(dst, optionsMark, byte(flags>>8), byte(flags))
	if len(opt.Option) == 0 {
		return dst
	}
	if raw == nil {
		var err error
		if raw, err = q.Pack(); err != nil {
			return nil
		}
	}
	l, ok := dnswire.Walk(raw)
	if !ok || l.OPT < 0 || !l.OPTLast {
		return nil
	}
	dst, ok = dnswire.AppendNonHopExcept(dst, raw[l.OPTRdata:l.End], dns.EDNS0SUBNET)
	if !ok {
		return nil
	}
	return dst
}

// appendECS appends an ECS option's family, source prefix length and
// address, masked to the prefix (RFC 7871 6: the bits past it must be 0,
// but a client's may not be).
func appendECS(dst []byte, ecs *dns.EDNS0_SUBNET) []byte {
	addr := ecs.Address
	switch ecs.Family {
	case 1:
		addr = addr.To4()
	case 2:
		addr = addr.To16()
	default:
		addr = nil
	}
	// the prefix length written is the one the address bytes follow
	// (keyName skips by it): 0 for an address that cannot be read
	bits := 0
	if addr != nil {
		bits = min(int(ecs.SourceNetmask), len(addr)*8)
	}
	dst = append(dst, 0xEC, byte(ecs.Family>>8), byte(ecs.Family), byte(bits))
	if bits == 0 {
		return dst
	}
	masked := addr.Mask(net.CIDRMask(bits, len(addr)*8))
	return append(dst, masked[:(bits+7)/8]...)
}

// zeroMark stands for the ECS part of a key in zeroKey. Neither it nor
// appendECS's 0xEC can begin a name in presentation form (ASCII).
const zeroMark = 0xE0

// zeroKey appends to dst the key under which the answer to key's query
// is kept when it is for every subnet: the upstream gave it SCOPE
// PREFIX-LENGTH 0 (RFC 7871 7.3.1). It is key with its ECS part replaced
// by zeroMark, which no query's key holds, so that such an answer serves
// the queries of every subnet (and one whose option asks for none:
// family 0, prefix 0), but never a query that went upstream without an
// option (the upstream may tailor that answer to us). The answer to a
// query of family 0 is kept under its own key unless its scope is 0. ok
// is false for a key without an ECS part.
func zeroKey(dst, key []byte) ([]byte, bool) {
	if len(key) < 9 || key[5] != 0xEC {
		return dst, false
	}
	n := 4 + (int(key[8])+7)/8
	if 5+n > len(key) {
		return dst, false
	}
	dst = append(dst, key[:5]...)
	dst = append(dst, zeroMark)
	return append(dst, key[5+n:]...), true
}

// hashKey is the key's hash, the index of the store (the entry holds the
// key itself, compared on a hit).
func hashKey(key []byte) uint64 { return maphash.Bytes(seed, key) }
