package dotapp

import (
	"sync"
	"sync/atomic"
	"time"
)

// parkTimers ends parked connections at their deadlines with one runtime
// timer for all of them, armed for the earliest. A time.Timer of its own
// would hold 112 octets of every idle connection (twice that in RSS at
// the default GOGC); an entry here is 16. There are parkShards of them,
// a connection keeping to the one it was given at accept, so that many
// cores parking and resuming connections at once do not all wait on one
// lock.
type parkTimers struct {
	mu      sync.Mutex
	q       []parkDeadline // a binary min-heap by at; c.park.slot is an entry's index + 1
	timer   *time.Timer    // made at the first deadline
	armed   bool
	armedAt monoTime // when timer fires, while armed
}

type parkDeadline struct {
	at monoTime
	c  *conn
}

const parkShards = 16

var (
	parkTimer     [parkShards]parkTimers
	nextParkShard atomic.Uint32
)

// timers is the connection's own parkTimers.
func (c *conn) timers() *parkTimers { return &parkTimer[c.park.shard%parkShards] }

// monoTime is a time kept as its offset from parkEpoch, on the monotonic
// clock: 8 octets where a time.Time takes 24, in every connection. Zero
// is no time.
type monoTime int64

var parkEpoch = time.Now()

func monoOf(t time.Time) monoTime { return monoTime(t.Sub(parkEpoch)) }

func monoNow() monoTime { return monoOf(time.Now()) }

// Time is m as a time.Time, with its monotonic reading.
func (m monoTime) Time() time.Time { return parkEpoch.Add(time.Duration(m)) }

// set arms (or moves) c's deadline. c.park.mu is held.
func (t *parkTimers) set(c *conn, at monoTime) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if i := int(c.park.slot) - 1; i >= 0 {
		t.q[i].at = at
		t.fix(i)
	} else {
		t.q = append(t.q, parkDeadline{at: at, c: c})
		c.park.slot = int32(len(t.q))
		t.up(len(t.q) - 1)
	}
	t.arm()
}

// stop drops c's deadline, if it has one. c.park.mu is held.
func (t *parkTimers) stop(c *conn) {
	t.mu.Lock()
	if i := int(c.park.slot) - 1; i >= 0 {
		t.remove(i)
	}
	t.mu.Unlock()
}

// arm sets the timer for the earliest deadline, unless it fires by then
// already (a firing that finds nothing due arms it again). t.mu is held.
func (t *parkTimers) arm() {
	if len(t.q) == 0 {
		return
	}
	at := t.q[0].at
	if t.armed && t.armedAt <= at {
		return
	}
	t.armed, t.armedAt = true, at
	d := time.Duration(at - monoNow())
	if t.timer == nil {
		t.timer = time.AfterFunc(d, t.fire)
	} else {
		t.timer.Reset(d)
	}
}

// fire takes the connections whose deadline has come out of the heap
// and ends each (expire) in a goroutine of its own, as a timer of its
// own would.
func (t *parkTimers) fire() {
	for _, c := range t.due(monoNow()) {
		go c.expire()
	}
}

// due takes the connections whose deadline is at or before now out of
// the heap, and arms the timer for the next.
func (t *parkTimers) due(now monoTime) []*conn {
	var due []*conn
	t.mu.Lock()
	defer t.mu.Unlock()
	t.armed = false
	for len(t.q) > 0 && t.q[0].at <= now {
		due = append(due, t.q[0].c)
		t.remove(0)
	}
	t.arm()
	return due
}

func (t *parkTimers) remove(i int) {
	t.q[i].c.park.slot = 0
	last := len(t.q) - 1
	if i != last {
		t.q[i] = t.q[last]
		t.q[i].c.park.slot = int32(i + 1)
	}
	t.q[last] = parkDeadline{}
	t.q = t.q[:last]
	if i != last {
		t.fix(i)
	}
	if cap(t.q) > 1024 && len(t.q) < cap(t.q)/4 {
		t.q = append([]parkDeadline(nil), t.q...) // let a burst's room go
	}
}

func (t *parkTimers) fix(i int) {
	if !t.down(i) {
		t.up(i)
	}
}

func (t *parkTimers) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if t.q[p].at <= t.q[i].at {
			return
		}
		t.swap(i, p)
		i = p
	}
}

// down reports whether the entry moved.
func (t *parkTimers) down(i int) bool {
	start := i
	for {
		l := 2*i + 1
		if l >= len(t.q) {
			break
		}
		m := l
		if r := l + 1; r < len(t.q) && t.q[r].at < t.q[l].at {
			m = r
		}
		if t.q[i].at <= t.q[m].at {
			break
		}
		t.swap(i, m)
		i = m
	}
	return i > start
}

func (t *parkTimers) swap(i, j int) {
	t.q[i], t.q[j] = t.q[j], t.q[i]
	t.q[i].c.park.slot = int32(i + 1)
	t.q[j].c.park.slot = int32(j + 1)
}
