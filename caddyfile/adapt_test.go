package caddyfile_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddytest"

	// the modules the fixtures use
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/dnsfront/dnsfront"
)

// TestAdaptFixtures adapts every testdata/*.caddytest (a Caddyfile, a
// line of dashes, the JSON it must adapt to) and compares the result.
func TestAdaptFixtures(t *testing.T) {
	files, err := filepath.Glob("testdata/*.caddytest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			caddyfile, want, ok := strings.Cut(string(b), "\n----------\n")
			if !ok {
				t.Fatalf("%s: no ---------- line between the Caddyfile and the JSON", f)
			}
			if !caddytest.CompareAdapt(t, f, caddyfile+"\n", "caddyfile", strings.TrimSpace(want)) {
				t.Fail()
			}
		})
	}
}
