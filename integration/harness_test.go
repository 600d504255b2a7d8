// Package integration runs the real Caddy binary built with dnsfront and
// checks it with clients nobody here wrote (openssl, kdig, dig, curl,
// dnsperf), reloading it through the real admin API.
package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
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
	"text/template"
	"time"
)

// caddyBin is the binary built once by TestMain from ./cmd/caddy.
var caddyBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "dnsfront-integration")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	caddyBin = filepath.Join(dir, "caddy")
	args := []string{"build", "-o", caddyBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "../cmd/caddy")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building caddy:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// need returns the path of a third-party tool. A missing tool skips the
// test, or fails it when DNSFRONT_REQUIRE_TOOLS=1 (as in CI).
func need(t testing.TB, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err == nil {
		return p
	}
	// daemons (unbound) live in sbin, which a user's PATH may lack
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		if p, err := exec.LookPath(filepath.Join(dir, tool)); err == nil {
			return p
		}
	}
	if os.Getenv("DNSFRONT_REQUIRE_TOOLS") == "1" {
		t.Fatalf("%s is required (DNSFRONT_REQUIRE_TOOLS=1) but not installed: apt-get install the package .ci/run names", tool)
	}
	t.Skipf("%s not installed: skipping (set DNSFRONT_REQUIRE_TOOLS=1 to fail instead)", tool)
	return ""
}

// fileModesApply returns what to run Caddy through so that file modes
// hold for it: as root, setpriv drops the capabilities that let root read
// and write regardless of them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH);
// as another user, nothing.
func fileModesApply(t testing.TB) []string {
	t.Helper()
	if os.Geteuid() != 0 {
		return nil
	}
	caps := "-dac_override,-dac_read_search"
	return []string{need(t, "setpriv"), "--inh-caps=" + caps, "--bounding-set=" + caps}
}

// freePort returns a loopback TCP port that was free a moment ago, and
// that it has not returned before in this test process. The kernel may
// hand the same free port to two listens in a row, and Caddy's and
// dnsfront's listeners set SO_REUSEPORT, so two listeners of one config
// given the same port both start and share its connections: a test saw
// its admin API's requests go to a DoT listener on the same port.
func freePort(t testing.TB) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 1000 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !portsGiven[port] {
			portsGiven[port] = true
			return port
		}
	}
	t.Fatal("no free loopback port that was not given out before, in 1000 tries")
	return 0
}

// the ports freePort has given out
var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// caddyProc is a running Caddy.
type caddyProc struct {
	t      testing.TB
	dir    string
	config string
	Admin  string // host:port of the admin API
	cmd    *exec.Cmd
	log    *syncBuffer
	done   chan error
}

// Vars fills the {{.Name}} fields of a test Caddyfile; Admin and Dir are
// always set (Dir is the test's directory for files).
type Vars map[string]any

// startCaddy writes the Caddyfile template tmpl (with an `admin` line
// added) and runs Caddy on it with its own storage, until the test ends.
func startCaddy(t testing.TB, dir, tmpl string, vars Vars) *caddyProc {
	t.Helper()
	return startCaddyAs(t, dir, tmpl, vars, nil)
}

// startCaddyAs is startCaddy with the command run through wrap (e.g.
// setpriv with its options), nil for none.
func startCaddyAs(t testing.TB, dir, tmpl string, vars Vars, wrap []string) *caddyProc {
	t.Helper()
	p := launchCaddy(t, dir, tmpl, vars, wrap)
	p.waitAdmin()
	return p
}

// launchCaddy is startCaddyAs without waiting for the admin API, so that
// several instances can start together.
func launchCaddy(t testing.TB, dir, tmpl string, vars Vars, wrap []string) *caddyProc {
	t.Helper()
	p := &caddyProc{t: t, dir: dir, Admin: fmt.Sprintf("127.0.0.1:%d", freePort(t)), log: new(syncBuffer)}
	p.config = filepath.Join(dir, "Caddyfile")
	p.write(tmpl, vars)
	args := append(append([]string{}, wrap...), caddyBin, "run", "--config", p.config, "--adapter", "caddyfile")
	p.cmd = exec.Command(args[0], args[1:]...)
	p.cmd.Dir = dir
	p.cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, "data"), "XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.done = make(chan error, 1)
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(p.stop)
	return p
}

// write renders the Caddyfile; vars gain Admin and Dir.
func (p *caddyProc) write(tmpl string, vars Vars) {
	p.t.Helper()
	if vars == nil {
		vars = Vars{}
	}
	vars["Admin"], vars["Dir"] = p.Admin, p.dir
	tp, err := template.New("Caddyfile").Option("missingkey=error").Parse(tmpl)
	if err != nil {
		p.t.Fatal(err)
	}
	var b bytes.Buffer
	if err := tp.Execute(&b, vars); err != nil {
		p.t.Fatal(err)
	}
	cfg := b.String()
	if !strings.HasPrefix(cfg, "{\n") {
		p.t.Fatal("a test Caddyfile must start with a global options block")
	}
	cfg = "{\n" + testGlobals(p.Admin) + cfg[2:]
	if err := os.WriteFile(p.config, []byte(cfg), 0o644); err != nil {
		p.t.Fatal(err)
	}
}

// testGlobals are the global options every test config gets: its own
// admin address, only loopback listeners, no HTTP->HTTPS redirect server on
// :80, and never a public ACME CA.
func testGlobals(admin string) string {
	return "\tadmin " + admin + "\n\tdefault_bind 127.0.0.1\n\tauto_https disable_redirects\n\tlocal_certs\n\tskip_install_trust\n"
}

// waitAdmin waits until the admin API answers and the config is running.
func (p *caddyProc) waitAdmin() {
	p.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-p.done:
			p.t.Fatalf("caddy exited at start: %v\n%s", err, p.log.String())
		default:
		}
		resp, err := http.Get("http://" + p.Admin + "/config/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond) // polling the admin API for readiness
	}
	p.t.Fatalf("caddy admin API at %s did not come up\n%s", p.Admin, p.log.String())
}

// reload runs `caddy reload --force` with the Caddyfile rewritten from
// tmpl (nil vars: the file as it is), and returns the command's error.
func (p *caddyProc) reload(tmpl string, vars Vars) error {
	p.t.Helper()
	if tmpl != "" {
		p.write(tmpl, vars)
	}
	out, err := exec.Command(caddyBin, "reload", "--force", "--config", p.config, "--adapter", "caddyfile", "--address", p.Admin).CombinedOutput()
	if err != nil {
		return fmt.Errorf("caddy reload: %w: %s", err, out)
	}
	return nil
}

// api calls the admin API and returns the body; a status other than 200
// fails the test.
func (p *caddyProc) api(method, path string) []byte {
	p.t.Helper()
	return p.apiJSON(method, path, nil)
}

// apiJSON is api with a JSON request body (a config for POST /load);
// nil sends none.
func (p *caddyProc) apiJSON(method, path string, body []byte) []byte {
	p.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://"+p.Admin+path, rd)
	if err != nil {
		p.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		p.t.Fatalf("%s %s: %s: %s", method, path, resp.Status, b)
	}
	return b
}

// stop asks Caddy to stop (SIGINT, as Ctrl-C) and waits for it.
func (p *caddyProc) stop() {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		p.t.Errorf("caddy did not stop on SIGINT within 15s\n%s", p.log.String())
	}
	if strings.Contains(p.log.String(), "WARNING: DATA RACE") {
		p.t.Errorf("the race detector found a data race in caddy")
	}
	if p.t.Failed() {
		p.t.Logf("caddy log:\n%s", p.log.String())
	}
}

// waitLog waits until the log matches re.
func (p *caddyProc) waitLog(re string, timeout time.Duration) {
	p.t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if rx.MatchString(p.log.String()) {
			return
		}
		time.Sleep(50 * time.Millisecond) // polling the log for a line
	}
	p.t.Fatalf("caddy log never matched %q\n%s", re, p.log.String())
}

// waitListen waits until addr accepts TCP connections.
func waitListen(t testing.TB, addr string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond) // polling the listener for readiness
	}
	t.Fatalf("%s never accepted a connection", addr)
}

// stapleGo handshakes with Go's TLS client and returns the stapled bytes
// (nil when none) and the server's chain.
func stapleGo(t testing.TB, addr, sni string, cfg *tls.Config) ([]byte, []*tlsCert) {
	t.Helper()
	staple, chain, err := tryStaple(addr, sni, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return staple, chain
}

// tryStaple is stapleGo that returns the handshake's error.
func tryStaple(addr, sni string, cfg *tls.Config) ([]byte, []*tlsCert, error) {
	if cfg == nil {
		cfg = &tls.Config{}
	}
	cfg = cfg.Clone()
	cfg.ServerName = sni
	cfg.InsecureSkipVerify = true // trust is checked by openssl in the tests that need it
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("TLS handshake with %s (SNI %q): %w", addr, sni, err)
	}
	defer conn.Close()
	st := conn.ConnectionState()
	var chain []*tlsCert
	for _, c := range st.PeerCertificates {
		chain = append(chain, &tlsCert{Raw: c.Raw, Serial: c.SerialNumber.Text(16)})
	}
	return st.OCSPResponse, chain, nil
}

type tlsCert struct {
	Raw    []byte
	Serial string
}

// sClient runs `openssl s_client -status` and returns its output.
func sClient(t testing.TB, addr, sni string, extra ...string) string {
	t.Helper()
	openssl := need(t, "openssl")
	args := []string{"s_client", "-connect", addr, "-status"}
	if sni != "" {
		args = append(args, "-servername", sni)
	} else {
		args = append(args, "-noservername")
	}
	args = append(args, extra...)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, openssl, args...)
	cmd.Stdin = strings.NewReader("")
	out, err := cmd.CombinedOutput()
	if err != nil && !strings.Contains(string(out), "CONNECTED") {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// run runs a command and returns its combined output; a failure fails the
// test unless allowFail.
func run(t testing.TB, allowFail bool, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	out, err := cmd.CombinedOutput()
	if err != nil && !allowFail {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out), err
}

// syncBuffer is a bytes.Buffer safe for a process's output and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// lines returns the lines of the log that contain sub.
func (s *syncBuffer) lines(sub string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), sub) {
			out = append(out, sc.Text())
		}
	}
	return out
}

var errTimeout = errors.New("timed out")

// eventually polls cond until it holds or timeout passes: for state that
// changes on its own schedule (a refresh loop, an expiring staple), where
// the process offers no event to wait on.
func eventually(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errTimeout
}

// TestFreePortsDiffer: freePort never gives a port twice in 2,000 calls
// (the kernel's own choices, taken as they come, repeated within them).
func TestFreePortsDiffer(t *testing.T) {
	seen := map[int]bool{}
	for range 2000 {
		p := freePort(t)
		if seen[p] {
			t.Fatalf("port %d given twice", p)
		}
		seen[p] = true
	}
}
