package dotapp

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"flag"
	"io"
	"net"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/proxyprotocol"
	"github.com/miekg/dns"
)

// FuzzProxyHeader sends any octets where a load balancer's PROXY header
// goes (Caddy's proxy_protocol wrapper, as a DoT server configured with
// listener_wrappers reads it), then a DoT query: the connection must be
// answered or closed, within the wrapper's and the server's timeouts,
// and nothing may panic.
func FuzzProxyHeader(f *testing.F) {
	answered := 0
	for _, seed := range []string{
		"PROXY TCP4 192.0.2.7 127.0.0.1 5300 853\r\n",
		"PROXY TCP6 2001:db8::7 ::1 5300 853\r\n",
		"PROXY UNKNOWN\r\n",
		"PROXY TCP4 999.0.2.7 127.0.0.1 5300 853\r\n",
		"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00\x02\x07\x7f\x00\x00\x01\x14\xb4\x03\x55",
		"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff",
		"",
	} {
		f.Add([]byte(seed))
	}
	s := newTestServer(f)
	s.HandshakeTimeout = caddy.Duration(time.Second)
	s.applyDefaults()
	pp := &proxyprotocol.ListenerWrapper{Allow: []string{"127.0.0.0/8"}, Timeout: caddy.Duration(time.Second)}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: s.ctx})
	f.Cleanup(cancel)
	if err := pp.Provision(ctx); err != nil {
		f.Fatal(err)
	}
	s.wrappers = []caddy.ListenerWrapper{pp}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { ln.Close() })
	wrapped := pp.WrapListener(ln)
	go func() {
		for {
			raw, err := wrapped.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			s.serveNew(raw, "fuzz")
		}
	}()
	q := new(dns.Msg)
	q.SetQuestion("www.example.org.", dns.TypeA)
	wire, _ := q.Pack()
	frame := append(binary.BigEndian.AppendUint16(nil, uint16(len(wire))), wire...)
	f.Fuzz(func(t *testing.T, hdr []byte) {
		raw, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		// the wrapper's timeout (1s), the handshake's (1s), the read (1s):
		// past them the server must have answered or closed
		_ = raw.SetDeadline(time.Now().Add(8 * time.Second))
		if _, err := raw.Write(hdr); err != nil {
			return // closed already
		}
		c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"dot"}})
		if err := c.Handshake(); err != nil {
			if isTimeout(err) {
				t.Fatalf("header %q: the handshake neither finished nor failed in 8 s", hdr)
			}
			return // refused: the header was bad
		}
		if _, err := c.Write(frame); err != nil {
			return
		}
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			if isTimeout(err) {
				t.Fatalf("header %q: no answer and no close in 8 s", hdr)
			}
			return
		}
		m := make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(c, m); err != nil {
			t.Fatalf("header %q: a truncated answer: %v", hdr, err)
		}
		a := new(dns.Msg)
		if err := a.Unpack(m); err != nil || len(a.Answer) != 1 {
			t.Fatalf("header %q: answer %v %v", hdr, a, err)
		}
		answered++
	})
	// as a test (the seeds alone, in this process) the well-formed headers
	// (v1 TCP4 and TCP6, UNKNOWN, v2, none) are answered: the harness does
	// reach the query. Fuzzing runs the inputs in worker processes.
	if fuzzing := flag.Lookup("test.fuzz"); (fuzzing == nil || fuzzing.Value.String() == "") && answered == 0 {
		f.Fatal("no seed was answered: the harness never reached a query")
	}
}
