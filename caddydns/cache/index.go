package cache

import (
	"bytes"
	"unsafe"
)

// index maps the key hashes of a shard's live records to their offsets in
// its ring: open addressing with linear probing, in memory outside the Go
// heap (allocRing), so that it costs neither the collector's work nor its
// headroom. A slot is the hash's low 32 bits (its tag, which also places
// it) above the record's offset/8 + 1; 0 is empty. Two keys may share a
// tag: the record's key decides.
type index struct {
	slots []uint64
	mem   []byte // what slots is made of, to free
	n     int    // slots in use
}

const minIndex = 64 // slots of a first table

func tagOf(hash uint64) uint64 { return hash & 0xFFFF_FFFF }

func slotOff(v uint64) int { return int(v&0xFFFF_FFFF-1) << 3 }

// find returns the slot of the live record of key (whose hash is hash)
// and its offset in ring; ok false when there is none.
func (x *index) find(hash uint64, key, ring []byte) (slot, off int, ok bool) {
	if x.n == 0 {
		return 0, 0, false
	}
	mask := len(x.slots) - 1
	tag := tagOf(hash)
	for i := int(tag) & mask; ; i = (i + 1) & mask {
		v := x.slots[i]
		if v == 0 {
			return 0, 0, false
		}
		if v>>32 == tag {
			off := slotOff(v)
			klen := int((*prefix)(unsafe.Pointer(&ring[off])).klen)
			if bytes.Equal(ring[off+hdrSize:off+hdrSize+klen], key) {
				return i, off, true
			}
		}
	}
}

// at returns the slot of the record of hash at off; ok false when that
// record is not the live one of its hash.
func (x *index) at(hash uint64, off int) (slot int, ok bool) {
	if x.n == 0 {
		return 0, false
	}
	mask := len(x.slots) - 1
	want := tagOf(hash)<<32 | uint64(off>>3+1)
	for i := int(tagOf(hash)) & mask; ; i = (i + 1) & mask {
		switch x.slots[i] {
		case 0:
			return 0, false
		case want:
			return i, true
		}
	}
}

// move points slot at off.
func (x *index) move(slot, off int) {
	x.slots[slot] = x.slots[slot]&^0xFFFF_FFFF | uint64(off>>3+1)
}

// insert adds hash at off; hash has no slot (the caller found none). It
// grows the table past three quarters full.
func (x *index) insert(hash uint64, off int) error {
	if 4*(x.n+1) > 3*len(x.slots) {
		if err := x.grow(); err != nil {
			return err
		}
	}
	x.place(tagOf(hash)<<32 | uint64(off>>3+1))
	x.n++
	return nil
}

func (x *index) place(v uint64) {
	mask := len(x.slots) - 1
	i := int(v>>32) & mask
	for x.slots[i] != 0 {
		i = (i + 1) & mask
	}
	x.slots[i] = v
}

func (x *index) grow() error {
	size := max(minIndex, 2*len(x.slots))
	mem, err := allocRing(8 * size)
	if err != nil {
		return err
	}
	old, oldMem := x.slots, x.mem
	x.slots, x.mem = unsafe.Slice((*uint64)(unsafe.Pointer(&mem[0])), size), mem
	for _, v := range old {
		if v != 0 {
			x.place(v)
		}
	}
	return freeRing(oldMem)
}

// remove empties slot, shifting back the slots after it that probing
// would no longer reach.
func (x *index) remove(slot int) {
	mask := len(x.slots) - 1
	i := slot
	for j := (i + 1) & mask; x.slots[j] != 0; j = (j + 1) & mask {
		home := int(x.slots[j]>>32) & mask
		// the slot at j stays when its home is cyclically in (i, j]
		if i <= j && i < home && home <= j || i > j && (i < home || home <= j) {
			continue
		}
		x.slots[i] = x.slots[j]
		i = j
	}
	x.slots[i] = 0
	x.n--
}

// free gives the table's memory back.
func (x *index) free() error {
	err := freeRing(x.mem)
	x.slots, x.mem, x.n = nil, nil, 0
	return err
}
