package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// xcaddyVersion is the xcaddy the README's build line is tested with.
const xcaddyVersion = "v0.4.5"

// TestXcaddyBuild builds Caddy with dnsfront from this checkout the way
// the README says, with xcaddy installed from the module proxy, and
// checks that every dnsfront module is in the binary. xcaddy resolves
// the module's latest version unless it is given one, and the module is
// not published yet: hence @v0.0.0=<checkout>.
func TestXcaddyBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds Caddy (minutes)")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	install := exec.CommandContext(ctx, "go", "install", "github.com/caddyserver/xcaddy/cmd/xcaddy@"+xcaddyVersion)
	install.Env = append(os.Environ(), "GOBIN="+dir)
	if out, err := install.CombinedOutput(); err != nil {
		if os.Getenv("DNSFRONT_REQUIRE_TOOLS") == "1" {
			t.Fatalf("go install xcaddy@%s: %v\n%s", xcaddyVersion, err, out)
		}
		t.Skipf("xcaddy %s could not be installed from the module proxy: skipping (%v)", xcaddyVersion, err)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "caddy")
	build := exec.CommandContext(ctx, filepath.Join(dir, "xcaddy"), "build", "v2.11.9",
		"--with", "github.com/dnsfront/dnsfront@v0.0.0="+root, "--output", bin)
	build.Dir = dir
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("xcaddy build: %v\n%s", err, out)
	}
	out, err := exec.CommandContext(ctx, bin, "list-modules").CombinedOutput()
	if err != nil {
		t.Fatalf("caddy list-modules: %v\n%s", err, out)
	}
	have := map[string]bool{}
	for _, l := range strings.Split(string(out), "\n") {
		have[strings.TrimSpace(l)] = true
	}
	for _, m := range []string{"dot", "http.handlers.doh", "dns.handlers.zone", "dns.handlers.forward", "ocsp",
		"ocsp.sources.file", "ocsp.sources.local_ca", "ocsp.sources.pki", "ocsp.sources.responder",
		"tls.get_certificate.ocsp", "caddy.storage.ocsp", "admin.api.ocsp", "dns.handlers.cache", "admin.api.dns_cache"} {
		if !have[m] {
			t.Errorf("the xcaddy build lacks module %s", m)
		}
	}
}
