package caddyfile_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
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
				checkJSON(t, name, m[2])
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

// checkJSON checks a JSON example: a config must parse; a handler (an
// object with "handler") must decode into its module with no field the
// module does not have (a misspelt option would be ignored by Caddy).
func checkJSON(t *testing.T, name, text string) {
	t.Helper()
	if !json.Valid([]byte(text)) {
		t.Errorf("%s: JSON does not parse", name)
		return
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal([]byte(text), &obj) != nil {
		return
	}
	var handler string
	if json.Unmarshal(obj["handler"], &handler) != nil || handler == "" {
		return
	}
	delete(obj, "handler")
	rest, _ := json.Marshal(obj)
	for _, ns := range []string{"dns.handlers.", "http.handlers."} {
		info, err := caddy.GetModule(ns + handler)
		if err != nil {
			continue
		}
		dec := json.NewDecoder(strings.NewReader(string(rest)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(info.New()); err != nil {
			t.Errorf("%s: handler %s: %v", name, handler, err)
		}
		return
	}
	t.Errorf("%s: no handler module %q", name, handler)
}
