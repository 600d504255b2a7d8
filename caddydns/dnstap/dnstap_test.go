package dnstap

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestParseOutput(t *testing.T) {
	for in, want := range map[string]string{
		"unix:/run/tap.sock": "unix /run/tap.sock", "tcp:127.0.0.1:6000": "tcp 127.0.0.1:6000",
		"file:/var/log/x.fstrm": "file /var/log/x.fstrm", "/var/log/x.fstrm": "file /var/log/x.fstrm",
	} {
		n, a, err := parseOutput(in)
		if err != nil || n+" "+a != want {
			t.Errorf("%q: %s %s %v, want %s", in, n, a, err, want)
		}
	}
	for in, msg := range map[string]string{"": "no output", "unix:": "no address", "tcp:collector:6000": "want an IP address and port"} {
		if _, _, err := parseOutput(in); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q: %v, want %q", in, err, msg)
		}
	}
	d := new(Dnstap)
	if err := d.UnmarshalCaddyfile(caddyfile.NewTestDispenser("dnstap unix:/run/t.sock {\n\tidentity a\n\tbuffer 50\n}")); err != nil || d.Output != "unix:/run/t.sock" || d.Identity != "a" || d.Buffer != 50 {
		t.Fatalf("%+v %v", d, err)
	}
	if err := new(Dnstap).UnmarshalCaddyfile(caddyfile.NewTestDispenser("dnstap {\n}")); err == nil || !strings.Contains(err.Error(), "want an output") {
		t.Errorf("no output: %v", err)
	}
}
