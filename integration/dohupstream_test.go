package integration

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// dohUpstreamSite is a dedicated DoH server answering from the example
// zone; with {{.Forward}}, a DoT server whose only handler forwards to it
// over DNS over HTTPS.
const dohUpstreamSite = `{
	ocsp {
		issue dns.example.test 127.0.0.1
	}
	doh 127.0.0.1:{{.DoH}} {
		zone example.test {{.Zone}}
	}
	{{.Forward}}
}
`

// TestForwardToDoH: a DoT server forwards to a DoH upstream (dnsfront's
// own dedicated server, its certificate checked against the local CA):
// kdig over TLS gets the zone's answers and NXDOMAIN through it, the
// upstream's metrics name it, and a query for a name the upstream
// refuses comes back REFUSED, as the upstream said.
func TestForwardToDoH(t *testing.T) {
	dir := t.TempDir()
	vars := Vars{"DoH": freePort(t), "DoT": freePort(t), "Zone": exampleZone(t), "Forward": ""}
	c := startCaddy(t, dir, dohUpstreamSite, vars)
	waitListen(t, fmt.Sprintf("127.0.0.1:%d", vars["DoH"]))
	// the local CA's root exists now: a forward can trust it
	root := filepath.Join(dir, "data", "caddy", "pki", "authorities", "local", "root.crt")
	vars["Forward"] = fmt.Sprintf("dot 127.0.0.1:%d {\n\t\tforward https://127.0.0.1:%d/dns-query {\n\t\t\ttls_server_name dns.example.test\n\t\t\ttls_ca_files %s\n\t\t}\n\t}", vars["DoT"], vars["DoH"], root)
	if err := c.reload(dohUpstreamSite, vars); err != nil {
		t.Fatal(err)
	}
	waitListen(t, fmt.Sprintf("127.0.0.1:%d", vars["DoT"]))
	port := fmt.Sprint(vars["DoT"])
	for name, want := range map[string]string{"www.example.test": "192.0.2.80", "nope.example.test": "status: NXDOMAIN", "elsewhere.test": "status: REFUSED"} {
		out := kdig(t, "+tls", "@127.0.0.1", "-p", port, name, "A")
		if !strings.Contains(out, want) {
			t.Fatalf("%s through the DoH upstream: want %q\n%s", name, want, out)
		}
	}
	sample := fmt.Sprintf(`dnsfront_upstream_queries_total{upstream="https://127.0.0.1:%d/dns-query"}`, vars["DoH"])
	if n := metric(t, c, sample); n != 3 {
		t.Fatalf("%s = %d, want 3", sample, n)
	}
	if n := metric(t, c, fmt.Sprintf(`dnsfront_upstream_errors_total{upstream="https://127.0.0.1:%d/dns-query"}`, vars["DoH"])); n != 0 {
		t.Fatalf("%d upstream errors", n)
	}
}
