package caddydns

import (
	"encoding/binary"
	"sync"

	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns/dnswire"
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

// Wire is an answer as an upstream sent it, laid out by dnswire.Walk: a
// handler returns it in a Response, and the chain finishes it for the
// client without decoding it. Wires are pooled: NewWire takes one, and
// Release gives it back once nothing reads it any more (the chain does,
// for the Wire it finishes).
type Wire struct {
	msg []byte
	l   dnswire.Layout
}

var wirePool = sync.Pool{New: func() any { return &Wire{msg: make([]byte, 0, 512)} }}

// NewWire returns a copy of msg, which l lays out.
func NewWire(msg []byte, l *dnswire.Layout) *Wire {
	w := wirePool.Get().(*Wire)
	w.msg = append(w.msg[:0], msg...)
	w.l = *l
	return w
}

// Release returns w to the pool.
func (w *Wire) Release() {
	if cap(w.msg) > 4096 {
		return // a rare large answer: let it go rather than pin it
	}
	wirePool.Put(w)
}

// Bytes is the answer as it came.
func (w *Wire) Bytes() []byte { return w.msg }

// Layout is where its parts are.
func (w *Wire) Layout() *dnswire.Layout { return &w.l }

// Truncated reports the TC flag.
func (w *Wire) Truncated() bool { return w.msg[2]&dnswire.FlagTC != 0 }

// finishWire appends to buf the upstream answer a made into the answer to
// r, as finish does for a message: the client's ID, opcode, RD and CD and
// its question's letter case; the OPT record rebuilt for the client
// (version 0, our UDP size, the DO bit echoed, the upstream's padding,
// cookie and keepalive options dropped, our keepalive and padding added
// when asked for) or removed when the query had none. ok is false when a
// needs the slow path.
func finishWire(r *Request, a *Wire, buf []byte) (out []byte, rcode int, ok bool) {
	l := &a.l
	msg := a.msg
	if r.Size < MaxMessage || l.OPTCount > 1 || (l.OPT >= 0 && (!l.OPTLast || l.MaxPtr >= l.OPT)) || binary.BigEndian.Uint16(msg[4:]) != 1 {
		// (an answer without its question, as some servers send errors:
		// the message path gives it the client's)
		return nil, 0, false
	}
	q := r.Msg
	cut := l.End
	if l.OPT >= 0 {
		cut = l.OPT
	}
	out = append(buf[:0], msg[:cut]...)
	// the question as the client wrote it: the same name but for case
	// (checked when the answer came), so the same length
	if n, err := dns.PackDomainName(q.Question[0].Name, out[:l.QEnd-4], dnswire.HeaderLen, nil, false); err != nil || n != l.QEnd-4 {
		return nil, 0, false
	}
	binary.BigEndian.PutUint16(out, q.Id)
	out[2] = dnswire.FlagQR | byte(q.Opcode<<3)&dnswire.MaskOpcode | msg[2]&0x06 // AA, TC
	if q.RecursionDesired {
		out[2] |= dnswire.FlagRD
	}
	out[3] = msg[3] &^ (dnswire.FlagCD | dnswire.MaskRcode) // RA, Z, AD
	if q.CheckingDisabled {
		out[3] |= dnswire.FlagCD
	}
	qopt := q.IsEdns0()
	if !wantsAD(q, qopt) {
		out[3] &^= dnswire.FlagAD
	}
	rcode = l.Rcode
	ar := binary.BigEndian.Uint16(msg[10:])
	if qopt == nil {
		if l.OPT >= 0 {
			ar--
		}
		if rcode > 0xF {
			rcode = dns.RcodeServerFailure // an extended rcode needs an OPT the client did not offer
		}
		out[3] |= byte(rcode & dnswire.MaskRcode)
		binary.BigEndian.PutUint16(out[10:], ar)
		return out, rcode, len(out) <= MaxMessage
	}
	out[3] |= byte(rcode & dnswire.MaskRcode)
	if l.OPT < 0 {
		ar++
	}
	binary.BigEndian.PutUint16(out[10:], ar)
	// the OPT record: root owner, TYPE, CLASS = UDP size, TTL = extended
	// rcode, version 0, DO and the upstream's other flags, then RDLENGTH
	flags := uint16(0)
	if l.OPT >= 0 {
		flags = binary.BigEndian.Uint16(msg[l.OPTRdata-4:]) &^ 0x8000
	}
	if qopt.Do() {
		flags |= 0x8000
	}
	start := len(out)
	out = append(out, 0, byte(dns.TypeOPT>>8), byte(dns.TypeOPT), byte(AdvertisedUDPSize>>8), byte(AdvertisedUDPSize&0xFF),
		byte(rcode>>4), 0, byte(flags>>8), byte(flags), 0, 0)
	if l.OPT >= 0 {
		except := uint16(0) // an ECS option goes only to a client that sent one (RFC 7871 7.2.2)
		if !hasECS(qopt) {
			except = dns.EDNS0SUBNET
		}
		if out, ok = dnswire.AppendNonHopExcept(out, msg[l.OPTRdata:l.End], except); !ok {
			return nil, 0, false
		}
	}
	if t, ok := keepalive(r, qopt); ok {
		out = append(out, byte(dns.EDNS0TCPKEEPALIVE>>8), byte(dns.EDNS0TCPKEEPALIVE), 0, 2, byte(t>>8), byte(t))
	}
	if r.NSID != nil {
		out = append(out, byte(dns.EDNS0NSID>>8), byte(dns.EDNS0NSID), byte(len(r.NSID)>>8), byte(len(r.NSID)))
		out = append(out, r.NSID...)
	}
	if code, ok := staleEDE(r, rcode); ok {
		out = append(out, byte(dns.EDNS0EDE>>8), byte(dns.EDNS0EDE), 0, 2, byte(code>>8), byte(code))
	}
	binary.BigEndian.PutUint16(out[start+9:], uint16(len(out)-start-11))
	if hasOption(qopt, dns.EDNS0PADDING) {
		out = dnswire.AppendPadding(out, start+9)
	}
	return out, rcode, len(out) <= MaxMessage
}
