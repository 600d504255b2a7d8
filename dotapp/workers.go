package dotapp

import (
	"sync"
	"sync/atomic"
	"time"
)

// Queries (DoT) and requests (DoH) are answered by a pool of goroutines
// rather than a goroutine each: a task goes to a worker that waits for
// one, or to a new worker when none waits, and a worker that is done
// waits for the next unless maxIdleWorkers already wait; one that waits
// a workerIdle or two for nothing ends, so that a burst leaves no
// goroutines behind for long. A goroutine a
// query cost its start and end (newproc, goexit) and the growth of its
// first stack to what the chain needs (growStack): together ~5% of the
// CPU of a forwarded DoH request. A worker grows its stack once.
//
// The hand-over is a send on an unbuffered channel, which succeeds only
// when a worker is waiting in its receive; the scheduler then runs that
// worker next, as it would a new goroutine.
type task interface{ run() }

// maxIdleWorkers bounds the workers left waiting after a burst (each
// holds its stack, 8 KB, until the collector shrinks it), and workerIdle
// how long one waits.
const (
	maxIdleWorkers = 128
	workerIdle     = 2 * time.Second
)

var workers struct {
	ch   chan task
	idle atomic.Int32
}

func init() { workers.ch = make(chan task) }

// dispatch runs t on a worker.
func dispatch(t task) {
	select {
	case workers.ch <- t:
	default:
		go work(t)
	}
}

func work(t task) {
	growStack()
	// a ticker rather than a timer armed again for each wait (that cost
	// half of what the pool saves): a worker ends at a tick when it ran
	// nothing since the tick before, between one and two workerIdle after
	// its last task
	tick := time.NewTicker(workerIdle)
	defer tick.Stop()
	for {
		t.run()
		if workers.idle.Add(1) > maxIdleWorkers {
			workers.idle.Add(-1)
			return
		}
		ran := true
	wait:
		for {
			select {
			case t = <-workers.ch:
				workers.idle.Add(-1)
				break wait
			case <-tick.C:
				if !ran {
					workers.idle.Add(-1)
					return
				}
				ran = false
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
