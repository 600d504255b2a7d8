package caddydns

import (
	"context"
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestCallWait: a pooled call's timer and channel carry nothing from one
// wait to the next. A wait that timed out leaves no stale tick that could
// end the next wait early, and an answer sent as a wait ended is dropped
// on release, not handed to the call's next query.
func TestCallWait(t *testing.T) {
	cl := newCall([]byte("\x03www\x07example\x03org\x00\x00\x01\x00\x01"))
	if _, err := cl.wait(context.Background(), time.Now().Add(time.Millisecond)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait past its deadline: %v, want context.DeadlineExceeded", err)
	}
	for i := 0; i < 20; i++ {
		// an answer is there and the deadline is far: the answer, every
		// time (a stale tick from an earlier wait would win half the time)
		want := new(answer)
		cl.resp <- want
		got, err := cl.wait(context.Background(), time.Now().Add(time.Hour))
		if err != nil || got != want {
			t.Fatalf("wait %d: %v, %v; want the answer sent", i, got, err)
		}
		if _, err := cl.wait(context.Background(), time.Now().Add(-time.Second)); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("wait %d with a past deadline: %v", i, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := cl.wait(ctx, time.Now().Add(time.Hour)); !errors.Is(err, context.Canceled) {
		t.Fatalf("wait with a canceled context: %v, want context.Canceled", err)
	}

	cl.resp <- &answer{wire: make([]byte, 0, 512)} // came as the wait ended
	cl.err = errors.New("x")
	cl.release()
	if len(cl.resp) != 0 || cl.question != nil || cl.err != nil {
		t.Fatalf("released call still holds an answer (%d), a question (%v) or an error (%v)", len(cl.resp), cl.question, cl.err)
	}
}

// TestUDPRefused: a UDP upstream with nothing listening answers with ICMP
// port unreachable. The queries waiting on its socket fail at once with
// "connection refused" (and go to the next upstream) instead of waiting
// out their timeout; the socket is dialed again for the next query.
func TestUDPRefused(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close() // nothing listens there now

	c := newUDPClient(addr)
	defer c.close()
	q := query("www.example.org.", dns.TypeA)
	packed, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; i < udpSockets+1; i++ { // every socket, and one dialed again
		_, err := c.exchange(context.Background(), deadline, question(packed), packed)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("query %d to a closed port: %v, want connection refused", i, err)
		}
	}
}

// TestUDPTimeout: an upstream that never answers: the query fails at its
// deadline with context.DeadlineExceeded, naming the upstream, and leaves
// nothing pending.
func TestUDPTimeout(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close() // reads nothing, answers nothing
	c := newUDPClient(pc.LocalAddr().String())
	defer c.close()
	q := query("www.example.org.", dns.TypeA)
	packed, _ := q.Pack()
	_, err = c.exchange(context.Background(), time.Now().Add(20*time.Millisecond), question(packed), packed)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), pc.LocalAddr().String()) {
		t.Fatalf("query to a silent upstream: %v, want a deadline error naming %s", err, pc.LocalAddr())
	}
	for i := range c.socks {
		s := &c.socks[i]
		s.mu.Lock()
		n := len(s.pending)
		s.mu.Unlock()
		if n != 0 {
			t.Fatalf("socket %d: %d queries still pending after the timeout", i, n)
		}
	}
}
