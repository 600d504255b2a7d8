package integration

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// testUpstream is a DNS server on loopback (UDP and TCP on one port) that
// the forward handler is pointed at. It answers:
//   - slow.up.test.: after slowDelay;
//   - big.up.test. TXT: 40 records, truncated (TC=1) over UDP;
//   - huge.up.test. TXT: 120 records (~6 KB) over UDP as over TCP,
//     whatever size the query announced;
//   - ecs.up.test. TXT: the ECS option the query carried ("ecs
//     192.0.2.0/24", or "no ecs"), echoed with its scope;
//   - zero.up.test. TXT: the same, echoed with scope 0 (the answer is
//     for every subnet);
//   - size.up.test. TXT: the UDP size the query's OPT record announced
//     ("udp 1232"), or "no edns";
//   - secure.up.test.: an A record 198.51.100.<id>, with AD when the
//     query has AD or DO (a validating resolver's answer, RFC 6840 5.8);
//   - nsid.up.test.: an A record 198.51.100.<id> and, asked or not, an
//     NSID option "up-<id>" (RFC 5001 forbids the unasked one);
//   - a name under private.up.test.: an A record 10.0.0.<id>, a private
//     address (rebind_protection); alias.<...>.private.up.test. a CNAME
//     to target.<...> and that name's A record;
//   - any other name: an A record 198.51.100.<id>, so a test sees which
//     upstream answered.
type testUpstream struct {
	t        testing.TB
	id       byte
	addr     string
	mu       sync.Mutex
	udp, tcp *dns.Server
	answered atomic.Int64
	overTCP  atomic.Int64 // queries that came over TCP
}

const slowDelay = 400 * time.Millisecond

func newTestUpstream(t testing.TB, id byte) *testUpstream {
	t.Helper()
	u := &testUpstream{t: t, id: id}
	// find a port free for both UDP and TCP
	for i := 0; ; i++ {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := pc.LocalAddr().String()
		l, err := net.Listen("tcp", addr)
		if err != nil {
			pc.Close()
			if i < 20 {
				continue
			}
			t.Fatal(err)
		}
		u.addr = addr
		u.serve(pc, l)
		break
	}
	t.Cleanup(u.stop)
	return u
}

func (u *testUpstream) handle(w dns.ResponseWriter, q *dns.Msg) {
	u.answered.Add(1)
	if _, tcp := w.RemoteAddr().(*net.TCPAddr); tcp {
		u.overTCP.Add(1)
	}
	m := new(dns.Msg)
	m.SetReply(q)
	m.RecursionAvailable = true
	name := strings.ToLower(q.Question[0].Name)
	switch {
	case name == "slow.up.test.":
		time.Sleep(slowDelay)
		m.Answer = append(m.Answer, rr(u.t, fmt.Sprintf("%s 30 IN A 198.51.100.%d", q.Question[0].Name, u.id)))
	case name == "big.up.test." && q.Question[0].Qtype == dns.TypeTXT:
		for i := 0; i < 40; i++ {
			m.Answer = append(m.Answer, rr(u.t, fmt.Sprintf(`%s 30 IN TXT "record %02d padding padding padding padding"`, q.Question[0].Name, i)))
		}
		if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
			size := 512
			if opt := q.IsEdns0(); opt != nil {
				size = int(opt.UDPSize())
			}
			m.Truncate(size)
		}
	case name == "huge.up.test." && q.Question[0].Qtype == dns.TypeTXT:
		for i := 0; i < 120; i++ {
			m.Answer = append(m.Answer, rr(u.t, fmt.Sprintf(`%s 30 IN TXT "record %03d padding padding padding padding"`, q.Question[0].Name, i)))
		}
	case (name == "ecs.up.test." || name == "zero.up.test.") && q.Question[0].Qtype == dns.TypeTXT:
		// the ECS option the query carried, echoed as an authoritative
		// server does, with the scope of its source prefix
		seen := "no ecs"
		if opt := q.IsEdns0(); opt != nil {
			for _, o := range opt.Option {
				if e, ok := o.(*dns.EDNS0_SUBNET); ok {
					seen = fmt.Sprintf("ecs %s/%d", e.Address, e.SourceNetmask)
					echo := *e
					echo.SourceScope = e.SourceNetmask
					if name == "zero.up.test." {
						echo.SourceScope = 0
					}
					m.SetEdns0(1232, false)
					m.IsEdns0().Option = []dns.EDNS0{&echo}
				}
			}
		}
		m.Answer = append(m.Answer, rr(u.t, fmt.Sprintf(`%s 30 IN TXT "%s"`, q.Question[0].Name, seen)))
	case name == "size.up.test." && q.Question[0].Qtype == dns.TypeTXT:
		size := "no edns"
		if opt := q.IsEdns0(); opt != nil {
			size = fmt.Sprintf("udp %d", opt.UDPSize())
		}
		m.Answer = append(m.Answer, rr(u.t, fmt.Sprintf(`%s 30 IN TXT "%s"`, q.Question[0].Name, size)))
	case name == "secure.up.test.":
		m.AuthenticatedData = q.AuthenticatedData || (q.IsEdns0() != nil && q.IsEdns0().Do())
		m.Answer = append(m.Answer, rr(u.t, fmt.Sprintf("%s 30 IN A 198.51.100.%d", q.Question[0].Name, u.id)))
	case name == "nsid.up.test.":
		m.Answer = append(m.Answer, rr(u.t, fmt.Sprintf("%s 30 IN A 198.51.100.%d", q.Question[0].Name, u.id)))
		m.SetEdns0(1232, false)
		m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_NSID{Code: dns.EDNS0NSID, Nsid: hex.EncodeToString(fmt.Appendf(nil, "up-%d", u.id))}}
	case strings.HasSuffix(name, ".private.up.test."):
		owner := q.Question[0].Name
		if rest, ok := strings.CutPrefix(name, "alias."); ok {
			owner = "target." + rest
			m.Answer = append(m.Answer, rr(u.t, fmt.Sprintf("%s 30 IN CNAME %s", q.Question[0].Name, owner)))
		}
		m.Answer = append(m.Answer, rr(u.t, fmt.Sprintf("%s 30 IN A 10.0.0.%d", owner, u.id)))
	default:
		m.Answer = append(m.Answer, rr(u.t, fmt.Sprintf("%s 30 IN A 198.51.100.%d", q.Question[0].Name, u.id)))
	}
	_ = w.WriteMsg(m)
}

func rr(t testing.TB, s string) dns.RR {
	r, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (u *testUpstream) serve(pc net.PacketConn, l net.Listener) {
	started := make(chan struct{}, 2)
	u.mu.Lock()
	u.udp = &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(u.handle), NotifyStartedFunc: func() { started <- struct{}{} }}
	u.tcp = &dns.Server{Listener: l, Handler: dns.HandlerFunc(u.handle), NotifyStartedFunc: func() { started <- struct{}{} }}
	udp, tcp := u.udp, u.tcp
	u.mu.Unlock()
	go func() { _ = udp.ActivateAndServe() }()
	go func() { _ = tcp.ActivateAndServe() }()
	<-started
	<-started
}

// stop shuts the upstream down (its port refuses from then on).
func (u *testUpstream) stop() {
	u.mu.Lock()
	udp, tcp := u.udp, u.tcp
	u.udp, u.tcp = nil, nil
	u.mu.Unlock()
	if udp != nil {
		_ = udp.Shutdown()
		_ = tcp.Shutdown()
	}
}

// start brings a stopped upstream back on its port.
func (u *testUpstream) start() {
	pc, err := net.ListenPacket("udp", u.addr)
	if err != nil {
		u.t.Fatal(err)
	}
	l, err := net.Listen("tcp", u.addr)
	if err != nil {
		u.t.Fatal(err)
	}
	u.serve(pc, l)
}

// dotConn is a raw DoT connection for framing-level checks.
type dotConn struct {
	*tls.Conn
}

func dialDoT(t testing.TB, addr string) *dotConn {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
		&tls.Config{InsecureSkipVerify: true, NextProtos: []string{"dot"}}) // trust is checked by kdig elsewhere
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &dotConn{c}
}

func (c *dotConn) send(t testing.TB, q *dns.Msg) {
	t.Helper()
	b, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	c.sendRaw(t, binary.BigEndian.AppendUint16(nil, uint16(len(b))), b)
}

func (c *dotConn) sendRaw(t testing.TB, parts ...[]byte) {
	t.Helper()
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
}

// recv reads one answer; an error means the server closed or the
// deadline passed.
func (c *dotConn) recv(timeout time.Duration) (*dns.Msg, error) {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	var l [2]byte
	if _, err := io.ReadFull(c, l[:]); err != nil {
		return nil, err
	}
	b := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(c, b); err != nil {
		return nil, err
	}
	m := new(dns.Msg)
	return m, m.Unpack(b)
}

// closedByServer waits up to timeout for the server to close c.
func (c *dotConn) closedByServer(timeout time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 512)
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue
		}
		var ne net.Error
		return !(errors.As(err, &ne) && ne.Timeout())
	}
}

func question(name string, qtype uint16, id uint16) *dns.Msg {
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	q.Id = id
	return q
}

// kdig runs kdig and returns its output.
func kdig(t testing.TB, args ...string) string {
	t.Helper()
	out, _ := run(t, true, need(t, "kdig"), args...)
	return out
}

func x509NewPool(t testing.TB, pemBytes []byte) *x509.CertPool {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		t.Fatal("no certificate in the root file")
	}
	return pool
}
