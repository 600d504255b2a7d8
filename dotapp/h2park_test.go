//go:build linux

package dotapp

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestH2ParkAndResume: a quiet HTTP/2 connection parks (no goroutine of
// its own), a request wakes it and is answered on the same connection,
// and once the idle timeout passes while parked it ends with a GOAWAY.
func TestH2ParkAndResume(t *testing.T) {
	s := newTestDoHServer(t)
	s.tlsCfg.NextProtos = []string{"h2", "http/1.1"}
	s, addr := listenParking(t, s, dohVecs, time.Second, 0)
	dials := 0
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http2.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		DialTLS: func(network, _ string, cfg *tls.Config) (net.Conn, error) {
			dials++
			return tls.Dial(network, addr, cfg)
		},
	}}
	get := func() {
		t.Helper()
		resp, err := client.Get("https://dns.example.org" + dnsGET(t, "www.example.org."))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || len(body) == 0 {
			t.Fatalf("status %d, %d octets", resp.StatusCode, len(body))
		}
	}
	get()
	waitParked(t, s, 1)
	get() // resumed
	if dials != 1 {
		t.Fatalf("%d connections, want the parked one resumed", dials)
	}
	waitParked(t, s, 1)
	// the idle timeout ends it while parked: the gauges go back to 0, and
	// the next request opens a new connection
	waitParked(t, s, 0)
	waitMetric(t, "connections open", s.metrics.open, 0)
	get()
	if dials != 2 {
		t.Fatalf("%d connections after the idle timeout, want 2", dials)
	}
}

// TestH2FrameAcrossPause: a frame whose octets come in two TLS records
// with a pause between them longer than the quiet that parks a
// connection (a segment lost and sent again, on a slow link) is read
// whole: the rest of a frame begun gets read_timeout, as the rest of a
// DoT query does, and the request is answered on the same connection.
// The pause falls inside a HEADERS frame's header, inside its header
// block, and inside a POST's DATA frame, on a connection that parked
// before the frame began.
func TestH2FrameAcrossPause(t *testing.T) {
	s := newTestDoHServer(t)
	s.tlsCfg.NextProtos = []string{"h2"}
	s, addr := listenParking(t, s, dohVecs, 10*time.Second, 0)
	q := new(dns.Msg)
	q.SetQuestion("www.example.org.", dns.TypeA)
	wire, _ := q.Pack()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	// the preface and SETTINGS, then the server's SETTINGS and its ack
	if _, err := c.Write(h2input(func(*http2.Framer, func(...string) []byte) {})); err != nil {
		t.Fatal(err)
	}
	rd := http2.NewFramer(nil, c)
	rd.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var out bytes.Buffer
	wr := http2.NewFramer(&out, nil)
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	block := func(fields ...string) []byte {
		hb.Reset()
		for i := 0; i+1 < len(fields); i += 2 {
			_ = enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		return bytes.Clone(hb.Bytes())
	}
	_ = wr.WriteSettingsAck()
	pause := 3 * s.quietPark
	for i, tc := range []struct {
		name  string
		post  bool
		split func(frames []byte) int // where the pause falls in the request's octets
	}{
		{"in a HEADERS frame's header", false, func([]byte) int { return 4 }},
		{"in a header block", false, func(b []byte) int { return 9 + 5 }},
		{"in a DATA frame", true, func(b []byte) int { return len(b) - len(wire)/2 }},
	} {
		id := uint32(2*i + 1)
		waitParked(t, s, 1) // quiet before the frame begins: parked
		if tc.post {
			_ = wr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, BlockFragment: block(":method", "POST", ":scheme", "https",
				":path", "/dns-query", ":authority", "dns.example.org", "content-type", "application/dns-message")})
			_ = wr.WriteData(id, true, wire)
		} else {
			_ = wr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, EndStream: true, BlockFragment: block(":method", "GET", ":scheme", "https",
				":path", dnsGET(t, "www.example.org."), ":authority", "dns.example.org")})
		}
		req := bytes.Clone(out.Bytes())
		out.Reset()
		at := tc.split(req)
		if _, err := c.Write(req[:at]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(pause) // the slow link: what the test is about, not a wait for a signal
		if _, err := c.Write(req[at:]); err != nil {
			t.Fatal(err)
		}
		status, body := "", 0
		for status == "" || body == 0 {
			f, err := rd.ReadFrame()
			if err != nil {
				t.Fatalf("%s: reading the answer to stream %d: %v", tc.name, id, err)
			}
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				if f.StreamID == id {
					status = f.PseudoValue("status")
				}
			case *http2.DataFrame:
				if f.StreamID == id {
					body += len(f.Data())
				}
			case *http2.GoAwayFrame:
				t.Fatalf("%s: GOAWAY (%v) instead of the answer to stream %d", tc.name, f.ErrCode, id)
			case *http2.RSTStreamFrame:
				t.Fatalf("%s: stream %d reset (%v)", tc.name, f.StreamID, f.ErrCode)
			}
		}
		if status != "200" {
			t.Fatalf("%s: status %s", tc.name, status)
		}
	}
}
