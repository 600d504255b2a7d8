package integration

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// proxyOutSite: a DoT server behind a load balancer (PROXY headers from
// 127.0.0.1) that forwards to unbound over UDP with proxy_protocol, and
// a second one that forwards over TCP with it.
const proxyOutSite = proxiedDoTHead + `		forward udp://127.0.0.1:{{.Unbound}} {
			proxy_protocol
		}
	}
	dot 127.0.0.1:{{.TCPPort}} {
		forward tcp://127.0.0.1:{{.Unbound}} {
			proxy_protocol
		}
	}
}
`

// startUnbound runs unbound on a loopback port that takes PROXY v2
// headers (proxy-protocol-port), answering who.proxied.test to the
// clients the header names in 127.0.9.9 and 198.51.100.0/24 and refusing
// every other (loopback too, which unbound allows by default): its ACL
// judges the header's client (and the socket's, dnsfront's 127.0.0.1,
// allowed). Its REFUSED has no question (dnsfront takes
// such error answers). It logs each query it allows, with its client
// (log-queries), into the returned buffer.
func startUnbound(t *testing.T, dir string) (int, *syncBuffer) {
	t.Helper()
	bin := need(t, "unbound")
	port := freePort(t)
	conf := filepath.Join(dir, "unbound.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`server:
	interface: 127.0.0.1@%[1]d
	port: %[1]d
	proxy-protocol-port: %[1]d
	do-ip6: no
	do-daemonize: no
	use-syslog: no
	logfile: ""
	log-queries: yes
	verbosity: 1
	chroot: ""
	username: ""
	directory: "%[2]s"
	pidfile: "%[2]s/unbound.pid"
	num-threads: 1
	access-control: 0.0.0.0/0 refuse
	access-control: 127.0.0.0/8 refuse
	access-control: 127.0.0.1/32 allow
	access-control: 127.0.9.9/32 allow
	access-control: 198.51.100.0/24 allow
	local-zone: "proxied.test." static
	local-data: "who.proxied.test. 60 IN A 192.0.2.99"
remote-control:
	control-enable: no
`, port, dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	log := new(syncBuffer)
	cmd := exec.Command(bin, "-d", "-c", conf)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("unbound's log:\n%s", log.String())
		}
	})
	waitListen(t, fmt.Sprintf("127.0.0.1:%d", port))
	return port, log
}

// TestForwardProxyProtocol: forward's proxy_protocol hands the real
// client to a backend that reads PROXY v2 headers, here unbound with
// proxy-protocol-port, whose ACL and query log then see the client
// itself: a kdig client from 127.0.9.9 is answered and one from
// 127.0.0.5 refused (over UDP and over TCP to unbound), and a client
// that came through a load balancer's PROXY header to dnsfront is the
// one unbound sees (the header in, the header out; dnsdist's
// PP-outside test with its backend's view).
func TestForwardProxyProtocol(t *testing.T) {
	dir := t.TempDir()
	ub, ublog := startUnbound(t, dir)
	vars := Vars{"Port": freePort(t), "TCPPort": freePort(t), "Unbound": ub}
	startCaddy(t, dir, proxyOutSite, vars)
	for _, p := range []string{"Port", "TCPPort"} {
		waitListen(t, fmt.Sprintf("127.0.0.1:%d", vars[p]))
	}
	for _, c := range []struct {
		port, from, want string
	}{
		{fmt.Sprint(vars["Port"]), "127.0.9.9", "192.0.2.99"},
		{fmt.Sprint(vars["Port"]), "127.0.0.5", "REFUSED"},
		{fmt.Sprint(vars["TCPPort"]), "127.0.9.9", "192.0.2.99"},
		{fmt.Sprint(vars["TCPPort"]), "127.0.0.5", "REFUSED"},
	} {
		out := kdig(t, "+tls", "-b", c.from, "@127.0.0.1", "-p", c.port, "who.proxied.test", "A")
		if !strings.Contains(out, c.want) {
			t.Errorf("kdig from %s to %s: want %s in\n%s", c.from, c.port, c.want, out)
		}
	}
	// through a load balancer (PROXY in), as unbound sees it (PROXY out)
	addr := fmt.Sprintf("127.0.0.1:%d", vars["Port"])
	lbDst := netip.MustParseAddrPort("203.0.113.53:853")
	if rc := dotVia(t, addr, "127.0.0.1", proxyV2(netip.MustParseAddrPort("198.51.100.7:5300"), lbDst), "who.proxied.test."); rc != dns.RcodeSuccess {
		t.Errorf("a client of 198.51.100.0/24 through the balancer: rcode %d, want NOERROR", rc)
	}
	if rc := dotVia(t, addr, "127.0.0.1", proxyV2(netip.MustParseAddrPort("203.0.113.9:5300"), lbDst), "who.proxied.test."); rc != dns.RcodeRefused {
		t.Errorf("a client unbound refuses, through the balancer: rcode %d, want REFUSED", rc)
	}
	// unbound's log names the clients themselves, never dnsfront's 127.0.0.1
	seen := strings.ToLower(ublog.String()) // the names in 0x20's random case
	for _, want := range []string{"127.0.9.9 who.proxied.test. a in", "198.51.100.7 who.proxied.test. a in"} {
		if !strings.Contains(seen, want) {
			t.Errorf("unbound's log has no %q", want)
		}
	}
	if strings.Contains(seen, "127.0.0.1 who.proxied.test") {
		t.Errorf("unbound saw dnsfront's own address as a client:\n%s", ublog.String())
	}
}
