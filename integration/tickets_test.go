package integration

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const ticketSite = `{
	ocsp {
		issue dns.example.test 127.0.0.1
	}
	dot 127.0.0.1:{{.DoT}} {
		zone example.test {{.Zone}}
	}
	doh 127.0.0.1:{{.DoH}} {
		zone example.test {{.Zone}}
	}
}
`

// TestSessionResumptionAcrossReload: a TLS session ticket that openssl
// got before `caddy reload --force` resumes the session after it, on the
// DoT and the dedicated DoH server, in TLS 1.3 and 1.2 (a reload makes
// new TLS configs, which would each have ticket keys of their own).
func TestSessionResumptionAcrossReload(t *testing.T) {
	openssl := need(t, "openssl")
	dir := t.TempDir()
	dot, doh := freePort(t), freePort(t)
	c := startCaddy(t, dir, ticketSite, Vars{"DoT": dot, "DoH": doh, "Zone": exampleZone(t)})
	servers := []struct {
		addr, alpn string
	}{{fmt.Sprintf("127.0.0.1:%d", dot), "dot"}, {fmt.Sprintf("127.0.0.1:%d", doh), "h2"}}
	for _, s := range servers {
		waitListen(t, s.addr)
	}
	root := filepath.Join(dir, "data", "caddy", "pki", "authorities", "local", "root.crt")
	// connect runs s_client until it has printed the session line ("New"
	// or "Reused", which it returns) and, for a new session, written
	// sessOut, where its new-session callback puts the ticket that comes
	// after the handshake (a resumed TLS 1.2 session gets none); then it
	// closes s_client's input, which ends it.
	connect := func(addr, alpn, version, sessOut, sessIn string) string {
		t.Helper()
		args := []string{"s_client", "-connect", addr, "-servername", "dns.example.test", "-CAfile", root, "-verify_return_error",
			"-alpn", alpn, version, "-sess_out", sessOut}
		if sessIn != "" {
			args = append(args, "-sess_in", sessIn)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, openssl, args...)
		in, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = cmd.Stdout
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = in.Close(); _ = cmd.Wait() }()
		var seen []string
		for sc := bufio.NewScanner(out); sc.Scan(); {
			l := sc.Text()
			seen = append(seen, l)
			if strings.HasPrefix(l, "New, TLSv1.") || strings.HasPrefix(l, "Reused, TLSv1.") {
				if sessIn != "" {
					return strings.SplitN(l, ",", 2)[0]
				}
				if err := eventually(10*time.Second, func() bool { st, err := os.Stat(sessOut); return err == nil && st.Size() > 0 }); err != nil {
					t.Fatalf("openssl %s: wrote no session to %s", strings.Join(args, " "), sessOut)
				}
				return strings.SplitN(l, ",", 2)[0]
			}
		}
		t.Fatalf("openssl %s: no session line:\n%s", strings.Join(args, " "), strings.Join(seen, "\n"))
		return ""
	}
	sess := func(i int, version string) string { return filepath.Join(dir, fmt.Sprintf("sess-%d%s", i, version)) }
	for i, s := range servers {
		for _, v := range []string{"-tls1_3", "-tls1_2"} {
			if got := connect(s.addr, s.alpn, v, sess(i, v), ""); got != "New" {
				t.Fatalf("%s %s: the first connection: %s", s.alpn, v, got)
			}
			if got := connect(s.addr, s.alpn, v, sess(i, v)+".resumed", sess(i, v)); got != "Reused" {
				t.Fatalf("%s %s: the session was not resumed before any reload: %s", s.alpn, v, got)
			}
		}
	}
	if err := c.reload("", nil); err != nil {
		t.Fatal(err)
	}
	for i, s := range servers {
		for _, v := range []string{"-tls1_3", "-tls1_2"} {
			if got := connect(s.addr, s.alpn, v, sess(i, v)+".resumed", sess(i, v)); got != "Reused" {
				t.Fatalf("%s %s: the session from before the reload was not resumed after it: %s", s.alpn, v, got)
			}
		}
	}
}
