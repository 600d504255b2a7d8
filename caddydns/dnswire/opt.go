package dnswire

import (
	"encoding/binary"

	"github.com/miekg/dns"
)

// HopOption reports an EDNS option that belongs to one hop: padding,
// cookies, keepalive and NSID (RFC 7830, 7873, 7828; RFC 5001 2.3: "The
// NSID option is not transitive": a client asks the server it talks to,
// and no other server's identity goes back to it).
func HopOption(code uint16) bool {
	return code == dns.EDNS0PADDING || code == dns.EDNS0COOKIE || code == dns.EDNS0TCPKEEPALIVE || code == dns.EDNS0NSID
}

// DropHopOptions removes the hop's options (see HopOption) from a packed
// query's OPT record, in place, for the next hop: the client's padding,
// cookie and keepalive are not the upstream's business, and over UDP
// RFC 7828 forbids the keepalive option. With ecs, the EDNS Client
// Subnet option goes too. A query whose OPT record is not its last record
// is returned as it is.
func DropHopOptions(packed []byte, ecs bool) []byte { return ForNextHop(packed, ecs, 0) }

// ForNextHop is DropHopOptions that also sets the OPT record's UDP
// payload size to udpSize (0: left as it is): what the next hop may send
// over UDP is the sender's to say, not its client's (a client on a
// stream has no datagram size to speak of, and one that announces 65535
// would have the upstream's answers come in IP fragments, which an
// attacker can forge).
func ForNextHop(packed []byte, ecs bool, udpSize uint16) []byte {
	l, ok := Walk(packed)
	if !ok || l.OPTCount != 1 || !l.OPTLast {
		return packed
	}
	if udpSize != 0 {
		binary.BigEndian.PutUint16(packed[l.OPT+3:], udpSize) // CLASS, after the root's name and TYPE
	}
	opts := packed[l.OPTRdata:l.End]
	except := uint16(0)
	if ecs {
		except = dns.EDNS0SUBNET
	}
	kept, ok := AppendNonHopExcept(opts[:0], opts, except)
	if !ok {
		return packed
	}
	binary.BigEndian.PutUint16(packed[l.OPTRdata-2:], uint16(len(kept)))
	return packed[:l.OPTRdata+len(kept)]
}

// AppendNonHop appends to dst the options of an OPT record's RDATA that
// are not the hop's (see HopOption); ok is false, and nothing appended,
// when the RDATA is not a run of whole options. dst may be opts[:0]
// (filtering in place: what is kept never passes what is read).
func AppendNonHop(dst, opts []byte) ([]byte, bool) { return AppendNonHopExcept(dst, opts, 0) }

// AppendNonHopExcept is AppendNonHop leaving out the option except too
// (0: none).
func AppendNonHopExcept(dst, opts []byte, except uint16) ([]byte, bool) {
	for rest := opts; len(rest) > 0; { // check before moving anything
		if len(rest) < 4 || 4+int(binary.BigEndian.Uint16(rest[2:])) > len(rest) {
			return dst, false
		}
		rest = rest[4+int(binary.BigEndian.Uint16(rest[2:])):]
	}
	for len(opts) > 0 {
		n := 4 + int(binary.BigEndian.Uint16(opts[2:]))
		if code := binary.BigEndian.Uint16(opts); !HopOption(code) && (except == 0 || code != except) {
			dst = append(dst, opts[:n]...)
		}
		opts = opts[n:]
	}
	return dst, true
}

// AppendOPT adds an OPT record (EDNS version 0, no options) to a packed
// message without one.
func AppendOPT(packed []byte, udpSize uint16) []byte {
	packed = append(packed, 0, 0, byte(dns.TypeOPT), byte(udpSize>>8), byte(udpSize), 0, 0, 0, 0, 0, 0)
	binary.BigEndian.PutUint16(packed[10:], binary.BigEndian.Uint16(packed[10:])+1)
	return packed
}

var zeros [PaddingBlock]byte

// AppendPadding adds a padding option (RFC 7830) to the OPT record that
// ends msg, whose RDLENGTH is at rdlen, so that msg is a multiple of
// PaddingBlock octets (RFC 8467 4.1), unless that would pass the largest
// message. It pads the packed message: a message's estimated length can
// be off (miekg/dns over-counts some record types).
func AppendPadding(msg []byte, rdlen int) []byte {
	n := len(msg) + 4
	if n > MaxMessage {
		return msg
	}
	pad := (PaddingBlock - n%PaddingBlock) % PaddingBlock
	if n+pad > MaxMessage {
		pad = 0
	}
	msg = append(msg, byte(dns.EDNS0PADDING>>8), byte(dns.EDNS0PADDING), byte(pad>>8), byte(pad))
	msg = append(msg, zeros[:pad]...)
	binary.BigEndian.PutUint16(msg[rdlen:], binary.BigEndian.Uint16(msg[rdlen:])+uint16(4+pad))
	return msg
}

// Option returns the data of the last option of the given code in the
// OPT record of msg, laid out in l, and how many options of that code the
// record holds (none when msg has no OPT record or its RDATA is not a run
// of whole options).
func Option(msg []byte, l *Layout, code uint16) (data []byte, n int) {
	if l.OPT < 0 {
		return nil, 0
	}
	end := l.End
	if !l.OPTLast {
		end = l.OPTRdata + int(binary.BigEndian.Uint16(msg[l.OPTRdata-2:]))
	}
	for opts := msg[l.OPTRdata:end]; len(opts) >= 4; {
		size := 4 + int(binary.BigEndian.Uint16(opts[2:]))
		if size > len(opts) {
			return nil, 0
		}
		if binary.BigEndian.Uint16(opts) == code {
			data, n = opts[4:size], n+1
		}
		opts = opts[size:]
	}
	return data, n
}

// BadECS reports an EDNS Client Subnet option's data (see Option) that a
// query must not carry (RFC 7871 6): an unknown family, a source prefix
// longer than the family's addresses, a scope other than 0, more or fewer
// address octets than the source prefix needs, or bits set past it. Family
// 0 with prefix 0 (what dig sends for +subnet=0) is accepted.
func BadECS(data []byte) bool {
	if len(data) < 4 {
		return true
	}
	family, source, scope := binary.BigEndian.Uint16(data), int(data[2]), data[3]
	limit := -1 // the family's address bits
	switch family {
	case 0:
		limit = 0
	case 1:
		limit = 32
	case 2:
		limit = 128
	}
	addr := data[4:]
	switch {
	case limit < 0, source > limit, scope != 0, len(addr) != (source+7)/8:
		return true
	case source%8 != 0 && addr[len(addr)-1]&(0xFF>>(source%8)) != 0:
		return true
	}
	return false
}

// ECSScope is the SCOPE PREFIX-LENGTH of the EDNS Client Subnet option in
// msg's OPT record (laid out in l); ok is false when it has none, or when
// the option is not well formed.
func ECSScope(msg []byte, l *Layout) (scope int, ok bool) {
	if l.OPT < 0 || l.OPTCount != 1 || l.OPTRdata < 2 || l.OPTRdata > len(msg) {
		return 0, false
	}
	rdlen := int(binary.BigEndian.Uint16(msg[l.OPTRdata-2:]))
	if l.OPTRdata+rdlen > len(msg) {
		return 0, false
	}
	for opts := msg[l.OPTRdata : l.OPTRdata+rdlen]; len(opts) >= 4; {
		code, n := binary.BigEndian.Uint16(opts), int(binary.BigEndian.Uint16(opts[2:]))
		if 4+n > len(opts) {
			return 0, false
		}
		if code == dns.EDNS0SUBNET {
			if n < 4 {
				return 0, false
			}
			return int(opts[7]), true
		}
		opts = opts[4+n:]
	}
	return 0, false
}
