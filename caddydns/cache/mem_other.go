//go:build !linux || race

package cache

// allocRing makes a store's rings on the Go heap, where mapping memory is
// not done (other systems) or where the race detector is to watch them.
// A slice of octets is not scanned by the collector, but it counts
// towards its pacing, and pages are touched as the rings grow.
func allocRing(n int) ([]byte, error) { return make([]byte, n), nil }

func freeRing([]byte) error { return nil }

// ringsOnHeap: the rings are on the Go heap.
const ringsOnHeap = true
