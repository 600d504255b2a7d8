package cache

import (
	"bytes"
	"encoding/binary"
	"sync/atomic"
	"time"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/caddydns/dnswire"
)

// entryOverhead is what an entry costs beyond its octets: the entry, the
// store's node and index (BenchmarkEntryMemory, rounded up).
const entryOverhead = 208

// entry is one cached answer, as the upstream (or a handler) gave it, its
// TTLs clamped to min_ttl and max_ttl. It is read-only once stored, but
// for its counters. Its octets are one allocation, and the entry holds no
// other pointer, so that a million entries are few objects for the
// collector.
type entry struct {
	data []byte // the key, the answer, then the offsets of its TTL fields (2 octets each)
	// stored is when it was stored, expires when it stops being fresh
	// (unix nanos)
	stored, expires int64
	// failedUntil: the upstream failed to refresh this expired entry;
	// until then it is served stale without asking (RFC 8767 5)
	failedUntil atomic.Int64
	hits        atomic.Uint32
	klen, mlen  uint16
	lay         packedLayout
	failure     bool // a SERVFAIL or an answer with nothing to cache, kept for failure_ttl
	prefetching atomic.Bool
}

func newEntry(key, msg []byte, ttls int) *entry {
	data := make([]byte, len(key)+len(msg), len(key)+len(msg)+2*ttls)
	copy(data, key)
	copy(data[len(key):], msg)
	return &entry{data: data, klen: uint16(len(key)), mlen: uint16(len(msg))}
}

func (e *entry) key() []byte { return e.data[:e.klen] }
func (e *entry) msg() []byte { return e.data[e.klen : int(e.klen)+int(e.mlen)] }

// ttl returns the offset of the i-th TTL field to lower.
func (e *entry) ttl(i int) int {
	return int(binary.BigEndian.Uint16(e.data[int(e.klen)+int(e.mlen)+2*i:]))
}

func (e *entry) ttlCount() int { return (len(e.data) - int(e.klen) - int(e.mlen)) / 2 }

func (e *entry) is(key []byte) bool { return bytes.Equal(e.key(), key) }

func (e *entry) size() uint32 { return uint32(cap(e.data) + entryOverhead) }

// answer returns the entry as a caddydns.Wire with every TTL lowered by
// its age (never below 0), or set to ttl when ttl >= 0 (a stale answer).
// The Wire is a pooled copy: the chain releases it.
func (e *entry) answer(now int64, ttl int64) *caddydns.Wire {
	l := e.lay.layout()
	w := caddydns.NewWire(e.msg(), &l)
	msg := w.Bytes()
	age := uint32(max(now-e.stored, 0) / int64(time.Second))
	lower := func(t uint32) uint32 {
		switch {
		case ttl >= 0:
			return uint32(ttl)
		case t > age:
			return t - age
		}
		return 0
	}
	for i := range e.ttlCount() {
		off := e.ttl(i)
		binary.BigEndian.PutUint32(msg[off:], lower(binary.BigEndian.Uint32(msg[off:])))
	}
	lay := w.Layout()
	lay.TTL = lower(lay.TTL)
	return w
}

// packedLayout is a dnswire.Layout in 2-octet offsets (a message is at
// most 65535 octets): a quarter of its size, kept by every entry.
type packedLayout struct {
	qEnd, end, opt, optRdata, maxPtr uint16 // opt and maxPtr: noOffset for -1
	optCount, rcode                  uint16
	ttl                              uint32
	optLast, cacheable               bool
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
