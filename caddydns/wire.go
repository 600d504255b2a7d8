package caddydns

import (
	"encoding/binary"
	"sync"

	"github.com/miekg/dns"
)

// An upstream's answer reaches the client as the upstream sent it, with
// only what is per hop rewritten in place: the header's ID and the
// client's flags, the question's letter case, and the OPT record. That is
// what dnsdist does, and it spares each forwarded query an unpack and a
// pack of the answer (a twentieth of a forwarded DoH request's CPU). The
// records' data are passed on as they are, as a proxy should: a record
// type we do not know is no reason to fail a query. An answer the fast
// path cannot take as it is (more than one OPT record, an OPT record not
// at the end, a compression pointer into the OPT record) is decoded and
// encoded again, as any handler's message is.

// layout is where the parts of a DNS message are, from a walk that checks
// that every count, name and length in it is within the message.
type layout struct {
	qEnd      int    // end of the question
	end       int    // end of the last record (octets past it are ignored)
	opt       int    // offset of the OPT record, -1 when there is none
	optRdata  int    // offset of its RDATA
	optCount  int    // OPT records in the message
	optLast   bool   // the OPT record is the last record and owned by the root
	maxPtr    int    // highest compression pointer in an owner name, -1 for none
	rcode     int    // with the OPT record's extended bits
	ttl       uint32 // cache lifetime (see CacheTTL)
	cacheable bool
}

// header fields and flags (RFC 1035 4.1.1)
const (
	flagQR     = 0x80 // octet 2
	flagOpcode = 0x78
	flagRD     = 0x01
	flagTC     = 0x02
	flagCD     = 0x10 // octet 3
	maskRcode  = 0x0F
)

// walk lays out msg, which must hold exactly one question; ok is false
// when it is not a well-formed message. Records' data are not read, but
// for an SOA's minimum (RFC 2308).
func walk(msg []byte) (l layout, ok bool) {
	if len(msg) < MinMessage || binary.BigEndian.Uint16(msg[4:]) != 1 {
		return l, false
	}
	an := int(binary.BigEndian.Uint16(msg[6:]))
	ns := int(binary.BigEndian.Uint16(msg[8:]))
	ar := int(binary.BigEndian.Uint16(msg[10:]))
	l.opt, l.maxPtr = -1, -1
	off, ok := l.skipName(msg, MinMessage)
	if !ok || off+4 > len(msg) {
		return l, false
	}
	l.qEnd = off + 4
	off = l.qEnd
	rcode := int(msg[3] & maskRcode)
	negative := an == 0 // the TTL is the SOA's (RFC 2308 5)
	total := an + ns + ar
	for i := 0; i < total; i++ {
		start := off
		if off, ok = l.skipName(msg, off); !ok || off+10 > len(msg) {
			return l, false
		}
		typ := binary.BigEndian.Uint16(msg[off:])
		ttl := binary.BigEndian.Uint32(msg[off+4:])
		rdata := off + 10
		off = rdata + int(binary.BigEndian.Uint16(msg[off+8:]))
		if off > len(msg) {
			return l, false
		}
		if typ == dns.TypeOPT {
			if i >= an+ns { // an OPT record elsewhere is only data
				l.optCount++
				if l.opt < 0 {
					l.opt, l.optRdata = start, rdata
					l.optLast = i == total-1 && msg[start] == 0
					rcode |= int(ttl>>24) << 4
				}
			}
			continue
		}
		if negative {
			if typ != dns.TypeSOA || i >= an+ns || off-rdata < 22 {
				continue
			}
			ttl = min(ttl, binary.BigEndian.Uint32(msg[off-4:])) // its minimum field
		}
		if !l.cacheable || ttl < l.ttl {
			l.ttl, l.cacheable = ttl, true
		}
	}
	l.end, l.rcode = off, rcode
	if rcode != dns.RcodeSuccess && rcode != dns.RcodeNameError {
		l.cacheable = false
	}
	return l, true
}

// skipName returns the offset past the name at off. A pointer must point
// before itself (RFC 1035 4.1.4: "a prior occurrence"); it is not followed.
func (l *layout) skipName(msg []byte, off int) (int, bool) {
	n := 0
	for off < len(msg) {
		c := int(msg[off])
		switch c & 0xC0 {
		case 0x00:
			if c == 0 {
				return off + 1, true
			}
			n += c + 1
			off += c + 1
			if n > 254 {
				return 0, false
			}
		case 0xC0:
			if off+1 >= len(msg) {
				return 0, false
			}
			ptr := (c&0x3F)<<8 | int(msg[off+1])
			if ptr >= off || ptr < MinMessage {
				return 0, false
			}
			l.maxPtr = max(l.maxPtr, ptr)
			return off + 2, true
		default: // extended label types (RFC 6891 obsoleted them)
			return 0, false
		}
	}
	return 0, false
}

// CacheTTL is how long an answer may be cached (RFC 8484 5.1): the
// smallest TTL of its records, or for an answer with no records in its
// answer section the smallest of its SOA's TTL and negative TTL (RFC
// 2308); none for an answer whose rcode is not NOERROR or NXDOMAIN, or
// that has nothing to go by.
func CacheTTL(msg []byte) (uint32, bool) {
	l, ok := walk(msg)
	return l.ttl, ok && l.cacheable
}

// question returns the question of a packed query (its first name is
// never compressed), or nil.
func question(packed []byte) []byte {
	var l layout
	off, ok := l.skipName(packed, MinMessage)
	if !ok || off+4 > len(packed) {
		return nil
	}
	return packed[MinMessage : off+4]
}

// What answers says of an answer's question.
const (
	otherQuestion = iota
	sameQuestion  // octet for octet
	sameButCase   // the same name in other letter case (RFC 4343)
)

// answers says whether msg, laid out in l, is a response to question
// (the question as packed in the query): the same name, type and class,
// octet for octet or only in ASCII letters of another case. A length
// octet is below 'A', so comparing octet by octet cannot match labels of
// other lengths.
func answers(msg []byte, l *layout, question []byte) int {
	got := msg[MinMessage:l.qEnd]
	if msg[2]&flagQR == 0 || len(got) != len(question) || len(got) < 4 {
		return otherQuestion
	}
	name := len(got) - 4
	if string(got[name:]) != string(question[name:]) {
		return otherQuestion
	}
	same := sameQuestion
	for i := 0; i < name; i++ {
		a, b := got[i], question[i]
		if a == b {
			continue
		}
		if a|0x20 != b|0x20 || a|0x20 < 'a' || a|0x20 > 'z' {
			return otherQuestion
		}
		same = sameButCase
	}
	return same
}

// asTruncated makes the first octets of an answer that did not fit the
// buffer it was read into an answer with TC set and no records: its
// header and question, when they are there whole. Its query then goes
// again over TCP, as when an upstream truncates an answer itself. It
// returns nil when there is no header and question to keep.
func asTruncated(cut []byte) []byte {
	if len(cut) < MinMessage || binary.BigEndian.Uint16(cut[4:]) != 1 {
		return nil
	}
	var l layout
	off, ok := l.skipName(cut, MinMessage)
	if !ok || off+4 > len(cut) {
		return nil
	}
	cut = cut[:off+4]
	cut[2] |= flagTC
	clear(cut[6:MinMessage])
	return cut
}

// answer is an upstream's answer as it came, laid out; pooled.
type answer struct {
	wire []byte
	l    layout
}

var answerPool = sync.Pool{New: func() any { return &answer{wire: make([]byte, 0, 512)} }}

func newAnswer(msg []byte, l *layout) *answer {
	a := answerPool.Get().(*answer)
	a.wire = append(a.wire[:0], msg...)
	a.l = *l
	return a
}

func (a *answer) release() {
	if cap(a.wire) > 4096 {
		return // a rare large answer: let it go rather than pin it
	}
	answerPool.Put(a)
}

// truncated reports the TC flag.
func (a *answer) truncated() bool { return a.wire[2]&flagTC != 0 }

var zeros [PaddingBlock]byte

// finishWire appends to buf the upstream answer a made into the answer to
// r, as finish does for a message: the client's ID, opcode, RD and CD and
// its question's letter case; the OPT record rebuilt for the client
// (version 0, our UDP size, the DO bit echoed, the upstream's padding,
// cookie and keepalive options dropped, our keepalive and padding added
// when asked for) or removed when the query had none. ok is false when a
// needs the slow path.
func finishWire(r *Request, a *answer, buf []byte) (out []byte, rcode int, ok bool) {
	l := &a.l
	msg := a.wire
	if r.Size < MaxMessage || l.optCount > 1 || (l.opt >= 0 && (!l.optLast || l.maxPtr >= l.opt)) {
		return nil, 0, false
	}
	q := r.Msg
	cut := l.end
	if l.opt >= 0 {
		cut = l.opt
	}
	out = append(buf[:0], msg[:cut]...)
	// the question as the client wrote it: the same name but for case
	// (checked when the answer came), so the same length
	if n, err := dns.PackDomainName(q.Question[0].Name, out[:l.qEnd-4], MinMessage, nil, false); err != nil || n != l.qEnd-4 {
		return nil, 0, false
	}
	binary.BigEndian.PutUint16(out, q.Id)
	out[2] = flagQR | byte(q.Opcode<<3)&flagOpcode | msg[2]&0x06 // AA, TC
	if q.RecursionDesired {
		out[2] |= flagRD
	}
	out[3] = msg[3] &^ (flagCD | maskRcode) // RA, Z, AD
	if q.CheckingDisabled {
		out[3] |= flagCD
	}
	rcode = l.rcode
	ar := binary.BigEndian.Uint16(msg[10:])
	qopt := q.IsEdns0()
	if qopt == nil {
		if l.opt >= 0 {
			ar--
		}
		if rcode > 0xF {
			rcode = dns.RcodeServerFailure // an extended rcode needs an OPT the client did not offer
		}
		out[3] |= byte(rcode & maskRcode)
		binary.BigEndian.PutUint16(out[10:], ar)
		return out, rcode, len(out) <= MaxMessage
	}
	out[3] |= byte(rcode & maskRcode)
	if l.opt < 0 {
		ar++
	}
	binary.BigEndian.PutUint16(out[10:], ar)
	// the OPT record: root owner, TYPE, CLASS = UDP size, TTL = extended
	// rcode, version 0, DO and the upstream's other flags, then RDLENGTH
	flags := uint16(0)
	if l.opt >= 0 {
		flags = binary.BigEndian.Uint16(msg[l.optRdata-4:]) &^ 0x8000
	}
	if qopt.Do() {
		flags |= 0x8000
	}
	start := len(out)
	out = append(out, 0, byte(dns.TypeOPT>>8), byte(dns.TypeOPT), byte(advertisedUDPSize>>8), byte(advertisedUDPSize&0xFF),
		byte(rcode>>4), 0, byte(flags>>8), byte(flags), 0, 0)
	if l.opt >= 0 {
		if out, ok = appendNonHop(out, msg[l.optRdata:l.end]); !ok {
			return nil, 0, false
		}
	}
	if t, ok := keepalive(r, qopt); ok {
		out = append(out, byte(dns.EDNS0TCPKEEPALIVE>>8), byte(dns.EDNS0TCPKEEPALIVE), 0, 2, byte(t>>8), byte(t))
	}
	binary.BigEndian.PutUint16(out[start+9:], uint16(len(out)-start-11))
	if hasOption(qopt, dns.EDNS0PADDING) {
		out = appendPadding(out, start+9)
	}
	return out, rcode, len(out) <= MaxMessage
}

// hopOption reports an EDNS option that belongs to one hop: padding,
// cookies and keepalive (RFC 7830, 7873, 7828).
func hopOption(code uint16) bool {
	return code == dns.EDNS0PADDING || code == dns.EDNS0COOKIE || code == dns.EDNS0TCPKEEPALIVE
}

// dropHopOptions removes the hop's options (see hopOption) from a packed
// query's OPT record, in place, for the next hop: the client's padding,
// cookie and keepalive are not the upstream's business, and over UDP
// RFC 7828 forbids the keepalive option. A query whose OPT record is not
// its last record is returned as it is.
func dropHopOptions(packed []byte) []byte {
	l, ok := walk(packed)
	if !ok || l.optCount != 1 || !l.optLast {
		return packed
	}
	opts := packed[l.optRdata:l.end]
	kept, ok := appendNonHop(opts[:0], opts)
	if !ok {
		return packed
	}
	binary.BigEndian.PutUint16(packed[l.optRdata-2:], uint16(len(kept)))
	return packed[:l.optRdata+len(kept)]
}

// appendNonHop appends to dst the options of an OPT record's RDATA that
// are not the hop's (see hopOption); ok is false, and nothing appended,
// when the RDATA is not a run of whole options. dst may be opts[:0]
// (filtering in place: what is kept never passes what is read).
func appendNonHop(dst, opts []byte) ([]byte, bool) {
	for rest := opts; len(rest) > 0; { // check before moving anything
		if len(rest) < 4 || 4+int(binary.BigEndian.Uint16(rest[2:])) > len(rest) {
			return dst, false
		}
		rest = rest[4+int(binary.BigEndian.Uint16(rest[2:])):]
	}
	for len(opts) > 0 {
		n := 4 + int(binary.BigEndian.Uint16(opts[2:]))
		if !hopOption(binary.BigEndian.Uint16(opts)) {
			dst = append(dst, opts[:n]...)
		}
		opts = opts[n:]
	}
	return dst, true
}

// appendPadding adds a padding option (RFC 7830) to the OPT record that
// ends msg, whose RDLENGTH is at rdlen, so that msg is a multiple of
// PaddingBlock octets (RFC 8467 4.1), unless that would pass the largest
// message. It pads the packed message: a message's estimated length can
// be off (miekg/dns over-counts some record types).
func appendPadding(msg []byte, rdlen int) []byte {
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
