package dotapp

import (
	"encoding/binary"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// writer sends a connection's answers; it runs while queries come and is
// stopped when the connection parks with nothing in flight.
type writer struct {
	out      chan *[]byte  // packed answers
	sem      chan struct{} // a slot per query in flight
	inFlight atomic.Int32
	pending  sync.WaitGroup
	done     chan struct{}
}

func startWriter(c *conn, inFlight int) *writer {
	w := &writer{
		out:  make(chan *[]byte, inFlight),
		sem:  make(chan struct{}, inFlight),
		done: make(chan struct{}),
	}
	go w.run(c)
	return w
}

// stop ends the writer once it has sent what it was given.
func (w *writer) stop() {
	close(w.out)
	<-w.done
}

// run sends answers, batching those that are ready into one write. The
// batch buffer is taken from a pool for each write, so that a writer
// waiting for answers holds none.
func (w *writer) run(c *conn) {
	defer close(w.done)
	failed := false
	for bp := range w.out {
		batchp := batchPool.Get().(*[]byte)
		batch := appendFrame((*batchp)[:0], bp)
		yielded := false
	more:
		for len(batch) < maxBatch {
			select {
			case next, ok := <-w.out:
				if !ok {
					break more
				}
				batch = appendFrame(batch, next)
			default:
				// other queries of this connection still being answered
				// may be ready to run (their upstream's answers came in
				// one read burst): yield once so that they queue theirs
				// for this write
				if !yielded && w.inFlight.Load() > 0 {
					yielded = true
					runtime.Gosched()
					continue
				}
				break more
			}
		}
		if !failed { // after a failure, keep draining so that answering goroutines finish
			_ = c.raw.SetWriteDeadline(time.Now().Add(c.srv.Load().set.write))
			if _, err := c.tc.Write(batch); err != nil {
				failed = true
				c.abort()
			}
		}
		*batchp = batch
		batchPool.Put(batchp)
	}
}

func appendFrame(batch []byte, bp *[]byte) []byte {
	p := *bp
	batch = binary.BigEndian.AppendUint16(batch, uint16(len(p)))
	batch = append(batch, p...)
	packPool.Put(bp)
	return batch
}
