package integration

import (
	"bufio"
	"context"
	"encoding/json"
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
	need(t, "openssl")
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
	sess := func(i int, version string) string { return filepath.Join(dir, fmt.Sprintf("sess-%d%s", i, version)) }
	for i, s := range servers {
		for _, v := range []string{"-tls1_3", "-tls1_2"} {
			if got := sessionLine(t, s.addr, s.alpn, root, v, sess(i, v), ""); got != "New" {
				t.Fatalf("%s %s: the first connection: %s", s.alpn, v, got)
			}
			if got := sessionLine(t, s.addr, s.alpn, root, v, sess(i, v)+".resumed", sess(i, v)); got != "Reused" {
				t.Fatalf("%s %s: the session was not resumed before any reload: %s", s.alpn, v, got)
			}
		}
	}
	if err := c.reload("", nil); err != nil {
		t.Fatal(err)
	}
	for i, s := range servers {
		for _, v := range []string{"-tls1_3", "-tls1_2"} {
			if got := sessionLine(t, s.addr, s.alpn, root, v, sess(i, v)+".resumed", sess(i, v)); got != "Reused" {
				t.Fatalf("%s %s: the session from before the reload was not resumed after it: %s", s.alpn, v, got)
			}
		}
	}
}

const ticketFleetSite = `{
	storage file_system {{.Shared}}
	ocsp {
		issue dns.example.test 127.0.0.1
	}
	dot 127.0.0.1:{{.DoT}} {
		zone example.test {{.Zone}}
	}
}
`

// TestSessionTicketsAcrossAFleet: two instances on one storage folder
// have ticket keys of their own, so a session from one is not resumed by
// the other; once the tls app's session_tickets takes its keys from
// storage (Caddy's tls.stek.distributed, loaded through the admin API),
// it is, the tls app's keys taking precedence over dnsfront's own.
func TestSessionTicketsAcrossAFleet(t *testing.T) {
	need(t, "openssl")
	dir := t.TempDir()
	shared := filepath.Join(dir, "storage")
	zone := exampleZone(t)
	var addrs []string
	var procs []*caddyProc
	for i := 0; i < 2; i++ {
		d := filepath.Join(dir, fmt.Sprint(i))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		port := freePort(t)
		procs = append(procs, startCaddy(t, d, ticketFleetSite, Vars{"Shared": shared, "DoT": port, "Zone": zone}))
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", port))
		waitListen(t, addrs[i])
	}
	root := filepath.Join(shared, "pki", "authorities", "local", "root.crt")
	sess := filepath.Join(dir, "sess")
	if got := sessionLine(t, addrs[0], "dot", root, "-tls1_3", sess, ""); got != "New" {
		t.Fatalf("the first connection: %s", got)
	}
	if got := sessionLine(t, addrs[1], "dot", root, "-tls1_3", sess+".other", sess); got != "New" {
		t.Fatalf("another instance, keys of its own: %s, want New", got)
	}
	for _, p := range procs {
		var cfg map[string]any
		if err := json.Unmarshal(p.api("GET", "/config/"), &cfg); err != nil {
			t.Fatal(err)
		}
		cfg["apps"].(map[string]any)["tls"].(map[string]any)["session_tickets"] = map[string]any{"key_source": map[string]any{"provider": "distributed"}}
		body, _ := json.Marshal(cfg)
		p.apiJSON("POST", "/load", body) // with session_tickets
	}
	if got := sessionLine(t, addrs[0], "dot", root, "-tls1_3", sess+".shared", ""); got != "New" {
		t.Fatalf("the first connection with shared keys: %s", got)
	}
	if got := sessionLine(t, addrs[1], "dot", root, "-tls1_3", sess+".resumed", sess+".shared"); got != "Reused" {
		t.Fatalf("another instance, keys from the shared storage: %s, want Reused", got)
	}
}

// sessionLine runs openssl s_client until it has printed the session
// line ("New" or "Reused", which it returns) and, for a new session,
// written sessOut, where its new-session callback puts the ticket that
// comes after the handshake (a resumed TLS 1.2 session gets none); then
// it closes s_client's input, which ends it. sessIn, unless empty, is
// the session to resume.
func sessionLine(t *testing.T, addr, alpn, root, version, sessOut, sessIn string) string {
	t.Helper()
	openssl := need(t, "openssl")
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
