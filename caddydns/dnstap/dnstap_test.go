package dnstap

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tap "github.com/dnstap/golang-dnstap"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/dnsfront/dnsfront/caddydns"
)

func TestParseOutput(t *testing.T) {
	for in, want := range map[string]string{
		"unix:/run/tap.sock": "unix /run/tap.sock", "tcp:127.0.0.1:6000": "tcp 127.0.0.1:6000",
		"file:/var/log/x.fstrm": "file /var/log/x.fstrm", "/var/log/x.fstrm": "file /var/log/x.fstrm",
	} {
		n, a, err := parseOutput(in)
		if err != nil || n+" "+a != want {
			t.Errorf("%q: %s %s %v, want %s", in, n, a, err, want)
		}
	}
	for in, msg := range map[string]string{"": "no output", "unix:": "no address", "tcp:collector:6000": "want an IP address and port"} {
		if _, _, err := parseOutput(in); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q: %v, want %q", in, err, msg)
		}
	}
	d := new(Dnstap)
	if err := d.UnmarshalCaddyfile(caddyfile.NewTestDispenser("dnstap unix:/run/t.sock {\n\tidentity a\n\tbuffer 50\n}")); err != nil || d.Output != "unix:/run/t.sock" || d.Identity != "a" || d.Buffer != 50 {
		t.Fatalf("%+v %v", d, err)
	}
	if err := new(Dnstap).UnmarshalCaddyfile(caddyfile.NewTestDispenser("dnstap {\n}")); err == nil || !strings.Contains(err.Error(), "want an output") {
		t.Errorf("no output: %v", err)
	}
}

// TestAppendFrame: golang-dnstap's generated code decodes each kind of
// frame into the fields dnstap gives them, for IPv4, IPv4-mapped and IPv6
// clients, for messages whose length takes 1, 2 and 3 octets, and, for a
// forwarder's messages, with the upstream's family, protocol (UDP, TCP,
// DOT) and address, and the client's address in the upstream's family.
func TestAppendFrame(t *testing.T) {
	at := time.Unix(1_700_000_000, 123_456_789)
	hop := func(transport, addr string) caddydns.Hop {
		ap, _ := netip.ParseAddrPort(addr)
		return caddydns.Hop{Addr: ap, Transport: transport}
	}
	for _, tc := range []struct {
		kind      int
		client    string
		transport string
		up        caddydns.Hop
		size      int

		family    tap.SocketFamily
		protocol  tap.SocketProtocol
		queryAddr string // the query address's octets, as an address
	}{
		{clientQuery, "127.0.0.2:40000", "dot", caddydns.Hop{}, 30, tap.SocketFamily_INET, tap.SocketProtocol_DOT, "127.0.0.2"},
		{clientResponse, "[::ffff:127.0.0.3]:53", "doh", caddydns.Hop{}, 300, tap.SocketFamily_INET, tap.SocketProtocol_DOH, "127.0.0.3"},
		{clientQuery, "[2001:db8::1]:443", "doh", caddydns.Hop{}, 10, tap.SocketFamily_INET6, tap.SocketProtocol_DOH, "2001:db8::1"},
		// the server's address the client reached (Request.Local), in the client's family
		{clientQuery, "127.0.0.2:40000", "dot", hop("", "127.0.0.1:853"), 30, tap.SocketFamily_INET, tap.SocketProtocol_DOT, "127.0.0.2"},
		{clientResponse, "[2001:db8::1]:443", "doh", hop("", "127.0.0.1:443"), 30, tap.SocketFamily_INET6, tap.SocketProtocol_DOH, "2001:db8::1"},
		// an IPv6 client of an IPv4 upstream: 16 octets, the family the upstream's
		{forwarderQuery, "[2001:db8::1]:443", "doh", hop("udp", "127.0.0.1:5301"), 70_000 - 200, tap.SocketFamily_INET, tap.SocketProtocol_UDP, "2001:db8::1"},
		// an IPv4 client of an IPv6 upstream: IPv4-mapped
		{forwarderResponse, "127.0.0.2:1", "dot", hop("tls", "[::1]:853"), 100, tap.SocketFamily_INET6, tap.SocketProtocol_DOT, "::ffff:127.0.0.2"},
		{forwarderResponse, "[::ffff:127.0.0.2]:1", "dot", hop("tcp", "127.0.0.1:53"), 100, tap.SocketFamily_INET, tap.SocketProtocol_TCP, "127.0.0.2"},
		{forwarderQuery, "127.0.0.2:1", "dot", hop("https", "127.0.0.1:8443"), 100, tap.SocketFamily_INET, tap.SocketProtocol_DOH, "127.0.0.2"},
		// an upstream given by name: no response address, the client's family
		{forwarderQuery, "[2001:db8::2]:1", "dot", hop("tls", "dns.example.net:853"), 1, tap.SocketFamily_INET6, tap.SocketProtocol_DOT, "2001:db8::2"},
	} {
		msg := bytes.Repeat([]byte{0xAB}, tc.size)
		client := netip.MustParseAddrPort(tc.client)
		prefix := []byte("before")
		b := appendFrame(prefix, appendHead(nil, []byte("front-1")), tc.kind, at, client, tc.transport, tc.up, msg)
		if !bytes.HasPrefix(b, []byte("before")) {
			t.Fatal("the frame overwrote what was before it")
		}
		b = b[len(prefix):]
		if n := binary.BigEndian.Uint32(b); int(n) != len(b)-4 {
			t.Fatalf("%d: frame length %d, want %d", tc.kind, n, len(b)-4)
		}
		var d tap.Dnstap
		if err := proto.Unmarshal(b[4:], &d); err != nil {
			t.Fatalf("%d: %v", tc.kind, err)
		}
		m := d.GetMessage()
		if string(d.GetIdentity()) != "front-1" || string(d.GetVersion()) != "dnsfront" || d.GetType() != tap.Dnstap_MESSAGE || m == nil {
			t.Fatalf("%d: %v", tc.kind, &d)
		}
		if int(m.GetType()) != tc.kind {
			t.Errorf("type %v, want %d", m.GetType(), tc.kind)
		}
		wantAddr := netip.MustParseAddr(tc.queryAddr).AsSlice()
		if m.GetSocketFamily() != tc.family || m.GetSocketProtocol() != tc.protocol || !bytes.Equal(m.GetQueryAddress(), wantAddr) || m.GetQueryPort() != uint32(client.Port()) {
			t.Errorf("%d %s: %v %v, client %v %d; want %v %v, %v %d", tc.kind, tc.client, m.GetSocketFamily(), m.GetSocketProtocol(),
				m.GetQueryAddress(), m.GetQueryPort(), tc.family, tc.protocol, wantAddr, client.Port())
		}
		query := tc.kind == clientQuery || tc.kind == forwarderQuery
		sec, nsec, got := m.GetResponseTimeSec(), m.GetResponseTimeNsec(), m.GetResponseMessage()
		if query {
			sec, nsec, got = m.GetQueryTimeSec(), m.GetQueryTimeNsec(), m.GetQueryMessage()
		}
		if sec != uint64(at.Unix()) || nsec != uint32(at.Nanosecond()) || !bytes.Equal(got, msg) {
			t.Errorf("%d: time %d.%d, message of %d octets", tc.kind, sec, nsec, len(got))
		}
		if query && m.ResponseMessage != nil || !query && m.QueryMessage != nil {
			t.Errorf("%d: both messages set", tc.kind)
		}
		if ap := tc.up.Addr; ap.IsValid() {
			want := ap.Addr().AsSlice()
			if tc.family == tap.SocketFamily_INET6 && ap.Addr().Is4() && (tc.kind == clientQuery || tc.kind == clientResponse) {
				want = netip.AddrFrom16(ap.Addr().As16()).AsSlice() // mapped, in the client's family
			}
			if !bytes.Equal(m.GetResponseAddress(), want) || m.GetResponsePort() != uint32(ap.Port()) {
				t.Errorf("%d: upstream %v %d, want %v", tc.kind, m.GetResponseAddress(), m.GetResponsePort(), ap)
			}
		} else if m.ResponseAddress != nil || m.ResponsePort != nil {
			t.Errorf("%d: no upstream address, yet %v", tc.kind, m.GetResponseAddress())
		}
	}
	buf, head := make([]byte, 0, 512), appendHead(nil, []byte("x"))
	if n := testing.AllocsPerRun(100, func() {
		appendFrame(buf[:0], head, forwarderQuery, at, netip.MustParseAddrPort("127.0.0.1:1"), "dot", hop("udp", "127.0.0.1:53"), []byte("query"))
	}); n > 0 {
		t.Errorf("%v allocations a frame, want none", n)
	}
}

// TestBatchBounds: while the output is down, messages wait up to the
// buffer's count and MaxBatchBytes, and the rest are dropped and counted,
// never waited for.
func TestBatchBounds(t *testing.T) {
	client := netip.MustParseAddrPort("127.0.0.2:1")
	head := appendHead(nil, []byte("t"))
	for _, tc := range []struct {
		limit, size, sent int
		wantKept          int
	}{
		{limit: 50, size: 40, sent: 60, wantKept: 50},
		// 60,000-octet messages: the byte bound comes first
		{limit: 10_000, size: 60_000, sent: 1_000, wantKept: (MaxBatchBytes + 60_000 + 100 - 1) / (60_000 + 100)},
	} {
		// a socket nobody listens on: the output stays down
		o, err := newOutput("unix", filepath.Join(t.TempDir(), "absent.sock"), tc.limit, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		msg := make([]byte, tc.size)
		for range tc.sent {
			o.add(head, clientQuery, time.Now(), client, "dot", caddydns.Hop{}, msg)
		}
		o.mu.Lock()
		kept, octets := o.pending, len(o.batch)
		o.mu.Unlock()
		if got := int(o.dropped.Load()); kept+got != tc.sent || kept > tc.limit || octets > MaxBatchBytes+tc.size+100 {
			t.Errorf("limit %d, %d-octet messages: %d kept (%d octets), %d dropped", tc.limit, tc.size, kept, octets, got)
		}
		if tc.size < 1000 && kept != tc.wantKept || tc.size >= 1000 && (kept < tc.wantKept-1 || kept > tc.wantKept+1) {
			t.Errorf("limit %d, %d-octet messages: %d kept, want %d", tc.limit, tc.size, kept, tc.wantKept)
		}
		_ = o.Destruct()
	}
}
