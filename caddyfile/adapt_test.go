package caddyfile_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
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

// TestDoTDefaultBind adapts a Caddyfile from a file, as `caddy run
// --config` does: a dot address with no host takes default_bind's hosts,
// one with a host keeps it.
func TestDoTDefaultBind(t *testing.T) {
	for _, tc := range []struct{ global, want string }{
		{"default_bind 127.0.0.1\n\tdot :8853 {\n\t\tzone example.test\n\t}\n\tdot 127.0.0.2:8854 {\n\t\tzone example.test\n\t}",
			`"listen":["127.0.0.1:8853"]`},
		{"dot :8853 {\n\t\tzone example.test\n\t}\n\tdefault_bind tcp4/127.0.0.1 [::1] {\n\t\tprotocols h1 h2\n\t}",
			`"listen":["tcp4/127.0.0.1:8853","[::1]:8853"]`},
		{"default_bind 127.0.0.1\n\tdot {\n\t\tlisten :8853 127.0.0.3:8853\n\t\tzone example.test\n\t}",
			`"listen":["127.0.0.1:8853","127.0.0.3:8853"]`},
		{"dot :8853 {\n\t\tzone example.test\n\t}", `"listen":[":8853"]`},
	} {
		file := filepath.Join(t.TempDir(), "Caddyfile")
		text := "{\n\t" + tc.global + "\n}\n"
		if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		got, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(text), map[string]any{"filename": file})
		if err != nil {
			t.Fatalf("%s: %v", text, err)
		}
		if !strings.Contains(string(got), tc.want) {
			t.Errorf("%s adapted to\n%s\nwant it to hold %s", text, got, tc.want)
		}
		if tc.want == `"listen":["127.0.0.1:8853"]` && !strings.Contains(string(got), `"listen":["127.0.0.2:8854"]`) {
			t.Errorf("a dot address with a host was changed: %s", got)
		}
	}

	// the same text adapted under a name whose file says something else
	// (a Caddyfile posted to the admin API): the address stays as written
	text := "{\n\tdefault_bind 127.0.0.1\n\tdot :8853 {\n\t\tzone example.test\n\t}\n}\n"
	other := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(other, []byte("{\n\tdefault_bind 127.0.0.9\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(text), map[string]any{"filename": other})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(got), "127.0.0.9") {
		t.Errorf("default_bind taken from a file that is not the one adapted: %s", got)
	}

	// a unix default_bind cannot carry a DoT port: an error names the line
	file := filepath.Join(t.TempDir(), "Caddyfile")
	text = "{\n\tdefault_bind unix//run/caddy.sock\n\tdot :8853 {\n\t\tzone example.test\n\t}\n}\n"
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err = caddyconfig.GetAdapter("caddyfile").Adapt([]byte(text), map[string]any{"filename": file})
	if err == nil || !strings.Contains(err.Error(), file+":2") {
		t.Errorf("unix default_bind: err %v, want one naming %s:2", err, file)
	}
}
