package cache

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"
)

// checkRings fails t when a ring of s does not hold what its counters
// say: records walk from tail to head exactly, round the ring's end; the
// index points at live records only, and they add up to count and live.
func checkRings(t testing.TB, s *store) {
	t.Helper()
	total := int64(0)
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		if sh.n > len(sh.buf) || sh.count > sh.limit || sh.used > sh.n || sh.head > sh.n || sh.tail >= max(sh.n, 1) {
			t.Fatalf("shard %d: n %d of %d, count %d of %d, used %d, head %d, tail %d", i, sh.n, len(sh.buf), sh.count, sh.limit, sh.used, sh.head, sh.tail)
		}
		seen := map[uint64]bool{}
		off, left, count, liveBytes := sh.tail, sh.used, 0, 0
		for left > 0 {
			p := sh.prefix(off)
			size := int(p.size)
			if size <= 0 || size%8 != 0 || off+size > sh.n || size > left {
				t.Fatalf("shard %d: a record of %d octets at %d (ring %d, %d octets left)", i, size, off, sh.n, left)
			}
			if p.flags&flagPad == 0 {
				h := sh.hdr(off)
				hash := hashKey(sh.key(off, h))
				if _, ok := sh.idx.at(hash, off); ok {
					if seen[hash] {
						t.Fatalf("shard %d: hash %x twice", i, hash)
					}
					seen[hash] = true
					count++
					liveBytes += size
					if align8(hdrSize+int(h.klen)+int(h.mlen)+2*int(h.nttl)) > size { // written over a larger one: the rest unused
						t.Fatalf("shard %d: record at %d: size %d for its body", i, off, size)
					}
				}
			} else if off+size != sh.n {
				t.Fatalf("shard %d: padding at %d does not end the ring (%d)", i, off, sh.n)
			}
			off += size
			left -= size
			if off == sh.n {
				off = 0
			}
		}
		if sh.used > 0 && off != sh.head && !(off == 0 && sh.head == sh.n) {
			t.Fatalf("shard %d: records end at %d, head %d", i, off, sh.head)
		}
		if count != sh.count || liveBytes != sh.live || sh.idx.n != count {
			t.Fatalf("shard %d: %d live records of %d octets, counted %d of %d, index %d", i, count, liveBytes, sh.count, sh.live, sh.idx.n)
		}
		inUse := 0
		for _, v := range sh.idx.slots {
			if v != 0 {
				inUse++
				off := slotOff(v)
				key := sh.key(off, sh.hdr(off))
				if !seen[hashKey(key)] {
					t.Fatalf("shard %d: slot for %d, no live record there", i, off)
				}
				if _, _, ok := sh.idx.find(hashKey(key), key, sh.buf); !ok {
					t.Fatalf("shard %d: a slot probing does not reach", i)
				}
			}
		}
		if inUse != count {
			t.Fatalf("shard %d: %d slots in use, %d live records", i, inUse, count)
		}
		total += int64(liveBytes)
		sh.mu.Unlock()
	}
	if s.bytes.Load() != total {
		t.Fatalf("bytes %d, records %d", s.bytes.Load(), total)
	}
}

// ringOps plays ops on s, a byte an operation (with the next as its
// argument): store entries of any size, look them up (hits send them
// round), let time pass, purge, all of it checked.
func ringOps(t testing.TB, s *store, ops []byte) {
	now := time.Now().UnixNano()
	msg := make([]byte, 6000)
	for i := 0; i+1 < len(ops); i += 2 {
		op, arg := ops[i], int(ops[i+1])
		name := "n" + strconv.Itoa(arg%97) + ".test."
		key := append([]byte{0, 1, 0, 1, 0}, name...)
		hash := hashKey(key)
		switch op % 8 {
		case 0, 1, 2, 3:
			size := 12 + arg*int(op)%4000
			ttls := []uint16{12, 30}[:arg%3%2+1]
			binary.BigEndian.PutUint32(msg[12:], 300)
			binary.BigEndian.PutUint32(msg[30:], 300)
			s.put(hash, key, msg[:max(size, 40)], ttls, packedLayout{qEnd: 12, end: uint16(max(size, 40)), opt: noOffset, maxPtr: noOffset},
				now, now+int64(arg%5)*int64(time.Second), op%16 == 3)
		case 4, 5:
			if f := s.lookup(hash, key, now, 2, false); f.wire != nil {
				f.wire.Release()
			}
		case 6:
			now += int64(arg) * int64(time.Second) / 8
		case 7:
			if arg%16 == 0 {
				s.purge("", false, 0)
			} else {
				s.purge(name, arg%2 == 0, uint16(arg%3))
			}
		}
		checkRings(t, s)
	}
}

// TestRing: long random runs on small rings, one shard and several,
// bounded by bytes or by entries.
func TestRing(t *testing.T) {
	for _, tc := range []struct {
		entries int
		bytes   int64
		stale   time.Duration
	}{{1000, 96 << 10, time.Hour}, {40, 1 << 20, 0}, {5000, 600 << 10, time.Minute}, {3, 200 << 10, time.Hour}} {
		s, err := newStore("ring", tc.entries, tc.bytes, 4096, tc.stale)
		if err != nil {
			t.Fatal(err)
		}
		r := rand.New(rand.NewPCG(uint64(tc.entries), 1))
		ops := make([]byte, 40_000)
		for i := range ops {
			ops[i] = byte(r.UintN(256))
		}
		ringOps(t, s, ops)
		if s.entries() > tc.entries {
			t.Fatalf("%d entries, max %d", s.entries(), tc.entries)
		}
		if err := s.Destruct(); err != nil {
			t.Fatal(err)
		}
	}
}

// FuzzRing: any sequence of operations keeps the rings whole.
func FuzzRing(f *testing.F) {
	f.Add([]byte{0, 200, 1, 200, 2, 250, 4, 1, 6, 80, 3, 5})
	f.Add([]byte{1, 255, 1, 254, 1, 253, 1, 252, 1, 251, 7, 0, 2, 100})
	f.Fuzz(func(t *testing.T, ops []byte) {
		s, err := newStore("fuzz", 20, 128<<10, 4096, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Destruct()
		ringOps(t, s, ops)
	})
}

// TestIndex: hashes sharing a tag, and tags sharing a home, are each
// found until removed, through growth and back-shifting removals.
func TestIndex(t *testing.T) {
	const n, rec = 3000, hdrSize + 8
	ring := make([]byte, n*rec)
	var x index
	hashes := make([]uint64, n)
	key := func(i int) []byte { return binary.BigEndian.AppendUint64(nil, uint64(i)) }
	for i := range n {
		// a few tags, many high halves: long runs of one tag, and tags
		// whose homes meet
		hashes[i] = uint64(i)<<32 | uint64(i%7)*64
		(*prefix)(unsafe.Pointer(&ring[i*rec])).klen = 8
		copy(ring[i*rec+hdrSize:], key(i))
		if err := x.insert(hashes[i], i*rec); err != nil {
			t.Fatal(err)
		}
	}
	r := rand.New(rand.NewPCG(7, 7))
	gone := map[int]bool{}
	for _, i := range r.Perm(n)[:n/2] {
		slot, off, ok := x.find(hashes[i], key(i), ring)
		if !ok || off != i*rec {
			t.Fatalf("key %d: found %v at %d", i, ok, off)
		}
		if s2, ok := x.at(hashes[i], off); !ok || s2 != slot {
			t.Fatalf("key %d: at %d %v, find %d", i, s2, ok, slot)
		}
		x.remove(slot)
		gone[i] = true
	}
	for i := range n {
		_, off, ok := x.find(hashes[i], key(i), ring)
		if ok == gone[i] || ok && off != i*rec {
			t.Fatalf("key %d: found %v at %d, removed %v", i, ok, off, gone[i])
		}
		// a key of the same hash that is not stored is not found
		if _, _, ok := x.find(hashes[i], key(n+i), ring); ok {
			t.Fatalf("key %d: another key of its hash found", i)
		}
	}
	if x.n != n/2 {
		t.Fatalf("%d in use, want %d", x.n, n/2)
	}
	if err := x.free(); err != nil {
		t.Fatal(err)
	}
}

// TestRefreshInPlace: a refreshed entry whose answer fits its record is
// written over it, with no dead record left; a larger one moves.
func TestRefreshInPlace(t *testing.T) {
	s, err := newStore("refresh", 100, 1<<20, 4096, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Destruct()
	key := []byte("\x00\x01\x00\x01\x00www.example.org.")
	hash := hashKey(key)
	now := time.Now().UnixNano()
	lay := packedLayout{opt: noOffset, maxPtr: noOffset}
	where := func() (int, int) {
		sh := s.shard(hash)
		_, off, ok := sh.idx.find(hash, key, sh.buf)
		if !ok {
			t.Fatal("no entry")
		}
		return off, sh.used
	}
	s.put(hash, key, make([]byte, 100), nil, lay, now, now+int64(time.Second), false)
	off0, used0 := where()
	s.put(hash, key, make([]byte, 90), nil, lay, now+1, now+int64(time.Minute), false)
	if off, used := where(); off != off0 || used != used0 {
		t.Fatalf("a refresh that fits moved from %d to %d (used %d, then %d)", off0, off, used0, used)
	}
	if f := s.lookup(hash, key, now+2, 0, false); f.wire == nil || len(f.wire.Bytes()) != 90 {
		t.Fatal("the refreshed entry does not answer with its new answer")
	} else {
		f.wire.Release()
	}
	s.put(hash, key, make([]byte, 400), nil, lay, now+3, now+int64(time.Minute), false)
	if off, used := where(); off == off0 || used <= used0 {
		t.Fatalf("a refresh too big for its record stayed at %d (used %d, then %d)", off, used0, used)
	}
	checkRings(t, s)
	if s.entries() != 1 {
		t.Fatalf("%d entries, want 1", s.entries())
	}
}

// TestStoreSizes: a max_bytes too small for an answer of max_entry_size,
// or past what the index can address, is refused with both figures; the
// least that is taken keeps such an answer.
func TestStoreSizes(t *testing.T) {
	for _, tc := range []struct {
		bytes int64
		size  int
		want  string
	}{
		{1000, 4096, "max_bytes 1000 is too small for max_entry_size 4096"},
		{64 << 10, 65535, "max_bytes 65536 is too small for max_entry_size 65535"},
		{2 << 40, 4096, "max_bytes 2199023255552 is over"},
	} {
		if _, err := newStore("sizes", 1000, tc.bytes, tc.size, 0); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("max_bytes %d, max_entry_size %d: %v, want %q", tc.bytes, tc.size, err, tc.want)
		}
	}
	rec := align8(hdrSize + maxKey + 4096 + 2*(4096/11+1))
	s, err := newStore("sizes", 1000, int64(4*rec), 4096, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Destruct()
	key := []byte("\x00\x01\x00\x01\x00big.example.")
	hash := hashKey(key)
	now := time.Now().UnixNano()
	s.put(hash, key, make([]byte, 4096), nil, packedLayout{opt: noOffset, maxPtr: noOffset}, now, now+int64(time.Minute), false)
	if s.entries() != 1 {
		t.Fatal("an answer of max_entry_size was not kept at the least max_bytes")
	}
}

// TestHeader: a record's header is 56 octets, with no padding (a field
// added, or reordered, that pads it to 64 costs every entry 8 octets);
// a failed refresh holds back another until its time past expires, in
// whole milliseconds at most that late, none when it is not past expires,
// and at most failedFor's 49 days.
func TestHeader(t *testing.T) {
	if hdrSize != 56 || unsafe.Sizeof(packedLayout{}) != 20 {
		t.Errorf("header %d octets, its layout %d; want 56 and 20", hdrSize, unsafe.Sizeof(packedLayout{}))
	}
	expires := time.Now().UnixNano()
	for _, tc := range []struct {
		until, want int64
	}{
		{expires + int64(5*time.Second) + 999_999, expires + int64(5*time.Second)}, // rounded down
		{expires + int64(time.Millisecond), expires + int64(time.Millisecond)},
		{expires, expires},                      // none
		{expires - int64(time.Minute), expires}, // not past expires: none
		{expires + int64(60*24*time.Hour), expires + int64(math.MaxUint32)*int64(time.Millisecond)}, // 60 days: cut to 49.7
	} {
		h := header{expires: expires}
		h.setFailedUntil(tc.until)
		if got := h.failedUntil(); got != tc.want {
			t.Errorf("until expires%+v: failedUntil expires%+v, want expires%+v", time.Duration(tc.until-expires),
				time.Duration(got-expires), time.Duration(tc.want-expires))
		}
	}
}

// TestDoorkeeper: while the store has room, an answer is kept at once;
// once it is full, a new name is kept on its second miss and not its
// first, an entry it has is refreshed as before, and a flood of names
// asked once leaves most of the entries it had in place.
func TestDoorkeeper(t *testing.T) {
	const limit = 32
	s, err := newStore("door", limit, 96<<10, 4096, time.Hour) // one shard
	if err != nil {
		t.Fatal(err)
	}
	defer s.Destruct()
	if len(s.shards) != 1 {
		t.Fatalf("%d shards, want 1", len(s.shards))
	}
	now := time.Now().UnixNano()
	msg := make([]byte, 60)
	binary.BigEndian.PutUint32(msg[12:], 300)
	keyOf := func(name string) []byte { return append([]byte{0, 1, 0, 1, 0}, name...) }
	put := func(name string) {
		key := keyOf(name)
		s.put(hashKey(key), key, msg, []uint16{12}, packedLayout{qEnd: 12, end: uint16(len(msg)), opt: noOffset, maxPtr: noOffset},
			now, now+int64(300*time.Second), false)
	}
	has := func(name string) bool {
		key := keyOf(name)
		f := s.lookup(hashKey(key), key, now, 0, false)
		if f.wire != nil {
			f.wire.Release()
			return true
		}
		return false
	}
	cold := func(i int) string { return "c" + strconv.Itoa(i) + ".test." }
	for i := range limit {
		put(cold(i))
		if !has(cold(i)) {
			t.Fatalf("entry %d not kept with room for it", i)
		}
	}
	if s.notAdmitted.Load() != 0 || s.doorkeeperBytes() != 0 {
		t.Fatalf("with room: %d not admitted, a doorkeeper of %d octets", s.notAdmitted.Load(), s.doorkeeperBytes())
	}
	// full: the next name is kept on its second miss
	put("new.test.")
	if has("new.test.") || s.notAdmitted.Load() != 1 {
		t.Fatalf("full: a new name kept on its first miss (not admitted: %d)", s.notAdmitted.Load())
	}
	put("new.test.")
	if !has("new.test.") {
		t.Fatal("full: a new name not kept on its second miss")
	}
	// an entry the store has is refreshed, whatever the doorkeeper says
	put("new.test.")
	if !has("new.test.") || s.notAdmitted.Load() != 1 {
		t.Fatalf("a refresh went through the doorkeeper (not admitted: %d)", s.notAdmitted.Load())
	}
	// a flood of names asked once (a bitset of 256 bits, 2 a name: a
	// few get in as "seen", each evicting one entry)
	for i := range 100 {
		put("flood" + strconv.Itoa(i) + ".test.")
	}
	if n := s.notAdmitted.Load(); n < 1+80 {
		t.Fatalf("a flood of 100 names: %d not admitted", n-1)
	}
	kept := 0
	for i := range limit {
		if has(cold(i)) {
			kept++
		}
	}
	if kept < limit/2 {
		t.Fatalf("a flood of names asked once evicted %d of %d entries", limit-kept, limit)
	}
	if dk := s.doorkeeperBytes(); dk != 32 {
		t.Fatalf("a doorkeeper of %d octets for %d entries, want 32 (8 bits an entry)", dk, limit)
	}
	checkRings(t, s)
}

// TestDoorkeeperFalseSeen: a key is let in on its second ask within the
// window, and a key never asked is taken for one asked (a false "seen")
// rarely: under 1 time in 30 on average over a window, about 1 in 20 at
// its end, and never when the bitset is empty.
func TestDoorkeeperFalseSeen(t *testing.T) {
	for _, limit := range []int{64, 3906, 100_000} {
		sh := &shard{limit: limit}
		rng := rand.New(rand.NewPCG(1, uint64(limit)))
		if sh.admit(rng.Uint64()) {
			t.Fatalf("limit %d: a first key admitted by an empty bitset", limit)
		}
		sh.seen, sh.seenN = nil, 0
		falseSeen, probes := 0, 0
		for range limit - 1 {
			h := rng.Uint64()
			if sh.admit(h) { // a false seen (a new key)
				falseSeen++
			}
			probes++
			if sh.seenN == 0 {
				t.Fatalf("limit %d: the bitset cleared before it took limit keys", limit)
			}
			if !sh.admit(h) && sh.seenN != 0 {
				t.Fatalf("limit %d: a key asked twice in the window was not admitted", limit)
			}
		}
		if rate := float64(falseSeen) / float64(probes); probes > 1000 && rate > 1.0/30 {
			t.Errorf("limit %d: %d false seen in %d new keys (%.3f), want under 1/30", limit, falseSeen, probes, rate)
		}
		end := 0
		for range 10_000 { // at the window's end, without filling it further
			h := rng.Uint64()
			if i, bits := doorBits(h, len(sh.seen)); sh.seen[i]&bits == bits {
				end++
			}
		}
		if limit > 1000 && (end > 10_000/12 || end == 0) {
			t.Errorf("limit %d: %d false seen in 10,000 at the window's end, want about 500", limit, end)
		}
	}
}
