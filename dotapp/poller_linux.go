package dotapp

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
)

// poller watches the sockets of parked connections with one epoll
// instance for the whole process, and resumes a connection (in a new
// goroutine) when its socket turns readable. Each registration is
// one-shot: a connection is re-armed when it parks again. The goroutine
// that waits in epoll_wait is started with the first park and lives as
// long as the process, as Go's own network poller does.
type poller struct {
	once   sync.Once
	epfd   int
	err    error       // set once, by ok
	broken atomic.Bool // epoll_wait failed: parking is off
	mu     sync.Mutex
	conns  map[uint64]*conn
	nextID uint64
}

var idlePoller poller

// ok reports whether connections can be parked (epoll is available).
func (p *poller) ok() bool {
	p.once.Do(func() {
		p.epfd, p.err = syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if p.err != nil {
			return
		}
		p.conns = make(map[uint64]*conn)
		go p.run()
	})
	return p.err == nil && !p.broken.Load()
}

// arm asks for c to be resumed once its socket is readable; c.park.mu
// is held.
func (p *poller) arm(c *conn) error {
	if !p.ok() {
		return errors.New("idle poller: not running")
	}
	op := syscall.EPOLL_CTL_MOD
	p.mu.Lock()
	if c.park.id == 0 {
		p.nextID++
		c.park.id = p.nextID
		p.conns[c.park.id] = c
		op = syscall.EPOLL_CTL_ADD
	}
	id := c.park.id
	p.mu.Unlock()
	// the event carries the registration's id, never reused, so that a
	// late event cannot resume another connection on a reused descriptor
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT,
		Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))}
	var err error
	if cerr := c.rc.Control(func(fd uintptr) { err = syscall.EpollCtl(p.epfd, op, int(fd), &ev) }); cerr != nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("idle poller: watching connection: %w", err)
	}
	return nil
}

// forget drops c's registration before its socket is closed.
func (p *poller) forget(c *conn) {
	c.park.mu.Lock()
	id := c.park.id
	c.park.id = 0
	c.park.mu.Unlock()
	if id == 0 {
		return
	}
	p.mu.Lock()
	delete(p.conns, id)
	p.mu.Unlock()
	_ = c.rc.Control(func(fd uintptr) { _ = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil) })
}

func (p *poller) run() {
	events := make([]syscall.EpollEvent, 256)
	for {
		n, err := syscall.EpollWait(p.epfd, events, -1)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			p.fail(err)
			return
		}
		p.mu.Lock()
		for _, ev := range events[:n] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if c := p.conns[id]; c != nil {
				go c.resume()
			}
		}
		p.mu.Unlock()
	}
}

// fail stops parking and resumes every parked connection, whose readers
// then wait in a blocking read as they would without the poller.
func (p *poller) fail(error) {
	p.broken.Store(true)
	p.mu.Lock()
	for _, c := range p.conns {
		go c.resume()
	}
	p.mu.Unlock()
}
