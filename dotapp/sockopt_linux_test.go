package dotapp

import (
	"io"
	"net"
	"syscall"
	"testing"
	"time"
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
