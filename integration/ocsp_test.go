package integration

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/dnsfront/dnsfront/internal/testpki"
)

// pki is a CA with one server certificate, written as an operator has them.
type pki struct {
	dir        string
	ca         *testpki.CA
	leaf       *testpki.Leaf
	certFile   string // leaf + CA
	keyFile    string
	caFile     string
	caKeyFile  string
	stapleFile string
}

func newPKI(t *testing.T, dir, name string, kt testpki.KeyType, opts testpki.LeafOptions, names ...string) *pki {
	t.Helper()
	p := &pki{dir: dir, ca: testpki.NewCA(t, "dnsfront "+name+" CA", kt)}
	opts.KeyType = kt
	p.leaf = p.ca.Issue(t, opts, names...)
	p.certFile = testpki.WritePEM(t, filepath.Join(dir, name+".pem"), p.leaf.Cert, p.ca.Cert)
	p.keyFile = testpki.WriteKey(t, filepath.Join(dir, name+".key.pem"), p.leaf.Key)
	p.caFile = testpki.WritePEM(t, filepath.Join(dir, name+"-ca.pem"), p.ca.Cert)
	p.caKeyFile = testpki.WriteKey(t, filepath.Join(dir, name+"-ca.key.pem"), p.ca.Key)
	p.stapleFile = filepath.Join(dir, name+".ocsp")
	return p
}

// response makes a response for the leaf; thisUpdate is backdated by age
// so successive responses differ.
func (p *pki) response(t *testing.T, status int, age time.Duration) []byte {
	t.Helper()
	return p.ca.Response(t, p.leaf.Cert, ocsp.Response{Status: status, ThisUpdate: time.Now().Add(-age).Truncate(time.Second)}, nil)
}

func (p *pki) writeStaple(t *testing.T, b []byte) {
	t.Helper()
	testpki.WriteFile(t, p.stapleFile, b)
}

const fileStapleSite = `{
	ocsp {
		certificate {{.Cert}} {{.Key}} {
			staple file {{.Staple}}
		}
	}
}
https://:{{.Port}} {
	tls {
		get_certificate ocsp
	}
	respond "ok"
}
`

// twoFileStaplesSite serves two certificates, A and B, each with its
// staple file.
const twoFileStaplesSite = `{
	ocsp {
		certificate {{.A}} {{.AKey}} {
			staple file {{.AStaple}}
		}
		certificate {{.B}} {{.BKey}} {
			staple file {{.BStaple}}
		}
	}
}
https://:{{.Port}} {
	tls {
		get_certificate ocsp
	}
	respond "ok"
}
`

// stapleStatus is one entry of GET /ocsp/.
type stapleStatus struct {
	Certificate string     `json:"certificate"`
	Serial      string     `json:"serial"`
	Status      string     `json:"status"`
	ThisUpdate  *time.Time `json:"this_update"`
	NextUpdate  *time.Time `json:"next_update"`
	LastResult  string     `json:"last_result"`
	LastError   string     `json:"last_error"`
	WriteError  string     `json:"write_error"`
}

func (p *caddyProc) staples(method, path string) []stapleStatus {
	p.t.Helper()
	var out []stapleStatus
	if err := json.Unmarshal(p.api(method, path), &out); err != nil {
		p.t.Fatal(err)
	}
	return out
}

var opensslStatus = regexp.MustCompile(`OCSP Response Status: (\w+)`)

// TestFileStaple covers a file-supplied certificate and staple: served as
// is, replaced through `caddy reload --force` and POST /ocsp/reload, and
// every kind of bad file refused while the good staple stays.
func TestFileStaple(t *testing.T) {
	dir := t.TempDir()
	pk := newPKI(t, dir, "server", testpki.ECDSA, testpki.LeafOptions{NotAfter: time.Now().Add(30 * 24 * time.Hour)}, "dns.example.test", "127.0.0.1")
	good1 := pk.response(t, ocsp.Good, 3*time.Hour)
	pk.writeStaple(t, good1)
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	vars := Vars{"Cert": pk.certFile, "Key": pk.keyFile, "Staple": pk.stapleFile, "Port": port}
	c := startCaddy(t, dir, fileStapleSite, vars)
	waitListen(t, addr)

	// 1. openssl sees a successful staple; the bytes are the file's
	out := sClient(t, addr, "dns.example.test")
	if m := opensslStatus.FindStringSubmatch(out); m == nil || m[1] != "successful" {
		t.Fatalf("openssl s_client -status: no successful OCSP response:\n%s", out)
	}
	if !strings.Contains(out, "Cert Status: good") {
		t.Fatalf("openssl s_client -status: status not good:\n%s", out)
	}
	for _, sni := range []string{"dns.example.test", ""} {
		if got, _ := stapleGo(t, addr, sni, nil); !bytes.Equal(got, good1) {
			t.Fatalf("SNI %q: stapled %d bytes, want the file's %d bytes", sni, len(got), len(good1))
		}
	}

	// 2a. a newer file, then caddy reload --force
	good2 := pk.response(t, ocsp.Good, 2*time.Hour)
	pk.writeStaple(t, good2)
	if err := c.reload("", nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := stapleGo(t, addr, "dns.example.test", nil); !bytes.Equal(got, good2) {
		t.Fatal("after caddy reload --force the handshake does not carry the new staple")
	}
	// 2b. a newer file, then POST /ocsp/reload
	good3 := pk.response(t, ocsp.Good, time.Hour)
	pk.writeStaple(t, good3)
	st := c.staples("POST", "/ocsp/reload")
	if len(st) != 1 || st[0].Status != "good" || st[0].LastResult != "updated" {
		t.Fatalf("POST /ocsp/reload: %+v", st)
	}
	if got, _ := stapleGo(t, addr, "dns.example.test", nil); !bytes.Equal(got, good3) {
		t.Fatal("after POST /ocsp/reload the handshake does not carry the new staple")
	}
	want3, _ := ocsp.ParseResponse(good3, nil)
	if !st[0].ThisUpdate.Equal(want3.ThisUpdate) {
		t.Fatalf("GET /ocsp/ thisUpdate %v, want %v", st[0].ThisUpdate, want3.ThisUpdate)
	}

	// 3. each bad staple is refused with its reason and never served
	other := newPKI(t, dir, "other", testpki.ECDSA, testpki.LeafOptions{}, "other.example.test")
	sibling := pk.ca.Issue(t, testpki.LeafOptions{}, "sibling.example.test")
	now := time.Now()
	for _, bad := range []struct {
		name, reason string
		b            []byte
	}{
		{"garbage", "malformed ocsp response", []byte("<html>not an OCSP response</html>")},
		{"empty", "ocsp response is empty", nil},
		{"another certificate's serial", "response is for serial", pk.ca.Response(t, sibling.Cert, ocsp.Response{Status: ocsp.Good}, nil)},
		{"signed by another CA", "another issuer", other.ca.Response(t, pk.leaf.Cert, ocsp.Response{Status: ocsp.Good}, nil)},
		{"unknown", "does not know certificate", pk.response(t, ocsp.Unknown, time.Minute)},
		{"expired", "has passed", pk.ca.Response(t, pk.leaf.Cert, ocsp.Response{Status: ocsp.Good, ThisUpdate: now.Add(-48 * time.Hour), NextUpdate: now.Add(-time.Hour)}, nil)},
		{"nextUpdate after NotAfter", "after the certificate's NotAfter", pk.ca.Response(t, pk.leaf.Cert, ocsp.Response{Status: ocsp.Good, NextUpdate: pk.leaf.Cert.NotAfter.Add(time.Hour)}, nil)},
		{"thisUpdate in the future", "is in the future", pk.ca.Response(t, pk.leaf.Cert, ocsp.Response{Status: ocsp.Good, ThisUpdate: now.Add(time.Hour)}, nil)},
	} {
		t.Run(bad.name, func(t *testing.T) {
			pk.writeStaple(t, bad.b)
			if err := c.reload("", nil); err != nil {
				t.Fatalf("a bad staple failed the reload: %v", err)
			}
			got, _ := stapleGo(t, addr, "dns.example.test", nil)
			if !bytes.Equal(got, good3) {
				t.Fatalf("after a %s staple the last good one is not served (got %d bytes)", bad.name, len(got))
			}
			st := c.staples("GET", "/ocsp/")
			if st[0].Status != "good" || st[0].LastResult != "failed" || !strings.Contains(st[0].LastError, bad.reason) ||
				!strings.Contains(st[0].LastError, pk.stapleFile) {
				t.Fatalf("GET /ocsp/ = %+v, want status good, last_result failed, an error naming %s and %q", st[0], pk.stapleFile, bad.reason)
			}
		})
	}
	if n := len(c.log.lines(`"ocsp staple refused"`)); n < 8 {
		t.Errorf("%d refusals logged, want one per bad staple", n)
	}

	// revoked: the earlier good staple must go too, the error says so
	pk.writeStaple(t, pk.response(t, ocsp.Revoked, time.Minute))
	if st := c.staples("POST", "/ocsp/reload"); st[0].Status != "revoked" || !strings.Contains(st[0].LastError, "revoked") {
		t.Fatalf("revoked response: GET /ocsp/ = %+v", st[0])
	}
	if got, _ := stapleGo(t, addr, "dns.example.test", nil); got != nil {
		t.Fatal("a staple is served for a certificate its source says is revoked")
	}

	// metrics: the staple state is exported
	metrics := string(c.api("GET", "/metrics"))
	for _, want := range []string{
		`dnsfront_ocsp_staple_refresh_total{certificate="dns.example.test",result="failed",serial=`,
		`dnsfront_ocsp_staple_refresh_total{certificate="dns.example.test",result="revoked",serial=`,
		`dnsfront_ocsp_staple_next_update_timestamp_seconds{certificate="dns.example.test",serial=`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestBadStapleAtStartAndExpiry: one bad staple file does not stop the
// server (dnsdist refuses to start), the other certificate keeps its
// staple, a must-staple certificate without one is reported, and a kept
// staple is dropped when it expires.
func TestBadStapleAtStartAndExpiry(t *testing.T) {
	dir := t.TempDir()
	a := newPKI(t, dir, "a", testpki.ECDSA, testpki.LeafOptions{}, "a.example.test")
	b := newPKI(t, dir, "b", testpki.RSA, testpki.LeafOptions{MustStaple: true}, "b.example.test")
	// a's staple expires a few seconds from now
	shortLived := a.ca.Response(t, a.leaf.Cert, ocsp.Response{Status: ocsp.Good, ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(4 * time.Second)}, nil)
	a.writeStaple(t, shortLived)
	b.writeStaple(t, []byte("garbage"))
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	c := startCaddy(t, dir, twoFileStaplesSite, Vars{"A": a.certFile, "AKey": a.keyFile, "AStaple": a.stapleFile, "B": b.certFile, "BKey": b.keyFile, "BStaple": b.stapleFile, "Port": port})
	waitListen(t, addr)
	if got, _ := stapleGo(t, addr, "a.example.test", nil); !bytes.Equal(got, shortLived) {
		t.Fatal("a.example.test: staple not served next to a bad one")
	}
	if got, chain := stapleGo(t, addr, "b.example.test", nil); got != nil || len(chain) == 0 || !bytes.Equal(chain[0].Raw, b.leaf.Cert.Raw) {
		t.Fatal("b.example.test: want its certificate without a staple")
	}
	c.waitLog(`must-staple certificate has no valid ocsp staple`, 5*time.Second)

	// a's file turns bad: the short-lived staple stays until it expires,
	// then nothing is stapled
	a.writeStaple(t, []byte("garbage"))
	if err := c.reload("", nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := stapleGo(t, addr, "a.example.test", nil); !bytes.Equal(got, shortLived) {
		t.Fatal("the last good staple was dropped before it expired")
	}
	if err := eventually(15*time.Second, func() bool {
		got, _ := stapleGo(t, addr, "a.example.test", nil)
		return got == nil
	}); err != nil {
		t.Fatal("an expired staple is still served")
	}
}

// TestReloadWithMissingKeyKeepsServing: a config whose key file is missing
// is refused with an error naming the file; the running config goes on.
func TestReloadWithMissingKeyKeepsServing(t *testing.T) {
	dir := t.TempDir()
	pk := newPKI(t, dir, "server", testpki.ECDSA, testpki.LeafOptions{}, "dns.example.test")
	good := pk.response(t, ocsp.Good, time.Hour)
	pk.writeStaple(t, good)
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	vars := Vars{"Cert": pk.certFile, "Key": pk.keyFile, "Staple": pk.stapleFile, "Port": port}
	c := startCaddy(t, dir, fileStapleSite, vars)
	waitListen(t, addr)
	missing := filepath.Join(dir, "no-such.key")
	err := c.reload(fileStapleSite, Vars{"Cert": pk.certFile, "Key": missing, "Staple": pk.stapleFile, "Port": port})
	if err == nil || !strings.Contains(err.Error(), missing+": no such file or directory (the key file of certificate "+pk.certFile+")") {
		t.Fatalf("reload with a missing key: %v, want an error naming %s and its certificate", err, missing)
	}
	if got, _ := stapleGo(t, addr, "dns.example.test", nil); !bytes.Equal(got, good) {
		t.Fatal("after a refused reload the server no longer serves its staple")
	}
}

// opensslVerify runs `openssl ocsp -respin` as the issue asks and returns
// its output; it must say "Response verify OK" and "good".
func opensslVerify(t *testing.T, respFile, issuerFile, caFile, certFile string, extra ...string) string {
	t.Helper()
	args := append(append([]string{"ocsp", "-respin", respFile, "-issuer", issuerFile, "-CAfile", caFile}, extra...), "-cert", certFile, "-resp_text")
	out, err := run(t, true, need(t, "openssl"), args...)
	if err != nil || !strings.Contains(out, "Response verify OK") || !strings.Contains(out, certFile+": good") {
		t.Fatalf("openssl ocsp -respin %s: %v\n%s", respFile, err, out)
	}
	return out
}

// TestGenerateAndLocalCA: `caddy ocsp generate` output and the local_ca
// source's output pass openssl's check; a short-lived generated staple is
// made again before it expires, and the new one is served.
func TestGenerateAndLocalCA(t *testing.T) {
	dir := t.TempDir()
	for _, kt := range []testpki.KeyType{testpki.RSA, testpki.ECDSA} {
		pk := newPKI(t, dir, fmt.Sprintf("gen%d", kt), kt, testpki.LeafOptions{}, "dns.example.test")
		out := filepath.Join(dir, fmt.Sprintf("gen%d.der", kt))
		if o, err := run(t, false, caddyBin, "ocsp", "generate", "--cert", pk.certFile, "--ca-cert", pk.caFile, "--ca-key", pk.caKeyFile, "--out", out, "--validity", "2d"); !strings.Contains(o, "wrote "+out) {
			t.Fatalf("caddy ocsp generate: %v: %s", err, o)
		}
		opensslVerify(t, out, pk.caFile, pk.caFile, pk.certFile)
		if o, err := run(t, true, caddyBin, "ocsp", "inspect", out, "--cert", pk.certFile); err != nil || !strings.Contains(o, "verdict:      OK") {
			t.Fatalf("caddy ocsp inspect: %v\n%s", err, o)
		}
		// a SHA-1 CertID is not found by a SHA-256 look-up; --hash sha256 is
		if o, _ := run(t, true, need(t, "openssl"), "ocsp", "-respin", out, "-issuer", pk.caFile, "-CAfile", pk.caFile, "-sha256", "-cert", pk.certFile); !strings.Contains(o, "No Status found") {
			t.Fatalf("openssl ocsp -sha256 found a status in a SHA-1 CertID response:\n%s", o)
		}
		if o, err := run(t, false, caddyBin, "ocsp", "generate", "--hash", "sha256", "--cert", pk.certFile, "--ca-cert", pk.caFile, "--ca-key", pk.caKeyFile, "--out", out); !strings.Contains(o, "wrote "+out) {
			t.Fatalf("caddy ocsp generate --hash sha256: %v: %s", err, o)
		}
		opensslVerify(t, out, pk.caFile, pk.caFile, pk.certFile, "-sha256")
	}
	if o, err := run(t, true, caddyBin, "ocsp", "generate", "--hash", "md5", "--cert", "x", "--ca-cert", "x", "--ca-key", "x", "--out", "x"); err == nil || !strings.Contains(o, `--hash: CertID hash "md5": want sha1 or sha256`) {
		t.Fatalf("caddy ocsp generate --hash md5: %v: %s", err, o)
	}

	pk := newPKI(t, dir, "server", testpki.ECDSA, testpki.LeafOptions{}, "dns.example.test")
	written := filepath.Join(dir, "written", "server.ocsp")
	if err := os.MkdirAll(filepath.Dir(written), 0o755); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	c := startCaddy(t, dir, `{
	ocsp {
		certificate {{.Cert}} {{.Key}} {
			staple local_ca {{.CA}} {{.CAKey}} {
				validity 6s
				hash sha256
				write_to {{.Written}}
			}
		}
	}
}
https://:{{.Port}} {
	tls {
		get_certificate ocsp
	}
	respond "ok"
}
`, Vars{"Cert": pk.certFile, "Key": pk.keyFile, "CA": pk.caFile, "CAKey": pk.caKeyFile, "Written": written, "Port": port})
	waitListen(t, addr)
	first, _ := stapleGo(t, addr, "dns.example.test", nil)
	if first == nil {
		t.Fatal("no staple from local_ca")
	}
	onDisk, err := os.ReadFile(written)
	if err != nil || !bytes.Equal(onDisk, first) {
		t.Fatalf("write_to %s does not hold the served staple: %v", written, err)
	}
	if fi, err := os.Stat(written); err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("write_to file mode: %v %v", fi.Mode(), err)
	}
	opensslVerify(t, written, pk.caFile, pk.caFile, pk.certFile, "-sha256")
	firstResp, err := ocsp.ParseResponse(first, nil)
	if err != nil {
		t.Fatal(err)
	}
	// regenerated at half-life (3s), so a new one is served before the
	// first one's nextUpdate
	var second []byte
	if err := eventually(time.Until(firstResp.NextUpdate), func() bool {
		second, _ = stapleGo(t, addr, "dns.example.test", nil)
		return second != nil && !bytes.Equal(second, first)
	}); err != nil {
		t.Fatalf("no new staple before the first one expired at %v", firstResp.NextUpdate)
	}
	if st := c.staples("GET", "/ocsp/"); st[0].Status != "good" {
		t.Fatalf("GET /ocsp/ = %+v", st)
	}
}

// TestPKIManaged: a `tls internal` site with the pki source gets a staple
// that verifies against Caddy's intermediate, with no files prepared.
func TestPKIManaged(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	startCaddy(t, dir, `{
	storage ocsp
	ocsp {
		managed pki
	}
}
https://localhost:{{.Port}} {
	tls internal
	respond "ok"
}
`, Vars{"Port": port})
	waitListen(t, addr)
	var staple []byte
	var chain []*tlsCert
	// the certificate is issued when the server starts
	if err := eventually(20*time.Second, func() bool {
		var err error
		staple, chain, err = tryStaple(addr, "localhost", nil)
		return err == nil && staple != nil
	}); err != nil {
		t.Fatal("tls internal certificate never stapled")
	}
	leafFile := filepath.Join(dir, "leaf.pem")
	testpki.WriteFile(t, leafFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: chain[0].Raw}))
	respFile := testpki.WriteFile(t, filepath.Join(dir, "staple.der"), staple)
	ca := filepath.Join(dir, "data", "caddy", "pki", "authorities", "local")
	out := opensslVerify(t, respFile, filepath.Join(ca, "intermediate.crt"), filepath.Join(ca, "root.crt"), leafFile)
	if !strings.Contains(out, "Caddy Local Authority - ECC Intermediate") {
		t.Fatalf("staple not signed by Caddy's intermediate:\n%s", out)
	}
}

// ocspResponder runs `openssl ocsp` as a responder for pk's CA.
func ocspResponder(t *testing.T, pk *pki, port int, extra ...string) *exec.Cmd {
	t.Helper()
	openssl := need(t, "openssl")
	index := filepath.Join(pk.dir, "index.txt")
	line := fmt.Sprintf("V\t%s\t\t%X\tunknown\t/CN=%s\n", pk.leaf.Cert.NotAfter.UTC().Format("060102150405Z"),
		pk.leaf.Cert.SerialNumber, pk.leaf.Cert.Subject.CommonName)
	testpki.WriteFile(t, index, []byte(line))
	args := append([]string{"-index", index, "-port", fmt.Sprint(port), "-rsigner", pk.caFile, "-rkey", pk.caKeyFile, "-CA", pk.caFile}, extra...)
	return startOCSPResponder(t, openssl, args...)
}

// startOCSPResponder runs `openssl ocsp <args>` as a responder until the
// test ends.
func startOCSPResponder(t *testing.T, openssl string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(openssl, append([]string{"ocsp"}, args...)...)
	out := new(syncBuffer)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	// not a TCP probe: openssl's one-at-a-time responder hangs on a
	// connection that closes without a request
	if err := eventually(10*time.Second, func() bool {
		return strings.Contains(out.String(), "waiting for OCSP client connections")
	}); err != nil {
		t.Fatalf("openssl ocsp responder did not start:\n%s", out.String())
	}
	return cmd
}

// TestResponder: the responder source fetches from a real `openssl ocsp`
// responder, keeps the last good staple while it is down, and recovers.
func TestResponder(t *testing.T) {
	dir := t.TempDir()
	rport := freePort(t)
	pk := newPKI(t, dir, "server", testpki.ECDSA, testpki.LeafOptions{OCSPServer: fmt.Sprintf("http://127.0.0.1:%d", rport)}, "dns.example.test")
	responder := ocspResponder(t, pk, rport, "-nmin", "60")

	// the CLI first: caddy ocsp fetch checks before it writes
	fetched := filepath.Join(dir, "fetched.ocsp")
	if o, err := run(t, true, caddyBin, "ocsp", "fetch", "--cert", pk.certFile, "--out", fetched); err != nil {
		t.Fatalf("caddy ocsp fetch: %v\n%s", err, o)
	}
	opensslVerify(t, fetched, pk.caFile, pk.caFile, pk.certFile)

	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	c := startCaddy(t, dir, `{
	ocsp {
		certificate {{.Cert}} {{.Key}} {
			staple responder
		}
	}
}
https://:{{.Port}} {
	tls {
		get_certificate ocsp
	}
	respond "ok"
}
`, Vars{"Cert": pk.certFile, "Key": pk.keyFile, "Port": port})
	waitListen(t, addr)
	first, _ := stapleGo(t, addr, "dns.example.test", nil)
	if first == nil {
		t.Fatalf("no staple fetched from the responder: %+v", c.staples("GET", "/ocsp/"))
	}

	// responder down: the refresh fails, the staple stays
	_ = responder.Process.Kill()
	_ = responder.Wait()
	st := c.staples("POST", "/ocsp/reload")
	if st[0].LastResult != "failed" || st[0].Status != "good" || !strings.Contains(st[0].LastError, "responder") {
		t.Fatalf("with the responder down: %+v", st[0])
	}
	if got, _ := stapleGo(t, addr, "dns.example.test", nil); !bytes.Equal(got, first) {
		t.Fatal("the last good staple was dropped while the responder is down")
	}

	// back up: the next refresh (back-off loop or an explicit reload)
	// brings a new staple; openssl's responses differ by producedAt
	ocspResponder(t, pk, rport, "-nmin", "60")
	if err := eventually(20*time.Second, func() bool {
		s := c.staples("GET", "/ocsp/")[0]
		return s.LastResult == "updated" || s.LastResult == "unchanged"
	}); err != nil {
		t.Fatalf("no recovery after the responder came back: %+v", c.staples("GET", "/ocsp/"))
	}
}

// TestResponderWithoutNextUpdate: openssl's responder leaves nextUpdate
// out unless told otherwise; such a response is refused, not served
// forever.
func TestResponderWithoutNextUpdate(t *testing.T) {
	dir := t.TempDir()
	rport := freePort(t)
	pk := newPKI(t, dir, "server", testpki.ECDSA, testpki.LeafOptions{OCSPServer: fmt.Sprintf("http://127.0.0.1:%d", rport)}, "dns.example.test")
	ocspResponder(t, pk, rport)
	fetched := filepath.Join(dir, "fetched.ocsp")
	o, err := run(t, true, caddyBin, "ocsp", "fetch", "--cert", pk.certFile, "--out", fetched)
	if err == nil || strings.Count(o, "no nextUpdate") != 1 || !strings.Contains(o, "-nmin or -ndays") {
		t.Fatalf("caddy ocsp fetch of a response without nextUpdate: %v\n%s\nwant the reason once and the responder's -nmin/-ndays hint", err, o)
	}
	if _, err := os.Stat(fetched); !os.IsNotExist(err) {
		t.Fatal("a refused response was written")
	}
}

// TestRSAAndECDSA: two certificates for one name each carry their own
// staple, chosen by what the client supports.
func TestRSAAndECDSA(t *testing.T) {
	dir := t.TempDir()
	rsaPKI := newPKI(t, dir, "rsa", testpki.RSA, testpki.LeafOptions{}, "dns.example.test")
	ecPKI := newPKI(t, dir, "ecdsa", testpki.ECDSA, testpki.LeafOptions{}, "dns.example.test")
	rsaPKI.writeStaple(t, rsaPKI.response(t, ocsp.Good, time.Hour))
	ecPKI.writeStaple(t, ecPKI.response(t, ocsp.Good, time.Hour))
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	startCaddy(t, dir, twoFileStaplesSite, Vars{"A": rsaPKI.certFile, "AKey": rsaPKI.keyFile, "AStaple": rsaPKI.stapleFile,
		"B": ecPKI.certFile, "BKey": ecPKI.keyFile, "BStaple": ecPKI.stapleFile, "Port": port})
	waitListen(t, addr)
	serialLine := regexp.MustCompile(`Serial Number: ([0-9A-F]+)`)
	for _, tc := range []struct {
		cipher string
		want   *big.Int
	}{
		{"aECDSA", ecPKI.leaf.Cert.SerialNumber},
		{"aRSA", rsaPKI.leaf.Cert.SerialNumber},
	} {
		out := sClient(t, addr, "dns.example.test", "-tls1_2", "-cipher", tc.cipher)
		m := serialLine.FindStringSubmatch(out)
		got, _ := new(big.Int).SetString(valueOr(m, 1), 16)
		if got == nil || got.Cmp(tc.want) != 0 {
			t.Fatalf("-cipher %s: staple for serial %v, want %X:\n%s", tc.cipher, m, tc.want, out)
		}
		if !strings.Contains(out, "Cert Status: good") {
			t.Fatalf("-cipher %s: no good staple:\n%s", tc.cipher, out)
		}
	}
	// and Go's client, which prefers ECDSA, in TLS 1.3
	got, chain := stapleGo(t, addr, "dns.example.test", &tls.Config{MinVersion: tls.VersionTLS13})
	r, err := ocsp.ParseResponse(got, nil)
	if err != nil || r.SerialNumber.Cmp(new(big.Int).SetBytes(chain[0].serialBytes())) != 0 {
		t.Fatalf("TLS 1.3: staple does not match the served certificate: %v", err)
	}
}

func (c *tlsCert) serialBytes() []byte {
	n, _ := new(big.Int).SetString(c.Serial, 16)
	return n.Bytes()
}

func valueOr(m []string, i int) string {
	if len(m) > i {
		return m[i]
	}
	return ""
}

// TestFilePolled: a replaced staple file is noticed by itself, with no
// reload, within poll_interval.
func TestFilePolled(t *testing.T) {
	dir := t.TempDir()
	pk := newPKI(t, dir, "server", testpki.ECDSA, testpki.LeafOptions{}, "dns.example.test")
	pk.writeStaple(t, pk.response(t, ocsp.Good, 2*time.Hour))
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	startCaddy(t, dir, `{
	ocsp {
		certificate {{.Cert}} {{.Key}} {
			staple file {{.Staple}} {
				poll_interval 1s
			}
		}
	}
}
https://:{{.Port}} {
	tls {
		get_certificate ocsp
	}
	respond "ok"
}
`, Vars{"Cert": pk.certFile, "Key": pk.keyFile, "Staple": pk.stapleFile, "Port": port})
	waitListen(t, addr)
	newer := pk.response(t, ocsp.Good, time.Hour)
	// written atomically, as an operator's cron job should
	tmp := pk.stapleFile + ".new"
	testpki.WriteFile(t, tmp, newer)
	if err := os.Rename(tmp, pk.stapleFile); err != nil {
		t.Fatal(err)
	}
	if err := eventually(10*time.Second, func() bool {
		got, _ := stapleGo(t, addr, "dns.example.test", nil)
		return bytes.Equal(got, newer)
	}); err != nil {
		t.Fatal("the replaced staple file was not picked up without a reload")
	}
}

// TestStapleRollback: a response older (by thisUpdate) than the staple
// served is refused, and once the certificate is seen revoked only a
// newer good response brings a staple back: a replayed old response,
// from a file or from a responder over plain HTTP, cannot undo either.
func TestStapleRollback(t *testing.T) {
	dir := t.TempDir()
	pk := newPKI(t, dir, "server", testpki.ECDSA, testpki.LeafOptions{}, "dns.example.test", "127.0.0.1")
	good := pk.response(t, ocsp.Good, 3*time.Hour)
	pk.writeStaple(t, good)
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	c := startCaddy(t, dir, fileStapleSite, Vars{"Cert": pk.certFile, "Key": pk.keyFile, "Staple": pk.stapleFile, "Port": port})
	waitListen(t, addr)
	thisUpdate := func(b []byte) string {
		r, err := ocsp.ParseResponse(b, nil)
		if err != nil {
			t.Fatal(err)
		}
		return r.ThisUpdate.UTC().Format(time.RFC3339)
	}

	// an older good response: refused, naming both thisUpdates; the
	// newer one stays
	older := pk.response(t, ocsp.Good, 5*time.Hour)
	pk.writeStaple(t, older)
	st := c.staples("POST", "/ocsp/reload")
	if st[0].Status != "good" || st[0].LastResult != "failed" || !strings.Contains(st[0].LastError, "older than one already seen") ||
		!strings.Contains(st[0].LastError, thisUpdate(older)) || !strings.Contains(st[0].LastError, thisUpdate(good)) {
		t.Fatalf("older response: GET /ocsp/ = %+v", st[0])
	}
	if got, _ := stapleGo(t, addr, "dns.example.test", nil); !bytes.Equal(got, good) {
		t.Fatal("an older response replaced the staple served")
	}
	if l := c.log.lines(`"ocsp staple refused"`); len(l) == 0 || !strings.Contains(l[len(l)-1], thisUpdate(older)) ||
		!strings.Contains(l[len(l)-1], thisUpdate(good)) {
		t.Fatalf("the refusal is not logged with both thisUpdate times: %q", l)
	}

	// revoked, newer: the staple goes
	pk.writeStaple(t, pk.response(t, ocsp.Revoked, time.Hour))
	if st := c.staples("POST", "/ocsp/reload"); st[0].Status != "revoked" {
		t.Fatalf("revoked response: GET /ocsp/ = %+v", st[0])
	}
	// the good response from before the revocation, replayed: refused,
	// and openssl sees no staple
	pk.writeStaple(t, good)
	if err := c.reload("", nil); err != nil {
		t.Fatal(err)
	}
	if st := c.staples("GET", "/ocsp/"); st[0].Status != "revoked" || !strings.Contains(st[0].LastError, "the revoked response's thisUpdate") {
		t.Fatalf("good response older than the revoked one: GET /ocsp/ = %+v", st[0])
	}
	if out := sClient(t, addr, "dns.example.test"); !strings.Contains(out, "OCSP response: no response sent") {
		t.Fatalf("a replayed good response is stapled after the certificate was seen revoked:\n%s", out)
	}
	// a newer good response brings it back
	newer := pk.response(t, ocsp.Good, 30*time.Minute)
	pk.writeStaple(t, newer)
	if st := c.staples("POST", "/ocsp/reload"); st[0].Status != "good" || st[0].LastResult != "updated" {
		t.Fatalf("newer good response: GET /ocsp/ = %+v", st[0])
	}
	if out := sClient(t, addr, "dns.example.test"); !strings.Contains(out, "Cert Status: good") {
		t.Fatalf("the newer good response is not stapled:\n%s", out)
	}
}

// writeToSite issues a certificate from Caddy's internal CA, with its
// staple from the pki source, written through to {{.WriteTo}} unless it
// is empty.
const writeToSite = `{
	ocsp {
		issue dns.example.test 127.0.0.1 {
			staple pki {
				{{if .WriteTo}}write_to {{.WriteTo}}{{end}}
			}
		}
	}
}
https://:{{.Port}} {
	tls {
		get_certificate ocsp
	}
	respond "ok"
}
`

// TestWriteToCarriedOver: every configured write_to holds the staple
// served as soon as the config is in force, also when the staple is not
// new: a reload that adds or moves write_to, and a restart that loads
// the staple from storage after the file was deleted. GET /ocsp/ says
// when the file was last written.
func TestWriteToCarriedOver(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	vars := Vars{"Port": port, "WriteTo": ""}
	c := startCaddy(t, dir, writeToSite, vars)
	waitListen(t, addr)
	served, _ := stapleGo(t, addr, "dns.example.test", nil)
	if served == nil {
		t.Fatal("no staple")
	}
	holds := func(path string) {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(b, served) {
			t.Fatalf("write_to %s does not hold the staple served (%d bytes, %v)", path, len(b), err)
		}
		st := c.staples("GET", "/ocsp/")
		var s struct {
			WriteTo     string     `json:"write_to"`
			LastWritten *time.Time `json:"last_written"`
		}
		if err := json.Unmarshal(c.api("GET", "/ocsp/"), &[]any{&s}); err != nil {
			t.Fatal(err)
		}
		if s.WriteTo != path || s.LastWritten == nil || st[0].WriteError != "" {
			t.Fatalf("GET /ocsp/: write_to %q, last_written %v, write_error %q; want %s, a time, none", s.WriteTo, s.LastWritten, st[0].WriteError, path)
		}
	}
	for _, name := range []string{"a.ocsp", "b.ocsp"} { // added, then moved
		vars["WriteTo"] = filepath.Join(dir, name)
		if err := c.reload(writeToSite, vars); err != nil {
			t.Fatal(err)
		}
		holds(filepath.Join(dir, name))
	}
	if got, _ := stapleGo(t, addr, "dns.example.test", nil); !bytes.Equal(got, served) {
		t.Fatal("a reload made a new staple: this test needs it carried over")
	}

	// restart after the file was deleted: the staple comes from storage
	c.stop()
	if err := os.Remove(filepath.Join(dir, "b.ocsp")); err != nil {
		t.Fatal(err)
	}
	c = startCaddy(t, dir, writeToSite, vars)
	waitListen(t, addr)
	c.waitLog(`ocsp staple loaded from storage`, 10*time.Second)
	holds(filepath.Join(dir, "b.ocsp"))
}
