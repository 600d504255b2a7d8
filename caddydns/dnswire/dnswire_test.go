package dnswire

import (
	"bytes"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// answers are answers as upstreams send them.
func answers(t *testing.T) map[string][]byte {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion("www.Example.org.", dns.TypeA)
	msg := func(rcode int, records ...string) []byte {
		m := new(dns.Msg)
		m.SetRcode(q, rcode)
		for _, s := range records {
			rr, err := dns.NewRR(s)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case rr.Header().Rrtype == dns.TypeSOA || rr.Header().Rrtype == dns.TypeNS:
				m.Ns = append(m.Ns, rr)
			case len(m.Ns) > 0:
				m.Extra = append(m.Extra, rr)
			default:
				m.Answer = append(m.Answer, rr)
			}
		}
		m.SetEdns0(1232, true)
		if rcode > 0xF {
			m.IsEdns0().SetExtendedRcode(uint16(rcode))
		}
		m.Compress = true
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	return map[string][]byte{
		"cname chain": msg(dns.RcodeSuccess, "www.example.org. 300 IN CNAME web.example.org.", "web.example.org. 60 IN A 192.0.2.2",
			"example.org. 3600 IN NS ns1.example.org.", "ns1.example.org. 3600 IN A 192.0.2.53"),
		"nxdomain":  msg(dns.RcodeNameError, "example.org. 3600 IN SOA ns1.example.org. host.example.org. 1 7200 3600 1209600 300"),
		"badcookie": msg(dns.RcodeBadCookie),
	}
}

// TestWalk: malformed messages are refused, and what a well-formed one
// holds is found.
func TestWalk(t *testing.T) {
	ans := answers(t)
	good := ans["cname chain"]
	for i := HeaderLen; i < len(good); i++ {
		if _, ok := Walk(good[:i]); ok {
			t.Fatalf("cut to %d of %d octets: walks", i, len(good))
		}
	}
	l, ok := Walk(good)
	if !ok || l.End != len(good) || !l.OPTLast || l.OPTCount != 1 || l.TTL != 60 || !l.Cacheable {
		t.Fatalf("layout %+v", l)
	}
	if l, ok := Walk(ans["nxdomain"]); !ok || l.Rcode != dns.RcodeNameError || l.TTL != 300 || !l.Cacheable {
		t.Fatalf("NXDOMAIN layout %+v: want the SOA minimum as TTL", l)
	}
	if l, ok := Walk(ans["badcookie"]); !ok || l.Rcode != dns.RcodeBadCookie || l.Cacheable {
		t.Fatalf("BADCOOKIE layout %+v: want the extended rcode, not cacheable", l)
	}
	// a pointer forward (or to itself) is refused
	bad := bytes.Clone(good)
	off := 0
	for i := l.QEnd; i+1 < len(bad); i++ {
		if bad[i]&0xC0 == 0xC0 {
			off = i
			break
		}
	}
	if off == 0 {
		t.Fatal("no compression pointer in the answer")
	}
	bad[off], bad[off+1] = 0xC0|byte(off>>8), byte(off)
	if _, ok := Walk(bad); ok {
		t.Fatal("a pointer to itself walks")
	}
	// two questions
	two := bytes.Clone(good)
	two[5] = 2
	if _, ok := Walk(two); ok {
		t.Fatal("two questions walk")
	}
}

// TestAnswers: the question in an answer must be the query's, but for
// the case of ASCII letters in its name.
func TestAnswers(t *testing.T) {
	pack := func(name string, qtype uint16) []byte {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		m.Response = true
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	q := Question(pack("www.Example.org.", dns.TypeHTTPS)) // 65: 'A' in its low octet
	for _, tc := range []struct {
		name  string
		qtype uint16
		want  Match
	}{
		{"www.Example.org.", dns.TypeHTTPS, SameQuestion},
		{"www.example.org.", dns.TypeHTTPS, SameButCase},
		{"WWW.EXAMPLE.ORG.", dns.TypeHTTPS, SameButCase},
		{"www.Example.org.", 97, OtherQuestion}, // 'a': types are not letters
		{"www.example.org.", 97, OtherQuestion},
		{"www.example.com.", dns.TypeHTTPS, OtherQuestion},
		{"www.exampleaorg.", dns.TypeHTTPS, OtherQuestion},
		{"ww.wexample.org.", dns.TypeHTTPS, OtherQuestion},
		{"www\\064.example.org.", dns.TypeHTTPS, OtherQuestion},
	} {
		a := pack(tc.name, tc.qtype)
		l, ok := Walk(a)
		if !ok {
			t.Fatal(tc.name)
		}
		if got := Answers(a, &l, q); got != tc.want {
			t.Errorf("%s %d: answers = %v, want %v", tc.name, tc.qtype, got, tc.want)
		}
	}
}

func TestBadECS(t *testing.T) {
	for _, tc := range []struct {
		data []byte
		bad  bool
	}{
		{[]byte{0, 1, 24, 0, 192, 0, 2}, false},
		{[]byte{0, 1, 32, 0, 192, 0, 2, 1}, false},
		{[]byte{0, 2, 56, 0, 0x20, 1, 0xd, 0xb8, 0, 0xaa, 0xbb}, false},
		{[]byte{0, 0, 0, 0}, false},                  // dig +subnet=0
		{[]byte{0, 1, 0, 0}, false},                  // /0: no address octets
		{[]byte{0, 1, 24, 8, 192, 0, 2}, true},       // a scope in a query
		{[]byte{0, 1, 16, 0, 192, 0, 2}, true},       // an octet past the prefix
		{[]byte{0, 1, 24, 0, 192, 0}, true},          // an octet short
		{[]byte{0, 1, 23, 0, 192, 0, 3}, true},       // a bit set past /23
		{[]byte{0, 1, 33, 0, 192, 0, 2, 1, 0}, true}, // longer than IPv4
		{[]byte{0, 3, 8, 0, 10}, true},               // unknown family
		{[]byte{0, 0, 8, 0, 10}, true},               // family 0 with a prefix
		{[]byte{0, 1, 24}, true},                     // too short
	} {
		if got := BadECS(tc.data); got != tc.bad {
			t.Errorf("BadECS(%v) = %v, want %v", tc.data, got, tc.bad)
		}
	}
}

// FuzzBadECS: any option data is judged without a panic, and data judged
// good decodes (miekg/dns) to an option that packs to the same octets.
func FuzzBadECS(f *testing.F) {
	f.Add([]byte{0, 1, 24, 0, 192, 0, 2})
	f.Add([]byte{0, 2, 56, 0, 0x20, 1, 0xd, 0xb8, 0, 0xaa, 0xbb})
	f.Fuzz(func(t *testing.T, data []byte) {
		if BadECS(data) {
			return
		}
		q := new(dns.Msg)
		q.SetQuestion("example.org.", dns.TypeA)
		q.SetEdns0(1232, false)
		q.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_LOCAL{Code: dns.EDNS0SUBNET, Data: data}}
		b, err := q.Pack()
		if err != nil {
			t.Fatal(err)
		}
		m := new(dns.Msg)
		if err := m.Unpack(b); err != nil {
			t.Fatalf("good ECS %v does not decode: %v", data, err)
		}
		e := m.IsEdns0().Option[0].(*dns.EDNS0_SUBNET)
		if e.Family != 0 {
			m2 := new(dns.Msg)
			m2.SetQuestion("example.org.", dns.TypeA)
			m2.SetEdns0(1232, false)
			m2.IsEdns0().Option = []dns.EDNS0{e}
			b2, err := m2.Pack()
			if err != nil || string(b2[len(b2)-len(data):]) != string(data) {
				t.Fatalf("good ECS %v packs again as %v (%v)", data, b2[len(b2)-len(data):], err)
			}
		}
	})
}

// TestRestoreCase: an answer to a question sent in random case, echoed
// compressed (pointers into the question) or in full, decodes in the
// question's own case after RestoreCase, and names that are not the
// question are left as they are.
func TestRestoreCase(t *testing.T) {
	for _, compress := range []bool{true, false} {
		q := new(dns.Msg)
		q.SetQuestion("wWw.ExaMPLe.oRG.", dns.TypeA)
		sentQ, _ := q.Pack()
		m := new(dns.Msg)
		m.SetReply(q)
		for _, s := range []string{"wWw.ExaMPLe.oRG. 60 IN CNAME web.Example.org.", "web.Example.org. 60 IN A 192.0.2.2",
			"wWw.ExaMPLe.oRG. 60 IN TXT \"x\""} {
			rr, _ := dns.NewRR(s)
			m.Answer = append(m.Answer, rr)
		}
		m.Compress = compress
		msg, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		l, ok := Walk(msg)
		if !ok {
			t.Fatal("the answer does not walk")
		}
		q.Question[0].Name = "www.example.ORG."
		origQ, _ := q.Pack()
		RestoreCase(msg, &l, Question(sentQ), Question(origQ))
		got := new(dns.Msg)
		if err := got.Unpack(msg); err != nil {
			t.Fatal(err)
		}
		if got.Question[0].Name != "www.example.ORG." || got.Answer[0].Header().Name != "www.example.ORG." ||
			got.Answer[2].Header().Name != "www.example.ORG." || got.Answer[1].Header().Name != "web.Example.org." ||
			got.Answer[0].(*dns.CNAME).Target != "web.Example.org." {
			t.Fatalf("compressed %v: %v", compress, got)
		}
	}
}

// FuzzRestoreCase: any answer an upstream sends, walked, is rewritten
// within its bounds and keeps its layout.
func FuzzRestoreCase(f *testing.F) {
	fuzzAnswers(f, func(t *testing.T, msg []byte, l Layout) {
		sent := bytes.Clone(msg[HeaderLen:l.QEnd])
		orig := bytes.Clone(sent) // in upper case, ASCII letters only
		for i, c := range orig {
			if c >= 'a' && c <= 'z' {
				orig[i] = c - 0x20
			}
		}
		RestoreCase(msg, &l, sent, orig)
		if l2, ok := Walk(msg); !ok || l2.QEnd != l.QEnd || l2.End != l.End {
			t.Fatalf("the layout changed: %+v against %+v", l2, l)
		}
		if !bytes.Equal(msg[HeaderLen:l.QEnd], orig) {
			t.Fatal("the question was not written")
		}
	})
}

// TestECSScope: the scope of an answer's ECS option is read, after other
// options; an answer without one, or with one cut short, has none.
func TestECSScope(t *testing.T) {
	msg := func(opts ...dns.EDNS0) []byte {
		m := new(dns.Msg)
		m.SetQuestion("www.example.org.", dns.TypeA)
		m.Response = true
		if opts != nil {
			m.SetEdns0(1232, false)
			m.IsEdns0().Option = opts
		}
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ecs := func(scope uint8) dns.EDNS0 {
		return &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, SourceScope: scope, Address: []byte{192, 0, 2, 0}}
	}
	cut := msg(&dns.EDNS0_LOCAL{Code: dns.EDNS0SUBNET, Data: []byte{0, 1, 24}})
	for name, tc := range map[string]struct {
		msg   []byte
		scope int
		ok    bool
	}{
		"scope 0":            {msg(ecs(0)), 0, true},
		"scope 24":           {msg(ecs(24)), 24, true},
		"after padding":      {msg(&dns.EDNS0_PADDING{Padding: make([]byte, 5)}, ecs(16)), 16, true},
		"no ECS":             {msg(&dns.EDNS0_PADDING{Padding: make([]byte, 5)}), 0, false},
		"no OPT":             {msg(), 0, false},
		"option cut short":   {cut, 0, false},
		"RDLENGTH past them": {append(cut[:len(cut):len(cut)], 0), 0, false},
	} {
		if name == "RDLENGTH past them" {
			tc.msg[len(tc.msg)-10] = 0xFF // RDLENGTH's high octet: past the end
		}
		l, ok := Walk(tc.msg)
		if !ok {
			l = Layout{OPT: -1}
		}
		if scope, ok := ECSScope(tc.msg, &l); scope != tc.scope || ok != tc.ok {
			t.Errorf("%s: %d %v, want %d %v", name, scope, ok, tc.scope, tc.ok)
		}
	}
}

// FuzzECSScope: any answer an upstream sends, walked, has the scope
// miekg/dns decodes from its ECS option, or none when it decodes none.
func FuzzECSScope(f *testing.F) {
	fuzzAnswers(f, func(t *testing.T, msg []byte, l Layout) {
		scope, ok := ECSScope(msg, &l)
		m := new(dns.Msg)
		if m.Unpack(msg) != nil || m.IsEdns0() == nil {
			return
		}
		for _, o := range m.IsEdns0().Option {
			if e, isECS := o.(*dns.EDNS0_SUBNET); isECS {
				if !ok || scope != int(e.SourceScope) {
					t.Fatalf("scope %d %v, miekg/dns decodes %d", scope, ok, e.SourceScope)
				}
				return
			}
		}
	})
}

// fuzzAnswers fuzzes check with the answers that walk, seeded with
// answers(): upstreams' answers as they come.
func fuzzAnswers(f *testing.F, check func(t *testing.T, msg []byte, l Layout)) {
	for _, b := range answers(&testing.T{}) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		if l, ok := Walk(msg); ok {
			check(t, msg, l)
		}
	})
}

// TestAddresses: the addresses of every A and AAAA record and every
// HTTPS hint in every section, in order, and none of other types,
// classes or lengths.
func TestAddresses(t *testing.T) {
	m := new(dns.Msg)
	m.SetQuestion("www.example.org.", dns.TypeA)
	m.Response = true
	rr := func(s string) dns.RR {
		r, err := dns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	m.Answer = []dns.RR{rr("www.example.org. 60 IN CNAME a.example.org."), rr("a.example.org. 60 IN A 192.0.2.1"), rr("a.example.org. 60 IN A 10.0.0.1")}
	m.Ns = []dns.RR{rr("example.org. 60 IN NS ns.example.org."), rr("example.org. 60 CH A 10.9.9.9")}
	m.Extra = []dns.RR{rr("ns.example.org. 60 IN AAAA fe80::1"), rr("ns.example.org. 60 IN TXT \"10.0.0.2\""),
		rr("www.example.org. 60 IN HTTPS 1 . alpn=h2 ipv4hint=192.0.2.7,10.1.1.1 ipv6hint=fd00::7")}
	m.SetEdns0(1232, false)
	m.Compress = true
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	l, ok := Walk(b)
	if !ok {
		t.Fatal("Walk refused the message")
	}
	var got []string
	for a := range Addresses(b, &l) {
		got = append(got, a.String())
	}
	if want := "192.0.2.1 10.0.0.1 fe80::1 192.0.2.7 10.1.1.1 fd00::7"; strings.Join(got, " ") != want {
		t.Fatalf("addresses %q, want %q", got, want)
	}
	for a := range Addresses(b, &l) {
		if a.String() != "192.0.2.1" {
			t.Fatalf("the iteration went on past a false yield: %s", a)
		}
		break
	}
}

// appendHints appends the addresses of SVCB parameters' ipv4hint and
// ipv6hint, as miekg/dns decodes them.
func appendHints(dst []netip.Addr, params []dns.SVCBKeyValue) []netip.Addr {
	for _, p := range params {
		switch h := p.(type) {
		case *dns.SVCBIPv4Hint:
			for _, ip := range h.Hint {
				dst = append(dst, netip.AddrFrom4([4]byte(ip.To4())))
			}
		case *dns.SVCBIPv6Hint:
			for _, ip := range h.Hint {
				dst = append(dst, netip.AddrFrom16([16]byte(ip.To16())))
			}
		}
	}
	return dst
}

// FuzzAddresses: on any message Walk takes, Addresses yields what
// miekg/dns's Unpack reads as A and AAAA records of class IN, and as the
// hints of SVCB and HTTPS records, in order.
func FuzzAddresses(f *testing.F) {
	seed := new(dns.Msg)
	seed.SetQuestion("www.example.org.", dns.TypeHTTPS)
	seed.Response = true
	for _, s := range []string{"www.example.org. 60 IN HTTPS 1 . alpn=h2 ipv4hint=10.0.0.1 ipv6hint=fd00::1,2001:db8::1", "www.example.org. 60 IN A 192.0.2.1"} {
		r, err := dns.NewRR(s)
		if err != nil {
			f.Fatal(err)
		}
		seed.Answer = append(seed.Answer, r)
	}
	if b, err := seed.Pack(); err == nil {
		f.Add(b)
	}
	fuzzAnswers(f, func(t *testing.T, msg []byte, l Layout) {
		var got []netip.Addr
		for a := range Addresses(msg, &l) {
			got = append(got, a)
		}
		m := new(dns.Msg)
		if m.Unpack(msg[:l.End]) != nil {
			return // Unpack is stricter about RDATA; nothing to compare
		}
		var want []netip.Addr
		for _, rr := range slices.Concat(m.Answer, m.Ns, m.Extra) {
			if rr.Header().Class != dns.ClassINET {
				continue
			}
			switch rr := rr.(type) {
			case *dns.A: // one with an empty RDATA (Unpack takes it) holds no address
				if a, ok := netip.AddrFromSlice(rr.A.To4()); ok {
					want = append(want, a)
				}
			case *dns.AAAA:
				if len(rr.AAAA) == 16 {
					want = append(want, netip.AddrFrom16([16]byte(rr.AAAA)))
				}
			case *dns.SVCB:
				want = appendHints(want, rr.Value)
			case *dns.HTTPS:
				want = appendHints(want, rr.Value)
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("Addresses %v, Unpack %v", got, want)
		}
	})
}

// TestForNextHop: the hop's options go, the others stay in their order,
// and the UDP size is the one given (or the query's, for 0).
func TestForNextHop(t *testing.T) {
	for _, size := range []uint16{0, 1232} {
		q := new(dns.Msg)
		q.SetQuestion("www.example.org.", dns.TypeA)
		q.SetEdns0(65000, true)
		q.IsEdns0().Option = []dns.EDNS0{
			&dns.EDNS0_PADDING{Padding: make([]byte, 20)},
			&dns.EDNS0_LOCAL{Code: 65001, Data: []byte("x")},
			&dns.EDNS0_NSID{Code: dns.EDNS0NSID},
			&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: []byte{192, 0, 2, 0}},
			&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"},
		}
		b, err := q.Pack()
		if err != nil {
			t.Fatal(err)
		}
		m := new(dns.Msg)
		if err := m.Unpack(ForNextHop(b, true, size)); err != nil {
			t.Fatal(err)
		}
		opt := m.IsEdns0()
		want := uint16(65000)
		if size != 0 {
			want = size
		}
		if opt == nil || opt.UDPSize() != want || !opt.Do() || len(opt.Option) != 1 || opt.Option[0].Option() != 65001 {
			t.Fatalf("size %d: OPT %v, want UDP size %d, DO, and option 65001 alone", size, opt, want)
		}
	}
}
