package forward

import (
	"bytes"
	"errors"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestUDPReadBuffer: an upstream socket asks for udpReadBuffer, and gets
// it as far as net.core.rmem_max allows (Linux doubles the value for its
// bookkeeping).
func TestUDPReadBuffer(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/net/core/rmem_max")
	if err != nil {
		t.Skipf("no rmem_max to compare with: %v", err)
	}
	rmemMax, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	_, conn := dialLoopback(t)
	rc, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got int
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		got, gerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF)
	}); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	if want := 2 * min(udpReadBuffer, rmemMax); got != want {
		t.Fatalf("SO_RCVBUF = %d, want %d (2 x min(%d, rmem_max %d))", got, want, udpReadBuffer, rmemMax)
	}
}

// TestBatchReader: datagrams waiting on the socket come in one read, each
// whole up to datagramBuffer octets; a larger answer comes as its header
// and question with TC set (its query goes again over TCP), a larger
// datagram that is no answer not at all; a closed socket ends the reader
// with net.ErrClosed.
func TestBatchReader(t *testing.T) {
	srv, conn := dialLoopback(t)
	r, err := newBatchReader(conn)
	if err != nil {
		t.Fatal(err)
	}
	big := new(dns.Msg)
	big.SetQuestion("big.example.", dns.TypeTXT)
	big.Response = true
	for i := 0; i < 40; i++ {
		big.Answer = append(big.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: "big.example.", Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60},
			Txt: []string{strings.Repeat("x", 200)}})
	}
	bigWire, err := big.Pack()
	if err != nil || len(bigWire) <= datagramBuffer {
		t.Fatalf("the large answer: %d octets, %v", len(bigWire), err)
	}
	datagrams := [][]byte{make([]byte, 12), make([]byte, 512), make([]byte, datagramBuffer), bigWire,
		make([]byte, 40), make([]byte, 9000), make([]byte, 1232), make([]byte, 100), make([]byte, 7), make([]byte, 300), make([]byte, 1)}
	for i, p := range datagrams {
		if i != 3 {
			for j := range p {
				p[j] = byte(i)
			}
		}
		if _, err := srv.WriteToUDP(p, conn.LocalAddr().(*net.UDPAddr)); err != nil {
			t.Fatalf("datagram %d (%d octets): %v", i, len(p), err)
		}
	}
	want := slices.Delete(slices.Clone(datagrams), 5, 6)                           // 9000 octets of nothing: dropped
	if err := conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil { // a datagram lost fails, not hangs
		t.Fatal(err)
	}
	var got [][]byte
	for reads := 1; len(got) < len(want); reads++ {
		msgs, err := r.read(nil)
		if err != nil {
			t.Fatal(err)
		}
		if reads == 1 && len(msgs) != readBatch-1 {
			t.Errorf("first read: %d datagrams, want %d (all %d were waiting, one not DNS)", len(msgs), readBatch-1, readBatch)
		}
		for _, m := range msgs {
			got = append(got, slices.Clone(m))
		}
	}
	for i, m := range got {
		w := want[i]
		if i == 3 {
			cut := new(dns.Msg)
			if err := cut.Unpack(m); err != nil || !cut.Truncated || len(cut.Answer) != 0 || len(cut.Question) != 1 ||
				cut.Question[0] != big.Question[0] || cut.Id != big.Id {
				t.Fatalf("the answer of %d octets read as %d: %v (%v), want its question with TC set", len(bigWire), len(m), cut, err)
			}
			continue
		}
		if !bytes.Equal(m, w) {
			t.Fatalf("datagram %d: %d octets starting %d, want %d of %d", i, len(m), m[0], len(w), w[0])
		}
	}
	conn.Close()
	if _, err := r.read(nil); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read on a closed socket: %v, want net.ErrClosed", err)
	}
}

// TestBatchReaderAllocs: a read of a full batch into the reader's own
// list (batch) allocates nothing: a socket's first reads grew a list of
// their own, and a socket lasts socketQueries queries.
func TestBatchReaderAllocs(t *testing.T) {
	srv, conn := dialLoopback(t)
	r, err := newBatchReader(conn)
	if err != nil {
		t.Fatal(err)
	}
	defer r.release()
	if err := conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil { // a datagram lost fails, not hangs
		t.Fatal(err)
	}
	answer := make([]byte, 100)
	to := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	var n int
	var rerr error
	allocs := testing.AllocsPerRun(20, func() {
		for range readBatch {
			if _, err := srv.WriteToUDPAddrPort(answer, to); err != nil { // no allocation either
				t.Fatal(err)
			}
		}
		var msgs [][]byte
		for got := 0; got < readBatch && rerr == nil; got += len(msgs) {
			msgs, rerr = r.read(r.batch())
		}
		n = len(msgs)
	})
	if rerr != nil {
		t.Fatal(rerr)
	}
	if n == 0 {
		t.Fatal("no datagram read")
	}
	if allocs != 0 {
		t.Fatalf("%v allocations a batch of %d datagrams, want 0", allocs, readBatch)
	}
}

// dialLoopback returns a loopback UDP socket and an upstream socket
// dialed to it (dialUDP), both closed when the test ends.
func dialLoopback(t *testing.T) (srv, conn *net.UDPConn) {
	t.Helper()
	srv, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	if conn, err = dialUDP(srv.LocalAddr().(*net.UDPAddr)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return srv, conn
}
