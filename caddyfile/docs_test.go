package caddyfile_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

var fence = regexp.MustCompile("(?s)```(caddyfile|json)\n(.*?)```")

// TestDocsExamples adapts every ```caddyfile block of the README and of
// docs/*.md, and every Caddyfile under examples/, and checks that every
// ```json config block parses: an example a user copies must work.
func TestDocsExamples(t *testing.T) {
	pages, _ := filepath.Glob("../docs/*.md")
	pages = append(pages, "../README.md")
	adapter := caddyconfig.GetAdapter("caddyfile")
	n := 0
	for _, page := range pages {
		b, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		for i, m := range fence.FindAllStringSubmatch(string(b), -1) {
			n++
			name := filepath.Base(page) + "#" + m[1] + "-" + string(rune('0'+i))
			switch m[1] {
			case "caddyfile":
				adaptClean(t, name, adapter, m[2])
			case "json":
				if strings.Contains(m[2], `"apps"`) && !json.Valid([]byte(m[2])) {
					t.Errorf("%s: JSON config does not parse", name)
				}
			}
		}
	}
	examples, _ := filepath.Glob("../examples/*/Caddyfile")
	more, _ := filepath.Glob("../examples/Caddyfile")
	for _, f := range append(examples, more...) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		n++
		adaptClean(t, f, adapter, string(b))
	}
	if n == 0 {
		t.Fatal("no examples found")
	}
}

func adaptClean(t *testing.T, name string, adapter caddyconfig.Adapter, cfg string) {
	t.Helper()
	_, warnings, err := adapter.Adapt([]byte(cfg), map[string]any{"filename": name})
	if err != nil {
		t.Errorf("%s: %v", name, err)
	}
	for _, w := range warnings {
		t.Errorf("%s: warning: %s", name, w.String())
	}
	// Caddy run as root installs its internal root into the system's
	// trust store unless told not to: every example that uses the
	// internal CA says skip_install_trust
	if (strings.Contains(cfg, "local_certs") || strings.Contains(cfg, "tls internal")) && !strings.Contains(cfg, "skip_install_trust") {
		t.Errorf("%s: uses Caddy's internal CA (local_certs or tls internal) without skip_install_trust", name)
	}
}
