package integration

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2client is an HTTP/2 client at the frame level (x/net's Framer), for
// what real clients refuse to send: header lists past the server's
// limit, and the attacks of TestDoHServerAttacks.
type h2client struct {
	t    testing.TB
	conn *tls.Conn
	fr   *http2.Framer
	hbuf bytes.Buffer
	enc  *hpack.Encoder
}

// dialH2 connects with ALPN h2 and sends the preface and SETTINGS.
func dialH2(t testing.TB, addr string, cfg *tls.Config, settings ...http2.Setting) *h2client {
	t.Helper()
	cfg = cfg.Clone()
	cfg.NextProtos = []string{"h2"}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("ALPN %q, want h2", p)
	}
	c := &h2client{t: t, conn: conn, fr: http2.NewFramer(conn, conn)}
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.MaxHeaderListSize = 1 << 20
	c.enc = hpack.NewEncoder(&c.hbuf)
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteSettings(settings...); err != nil {
		t.Fatal(err)
	}
	return c
}

// block encodes a request's header block: the pseudo-headers of a GET
// (or the method given) of path, then extra name/value pairs.
func (c *h2client) block(method, path string, extra ...string) []byte {
	c.hbuf.Reset()
	for _, f := range [][2]string{{":method", method}, {":scheme", "https"}, {":authority", "dns.example.test"}, {":path", path}} {
		_ = c.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	for i := 0; i+1 < len(extra); i += 2 {
		_ = c.enc.WriteField(hpack.HeaderField{Name: extra[i], Value: extra[i+1]})
	}
	return bytes.Clone(c.hbuf.Bytes())
}

// headers sends a header block on a stream, split into HEADERS and
// CONTINUATION frames of at most 16384 octets.
func (c *h2client) headers(id uint32, endStream bool, block []byte) error {
	first := block[:min(len(block), 16384)]
	rest := block[len(first):]
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: endStream, EndHeaders: len(rest) == 0}); err != nil {
		return err
	}
	for len(rest) > 0 {
		n := min(len(rest), 16384)
		if err := c.fr.WriteContinuation(id, n == len(rest), rest[:n]); err != nil {
			return err
		}
		rest = rest[n:]
	}
	return nil
}

// h2end is how a read of frames ended.
type h2end struct {
	status  int           // the stream's :status, 0 if none
	body    []byte        // its DATA
	rst     http2.ErrCode // its RST_STREAM code, when reset
	reset   bool
	goaway  bool
	code    http2.ErrCode // the GOAWAY's
	closed  bool          // the connection closed (or timed out) first
	streams int           // other streams' responses seen meanwhile
}

// await reads frames until stream id ends (END_STREAM or RST_STREAM),
// a GOAWAY comes or the connection ends, within timeout; PINGs and
// SETTINGS are acknowledged as a client does.
func (c *h2client) await(id uint32, timeout time.Duration) h2end {
	c.t.Helper()
	var e h2end
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	defer c.conn.SetReadDeadline(time.Time{})
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				continue
			}
			e.closed = true
			return e
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			if f.StreamID != id {
				e.streams++
				continue
			}
			e.status, _ = strconv.Atoi(f.PseudoValue("status"))
			if f.StreamEnded() {
				return e
			}
		case *http2.DataFrame:
			if f.StreamID != id {
				continue
			}
			e.body = append(e.body, f.Data()...)
			if len(f.Data()) > 0 {
				_ = c.fr.WriteWindowUpdate(0, uint32(len(f.Data())))
			}
			if f.StreamEnded() {
				return e
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				e.reset, e.rst = true, f.ErrCode
				return e
			}
		case *http2.GoAwayFrame:
			e.goaway, e.code = true, f.ErrCode
			return e
		case *http2.PingFrame:
			if !f.IsAck() {
				_ = c.fr.WritePing(true, f.Data)
			}
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = c.fr.WriteSettingsAck()
			}
		}
	}
}

// goaway reads until a GOAWAY or the connection's end.
func (c *h2client) goaway(timeout time.Duration) h2end {
	c.t.Helper()
	return c.await(1<<31-1, timeout)
}
