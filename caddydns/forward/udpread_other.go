//go:build !linux

package forward

import (
	"net"

	"github.com/dnsfront/dnsfront/caddydns/dnswire"
)

// batchReader reads a UDP socket's datagrams; on Linux several at a time
// (recvmmsg), here one at a time.
type batchReader struct {
	conn *net.UDPConn
	buf  []byte
}

func newBatchReader(conn *net.UDPConn) (*batchReader, error) {
	return &batchReader{conn: conn, buf: make([]byte, dnswire.MaxMessage)}, nil
}

// release lets r go (nothing to pool here).
func (r *batchReader) release() {}

// batch is an empty list of datagrams for read.
func (r *batchReader) batch() [][]byte { return nil }

// read waits for a datagram and returns it in a buffer that the next
// read reuses.
func (r *batchReader) read(msgs [][]byte) ([][]byte, error) {
	n, err := r.conn.Read(r.buf)
	if err != nil {
		return msgs, err
	}
	return append(msgs, r.buf[:n]), nil
}
