package caddydns

import (
	"strconv"
	"sync"
	"testing"
	"unsafe"
)

// TestInternName: a name asked again is the same string (the same
// octets in memory) with no allocation; another case is another name;
// a name whose slot another took is made again, right; whatever many
// goroutines intern at once, each gets its own name's value.
func TestInternName(t *testing.T) {
	a := internName([]byte("www.example.org."))
	b := internName([]byte("www.example.org."))
	if a != "www.example.org." || unsafe.StringData(a) != unsafe.StringData(b) {
		t.Fatalf("interned twice: %q at %p and %q at %p, want one string", a, unsafe.StringData(a), b, unsafe.StringData(b))
	}
	name := []byte("www.example.org.")
	if n := testing.AllocsPerRun(100, func() { internName(name) }); n != 0 {
		t.Errorf("a name in the table: %v allocations, want 0", n)
	}
	if c := internName([]byte("WWW.example.org.")); c != "WWW.example.org." || unsafe.StringData(c) == unsafe.StringData(a) {
		t.Errorf("another case: %q, the same string as %q", c, a)
	}
	if got := internName(nil); got != "" {
		t.Errorf("no octets: %q", got)
	}
	// four times as many names as slots, from several goroutines at once:
	// slots are taken and retaken
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := range 3 {
				for i := range 4 * nameSlots {
					want := "n" + strconv.Itoa((i+g*nameSlots)%(4*nameSlots)) + ".r" + strconv.Itoa(round%2) + ".example."
					if got := internName([]byte(want)); got != want {
						t.Errorf("interned %q, got %q", want, got)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
}
