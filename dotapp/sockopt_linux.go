package dotapp

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
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

// steerToNewest makes the kernel give new connections to the address's
// newest listening socket. Caddy opens a new socket for each config
// (SO_REUSEPORT); during a reload the old and the new one are both in the
// address's reuseport group, and the kernel would split new connections
// between them. Those the old socket takes in its last moments (its
// accept queue after acceptQueued, handshakes still in progress) are
// reset when it closes, unless net.ipv4.tcp_migrate_req is set. A
// classic BPF program on the group (SO_ATTACH_REUSEPORT_CBPF) picks the
// socket by its index: sockets join the group at its end, and one that
// leaves is replaced by the last, so while a reload has two, the new one
// is index 1; with one socket, index 1 is out of range and the kernel
// picks by hash as it would with no program. The program belongs to the
// group; every new socket attaches it again, which is harmless.
func steerToNewest(ln syscall.RawConn) error {
	if ln == nil {
		return nil
	}
	prog := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 1}}
	var err error
	cerr := ln.Control(func(fd uintptr) {
		err = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF,
			&unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]})
	})
	return errors.Join(cerr, err)
}

// maxFastOpenQueue bounds tcp_fast_open: the kernel caps a listener's
// backlog at net.core.somaxconn, at most 65535.
const maxFastOpenQueue = 65535

// fastOpenSysctl is where Linux says whom TCP Fast Open is for.
const fastOpenSysctl = "/proc/sys/net/ipv4/tcp_fastopen"

// fastOpenUsable says why TCP Fast Open cannot serve clients here: the
// kernel allows it for servers only when net.ipv4.tcp_fastopen has its
// server flag (0x2) (the default, 1, is for clients alone); without it the socket
// option is taken and nothing comes of it.
func fastOpenUsable() error {
	b, err := os.ReadFile(fastOpenSysctl)
	if err != nil {
		return fmt.Errorf("reading %s: %w", fastOpenSysctl, err)
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("%s: %q is not a number", fastOpenSysctl, strings.TrimSpace(string(b)))
	}
	if v&2 == 0 {
		return fmt.Errorf("the kernel serves no TCP Fast Open: net.ipv4.tcp_fastopen is %d, which lacks the server flag (0x2); set it to %d (sysctl -w net.ipv4.tcp_fastopen=%d), or leave tcp_fast_open out", v, v|2, v|2)
	}
	return nil
}

// keepAliveOnListener: the listening socket's TCP keepalive options are
// the accepted connections' (Linux copies them, and starts the timer, in
// tcp_create_openreq_child), so Go need not set them on each connection.
const keepAliveOnListener = true

// setKeepAlive turns TCP keepalive on for the connections the listening
// socket c accepts, with Go's defaults for accepted connections (probes
// after 15 s quiet, every 15 s, 9 of them): the same as before, with four
// system calls fewer a connection (setsockopt SO_KEEPALIVE, TCP_KEEPIDLE,
// TCP_KEEPINTVL, TCP_KEEPCNT).
func setKeepAlive(c syscall.RawConn) error {
	var err error
	if cerr := c.Control(func(fd uintptr) {
		for _, o := range []struct{ level, opt, v int }{
			{syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
			{syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, keepAliveIdle},
			{syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, keepAliveInterval},
			{syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, keepAliveCount},
		} {
			if err = syscall.SetsockoptInt(int(fd), o.level, o.opt, o.v); err != nil {
				return
			}
		}
	}); cerr != nil {
		return cerr
	}
	if err != nil {
		return fmt.Errorf("setsockopt TCP keepalive on the listening socket: %w", err)
	}
	return nil
}

// setFastOpen turns on TCP Fast Open on the listening socket c, with a
// queue of qlen connections whose handshake is not complete.
func setFastOpen(c syscall.RawConn, qlen int) error {
	var err error
	if cerr := c.Control(func(fd uintptr) {
		err = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, unix.TCP_FASTOPEN, qlen)
	}); cerr != nil {
		return cerr
	}
	if err != nil {
		return fmt.Errorf("tcp_fast_open: setsockopt TCP_FASTOPEN: %w", err)
	}
	return nil
}
