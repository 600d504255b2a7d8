// Package dnswire reads and edits DNS messages as octets (RFC 1035 4.1),
// without decoding them: the walk that lays a message out and checks
// every count, name and length in it, the cache lifetime of an answer,
// a query's question, whether an answer answers it, the addresses of its
// A and AAAA records, and edits of the OPT record (RFC 6891) in place.
// It is what lets an upstream's answer reach the client without an unpack
// and a pack; third-party DNS handlers may use it for the same. It
// imports nothing of Caddy's.
package dnswire

import (
	"encoding/binary"

	"github.com/miekg/dns"
)

// Protocol limits.
const (
	// HeaderLen is the size of a DNS header: a shorter message is not DNS.
	HeaderLen = 12
	// MaxMessage is the largest DNS message (RFC 1035 over TCP, RFC 8484).
	MaxMessage = 65535
	// PaddingBlock is the block size responses are padded to (RFC 8467).
	PaddingBlock = 468
)

// Header fields and flags (RFC 1035 4.1.1): octet 2 holds QR, the opcode,
// AA, TC and RD; octet 3 RA, Z, AD, CD and the rcode.
const (
	FlagQR     = 0x80 // octet 2
	MaskOpcode = 0x78
	FlagAA     = 0x04
	FlagTC     = 0x02
	FlagRD     = 0x01
	FlagRA     = 0x80 // octet 3
	FlagZ      = 0x40
	FlagAD     = 0x20
	FlagCD     = 0x10
	MaskRcode  = 0x0F
)

// Layout is where the parts of a DNS message are, from a walk that
// checked that every count, name and length in it is within the message.
type Layout struct {
	QEnd      int    // end of the question
	End       int    // end of the last record (octets past it are ignored)
	OPT       int    // offset of the OPT record, -1 when there is none
	OPTRdata  int    // offset of its RDATA
	OPTCount  int    // OPT records in the message
	OPTLast   bool   // the OPT record is the last record and owned by the root
	MaxPtr    int    // highest compression pointer in an owner name, -1 for none
	Rcode     int    // with the OPT record's extended bits
	TTL       uint32 // cache lifetime (see CacheTTL)
	Cacheable bool
}

// Walk lays out msg, which must hold exactly one question; ok is false
// when it is not a well-formed message. Records' data are not read, but
// for an SOA's minimum (RFC 2308).
func Walk(msg []byte) (l Layout, ok bool) { return walk(msg, 1) }

// WalkQuestionless is Walk for a message without a question (QDCOUNT
// 0), as some servers send errors (unbound's REFUSED from its access
// control): QEnd is HeaderLen.
func WalkQuestionless(msg []byte) (l Layout, ok bool) { return walk(msg, 0) }

func walk(msg []byte, qdcount uint16) (l Layout, ok bool) {
	if len(msg) < HeaderLen || binary.BigEndian.Uint16(msg[4:]) != qdcount {
		return l, false
	}
	an := int(binary.BigEndian.Uint16(msg[6:]))
	ns := int(binary.BigEndian.Uint16(msg[8:]))
	ar := int(binary.BigEndian.Uint16(msg[10:]))
	l.OPT, l.MaxPtr = -1, -1
	off := HeaderLen
	if qdcount == 1 {
		if off, ok = l.skipName(msg, HeaderLen); !ok || off+4 > len(msg) {
			return l, false
		}
		off += 4
	}
	l.QEnd = off
	rcode := int(msg[3] & MaskRcode)
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
				l.OPTCount++
				if l.OPT < 0 {
					l.OPT, l.OPTRdata = start, rdata
					l.OPTLast = i == total-1 && msg[start] == 0
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
		if !l.Cacheable || ttl < l.TTL {
			l.TTL, l.Cacheable = ttl, true
		}
	}
	l.End, l.Rcode = off, rcode
	if !CacheableRcode(rcode) {
		l.Cacheable = false
	}
	return l, true
}

// CacheableRcode reports the rcodes whose answers may be cached: NOERROR
// and NXDOMAIN (RFC 2308).
func CacheableRcode(rcode int) bool {
	return rcode == dns.RcodeSuccess || rcode == dns.RcodeNameError
}

// skipName returns the offset past the name at off. A pointer must point
// before itself (RFC 1035 4.1.4: "a prior occurrence"); it is not followed.
func (l *Layout) skipName(msg []byte, off int) (int, bool) {
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
			if ptr >= off || ptr < HeaderLen {
				return 0, false
			}
			l.MaxPtr = max(l.MaxPtr, ptr)
			return off + 2, true
		default: // extended label types (RFC 6891 obsoleted them)
			return 0, false
		}
	}
	return 0, false
}

// RestoreCase writes orig, a question in its own letter case, over the
// question of msg (laid out in l), which is sent: the same question in
// the case it went upstream in (0x20), as the answer echoed it. Names
// compressed into the question then decode in orig's case; so do owner
// names that repeat the question's name in full, uncompressed (an
// upstream that does not compress), which are written over too. orig and
// sent have the same length.
func RestoreCase(msg []byte, l *Layout, sent, orig []byte) {
	if HeaderLen+len(orig) > l.QEnd || len(sent) != len(orig) {
		return
	}
	name := sent[:len(sent)-4]
	copy(msg[HeaderLen:], orig)
	off := l.QEnd
	total := int(binary.BigEndian.Uint16(msg[6:])) + int(binary.BigEndian.Uint16(msg[8:])) + int(binary.BigEndian.Uint16(msg[10:]))
	var scratch Layout
	for i := 0; i < total; i++ {
		start := off
		end, ok := scratch.skipName(msg, off)
		if !ok || end+10 > len(msg) {
			return
		}
		if end-start == len(name) && string(msg[start:end]) == string(name) {
			copy(msg[start:], orig[:len(name)])
		}
		off = end + 10 + int(binary.BigEndian.Uint16(msg[end+8:]))
	}
}

// CacheTTL is how long an answer may be cached (RFC 8484 5.1): the
// smallest TTL of its records, or for an answer with no records in its
// answer section the smallest of its SOA's TTL and negative TTL (RFC
// 2308); none for an answer whose rcode is not NOERROR or NXDOMAIN, or
// that has nothing to go by.
func CacheTTL(msg []byte) (uint32, bool) {
	l, ok := Walk(msg)
	return l.TTL, ok && l.Cacheable
}

// Question returns the question of a packed query (its first name is
// never compressed), or nil.
func Question(packed []byte) []byte {
	var l Layout
	off, ok := l.skipName(packed, HeaderLen)
	if !ok || off+4 > len(packed) {
		return nil
	}
	return packed[HeaderLen : off+4]
}

// Match is what Answers says of an answer's question.
type Match int

// What an answer's question is to the query's.
const (
	OtherQuestion Match = iota
	SameQuestion        // octet for octet
	SameButCase         // the same name in other letter case (RFC 4343)
)

// Answers says whether msg, laid out in l, is a response to question
// (the question as packed in the query): the same name, type and class,
// octet for octet or only in ASCII letters of another case. A length
// octet is below 'A', so comparing octet by octet cannot match labels of
// other lengths.
func Answers(msg []byte, l *Layout, question []byte) Match {
	got := msg[HeaderLen:l.QEnd]
	if msg[2]&FlagQR == 0 || len(got) != len(question) || len(got) < 4 {
		return OtherQuestion
	}
	name := len(got) - 4
	if string(got[name:]) != string(question[name:]) {
		return OtherQuestion
	}
	same := SameQuestion
	for i := 0; i < name; i++ {
		a, b := got[i], question[i]
		if a == b {
			continue
		}
		if a|0x20 != b|0x20 || a|0x20 < 'a' || a|0x20 > 'z' {
			return OtherQuestion
		}
		same = SameButCase
	}
	return same
}

// AsTruncated makes the first octets of an answer that did not fit the
// buffer it was read into an answer with TC set and no records: its
// header and question, when they are there whole. Its query then goes
// again over TCP, as when an upstream truncates an answer itself. It
// returns nil when there is no header and question to keep.
func AsTruncated(cut []byte) []byte {
	if len(cut) < HeaderLen || binary.BigEndian.Uint16(cut[4:]) != 1 {
		return nil
	}
	var l Layout
	off, ok := l.skipName(cut, HeaderLen)
	if !ok || off+4 > len(cut) {
		return nil
	}
	cut = cut[:off+4]
	cut[2] |= FlagTC
	clear(cut[6:HeaderLen])
	return cut
}

// SetID sets the ID of a packed message (its first two octets).
func SetID(packed []byte, id uint16) {
	packed[0], packed[1] = byte(id>>8), byte(id)
}

// AppendTTLs appends to dst the offset of the TTL field of every record
// of msg but its OPT records (whose TTL field holds EDNS flags), and
// reports false when msg does not walk. A cache lowers the TTLs of a
// stored answer in place through them.
func AppendTTLs(dst []uint16, msg []byte) ([]uint16, bool) {
	var l Layout
	if len(msg) < HeaderLen || binary.BigEndian.Uint16(msg[4:]) != 1 || len(msg) > MaxMessage {
		return dst, false
	}
	off, ok := l.skipName(msg, HeaderLen)
	if !ok || off+4 > len(msg) {
		return dst, false
	}
	off += 4
	total := int(binary.BigEndian.Uint16(msg[6:])) + int(binary.BigEndian.Uint16(msg[8:])) + int(binary.BigEndian.Uint16(msg[10:]))
	for i := 0; i < total; i++ {
		if off, ok = l.skipName(msg, off); !ok || off+10 > len(msg) {
			return dst, false
		}
		if binary.BigEndian.Uint16(msg[off:]) != dns.TypeOPT {
			dst = append(dst, uint16(off+4))
		}
		off += 10 + int(binary.BigEndian.Uint16(msg[off+8:]))
		if off > len(msg) {
			return dst, false
		}
	}
	return dst, true
}
