package dotapp

import (
	"errors"
	"net"
	"os"
	"syscall"
	"time"
)

// quickAck makes the kernel acknowledge what it received at once. A
// client with Nagle on (dnsperf) sends its first query only once its TLS
// Finished is ACKed, and a query written in two parts only once the first
// is; with nothing to send, Linux would delay that ACK up to 40 ms
// (seen with tcpdump: 42 ms between the client's Finished and its query).
// Called after the handshake and when a query is partly read, not per
// query.
func quickAck(rc syscall.RawConn) {
	if rc == nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
	})
}

// peekHello waits up to d (at most until the handshake's deadline) for
// the client's first bytes, without reading them: true when they came, or
// the connection ended or failed (the handshake then says so).
func (c *conn) peekHello(d time.Duration) bool {
	_ = c.raw.SetReadDeadline(minTime(c.helloBy.Time(), time.Now().Add(d)))
	defer c.raw.SetReadDeadline(time.Time{})
	var b [1]byte
	err := c.rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK)
		return !errors.Is(err, syscall.EAGAIN) // else wait until readable
	})
	return err == nil
}

// acceptQueued takes the connections waiting in a listening socket's
// accept queue, without waiting for more (accept4 until EAGAIN).
func acceptQueued(ln syscall.RawConn) []net.Conn {
	if ln == nil {
		return nil
	}
	var conns []net.Conn
	_ = ln.Control(func(fd uintptr) {
		for {
			nfd, _, err := syscall.Accept4(int(fd), syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC)
			if errors.Is(err, syscall.EINTR) || errors.Is(err, syscall.ECONNABORTED) {
				continue
			}
			if err != nil {
				return // EAGAIN: the queue is empty
			}
			f := os.NewFile(uintptr(nfd), "dot")
			c, err := net.FileConn(f) // a copy of the descriptor, on Go's poller
			f.Close()
			if err == nil {
				conns = append(conns, c)
			}
		}
	})
	return conns
}
