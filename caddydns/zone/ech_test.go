package zone

import (
	"bytes"
	"crypto/tls"
	"testing"

	"github.com/miekg/dns"
)

// fakeConfig is an ECHConfig's framing (version, length) around body.
func fakeConfig(body string) []byte {
	return append([]byte{0xfe, 0x0d, 0, byte(len(body))}, body...)
}

func TestECHRecords(t *testing.T) {
	zd, err := newZoneData("example.org.", mustParse(t, testZone))
	if err != nil {
		t.Fatal(err)
	}
	cur, old := fakeConfig("current"), fakeConfig("replaced")
	e := &ECH{DoTPort: 853, DoHPort: 8443, DoHPath: "/dns-query{?dns}", TTL: 300, names: []string{"www.example.org."},
		keys: func(*tls.ClientHelloInfo) ([]tls.EncryptedClientHelloKey, error) {
			return []tls.EncryptedClientHelloKey{{Config: old}, {Config: cur, SendAsRetry: true}}, nil
		}}
	list := append([]byte{0, byte(len(cur))}, cur...)
	ask := func(name string, qtype uint16) *dns.Msg {
		q := new(dns.Msg).SetQuestion(name, qtype)
		return e.answer(q, zd.origin, dns.CanonicalName(name), qtype, zd.negativeSOA())
	}

	m := ask("WWW.example.org.", dns.TypeHTTPS)
	if m == nil || len(m.Answer) != 1 {
		t.Fatalf("HTTPS: %v", m)
	}
	h := m.Answer[0].(*dns.HTTPS)
	if h.Hdr.Name != "WWW.example.org." || h.Priority != 1 || h.Target != "." {
		t.Fatalf("HTTPS record: %v", h)
	}
	var gotECH []byte
	var port uint16
	for _, kv := range h.Value {
		switch v := kv.(type) {
		case *dns.SVCBECHConfig:
			gotECH = v.ECH
		case *dns.SVCBPort:
			port = v.Port
		}
	}
	if !bytes.Equal(gotECH, list) || port != 8443 {
		t.Fatalf("HTTPS ech %x port %d; want the current key only (%x) and 8443", gotECH, port, list)
	}

	m = ask("_dns.www.example.org.", dns.TypeSVCB)
	if m == nil || len(m.Answer) != 2 {
		t.Fatalf("SVCB: %v", m)
	}
	dot, doh := m.Answer[0].(*dns.SVCB), m.Answer[1].(*dns.SVCB)
	if dot.Priority != 1 || dot.Target != "www.example.org." || doh.Priority != 2 ||
		!bytes.Contains([]byte(dot.String()), []byte(`alpn="dot"`)) || !bytes.Contains([]byte(doh.String()), []byte(`dohpath="/dns-query{?dns}"`)) {
		t.Fatalf("SVCB records: %v", m.Answer)
	}

	// _dns.www exists: other types are NODATA, not NXDOMAIN
	if m = ask("_dns.www.example.org.", dns.TypeA); m == nil || m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0 || len(m.Ns) != 1 {
		t.Fatalf("A at _dns.www: %v", m)
	}
	// names not covered, and other types at covered names: the zone's
	for _, c := range []struct {
		name  string
		qtype uint16
	}{{"api.example.org.", dns.TypeHTTPS}, {"www.example.org.", dns.TypeA}, {"_dns.api.example.org.", dns.TypeSVCB}} {
		if m := ask(c.name, c.qtype); m != nil {
			t.Fatalf("%s %s answered by ech: %v", c.name, dns.TypeToString[c.qtype], m)
		}
	}

	// a publication is answered only while its keys are served
	published.set(&publication{names: []string{"www.example.org."}, list: append([]byte{0, byte(len(old))}, old...)})
	defer published.set(nil)
	if got := e.configList(); !bytes.Equal(got, published.get().list) {
		t.Fatalf("the publication of a served key was not used: %x", got)
	}
	published.set(&publication{list: append([]byte{0, 6}, fakeConfig("go")...)})
	if got := e.configList(); !bytes.Equal(got, list) {
		t.Fatalf("a publication of keys not served was used: %x", got)
	}
	for _, bad := range [][]byte{nil, {0}, {0, 9, 0xfe, 0x0d}, {0, 4, 0xfe, 0x0d, 0, 9}} {
		if served(bad, []tls.EncryptedClientHelloKey{{Config: cur}}) {
			t.Fatalf("malformed list %x counted as served", bad)
		}
	}
}
