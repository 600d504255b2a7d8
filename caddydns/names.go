package caddydns

import (
	"hash/maphash"
	"sync/atomic"
	"unsafe"
)

// The names of the common queries (decodeQuick) are interned: a name
// decoded lately, the same octets in the same case, is the same string
// again, with no allocation. Under load most queries ask names asked a
// moment before (a resolver's Zipf), and the name was a query's only
// allocation of its own: fewer allocations are fewer collections, whose
// mark phases are what sets a busy server's slowest answers.
//
// The table is direct-mapped, nameSlots entries by a hash of the octets
// (seeded per process: no client can aim names at one slot, and a slot
// taken by another name is only a miss). An entry is one allocation: the
// name's length, then its octets, written before the entry is published
// and never after, so a string made over them may be shared by every
// goroutine. A name not in the table costs the one allocation it always
// did, and takes the slot.
const nameSlots = 4096

var (
	nameSeed  = maphash.MakeSeed()
	nameTable [nameSlots]atomic.Pointer[byte]
)

// internName returns b as a string: the table's, when it holds b, else a
// new one that the table then holds. b is at most 255 octets (a name's
// presentation form, as decodeQuick makes it).
func internName(b []byte) string {
	if len(b) == 0 || len(b) > 255 {
		return string(b)
	}
	slot := &nameTable[maphash.Bytes(nameSeed, b)&(nameSlots-1)]
	if p := slot.Load(); p != nil && int(*p) == len(b) {
		if s := unsafe.String((*byte)(unsafe.Add(unsafe.Pointer(p), 1)), len(b)); s == string(b) {
			return s
		}
	}
	e := make([]byte, 1+len(b))
	e[0] = byte(len(b))
	copy(e[1:], b)
	slot.Store(&e[0])
	return unsafe.String(&e[1], len(b))
}
