package integration

import (
	"encoding/pem"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dnsfront/dnsfront/internal/testpki"
)

var shBlock = regexp.MustCompile("(?s)```sh\n(.*?)```")

// readmeCommands returns the README's first sh block (the run and test
// commands) and its second (the lines to try it), comments cut off the
// first.
func readmeCommands(t *testing.T, readme string) (runCmd, testCmd, tryBlock string) {
	t.Helper()
	blocks := shBlock.FindAllStringSubmatch(readme, 2)
	if len(blocks) < 2 {
		t.Fatal("README has no run/test block followed by a try-it block")
	}
	lines := strings.Split(strings.TrimSpace(blocks[0][1]), "\n")
	if len(lines) != 2 {
		t.Fatalf("README's first block has %d commands, want exactly 2 (run, test)", len(lines))
	}
	uncomment := func(l string) string { c, _, _ := strings.Cut(l, "#"); return strings.TrimSpace(c) }
	return uncomment(lines[0]), uncomment(lines[1]), blocks[1][1]
}

// TestReadmeQuickStart does what a new user does: clone the repository,
// run the README's run command exactly as written, try the lines the
// README gives (kdig over TLS and HTTPS, curl, openssl -status), check
// that both handshakes carry a staple that openssl verifies against
// Caddy's CA, and stop it with Ctrl-C (SIGINT) for a clean exit.
func TestReadmeQuickStart(t *testing.T) {
	for _, tool := range []string{"git", "kdig", "curl", "openssl"} {
		need(t, tool)
	}
	for _, addr := range []string{"127.0.0.1:8853", "127.0.0.1:8443", "127.0.0.1:8444", "127.0.0.1:2019"} {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Fatalf("%s is in use: the quick start needs it (stop the other server)", addr)
		}
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	runCmd, testCmd, tryBlock := readmeCommands(t, string(readme))
	if testCmd != "go test ./..." {
		t.Errorf("README test command %q is not the one .ci/run runs", testCmd)
	}

	tmp := t.TempDir()
	repo, home := filepath.Join(tmp, "dnsfront"), filepath.Join(tmp, "home")
	root, _ := filepath.Abs("..")
	run(t, false, "git", "clone", "--quiet", root, repo)
	if err := os.MkdirAll(home, 0o755); err != nil {
		t.Fatal(err)
	}
	env := freshUserEnv(home)

	log := new(syncBuffer)
	cmd := exec.Command("sh", "-c", runCmd)
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = repo, env, log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // Ctrl-C goes to the group
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	defer func() {
		if !stopped {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			t.Logf("log of %q:\n%s", runCmd, log.String())
		}
	}()
	// go run compiles first: wait for the listeners, or for an early exit
	for _, addr := range []string{"127.0.0.1:8853", "127.0.0.1:8443", "127.0.0.1:8444"} {
		if err := eventually(4*time.Minute, func() bool {
			select {
			case err := <-done:
				stopped = true
				t.Fatalf("%q exited: %v", runCmd, err)
			default:
			}
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.Close()
			}
			return err == nil
		}); err != nil {
			t.Fatalf("%s never listened", addr)
		}
	}
	for _, logger := range []string{"dot", "doh", "http.handlers.doh"} {
		if !strings.Contains(log.String(), `"logger":"`+logger+`","msg":"try it"`) {
			t.Errorf("the log does not say how to try %s", logger)
		}
	}
	// the root CA's file, by its absolute path (the README's ROOT line is
	// Linux's; the log says where it is on any system)
	rootLine := regexp.MustCompile(`"root_certificate":"([^"]+)"`).FindStringSubmatch(log.String())
	if rootLine == nil || !filepath.IsAbs(rootLine[1]) {
		t.Error("the log does not name the root certificate's file by its absolute path")
	} else if _, err := os.Stat(rootLine[1]); err != nil {
		t.Errorf("the root certificate the log names: %v", err)
	}

	// the README's try-it lines, as written
	try := exec.Command("sh", "-c", tryBlock)
	try.Dir, try.Env = repo, env
	out, err := try.CombinedOutput()
	if err != nil {
		t.Fatalf("README try-it block: %v\n%s", err, out)
	}
	for _, want := range []string{"192.0.2.80", "2001:db8::80", "192.0.2.25", `"data":"www.example.test."`, "OCSP Response Status: successful", "alpn=h2 port=8444 ech=", `"qps": 100`, "192.0.2.71", `dnsfront_route_queries_total{route="kids-blocked",server="dot0"} 1`, "safe.example.test.\n192.0.2.73"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("README try-it block: no %q in\n%s", want, out)
		}
	}
	if host, _ := os.Hostname(); !strings.Contains(string(out), `"`+host+`"`) {
		t.Errorf("README try-it block: no identity %q (nsid, id.server CH TXT) in\n%s", host, out)
	}
	if strings.Contains(string(out), ";; ERROR") || strings.Count(string(out), "192.0.2.80") < 2 {
		t.Errorf("README try-it block: a kdig failed (the strict one requires the staple)\n%s", out)
	}

	// every handshake carries a staple openssl verifies against Caddy's CA
	ca := filepath.Join(home, ".local", "share", "caddy", "pki", "authorities", "local")
	for _, addr := range []string{"127.0.0.1:8853", "127.0.0.1:8443", "127.0.0.1:8444"} {
		staple, chain, err := tryStaple(addr, "dns.example.test", nil)
		if err != nil || staple == nil {
			t.Fatalf("%s: no staple: %v", addr, err)
		}
		leaf := testpki.WriteFile(t, filepath.Join(tmp, "leaf.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: chain[0].Raw}))
		resp := testpki.WriteFile(t, filepath.Join(tmp, "staple.der"), staple)
		opensslVerify(t, resp, filepath.Join(ca, "intermediate.crt"), filepath.Join(ca, "root.crt"), leaf)
	}

	// Ctrl-C: a clean stop. The go tool itself dies of the SIGINT, as in
	// a terminal; Caddy, its child, shuts down gracefully and says so.
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		stopped = true
		if err != nil && err.Error() != "signal: interrupt" {
			t.Fatalf("%q after Ctrl-C: %v", runCmd, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no exit within 30s of Ctrl-C")
	}
	if err := eventually(30*time.Second, func() bool {
		return regexp.MustCompile(`"msg":"shutdown complete".*"exit_code":0`).MatchString(log.String())
	}); err != nil {
		t.Fatal("Caddy did not log a clean shutdown (exit_code 0) after Ctrl-C")
	}
	for _, addr := range []string{"127.0.0.1:8853", "127.0.0.1:8443", "127.0.0.1:8444"} {
		if err := eventually(10*time.Second, func() bool {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.Close()
			}
			return err != nil
		}); err != nil {
			t.Fatalf("%s still listens after Ctrl-C", addr)
		}
	}
}

// freshUserEnv is this environment for a new user whose HOME is home (so
// Caddy's storage starts empty), keeping the machine's Go caches so that
// `go run` and `go build` do not start from nothing.
func freshUserEnv(home string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HOME=") && !strings.HasPrefix(kv, "XDG_") {
			env = append(env, kv)
		}
	}
	for _, v := range []string{"GOCACHE", "GOMODCACHE", "GOPATH"} {
		out, _ := exec.Command("go", "env", v).Output()
		env = append(env, v+"="+strings.TrimSpace(string(out)))
	}
	return append(env, "HOME="+home)
}
