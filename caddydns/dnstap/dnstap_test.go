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
// clients, and for messages whose length takes 1, 2 and 3 octets.
func TestAppendFrame(t *testing.T) {
	at := time.Unix(1_700_000_000, 123_456_789)
	for _, tc := range []struct {
		kind      int
		client    string
		transport string
		upstream  string
		size      int
	}{
		{clientQuery, "127.0.0.2:40000", "dot", "", 30},
		{clientResponse, "[::ffff:127.0.0.3]:53", "doh", "", 300},
		{forwarderQuery, "[2001:db8::1]:443", "doh", "udp://127.0.0.1:5301", 70_000 - 200},
		{forwarderResponse, "127.0.0.2:1", "dot", "tcp-tls://[::1]:853", 100},
		{forwarderResponse, "127.0.0.2:1", "dot", "not an address", 1},
	} {
		msg := bytes.Repeat([]byte{0xAB}, tc.size)
		client := netip.MustParseAddrPort(tc.client)
		prefix := []byte("before")
		b := appendFrame(prefix, appendHead(nil, []byte("front-1")), tc.kind, at, client, tc.transport, tc.upstream, msg)
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
		wantFamily, wantAddr := tap.SocketFamily_INET, client.Addr().Unmap().AsSlice()
		if client.Addr().Is6() && !client.Addr().Is4In6() {
			wantFamily = tap.SocketFamily_INET6
		}
		if m.GetSocketFamily() != wantFamily || !bytes.Equal(m.GetQueryAddress(), wantAddr) || m.GetQueryPort() != uint32(client.Port()) {
			t.Errorf("%d: client %v %v %d, want %v %v %d", tc.kind, m.GetSocketFamily(), m.GetQueryAddress(), m.GetQueryPort(), wantFamily, wantAddr, client.Port())
		}
		wantProto := map[string]tap.SocketProtocol{"dot": tap.SocketProtocol_DOT, "doh": tap.SocketProtocol_DOH}[tc.transport]
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
		if tc.upstream == "" {
			if m.GetSocketProtocol() != wantProto || m.ResponseAddress != nil {
				t.Errorf("%d: protocol %v, response address %v", tc.kind, m.GetSocketProtocol(), m.ResponseAddress)
			}
			continue
		}
		if m.GetSocketProtocol() != tap.SocketProtocol_UDP {
			t.Errorf("%d: protocol %v, want UDP", tc.kind, m.GetSocketProtocol())
		}
		_, up, _ := strings.Cut(tc.upstream, "://")
		if ap, err := netip.ParseAddrPort(up); err == nil {
			if !bytes.Equal(m.GetResponseAddress(), ap.Addr().AsSlice()) || m.GetResponsePort() != uint32(ap.Port()) {
				t.Errorf("%d: upstream %v %d, want %v", tc.kind, m.GetResponseAddress(), m.GetResponsePort(), ap)
			}
		} else if m.ResponseAddress != nil || m.ResponsePort != nil {
			t.Errorf("%d: an upstream that is no address gave %v", tc.kind, m.GetResponseAddress())
		}
	}
	buf, head := make([]byte, 0, 512), appendHead(nil, []byte("x"))
	if n := testing.AllocsPerRun(100, func() {
		appendFrame(buf[:0], head, clientQuery, at, netip.MustParseAddrPort("127.0.0.1:1"), "dot", "", []byte("query"))
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
			o.add(head, clientQuery, time.Now(), client, "dot", "", msg)
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
