//go:build linux && !race

package cache

import (
	"fmt"
	"syscall"
)

// allocRing maps n octets outside the Go heap for a store's rings: the
// collector neither counts nor scans them, and a page costs memory only
// once a ring has reached it. (The race detector sees only the Go heap:
// built with -race, the rings are there instead, mem_other.go.)
func allocRing(n int) ([]byte, error) {
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return nil, fmt.Errorf("mapping %d octets for the entries: %w", n, err)
	}
	// a ring grows by a few pages at a time: a huge page would take
	// 2 MiB where a few KiB are used
	_ = syscall.Madvise(b, syscall.MADV_NOHUGEPAGE)
	return b, nil
}

// freeRing unmaps the rings of a store that no config uses any more.
func freeRing(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	return syscall.Munmap(b)
}

// ringsOnHeap: the rings are not on the Go heap.
const ringsOnHeap = false
