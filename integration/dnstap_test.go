package integration

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

const dnstapSite = `{
	ocsp {
		issue dns.example.test 127.0.0.1
	}
	dot 127.0.0.1:{{.Port}} {
		dnstap {{.Output}} {
			identity test-front
			buffer {{.Buffer}}
		}
		forward {{.Scheme}}://{{.Up}}
	}
}
`

// TestDnstapFile: the frame-stream file, read by dnstap-ldns, shows each
// query and response with the client's address, and the exchange with
// the upstream: its address, and the transport it went over (TCP here;
// UDP in TestDnstapSocket).
func TestDnstapFile(t *testing.T) {
	ldns := need(t, "dnstap-ldns")
	dir := t.TempDir()
	up := newTestUpstream(t, 1)
	port := freePort(t)
	file := filepath.Join(dir, "tap.fstrm")
	c := startCaddy(t, dir, dnstapSite, Vars{"Port": port, "Scheme": "tcp", "Up": up.addr, "Output": "file:" + file, "Buffer": 10000})
	waitListen(t, fmt.Sprintf("127.0.0.1:%d", port))
	for _, from := range []string{"127.0.0.2", "127.0.0.3"} {
		if out := kdig(t, "+tls", "+retry=0", "-b", from, "@127.0.0.1", "-p", fmt.Sprint(port), "tap.example.test", "A"); !strings.Contains(out, "NOERROR") {
			t.Fatalf("kdig from %s:\n%s", from, out)
		}
	}
	c.stop() // the stream is flushed and closed
	out, err := run(t, false, ldns, "-q", "-r", file)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"CQ 127.0.0.2", "CR 127.0.0.2", "CQ 127.0.0.3", "CR 127.0.0.3", "FQ 127.0.0.1 TCP", "FR 127.0.0.1 TCP"} {
		if !strings.Contains(out, want) {
			t.Errorf("dnstap-ldns output lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(strings.ToLower(out), "tap.example.test"); n != 8 {
		t.Errorf("%d messages for tap.example.test, want 8 (CQ, FQ, FR, CR for each of 2 queries):\n%s", n, out)
	}
	// dnstap-ldns predates the DOT and DOH protocol values ("?" above);
	// golang-dnstap's own command reads them. A client's messages name the
	// server's address the client reached.
	yaml, _ := run(t, false, buildDnstapCmd(t), "-y", "-r", file)
	if !strings.Contains(yaml, `identity: "test-front"`) || !strings.Contains(yaml, "socket_protocol: DOT") {
		t.Errorf("dnstap -y lacks the identity or the DoT protocol:\n%.2000s", yaml)
	}
	if rx := regexp.MustCompile(fmt.Sprintf(`response_address: 127\.0\.0\.1\s+query_port: \d+\s+response_port: %d\n`, port)); len(rx.FindAllString(yaml, -1)) != 4 {
		t.Errorf("%d client messages with the server's address and port %d, want 4:\n%.3000s", len(rx.FindAllString(yaml, -1)), port, yaml)
	}
}

// TestDnstapSocket: a collector on a unix socket (golang-dnstap's own
// dnstap command) gets the messages; with it stopped, answering goes on
// and what does not fit is dropped and counted; when it comes back,
// dnsfront connects again by itself.
func TestDnstapSocket(t *testing.T) {
	dir := t.TempDir()
	collectorBin := buildDnstapCmd(t)
	sock := filepath.Join(dir, "tap.sock")
	collect := func(name string) (*exec.Cmd, string) {
		outFile := filepath.Join(dir, name)
		cmd := exec.Command(collectorBin, "-u", sock, "-q", "-w", outFile)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		if err := eventually(5*time.Second, func() bool { _, err := os.Stat(sock); return err == nil }); err != nil {
			t.Fatal("the collector did not open its socket")
		}
		return cmd, outFile
	}
	first, firstOut := collect("first.txt")
	up := newTestUpstream(t, 1)
	port := freePort(t)
	// a small buffer: while the collector is away, it fills and the rest is dropped
	c := startCaddy(t, dir, dnstapSite, Vars{"Port": port, "Scheme": "udp", "Up": up.addr, "Output": "unix:" + sock, "Buffer": 4})
	c.waitLog(`dnstap output connected`, 10*time.Second)
	dig := func(name string) {
		if out := kdig(t, "+tls", "+retry=0", "-b", "127.0.0.5", "@127.0.0.1", "-p", fmt.Sprint(port), name, "A"); !strings.Contains(out, "NOERROR") {
			t.Fatalf("kdig %s:\n%s", name, out)
		}
	}
	dig("one.example.test")
	if err := eventually(10*time.Second, func() bool { return fileHas(firstOut, "CR 127.0.0.5") }); err != nil {
		t.Fatalf("the collector got no CLIENT_RESPONSE of 127.0.0.5")
	}
	if !fileHas(firstOut, "FQ 127.0.0.1 UDP") || !fileHas(firstOut, "FR 127.0.0.1 UDP") {
		b, _ := os.ReadFile(firstOut)
		t.Errorf("the collector got no FORWARDER_QUERY and RESPONSE over UDP to 127.0.0.1:\n%s", b)
	}
	// the collector goes away: queries are still answered
	_ = first.Process.Kill()
	_ = first.Wait()
	os.Remove(sock)
	for i := range 3 {
		dig(fmt.Sprintf("down%d.example.test", i))
	}
	metric := `dnsfront_dnstap_dropped_total{output="unix:` + sock + `"} `
	var dropped string
	for _, l := range strings.Split(string(c.api("GET", "/metrics")), "\n") {
		if strings.HasPrefix(l, metric) {
			dropped = strings.TrimPrefix(l, metric)
		}
	}
	if dropped == "" || dropped == "0" {
		t.Fatalf("with the collector away, dropped messages: %q, want some counted", dropped)
	}
	// it comes back: dnsfront reconnects and sends again
	_, secondOut := collect("second.txt")
	if err := eventually(15*time.Second, func() bool {
		dig("again.example.test")
		return fileHas(secondOut, "again.example.test")
	}); err != nil {
		t.Fatalf("dnsfront did not reconnect to the collector\n%s", c.log.String())
	}
	if !strings.Contains(string(c.api("GET", "/metrics")), `dnsfront_dnstap_sent_total{output="unix:`+sock+`"}`) {
		t.Error("metrics lack dnsfront_dnstap_sent_total")
	}
}

// TestDnstapFstrmCapture: fstrm_capture (the Frame Streams library's own
// capture tool, as BIND's, Knot's and unbound's docs use it, and the
// bench's collector) takes the bidirectional stream from a unix socket
// into a file that dnstap-ldns reads: each query and response with the
// client's address.
func TestDnstapFstrmCapture(t *testing.T) {
	capture := need(t, "fstrm_capture")
	ldns := need(t, "dnstap-ldns")
	dir := t.TempDir()
	sock, file := filepath.Join(dir, "tap.sock"), filepath.Join(dir, "tap.fstrm")
	cmd := exec.Command(capture, "-t", "protobuf:dnstap.Dnstap", "-u", sock, "-w", file)
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	if err := eventually(5*time.Second, func() bool { _, err := os.Stat(sock); return err == nil }); err != nil {
		t.Fatal("fstrm_capture did not open its socket")
	}
	up := newTestUpstream(t, 1)
	port := freePort(t)
	c := startCaddy(t, dir, dnstapSite, Vars{"Port": port, "Scheme": "udp", "Up": up.addr, "Output": "unix:" + sock, "Buffer": 10000})
	c.waitLog(`dnstap output connected`, 10*time.Second)
	for _, from := range []string{"127.0.0.6", "127.0.0.7"} {
		if out := kdig(t, "+tls", "+retry=0", "-b", from, "@127.0.0.1", "-p", fmt.Sprint(port), "fstrm.example.test", "A"); !strings.Contains(out, "NOERROR") {
			t.Fatalf("kdig from %s:\n%s", from, out)
		}
	}
	c.stop() // the stream is flushed and finished
	// fstrm_capture closes its file on SIGTERM
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Logf("fstrm_capture: %v\n%s", err, log.String())
	}
	out, err := run(t, false, ldns, "-q", "-r", file)
	if err != nil {
		t.Fatalf("%v\nfstrm_capture:\n%s", err, log.String())
	}
	for _, want := range []string{"CQ 127.0.0.6", "CR 127.0.0.6", "CQ 127.0.0.7", "CR 127.0.0.7", "FQ 127.0.0.1 UDP", "FR 127.0.0.1 UDP"} {
		if !strings.Contains(out, want) {
			t.Errorf("dnstap-ldns output of fstrm_capture's file lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(strings.ToLower(out), "fstrm.example.test"); n != 8 {
		t.Errorf("%d messages for fstrm.example.test, want 8 (CQ, FQ, FR, CR for each of 2 queries):\n%s", n, out)
	}
}

func fileHas(path, sub string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.Contains(sc.Text(), sub) {
			return true
		}
	}
	return false
}

// buildDnstapCmd builds golang-dnstap's dnstap command (a dependency of
// dnsfront: no network needed) and returns its path.
func buildDnstapCmd(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "dnstap")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/dnstap/golang-dnstap/dnstap").CombinedOutput(); err != nil {
		t.Fatalf("building golang-dnstap's dnstap command: %v\n%s", err, out)
	}
	return bin
}
