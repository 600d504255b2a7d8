package dotapp

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// TestParkTimersHeap: deadlines armed, moved and dropped at random keep
// the heap whole (each entry's slot is its index, no parent later than a
// child), hold exactly the connections armed, and the earliest is first.
// The deadlines are an hour away, so the timer never fires here.
func TestParkTimersHeap(t *testing.T) {
	var pt parkTimers
	defer func() {
		if pt.timer != nil {
			pt.timer.Stop()
		}
	}()
	r := rand.New(rand.NewPCG(1, 2))
	conns := make([]*conn, 300)
	for i := range conns {
		conns[i] = new(conn)
	}
	want := map[*conn]monoTime{}
	base := time.Now().Add(time.Hour)
	check := func(step int) {
		t.Helper()
		if len(pt.q) != len(want) {
			t.Fatalf("step %d: %d entries, want %d", step, len(pt.q), len(want))
		}
		for i, e := range pt.q {
			if int(e.c.park.slot) != i+1 {
				t.Fatalf("step %d: entry %d has slot %d", step, i, e.c.park.slot)
			}
			if at, ok := want[e.c]; !ok || at != e.at {
				t.Fatalf("step %d: entry %d at %d, want %d (armed %v)", step, i, e.at, at, ok)
			}
			if i > 0 && pt.q[(i-1)/2].at > e.at {
				t.Fatalf("step %d: entry %d is earlier than its parent", step, i)
			}
		}
		for _, c := range conns {
			if _, ok := want[c]; !ok && c.park.slot != 0 {
				t.Fatalf("step %d: a connection with no deadline has slot %d", step, c.park.slot)
			}
		}
		if !pt.armed || (len(pt.q) > 0 && pt.armedAt > pt.q[0].at) {
			t.Fatalf("step %d: timer armed %v at %d, earliest %d", step, pt.armed, pt.armedAt, pt.q[0].at)
		}
	}
	for step := range 5000 {
		c := conns[r.IntN(len(conns))]
		if r.IntN(3) == 0 {
			pt.stop(c)
			delete(want, c)
		} else {
			d := base.Add(time.Duration(r.IntN(1000)) * time.Millisecond)
			pt.set(c, monoOf(d))
			want[c] = monoOf(d)
		}
		check(step)
	}
	// taken out earliest first, they come in order
	var got []monoTime
	for len(pt.q) > 0 {
		got = append(got, pt.q[0].at)
		pt.remove(0)
	}
	if !slices.IsSorted(got) {
		t.Fatal("entries not taken out in the order of their deadlines")
	}
}

// TestParkTimersDue: the connections whose deadline has come are taken
// out, and only those: not one whose deadline was dropped, nor one whose
// deadline is later. The timer is armed for what is left.
func TestParkTimersDue(t *testing.T) {
	var pt parkTimers
	defer func() {
		if pt.timer != nil {
			pt.timer.Stop()
		}
	}()
	now := time.Now().Add(time.Hour)
	kept, dropped, later := new(conn), new(conn), new(conn)
	pt.set(kept, monoOf(now.Add(-time.Second)))
	pt.set(dropped, monoOf(now.Add(-2*time.Second)))
	pt.set(later, monoOf(now.Add(time.Second)))
	pt.stop(dropped)
	got := pt.due(monoOf(now))
	if len(got) != 1 || got[0] != kept {
		t.Fatalf("due: %d connections, want the one whose deadline came", len(got))
	}
	if kept.park.slot != 0 || dropped.park.slot != 0 || later.park.slot != 1 {
		t.Fatalf("slots %d %d %d, want 0 0 1", kept.park.slot, dropped.park.slot, later.park.slot)
	}
	if !pt.armed || pt.armedAt != monoOf(now.Add(time.Second)) {
		t.Fatal("the timer is not armed for the deadline left")
	}
}
