package cache

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/caddyserver/caddy/v2"

	"github.com/dnsfront/dnsfront/caddydns"
)

// store is the cache of one config, shared by every handler that has the
// same config, across reloads (a usage pool, as upstreams are).
//
// Its entries are records in rings of octets outside the Go heap (one
// ring a shard, a shard a lock), indexed by key hash in tables there too
// (index.go): a million entries are no work for the collector and cost
// only what they take. A record is written once; a newer one for its key
// leaves it dead where it is. The oldest record of a ring is reclaimed
// when room is needed: dead, it is dropped; live, it goes round to the
// front (when it was hit since it last went round, or when the ring is
// mostly dead records), or is evicted. A ring grows, up to its share of
// max_bytes, only while most of it is live, so what a cache touches
// follows what it keeps.
type store struct {
	name string
	// stale is how long past its expiry an entry may be answered stale
	// (the same for every config sharing the store: it is in the key)
	stale time.Duration

	shards []shard
	shift  uint   // a hash's shard is its top bits
	mem    []byte // the rings, each shard's part of it
	maxRec int    // the largest record a shard keeps
	bytes  atomic.Int64

	hits, misses, staleServed, prefetches, coalesced, evictions, notAdmitted atomic.Uint64

	flights flights
}

// stores holds the stores of all configs, by their config; live lists
// them for the admin API and the metrics.
var (
	stores = caddy.NewUsagePool()
	live   sync.Map // *store -> struct{}
)

// A record, 8-octet aligned: its header, the key, the answer, the offsets
// of the answer's TTL fields (2 octets each), padding.
type header struct {
	prefix
	stored  int64 // unix nanos
	expires int64 // when it stops being fresh
	// failedFor: the upstream failed to refresh it, and it is served
	// stale without asking until this many milliseconds past expires
	// (RFC 8767 5); 0: not. A count, not a time, so that the header is 56
	// octets (64 with a third int64): 8 octets less an entry.
	failedFor uint32
	hits      uint32
	mlen      uint16
	nttl      uint16
	lay       packedLayout
}

// prefix is what every record starts with, padding at the ring's end
// (which may be as short as it) included.
type prefix struct {
	size  uint32 // the whole record's, padding included
	klen  uint16
	flags uint8
	_     uint8
}

const hdrSize = int(unsafe.Sizeof(header{}))

// header.flags
const (
	flagPad         = 1 << iota // no entry: the ring's end, skipped
	flagFailure                 // a SERVFAIL or an answer with nothing to cache, kept for failure_ttl
	flagPrefetching             // a prefetch was started for it
	flagHit                     // hit since it was stored or last went round
)

const (
	// maxRounds bounds the records that go round for one that is
	// stored: past it, the oldest is evicted, hit or not
	maxRounds = 16
	// minRing is a shard's first ring, and a shard's least share
	minRing   = 64 << 10
	maxShards = 256
	// maxShardBytes is the most a shard's ring spans: offsets in the
	// index are 32 bits (index.go)
	maxShardBytes = 4<<30 - 8
)

// shard is one ring and its index. Between tail and head (round the
// ring) lie the records, oldest first; between head and tail the free
// octets. Nothing of it is touched but under mu.
type shard struct {
	mu         sync.Mutex
	buf        []byte // its share of the store's memory: the ring may grow to it
	n          int    // the ring: buf[:n]
	head, tail int
	used       int // octets of records, dead and padding included
	live       int // octets of live records
	count      int
	limit      int   // its share of max_entries
	idx        index // hash -> the offset of the live record
	closed     bool
	// the doorkeeper (admit): keys asked lately, two bits each in a
	// bitset made when the shard first fills; cleared after limit keys
	seen  []uint64
	seenN int
	_     [8]byte // a cache line of its own, near enough
}

func newStore(name string, maxEntries int, maxBytes int64, maxEntrySize int, stale time.Duration) (*store, error) {
	// the largest record: an answer of max_entry_size, the longest key,
	// a TTL offset for every record the answer can hold (11 octets at
	// least). A ring holds records of at most a quarter of its size, so
	// that reclaiming the oldest always finds room.
	rec := align8(hdrSize + maxKey + maxEntrySize + 2*(maxEntrySize/11+1))
	switch {
	case maxBytes < int64(4*rec):
		return nil, fmt.Errorf("max_bytes %d is too small for max_entry_size %d: it takes at least %d", maxBytes, maxEntrySize, 4*rec)
	case maxBytes > maxShards*maxShardBytes:
		return nil, fmt.Errorf("max_bytes %d is over %d (1 TiB)", maxBytes, int64(maxShards*maxShardBytes))
	}
	s := &store{name: name, stale: stale, maxRec: rec}
	s.flights.init()
	// shards: as many as give each at least minRing octets, room for
	// four of the largest record, and an entry; at most maxShards, a
	// power of 2
	n := 1
	for n < maxShards && maxBytes/int64(2*n) >= int64(max(minRing, 4*rec)) && 2*n <= maxEntries {
		n *= 2
	}
	per := int(min(maxBytes/int64(n), maxShardBytes)) &^ 7
	mem, err := allocRing(n * per)
	if err != nil {
		return nil, err
	}
	s.mem, s.shift = mem, uint(64-bits.TrailingZeros(uint(n)))
	s.shards = make([]shard, n)
	for i := range s.shards {
		sh := &s.shards[i]
		sh.buf = mem[i*per : (i+1)*per : (i+1)*per]
		sh.n = min(per, max(minRing, 4*s.maxRec))
		sh.limit = maxEntries / n
		if i < maxEntries%n {
			sh.limit++
		}
	}
	live.Store(s, struct{}{})
	return s, nil
}

func align8(n int) int { return (n + 7) &^ 7 }

// Destruct implements caddy.Destructor: the last config using the store
// is gone.
func (s *store) Destruct() error {
	live.Delete(s)
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		_ = sh.idx.free()
		sh.closed, sh.buf, sh.seen = true, nil, nil
		sh.n, sh.head, sh.tail, sh.used, sh.live, sh.count = 0, 0, 0, 0, 0, 0
		sh.mu.Unlock()
	}
	s.bytes.Store(0)
	return freeRing(s.mem)
}

func (s *store) shard(hash uint64) *shard {
	if s.shift == 64 {
		return &s.shards[0]
	}
	return &s.shards[hash>>s.shift]
}

func (sh *shard) hdr(off int) *header { return (*header)(unsafe.Pointer(&sh.buf[off])) }

func (sh *shard) prefix(off int) *prefix { return (*prefix)(unsafe.Pointer(&sh.buf[off])) }

// key is the key of the record h at off.
func (sh *shard) key(off int, h *header) []byte {
	return sh.buf[off+hdrSize : off+hdrSize+int(h.klen)]
}

// body is the record's key, answer and TTL offsets.
func (sh *shard) body(off int, h *header) []byte {
	start := off + hdrSize
	return sh.buf[start : start+int(h.klen)+int(h.mlen)+2*int(h.nttl)]
}

// staleUntil is when an entry may no longer be answered stale (RFC 8767),
// and is no longer worth keeping.
func (s *store) staleUntil(expires int64, failure bool) int64 {
	if failure {
		return expires
	}
	return expires + int64(s.stale)
}

// found is what a look-up found.
type found struct {
	// wire is the answer to send (fresh, or stale while the upstream is
	// known to fail); nil for a miss
	wire  *caddydns.Wire
	stale bool
	// old is a copy of the entry, for work past the look-up: an expired
	// entry that may be answered stale, or a fresh one to prefetch
	old      *entry
	prefetch bool
	// rejected: the key has no record, its shard is full, and the
	// doorkeeper, asked at the look-up, lets it in on its next miss only
	rejected bool
}

// lookup answers from the entry of key, if there is one: a fresh entry
// is answered with its TTLs lowered by its age (and counted as hit, and
// handed for prefetch when it has been hit prefetch times and reached
// the last tenth of its lifetime); an expired one the upstream failed to
// refresh a moment ago is answered stale; another expired one that may
// still be answered stale is copied into found.old. judge asks the
// doorkeeper about a key the store does not have (found.rejected).
func (s *store) lookup(hash uint64, key []byte, now int64, prefetch int, judge bool) (f found) {
	sh := s.shard(hash)
	sh.mu.Lock()
	slot, off, ok := sh.idx.find(hash, key, sh.buf)
	if !ok {
		// with judge, a key a full shard does not have goes past the
		// doorkeeper now, under the lock already held: one asked once
		// (a flood) then costs its answer no store work at all (keep)
		f.rejected = judge && sh.crowded() && !sh.admit(hash)
		sh.mu.Unlock()
		return f
	}
	h := sh.hdr(off)
	body := sh.body(off, h)
	failure := h.flags&flagFailure != 0
	switch {
	case now < h.expires:
		h.flags |= flagHit
		if h.hits < ^uint32(0) {
			h.hits++
		}
		f.wire = h.answer(body, now, -1)
		if prefetch > 0 && !failure && int(h.hits) >= prefetch && h.flags&flagPrefetching == 0 && now >= h.expires-(h.expires-h.stored)/10 {
			h.flags |= flagPrefetching
			f.old, f.prefetch = snapshot(h, body), true
		}
	case now >= s.staleUntil(h.expires, failure):
		sh.remove(s, slot, h) // no use any more
	case !failure && now < h.failedUntil():
		f.wire, f.stale = h.answer(body, now, StaleTTL), true
	default:
		f.old = snapshot(h, body)
	}
	sh.mu.Unlock()
	return f
}

// failedUntil is when the record's failed refresh stops holding back
// another (see failedFor); expires, or before, when there is none.
func (h *header) failedUntil() int64 {
	return h.expires + int64(h.failedFor)*int64(time.Millisecond)
}

// setFailedUntil records a failed refresh until until, in whole
// milliseconds past expires (rounded down: the upstream is asked again a
// moment sooner, never later); none when until is not past expires,
// where failedUntil would not hold anything back anyway (it is read
// only for an expired record). A wait past the most failedFor holds (49
// days) is cut to it.
func (h *header) setFailedUntil(until int64) {
	h.failedFor = uint32(min(max(until-h.expires, 0)/int64(time.Millisecond), math.MaxUint32))
}

// answer is the record's answer (body is its body) for now.
func (h *header) answer(body []byte, now, ttl int64) *caddydns.Wire {
	msgEnd := int(h.klen) + int(h.mlen)
	return answer(body[h.klen:msgEnd], body[msgEnd:], &h.lay, h.stored, now, ttl)
}

func snapshot(h *header, body []byte) *entry {
	return &entry{data: bytes.Clone(body), stored: h.stored, expires: h.expires, klen: h.klen, mlen: h.mlen,
		lay: h.lay, failure: h.flags&flagFailure != 0}
}

// put stores an entry for key: the answer msg, the offsets of its TTL
// fields, its layout. It replaces the entry of the same hash. An entry
// too big for a ring is not kept.
func (s *store) put(hash uint64, key, msg []byte, ttls []uint16, lay packedLayout, stored, expires int64, failure bool) {
	size := align8(hdrSize + len(key) + len(msg) + 2*len(ttls))
	if size > s.maxRec || len(ttls) > 0xFFFF {
		return
	}
	sh := s.shard(hash)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.closed {
		return
	}
	if slot, off, ok := sh.idx.find(hash, key, sh.buf); ok {
		if h := sh.hdr(off); size <= int(h.size) {
			// a refresh that fits where the entry is (the usual: the same
			// name, an answer of the same size) is written over it: no
			// dead record, no index change. It was asked for: it is hit.
			sh.write(off, int(h.size), key, msg, ttls, lay, stored, expires, failure)
			sh.hdr(off).flags |= flagHit
			return
		}
		sh.remove(s, slot, sh.hdr(off))
	} else if sh.crowded() && !sh.admit(hash) {
		s.notAdmitted.Add(1)
		return
	}
	off := sh.reserve(s, size, stored)
	sh.write(off, size, key, msg, ttls, lay, stored, expires, failure)
	if sh.idx.insert(hash, off) != nil {
		return // no memory for the index: the record stays dead
	}
	sh.count++
	sh.live += size
	s.bytes.Add(int64(size))
}

// crowded reports whether a new record would take the place of a live
// one: the shard holds its share of max_entries, or its ring has grown
// to its share of max_bytes and is mostly live.
func (sh *shard) crowded() bool {
	return sh.count >= sh.limit || (sh.n == len(sh.buf) && 4*sh.live >= 3*sh.n)
}

// admit is the doorkeeper of a crowded shard (TinyLFU's, as in the
// caches otter and ristretto): a key not in the cache is let in on its
// second miss within the last limit keys it was asked for, so that a
// flood of names asked once (a scan, or random subdomains) neither
// evicts the entries that are asked again and again nor costs a store
// each. A key is two bits of one 64-bit word of a bitset of 8 bits per
// entry of the shard (a blocked Bloom filter: one read of memory a key,
// where two bits anywhere in the bitset took two, each a cache miss in a
// large cache; a false "seen" as often as before: about 1 time in 20
// when the bitset is due to be cleared, 1 in 60 over its window),
// cleared when it has taken limit keys.
func (sh *shard) admit(hash uint64) bool {
	if sh.seen == nil {
		words := 1
		for words*64 < 8*sh.limit {
			words *= 2
		}
		sh.seen = make([]uint64, words)
	}
	i, bits := doorBits(hash, len(sh.seen))
	w := &sh.seen[i]
	if *w&bits == bits {
		return true
	}
	*w |= bits
	if sh.seenN++; sh.seenN >= max(sh.limit, 1) {
		clear(sh.seen)
		sh.seenN = 0
	}
	return false
}

// doorBits is the word (of words, a power of 2) and the two bits (never
// the same) of the doorkeeper's bitset for hash: the top bits of a hash
// chose its shard and the low 32 its index slot, so the word comes from
// the bits between and the two bits from the lowest 12.
func doorBits(hash uint64, words int) (int, uint64) {
	a := hash & 63
	b := (a + 1 + (hash>>6&63)%63) & 63
	return int((hash >> 32) & uint64(words-1)), 1<<a | 1<<b
}

// write writes a record of size octets at off.
func (sh *shard) write(off, size int, key, msg []byte, ttls []uint16, lay packedLayout, stored, expires int64, failure bool) {
	h := sh.hdr(off)
	*h = header{prefix: prefix{size: uint32(size), klen: uint16(len(key))}, stored: stored, expires: expires,
		mlen: uint16(len(msg)), nttl: uint16(len(ttls)), lay: lay}
	if failure {
		h.flags = flagFailure
	}
	body := sh.buf[off+hdrSize : off+size]
	n := copy(body, key)
	n += copy(body[n:], msg)
	for _, t := range ttls {
		body[n], body[n+1] = byte(t>>8), byte(t)
		n += 2
	}
}

// failed records that the upstream failed to refresh the entry of key
// stored at stored: it is answered stale without asking until until.
func (s *store) failed(hash uint64, key []byte, stored, until int64) {
	sh := s.shard(hash)
	sh.mu.Lock()
	if _, off, ok := sh.idx.find(hash, key, sh.buf); ok {
		h := sh.hdr(off)
		if h.stored == stored {
			h.setFailedUntil(until)
		}
	}
	sh.mu.Unlock()
}

// drop removes the record of key (whose hash is hash), if there is one.
func (s *store) drop(hash uint64, key []byte) {
	sh := s.shard(hash)
	sh.mu.Lock()
	if slot, off, ok := sh.idx.find(hash, key, sh.buf); ok {
		sh.remove(s, slot, sh.hdr(off))
	}
	sh.mu.Unlock()
}

// remove makes the live record h, indexed at slot, dead: it stays in the
// ring until the ring's tail reaches it.
func (sh *shard) remove(s *store, slot int, h *header) {
	sh.idx.remove(slot)
	sh.count--
	sh.live -= int(h.size)
	s.bytes.Add(-int64(h.size))
}

// reserve makes room at the head for a record of size octets, and
// returns its offset: the oldest records are reclaimed (dropped, sent
// round or evicted) or the ring grows; a record is never split at the
// ring's end (the rest of the ring is padding instead).
func (sh *shard) reserve(s *store, size int, now int64) int {
	rounds := 0
	for {
		if sh.used == 0 {
			sh.head, sh.tail = 0, 0
		}
		full := sh.count >= sh.limit
		linear := sh.used == 0 || sh.tail < sh.head // the free octets run from head to the end, then from 0 to tail
		if !full {
			room := sh.tail - sh.head
			if linear {
				room = sh.n - sh.head
			}
			if room >= size {
				break
			}
			if linear {
				if sh.n < len(sh.buf) && (4*sh.live >= 3*sh.n || sh.used == 0) {
					sh.n = min(len(sh.buf), align8(max(sh.n+sh.n/8, sh.head+size)))
					continue
				}
				sh.pad()
				continue
			}
		}
		// the oldest record goes: dropped when dead, round when it was hit
		// (or most of the ring is dead, and the entry count is not what
		// needs room), else evicted
		sh.reclaim(s, now, full || 4*sh.live >= 3*sh.n, &rounds)
	}
	off := sh.head
	sh.head += size
	sh.used += size
	return off
}

// pad ends the ring at head: the octets to its end become a padding
// record, and head goes to 0.
func (sh *shard) pad() {
	if rest := sh.n - sh.head; rest > 0 {
		p := sh.prefix(sh.head)
		p.size, p.flags = uint32(rest), flagPad
		sh.used += rest
	}
	sh.head = 0
}

// reclaim takes the oldest record out of the way. With evicting, a live
// one goes round only when it was hit, maxRounds at most; without, it
// goes round (compacting the ring) until maxRounds, then is evicted.
func (sh *shard) reclaim(s *store, now int64, evicting bool, rounds *int) {
	size := int(sh.prefix(sh.tail).size)
	if sh.prefix(sh.tail).flags&flagPad == 0 {
		h := sh.hdr(sh.tail)
		if slot, ok := sh.idx.at(hashKey(sh.key(sh.tail, h)), sh.tail); ok {
			usable := now < s.staleUntil(h.expires, h.flags&flagFailure != 0)
			// going round copies it to head: room there, or it is the ring's
			// whole free run (head at or before tail)
			canMove := sh.head <= sh.tail || sh.head+size <= sh.n
			if usable && canMove && *rounds < maxRounds && (!evicting || h.flags&flagHit != 0) {
				*rounds++
				h.flags &^= flagHit
				sh.idx.move(slot, sh.head) // before the copy, which may overwrite h
				copy(sh.buf[sh.head:sh.head+size], sh.buf[sh.tail:sh.tail+size])
				sh.head += size
				if sh.tail += size; sh.tail == sh.n {
					sh.tail = 0
				}
				return
			}
			sh.remove(s, slot, h)
			if usable {
				s.evictions.Add(1)
			}
		}
	}
	sh.advanceTail(size)
}

func (sh *shard) advanceTail(size int) {
	sh.tail += size
	sh.used -= size
	if sh.tail == sh.n {
		sh.tail = 0
	}
	if sh.used == 0 {
		sh.head, sh.tail = 0, 0
	}
}

// records calls fn for each live record of the shard (and its slot in
// the index), oldest first, under its lock; fn may remove the record.
func (sh *shard) records(fn func(slot int, h *header, body []byte)) {
	off, left := sh.tail, sh.used
	for left > 0 {
		p := sh.prefix(off)
		size := int(p.size)
		if p.flags&flagPad == 0 {
			h := sh.hdr(off)
			if slot, ok := sh.idx.at(hashKey(sh.key(off, h)), off); ok {
				fn(slot, h, sh.body(off, h))
			}
		}
		off += size
		left -= size
		if off == sh.n {
			off = 0
		}
	}
}

// entries is how many entries the store holds.
func (s *store) entries() int { return s.sum(func(sh *shard) int { return sh.count }) }

// rings is the octets the store's rings span: what they may have touched.
func (s *store) rings() int { return s.sum(func(sh *shard) int { return sh.n }) }

// indexBytes is the octets of the store's index tables.
func (s *store) indexBytes() int { return s.sum(func(sh *shard) int { return 8 * len(sh.idx.slots) }) }

// counters are the store's counters, in the order of counterDescs.
func (s *store) counters() [len(counterDescs)]uint64 {
	return [...]uint64{s.hits.Load(), s.misses.Load(), s.staleServed.Load(), s.prefetches.Load(), s.coalesced.Load(), s.evictions.Load(), s.notAdmitted.Load()}
}

// doorkeeperBytes is what the doorkeepers' bitsets take.
func (s *store) doorkeeperBytes() int { return s.sum(func(sh *shard) int { return 8 * len(sh.seen) }) }

// sum adds up f of every shard, each under its lock.
func (s *store) sum(f func(sh *shard) int) int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += f(sh)
		sh.mu.Unlock()
	}
	return n
}

// purge removes the entries of name (a question name, any case) and,
// with subtree, of every name under it; with name "" every entry. A
// qtype other than 0 limits it to the entries of that type. It returns
// how many it removed.
func (s *store) purge(name string, subtree bool, qtype uint16) int {
	all := name == ""
	name = lowerFQDN(name)
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		sh.records(func(slot int, h *header, body []byte) {
			if (qtype != 0 || !all) && h.klen < 5 {
				return
			}
			if qtype != 0 && binary.BigEndian.Uint16(body) != qtype {
				return
			}
			if !all {
				owner := keyName(body[:h.klen])
				if owner != name && (!subtree || (name != "." && !(len(owner) > len(name) && owner[len(owner)-len(name)-1] == '.' && owner[len(owner)-len(name):] == name))) {
					return
				}
			}
			sh.remove(s, slot, h)
			n++
		})
		sh.mu.Unlock()
	}
	return n
}

// keyName is the question name in a key (after type, class, flags and
// the ECS option, or zeroKey's mark).
func keyName(key []byte) string {
	rest := key[5:]
	if len(rest) >= 4 && rest[0] == 0xEC {
		n := 4 + (int(rest[3])+7)/8
		if n <= len(rest) {
			rest = rest[n:]
		}
	} else if len(rest) >= 1 && rest[0] == zeroMark {
		rest = rest[1:]
	}
	if i := bytes.IndexByte(rest, optionsMark); i >= 0 {
		rest = rest[:i] // the options after the name
	}
	return string(rest)
}

func lowerFQDN(name string) string {
	b := []byte(name)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	if len(b) == 0 || b[len(b)-1] != '.' {
		b = append(b, '.')
	}
	return string(b)
}
