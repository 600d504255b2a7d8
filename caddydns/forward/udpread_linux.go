package forward

import (
	"net"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dnsfront/dnsfront/caddydns/dnswire"
)

// batchReader reads a UDP socket's datagrams several at a time, one
// system call each (recvmmsg). Answers to a batch of queries come back
// close together: read one at a time, each cost a system call and, often,
// a wake-up of the reader; read together, a burst costs one of each. A
// datagram larger than its buffer (datagramBuffer) is cut by the kernel:
// its header and question become a truncated answer (see asTruncated), so
// that its query goes again over TCP. The buffers take 32 KB a socket.
type batchReader struct {
	rc   syscall.RawConn
	recv func(fd uintptr) bool // r.recvmmsg, made once
	bufs [readBatch][]byte
	iovs [readBatch]unix.Iovec
	hdrs [readBatch]unix.Mmsghdr
	out  [readBatch][]byte // what a read returns (batch), pooled with the rest
	n    int
	err  error
}

// readerPool keeps batch readers with their buffers for the next
// socket: each batch of queries has a socket, and a reader, of its own.
var readerPool = sync.Pool{New: func() any {
	r := new(batchReader)
	r.recv = r.recvmmsg
	for i := range r.bufs {
		r.bufs[i] = make([]byte, datagramBuffer)
		r.iovs[i].Base = &r.bufs[i][0]
		r.iovs[i].SetLen(datagramBuffer)
		r.hdrs[i].Hdr.Iov = &r.iovs[i]
		r.hdrs[i].Hdr.SetIovlen(1)
	}
	return r
}}

func newBatchReader(conn *net.UDPConn) (*batchReader, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	r := readerPool.Get().(*batchReader)
	r.rc = rc
	return r, nil
}

// release returns r to the pool; what its last read returned is gone.
func (r *batchReader) release() {
	if r == nil {
		return
	}
	r.rc, r.n, r.err = nil, 0, nil
	readerPool.Put(r)
}

// batch is an empty list of datagrams of r's own, room for a read's:
// with it, read allocates nothing (a socket's reads, which a new one
// every socketQueries queries starts, grew their own list each).
func (r *batchReader) batch() [][]byte { return r.out[:0] }

// read waits for at least one datagram and returns those that came, in
// buffers that the next read reuses.
func (r *batchReader) read(msgs [][]byte) ([][]byte, error) {
	if err := r.rc.Read(r.recv); err != nil {
		return msgs, err
	}
	if r.err != nil {
		return msgs, r.err
	}
	for i := 0; i < r.n; i++ {
		m := r.bufs[i][:r.hdrs[i].Len]
		if r.hdrs[i].Hdr.Flags&unix.MSG_TRUNC != 0 {
			if m = dnswire.AsTruncated(m); m == nil {
				continue
			}
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// recvmmsg is the non-blocking receive under RawConn.Read: false asks it
// to wait until the socket is readable and call again.
func (r *batchReader) recvmmsg(fd uintptr) bool {
	for {
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])),
			readBatch, unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case 0:
			r.n, r.err = int(n), nil
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		r.n, r.err = 0, &net.OpError{Op: "read", Net: "udp", Err: errno}
		return true
	}
}
