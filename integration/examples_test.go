package integration

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLocalCAExample runs examples/local-ca/run.sh as written: it makes a
// CA and a certificate with openssl, generates the staple, serves it on
// DoT and DoH, checks it, regenerates it, reloads and sees the new one.
func TestLocalCAExample(t *testing.T) {
	for _, tool := range []string{"openssl", "kdig", "curl"} {
		need(t, tool)
	}
	for _, addr := range []string{"127.0.0.1:8853", "127.0.0.1:8443", "127.0.0.1:2019"} {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Fatalf("%s is in use: the example needs it", addr)
		}
	}
	tmp := t.TempDir()
	script, _ := filepath.Abs("../examples/local-ca/run.sh")
	cmd := exec.Command("sh", script)
	cmd.Env = append(freshUserEnv(tmp), "WORK="+filepath.Join(tmp, "work"))
	b, err := cmd.CombinedOutput()
	out := string(b)
	if err != nil || !strings.Contains(out, "OK: the new staple is served") {
		t.Fatalf("run.sh: %v\n%s", err, out)
	}
	if strings.Count(out, "192.0.2.80") != 4 {
		t.Fatalf("run.sh: want 4 verified answers (DoT and DoH, before and after)\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(tmp, "work", "server.ocsp")); err != nil {
		t.Fatal(err)
	}
}
