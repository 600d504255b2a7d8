package dotapp

import (
	"sync"
	"sync/atomic"
	"time"
)

// Queries (DoT) and requests (DoH) are answered by a pool of goroutines
// rather than a goroutine each: a task goes to a worker that waits for
// one, or to a new worker when none waits, and a worker that is done
// waits for the next unless maxIdleWorkers already wait. Workers that
// had nothing to do for a whole workerIdle end (the reaper), so that a
// burst leaves no goroutines behind for long. A goroutine a query cost
// its start and end (newproc, goexit) and the growth of its first stack
// to what the chain needs (growStack): together ~5% of the CPU of a
// forwarded DoH request. A worker grows its stack once.
//
// The hand-over is a send on an unbuffered channel, which succeeds only
// when a worker is waiting in its receive; the scheduler then runs that
// worker next, as it would a new goroutine. A worker waits in a plain
// receive, with no timer of its own: a timer's channel in the wait (a
// ticker each, before) cost the runtime's timer bookkeeping at every
// wait and wake, ~3% of a forwarded DoH request's CPU.
type task interface{ run() }

// maxIdleWorkers bounds the workers left waiting after a burst (each
// holds its stack, 8 KB, until the collector shrinks it), and workerIdle
// how long surplus workers wait before the reaper ends them.
const (
	maxIdleWorkers = 128
	workerIdle     = 2 * time.Second
)

var workers struct {
	ch     chan task
	idle   atomic.Int32 // workers waiting in their receive (or about to)
	fewest atomic.Int32 // the fewest idle at once since the reaper last looked
	reaper sync.Once
}

func init() { workers.ch = make(chan task) }

// dispatch runs t on a worker.
func dispatch(t task) {
	select {
	case workers.ch <- t:
	default:
		workers.reaper.Do(func() { go reap() })
		go work(t)
	}
}

func work(t task) {
	growStack()
	for t != nil { // nil: the reaper's word to end
		t.run()
		if workers.idle.Add(1) > maxIdleWorkers {
			workers.idle.Add(-1)
			return
		}
		t = <-workers.ch
		idle := workers.idle.Add(-1)
		for fewest := workers.fewest.Load(); idle < fewest && !workers.fewest.CompareAndSwap(fewest, idle); {
			fewest = workers.fewest.Load()
		}
	}
}

// reap ends, every workerIdle, as many waiting workers as were idle all
// that time (the fewest idle at once): between one and two workerIdle
// after a burst, its workers are gone.
func reap() {
	tick := time.NewTicker(workerIdle)
	defer tick.Stop()
	for range tick.C {
		for n := workers.fewest.Swap(workers.idle.Load()); n > 0; n-- {
			select {
			case workers.ch <- nil: // a waiting worker takes it and ends
			default:
				n = 0 // none waits after all
			}
		}
	}
}

// dotTask is a DoT query for a worker (conn.answer's arguments).
type dotTask struct {
	c    *conn
	w    *writer
	bp   *[]byte
	size int
	last bool
}

var dotTaskPool = sync.Pool{New: func() any { return new(dotTask) }}

func (t *dotTask) run() {
	c, w, bp, size, last := t.c, t.w, t.bp, t.size, t.last
	*t = dotTask{}
	dotTaskPool.Put(t)
	c.answer(w, bp, size, last)
}

// run answers an HTTP/2 stream's request (on a worker).
func (st *h2stream) run() { st.h.answer(st) }
