package dotapp

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestAcceptQueued: connections whose handshake the kernel completed but
// that nobody accepted yet are taken from the accept queue at once, each
// usable, and an empty queue gives none without waiting. (stop takes
// them before it closes a listener, which would reset them.)
func TestAcceptQueued(t *testing.T) {
	var raw syscall.RawConn
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error { raw = c; return nil }}
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var clients []net.Conn
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", ln.Addr().String()) // returns once the kernel has completed the handshake
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
	}
	conns := acceptQueued(raw)
	if len(conns) != len(clients) {
		t.Fatalf("%d connections taken from the queue, want %d", len(conns), len(clients))
	}
	for i, c := range conns {
		defer c.Close()
		if _, err := clients[i].Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[byte]bool{}
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			t.Fatalf("a connection taken from the queue does not read: %v", err)
		}
		seen[b[0]] = true
	}
	if len(seen) != len(clients) {
		t.Fatalf("read %v from the connections, want one octet from each client", seen)
	}
	// an empty queue: none, at once (were it to wait for a client, the
	// test would hang until its timeout)
	if more := acceptQueued(raw); len(more) != 0 {
		t.Fatalf("%d connections from an empty queue", len(more))
	}
}

// TestSteerToNewest: while a reload has two listening sockets on an
// address (SO_REUSEPORT, as Caddy opens them), every new connection goes
// to the newest, none to the one about to close; with the old one
// closed, the new one takes them all; and the next reload's socket takes
// over from it in turn.
func TestSteerToNewest(t *testing.T) {
	listen := func(addr string) (net.Listener, syscall.RawConn) {
		var raw syscall.RawConn
		lc := listenConfig(&raw, 0) // the servers' own, with SO_REUSEPORT as Caddy adds it
		control := lc.Control
		lc.Control = func(network, address string, c syscall.RawConn) error {
			var err error
			cerr := c.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
			return errors.Join(control(network, address, c), cerr, err)
		}
		ln, err := lc.Listen(t.Context(), "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		if err := steerToNewest(raw); err != nil {
			t.Fatal(err)
		}
		return ln, raw
	}
	var addr string
	// connect dials n connections and says how many each socket queued
	connect := func(n int, raws ...syscall.RawConn) []int {
		for i := 0; i < n; i++ {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
		}
		got := make([]int, len(raws))
		for i, raw := range raws {
			for _, c := range acceptQueued(raw) {
				c.Close()
				got[i]++
			}
		}
		return got
	}
	old, oldRaw := listen("127.0.0.1:0")
	addr = old.Addr().String()
	if got := connect(20, oldRaw); got[0] != 20 {
		t.Fatalf("one socket: it queued %d of 20 connections", got[0])
	}
	_, newRaw := listen(addr)
	if got := connect(40, oldRaw, newRaw); got[0] != 0 || got[1] != 40 {
		t.Fatalf("old and new socket queued %v of 40 connections, want [0 40]", got)
	}
	old.Close()
	if got := connect(20, newRaw); got[0] != 20 {
		t.Fatalf("the new socket alone queued %d of 20 connections", got[0])
	}
	_, nextRaw := listen(addr)
	if got := connect(40, newRaw, nextRaw); got[0] != 0 || got[1] != 40 {
		t.Fatalf("the next reload's sockets queued %v of 40 connections, want [0 40]", got)
	}
}

// TestFastOpenListener: tcp_fast_open's queue is set on the listening
// socket, as the kernel reads it back; without it the socket has none.
func TestFastOpenListener(t *testing.T) {
	for _, qlen := range []int{0, 16} {
		var raw syscall.RawConn
		lc := listenConfig(&raw, qlen)
		ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		got, gerr := -1, error(nil)
		if err := raw.Control(func(fd uintptr) { got, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_FASTOPEN) }); err != nil || gerr != nil {
			t.Fatal(err, gerr)
		}
		ln.Close()
		if got != qlen {
			t.Fatalf("tcp_fast_open %d: the socket's TCP_FASTOPEN is %d", qlen, got)
		}
	}
}

// TestKeepAliveFromListener: a connection accepted on listenConfig's
// socket has TCP keepalive on, with Go's values for accepted connections
// (15 s, 15 s, 9 probes), though Go no longer sets them on it: they come
// from the listening socket.
func TestKeepAliveFromListener(t *testing.T) {
	var raw syscall.RawConn
	lc := listenConfig(&raw, 0)
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []struct {
		name       string
		level, opt int
		want       int
	}{
		{"SO_KEEPALIVE", syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, keepAliveIdle},
		{"TCP_KEEPINTVL", syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, keepAliveInterval},
		{"TCP_KEEPCNT", syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, keepAliveCount},
		{"TCP_NODELAY", syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1},
	} {
		var v int
		var gerr error
		if err := rc.Control(func(fd uintptr) { v, gerr = syscall.GetsockoptInt(int(fd), o.level, o.opt) }); err != nil || gerr != nil {
			t.Fatalf("%s: %v %v", o.name, err, gerr)
		}
		if v != o.want {
			t.Errorf("accepted connection: %s %d, want %d", o.name, v, o.want)
		}
	}
	// and Go's own per-connection keepalive is off, or the listener's
	// options would be set again on each connection
	if lc.KeepAlive >= 0 {
		t.Errorf("ListenConfig.KeepAlive %v: Go would set keepalive on each connection", lc.KeepAlive)
	}
}
