package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

const echZone = `zone example.test {
			record "@ 300 IN SOA ns hostmaster 1 7200 3600 1209600 300"
			record "dns 300 IN A 127.0.0.1"
			record "www 300 IN A 192.0.2.80"
			ech {{.Names}} {
				dot {{.DoT}}
				doh {{.DoH}}
			}
		}`

var echSite = `{
	ech ech.example.test
	ocsp {
		issue dns.example.test {
			staple pki
		}
	}
	dot 127.0.0.1:{{.DoT}} {
		server_name dns.example.test
		` + echZone + `
	}
	doh 127.0.0.1:{{.DoH}} {
		server_name dns.example.test
		` + echZone + `
	}
}
https://dns.example.test:{{.Site}} {
	tls {
		get_certificate ocsp
	}
	doh /dns-query {
		` + echZone + `
	}
}
`

// sniProxy forwards TCP connections to a backend and records the server
// name of each ClientHello it passes on: what an observer on the wire sees.
type sniProxy struct {
	addr string
	mu   sync.Mutex
	seen []string
}

func newSNIProxy(t *testing.T, backend string) *sniProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &sniProxy{addr: l.Addr().String()}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go p.serve(c, backend)
		}
	}()
	return p
}

func (p *sniProxy) serve(c net.Conn, backend string) {
	defer c.Close()
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(c, hdr); err != nil {
		return
	}
	body := make([]byte, binary.BigEndian.Uint16(hdr[3:]))
	if _, err := io.ReadFull(c, body); err != nil {
		return
	}
	name, err := clientHelloSNI(body)
	if err != nil {
		name = "unparsed: " + err.Error()
	}
	p.mu.Lock()
	p.seen = append(p.seen, name)
	p.mu.Unlock()
	b, err := net.Dial("tcp", backend)
	if err != nil {
		return
	}
	defer b.Close()
	if _, err := b.Write(append(hdr, body...)); err != nil {
		return
	}
	go func() { _, _ = io.Copy(b, c) }()
	_, _ = io.Copy(c, b)
}

func (p *sniProxy) last() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.seen) == 0 {
		return ""
	}
	return p.seen[len(p.seen)-1]
}

// clientHelloSNI returns the server_name of a ClientHello handshake
// message (RFC 8446 4.1.2, RFC 6066 3), as sent in the clear.
func clientHelloSNI(b []byte) (string, error) {
	bad := errors.New("malformed ClientHello")
	if len(b) < 4 || b[0] != 1 {
		return "", bad
	}
	b = b[4:]
	if len(b) < 34 {
		return "", bad
	}
	b = b[34:] // version, random
	skip := func(lenBytes int) bool {
		if len(b) < lenBytes {
			return false
		}
		n := 0
		for _, x := range b[:lenBytes] {
			n = n<<8 | int(x)
		}
		if len(b) < lenBytes+n {
			return false
		}
		b = b[lenBytes+n:]
		return true
	}
	if !skip(1) || !skip(2) || !skip(1) { // session id, cipher suites, compression
		return "", bad
	}
	if len(b) < 2 {
		return "", bad
	}
	b = b[2:]
	for len(b) >= 4 {
		typ, n := binary.BigEndian.Uint16(b), int(binary.BigEndian.Uint16(b[2:]))
		if len(b) < 4+n {
			return "", bad
		}
		ext := b[4 : 4+n]
		b = b[4+n:]
		if typ != 0 || len(ext) < 5 || ext[2] != 0 {
			continue
		}
		l := int(binary.BigEndian.Uint16(ext[3:]))
		if len(ext) < 5+l {
			return "", bad
		}
		return string(ext[5 : 5+l]), nil
	}
	return "", nil
}

var echParam = regexp.MustCompile(`ech=([A-Za-z0-9+/=]+)`)

// digECH asks dig over DoT for the record and returns its ech SvcParams.
func digECH(t *testing.T, dot, name, qtype string) []string {
	t.Helper()
	host, port, _ := net.SplitHostPort(dot)
	out, _ := run(t, false, need(t, "dig"), "+tls", "@"+host, "-p", port, name, qtype, "+short")
	var lists []string
	for _, m := range echParam.FindAllStringSubmatch(out, -1) {
		lists = append(lists, m[1])
	}
	if len(lists) == 0 {
		t.Fatalf("dig %s %s: no ech SvcParam:\n%s", name, qtype, out)
	}
	return lists
}

// TestECH: the zone publishes the ECH config Caddy's tls app made, in the
// HTTPS record and the _dns SVCB records (RFC 9461), and a Go client
// that takes it from there connects over DoT and DoH with ECH: the outer
// server name on the wire is the public name, the staple is attached,
// and the queries are answered. kdig and dig without ECH still work. A
// key rotation changes the records, and a Caddy publication through the
// dnsfront publisher names the records' names.
func TestECH(t *testing.T) {
	need(t, "dig")
	kdig := need(t, "kdig")
	dir := t.TempDir()
	dot, doh, site := freePort(t), freePort(t), freePort(t)
	vars := Vars{"DoT": dot, "DoH": doh, "Site": site, "Names": "dns.example.test"}
	c := startCaddy(t, dir, echSite, vars)
	dotAddr, dohAddr := fmt.Sprintf("127.0.0.1:%d", dot), fmt.Sprintf("127.0.0.1:%d", doh)
	waitListen(t, dotAddr)
	waitListen(t, dohAddr)

	// the records, as dig sees them: one list, in all three
	https := digECH(t, dotAddr, "dns.example.test", "HTTPS")
	svcb := digECH(t, dotAddr, "_dns.dns.example.test", "SVCB")
	if len(svcb) != 2 || svcb[0] != https[0] || svcb[1] != https[0] {
		t.Fatalf("the HTTPS and SVCB records disagree: %v %v", https, svcb)
	}
	host, port, _ := net.SplitHostPort(dotAddr)
	out, _ := run(t, false, "dig", "+tls", "@"+host, "-p", port, "_dns.dns.example.test", "SVCB", "+short")
	for _, want := range []string{`alpn="dot" port=` + fmt.Sprint(dot), `alpn="h2" port=` + fmt.Sprint(doh)} {
		if !strings.Contains(out, want) {
			t.Fatalf("SVCB records lack %s:\n%s", want, out)
		}
	}
	list, err := base64.StdEncoding.DecodeString(https[0])
	if err != nil {
		t.Fatal(err)
	}

	roots := x509.NewCertPool()
	rootPEM, err := os.ReadFile(filepath.Join(dir, "data", "caddy", "pki", "authorities", "local", "root.crt"))
	if err != nil || !roots.AppendCertsFromPEM(rootPEM) {
		t.Fatalf("caddy's root: %v", err)
	}
	echConfig := func(list []byte, alpn string) *tls.Config {
		return &tls.Config{ServerName: "dns.example.test", RootCAs: roots, NextProtos: []string{alpn},
			EncryptedClientHelloConfigList: list, MinVersion: tls.VersionTLS13}
	}

	// DoT with ECH, through a proxy that reads the outer ClientHello
	dotProxy := newSNIProxy(t, dotAddr)
	echDoT := func(list []byte) {
		t.Helper()
		conn, err := tls.Dial("tcp", dotProxy.addr, echConfig(list, "dot"))
		if err != nil {
			t.Fatalf("DoT with ECH: %v", err)
		}
		defer conn.Close()
		cs := conn.ConnectionState()
		if !cs.ECHAccepted {
			t.Fatal("DoT: ECH not accepted")
		}
		if len(cs.OCSPResponse) == 0 {
			t.Fatal("DoT with ECH: no staple")
		}
		if got := dotProxy.last(); got != "ech.example.test" {
			t.Fatalf("DoT: the outer server name on the wire is %q, want the public name ech.example.test", got)
		}
		dc := &dns.Conn{Conn: conn}
		q := new(dns.Msg).SetQuestion("www.example.test.", dns.TypeA)
		if err := dc.WriteMsg(q); err != nil {
			t.Fatal(err)
		}
		r, err := dc.ReadMsg()
		if err != nil || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "192.0.2.80" {
			t.Fatalf("DoT with ECH: answer %v, %v", r, err)
		}
	}
	echDoT(list)

	// DoH with ECH, HTTP/2: the dedicated server and a Caddy site with the
	// doh handler
	dohProxy := newSNIProxy(t, dohAddr)
	siteAddr := fmt.Sprintf("127.0.0.1:%d", site)
	waitListen(t, siteAddr)
	siteProxy := newSNIProxy(t, siteAddr)
	echDoHVia := func(list []byte, dohProxy *sniProxy) {
		t.Helper()
		tr := &http.Transport{TLSClientConfig: echConfig(list, "h2"), ForceAttemptHTTP2: true,
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, dohProxy.addr)
			}}
		defer tr.CloseIdleConnections()
		q := new(dns.Msg).SetQuestion("www.example.test.", dns.TypeA)
		q.Id = 0
		wire, _ := q.Pack()
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://dns.example.test/dns-query?dns=" +
			base64.RawURLEncoding.EncodeToString(wire))
		if err != nil {
			t.Fatalf("DoH with ECH: %v", err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.TLS == nil || !resp.TLS.ECHAccepted || resp.ProtoMajor != 2 {
			t.Fatalf("DoH: ECH not accepted over HTTP/2 (%s)", resp.Proto)
		}
		if len(resp.TLS.OCSPResponse) == 0 {
			t.Fatal("DoH with ECH: no staple")
		}
		if got := dohProxy.last(); got != "ech.example.test" {
			t.Fatalf("DoH: the outer server name on the wire is %q, want ech.example.test", got)
		}
		r := new(dns.Msg)
		if resp.StatusCode != http.StatusOK || r.Unpack(body) != nil || len(r.Answer) != 1 {
			t.Fatalf("DoH with ECH: %s %v", resp.Status, r)
		}
	}
	echDoH := func(list []byte) { t.Helper(); echDoHVia(list, dohProxy) }
	echDoH(list)
	echDoHVia(list, siteProxy)

	// without ECH: kdig over DoT (GnuTLS) and dig over DoH, the name in
	// the clear as before
	rootFile := filepath.Join(dir, "data", "caddy", "pki", "authorities", "local", "root.crt")
	if o, _ := run(t, false, kdig, "+tls-ca="+rootFile, "+tls-hostname=dns.example.test", "@127.0.0.1", "-p", fmt.Sprint(dot), "www.example.test", "A", "+short"); !strings.Contains(o, "192.0.2.80") {
		t.Fatalf("kdig +tls without ECH: %s", o)
	}
	if o, _ := run(t, false, "dig", "+https", "@127.0.0.1", "-p", fmt.Sprint(doh), "www.example.test", "A", "+short"); !strings.Contains(o, "192.0.2.80") {
		t.Fatalf("dig +https without ECH: %s", o)
	}

	if o := sClient(t, dotAddr, "dns.example.test", "-tls1_2"); !strings.Contains(o, "Protocol  : TLSv1.2") || !strings.Contains(o, "Cert Status: good") {
		t.Fatalf("openssl s_client -tls1_2 -status with ECH on:\n%s", o)
	}

	// rotation: Caddy rotates a key 30 days old; make the key look that
	// old and let Caddy's provisioning rotate it (its hourly rotation
	// ticker cannot be shortened), then the records carry the new key
	metas, _ := filepath.Glob(filepath.Join(dir, "data", "caddy", "ech", "configs", "*", "meta.json"))
	if len(metas) != 1 {
		t.Fatalf("ECH configs in storage: %v", metas)
	}
	b, err := os.ReadFile(metas[0])
	if err != nil {
		t.Fatal(err)
	}
	var meta map[string]any
	if err := json.Unmarshal(b, &meta); err != nil {
		t.Fatal(err)
	}
	meta["created"] = time.Now().Add(-31 * 24 * time.Hour).Format(time.RFC3339)
	b, _ = json.Marshal(meta)
	if err := os.WriteFile(metas[0], b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.reload("", nil); err != nil {
		t.Fatal(err)
	}
	rotated := digECH(t, dotAddr, "dns.example.test", "HTTPS")
	if rotated[0] == https[0] {
		t.Fatal("the HTTPS record's ech did not change with the rotation")
	}
	newList, _ := base64.StdEncoding.DecodeString(rotated[0])
	echDoT(newList)
	echDoH(newList)
	echDoT(list) // the replaced key is still accepted (clients with cached records)

	// the dnsfront publisher: Caddy publishes the list and the names it
	// protects (the DoT and DoH servers' names), and a zone whose ech
	// names none answers for those
	vars["Names"] = ""
	c.write(echSite, vars)
	cfgJSON, err := exec.Command(caddyBin, "adapt", "--config", c.config, "--adapter", "caddyfile").Output()
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		t.Fatal(err)
	}
	ech := cfg["apps"].(map[string]any)["tls"].(map[string]any)["encrypted_client_hello"].(map[string]any)
	ech["publication"] = []any{map[string]any{"publishers": map[string]any{"dnsfront": map[string]any{}}}}
	cfgJSON, _ = json.Marshal(cfg)
	c.apiJSON("POST", "/load", cfgJSON) // with the dnsfront publisher
	c.waitLog(`ECH config list published to the zone.*dns.example.test`, 30*time.Second)
	published := digECH(t, dotAddr, "dns.example.test", "HTTPS")
	pubList, _ := base64.StdEncoding.DecodeString(published[0])
	echDoT(pubList)
}
