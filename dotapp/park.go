package dotapp

import (
	"sync"
	"time"
)

// A connection with nothing to read is parked: its goroutine ends, and
// the idle poller (poller_linux.go) resumes it when its socket turns
// readable, or parkTimer (parktimer.go) ends it at its deadline.

// parking is the state of a parked connection, shared by the reader that
// parks it, the idle poller that resumes it, parkTimer and the
// server's drain.
type parking struct {
	mu       sync.Mutex
	parked   bool
	hello    bool     // parked before the handshake, waiting for the ClientHello
	shard    uint8    // which of parkTimer is the connection's, from accept
	slot     int32    // in its parkTimer's heap, while a deadline is armed
	since    monoTime // when the wait for the next query began
	deadline monoTime // when the wait ends the connection (parkTimer)
	id       uint64   // registration with the idle poller; 0 before the first park
}

// parkNow parks the connection, waiting since the given time for its next
// query: the idle poller resumes it when its socket turns readable, and
// parkTimer ends it at the idle deadline. The writer goes too when no
// answer is in flight. It reports false when the connection cannot be
// parked and should end.
func (c *conn) parkNow(since time.Time) bool {
	if c.aborted.Load() {
		return false
	}
	if c.w != nil && c.w.inFlight.Load() == 0 {
		c.w.stop()
		c.w = nil
	}
	c.park.mu.Lock()
	defer c.park.mu.Unlock()
	c.park.since = monoOf(since)
	return c.parkUntil(monoOf(c.idleDeadline(c.srv.Load(), since)), false)
}

// parkHello parks a connection whose client has sent nothing yet, until
// the handshake deadline. It reports false when it cannot.
func (c *conn) parkHello() bool {
	c.park.mu.Lock()
	defer c.park.mu.Unlock()
	return c.parkUntil(c.helloBy, true)
}

// parkUntil arms the idle poller and the deadline; hello says the
// handshake has not begun. It reports false when the connection cannot be
// parked. The caller holds c.park.mu.
func (c *conn) parkUntil(deadline monoTime, hello bool) bool {
	p := &c.park
	if c.aborted.Load() {
		return false // abort came first and found nothing parked
	}
	p.parked, p.hello, p.deadline = true, hello, deadline
	c.timers().set(c, deadline)
	if err := idlePoller.arm(c); err != nil {
		p.parked, p.hello = false, false
		c.timers().stop(c)
		return false
	}
	if !hello {
		c.metrics.parked.Inc()
	}
	return true
}

// unpark takes a parked connection out of parking for whoever wins it
// (the poller, the timer, an abort), and says whether it was parked and
// whether before its handshake. The caller holds c.park.mu.
func (c *conn) unpark() (parked, hello bool) {
	p := &c.park
	parked, hello = p.parked, p.hello
	if !parked {
		return false, false
	}
	p.parked, p.hello = false, false
	c.timers().stop(c)
	if !hello {
		c.metrics.parked.Dec()
	}
	return true, hello
}

// resume goes on with a parked connection whose socket turned readable
// (the client sent something, or closed): the handshake, or the reader.
func (c *conn) resume() {
	c.park.mu.Lock()
	parked, hello := c.unpark()
	c.park.mu.Unlock()
	switch {
	case !parked:
		return // ended meanwhile
	case hello:
		c.serve(c.srv.Load())
	case c.h2 != nil:
		c.h2.resume()
	default:
		c.run()
	}
}

// expire ends a parked connection at its deadline: the idle timeout, or
// the handshake's.
func (c *conn) expire() {
	c.park.mu.Lock()
	if monoNow() < c.park.deadline {
		// early for the deadline it has now (it was moved, or armed
		// again after it parked anew): armed again, if still parked
		if c.park.parked {
			c.timers().set(c, c.park.deadline)
		}
		c.park.mu.Unlock()
		return
	}
	parked, hello := c.unpark()
	c.park.mu.Unlock()
	switch {
	case !parked:
		return // resumed meanwhile
	case hello:
		c.metrics.handshakeFailures.Inc() // timed out before its ClientHello
		c.drop()
	default:
		c.finish()
	}
}
