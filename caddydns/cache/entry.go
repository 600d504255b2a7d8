package cache

import (
	"encoding/binary"
	"time"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/caddydns/dnswire"
)

// entry is a copy of a stored entry, taken under its shard's lock, for
// work past the look-up: an expired entry that may be answered stale when
// its refresh fails, or a fresh one being prefetched.
type entry struct {
	data            []byte // the key, the answer, then the offsets of its TTL fields (2 octets each)
	stored, expires int64  // unix nanos: stored, and no longer fresh
	klen, mlen      uint16
	lay             packedLayout
	failure         bool // a SERVFAIL or an answer with nothing to cache, kept for failure_ttl
}

// answer is the entry's answer for now, as the store's answer is.
func (e *entry) answer(now int64, ttl int64) *caddydns.Wire {
	end := int(e.klen) + int(e.mlen)
	return answer(e.data[e.klen:end], e.data[end:], &e.lay, e.stored, now, ttl)
}

// answer returns msg, laid out in lay and stored at stored, as a
// caddydns.Wire with every TTL (at the offsets in ttls, 2 octets each)
// lowered by its age (never below 0), or set to ttl when ttl >= 0 (a
// stale answer). The Wire is a pooled copy: the chain releases it.
func answer(msg, ttls []byte, lay *packedLayout, stored, now, ttl int64) *caddydns.Wire {
	l := lay.layout()
	w := caddydns.NewWire(msg, &l)
	out := w.Bytes()
	age := uint32(max(now-stored, 0) / int64(time.Second))
	lower := func(t uint32) uint32 {
		switch {
		case ttl >= 0:
			return uint32(ttl)
		case t > age:
			return t - age
		}
		return 0
	}
	for i := 0; i+1 < len(ttls); i += 2 {
		off := int(binary.BigEndian.Uint16(ttls[i:]))
		binary.BigEndian.PutUint32(out[off:], lower(binary.BigEndian.Uint32(out[off:])))
	}
	wl := w.Layout()
	wl.TTL = lower(wl.TTL)
	return w
}

// packedLayout is a dnswire.Layout in 2-octet offsets (a message is at
// most 65535 octets): a quarter of its size, kept by every entry. Its
// fields are in this order so that it has no padding (20 octets).
type packedLayout struct {
	qEnd, end, opt, optRdata, maxPtr uint16 // opt and maxPtr: noOffset for -1
	optCount, rcode                  uint16
	optLast, cacheable               bool
	ttl                              uint32
}

const noOffset = 0xFFFF // past any offset of a 65535-octet message that holds the field

func packLayout(l *dnswire.Layout) packedLayout {
	off := func(v int) uint16 {
		if v < 0 {
			return noOffset
		}
		return uint16(v)
	}
	return packedLayout{
		qEnd: uint16(l.QEnd), end: uint16(l.End), opt: off(l.OPT), optRdata: uint16(l.OPTRdata), maxPtr: off(l.MaxPtr),
		optCount: uint16(l.OPTCount), rcode: uint16(l.Rcode), ttl: l.TTL, optLast: l.OPTLast, cacheable: l.Cacheable,
	}
}

func (p packedLayout) layout() dnswire.Layout {
	off := func(v uint16) int {
		if v == noOffset {
			return -1
		}
		return int(v)
	}
	return dnswire.Layout{
		QEnd: int(p.qEnd), End: int(p.end), OPT: off(p.opt), OPTRdata: int(p.optRdata), MaxPtr: off(p.maxPtr),
		OPTCount: int(p.optCount), Rcode: int(p.rcode), TTL: p.ttl, OPTLast: p.optLast, Cacheable: p.cacheable,
	}
}
