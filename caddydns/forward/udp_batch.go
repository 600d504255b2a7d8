package forward

import (
	"net"
	"sync"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// batchWriter sends several datagrams in one system call (sendmmsg on
// Linux; one at a time elsewhere).
type batchWriter interface {
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

func newBatchWriter(conn *net.UDPConn) batchWriter {
	if a, ok := conn.RemoteAddr().(*net.UDPAddr); ok && a.IP.To4() == nil {
		return ipv6.NewPacketConn(conn)
	}
	return ipv4.NewPacketConn(conn)
}

// maxBatch bounds the queries sent in one system call.
const maxBatch = 32

// udpBatch is queries queued on a socket to be sent together: their
// octets end to end, so queueing one copies it and allocates nothing.
type udpBatch struct {
	buf   []byte
	ends  []int
	ids   []uint16
	calls []*call // the query each packet is for
	bufs  [][]byte
	msgs  []ipv4.Message
	sent  int
}

var batchPool = sync.Pool{New: func() any { return new(udpBatch) }}

// add queues the query p, its ID id, after hdr (a PROXY header, or nil)
// in one datagram.
func (b *udpBatch) add(hdr, p []byte, id uint16, cl *call) {
	b.buf = append(b.buf, hdr...)
	b.buf = append(b.buf, p...)
	b.ends = append(b.ends, len(b.buf))
	b.ids = append(b.ids, id)
	b.calls = append(b.calls, cl)
}

func (b *udpBatch) full() bool { return len(b.ends) >= maxBatch }

// send writes the queries to w, in as few calls as it takes.
func (b *udpBatch) send(w batchWriter) error {
	b.bufs, b.msgs = b.bufs[:0], b.msgs[:0]
	start := 0
	for _, end := range b.ends {
		b.bufs = append(b.bufs, b.buf[start:end])
		start = end
	}
	if w == nil {
		return ErrUpstreamClosed // the socket failed meanwhile
	}
	for i := range b.bufs {
		b.msgs = append(b.msgs, ipv4.Message{Buffers: b.bufs[i : i+1]})
	}
	for b.sent < len(b.msgs) {
		n, err := w.WriteBatch(b.msgs[b.sent:], 0)
		if n > 0 { // a failed sendmmsg returns -1
			b.sent += n
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return ErrUpstreamClosed
		}
	}
	return nil
}

func (b *udpBatch) reset() {
	b.buf, b.ends, b.ids, b.sent = b.buf[:0], b.ends[:0], b.ids[:0], 0
	clear(b.calls)
	b.calls = b.calls[:0]
	for i := range b.msgs {
		b.msgs[i] = ipv4.Message{}
	}
}
