package whoami

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns"
	_ "github.com/dnsfront/dnsfront/caddydns/forward"
	_ "github.com/dnsfront/dnsfront/caddyfile" // the dot global option
)

// TestWhoami: through a chain, whoami. TXT gets the client's address
// with the client's ID, and anything else goes on to the next handler
// (REFUSED at the end of this chain).
func TestWhoami(t *testing.T) {
	c := caddydns.NewChain("test", "test", Whoami{})
	ask := func(name string, qtype uint16) *dns.Msg {
		q := new(dns.Msg)
		q.SetQuestion(name, qtype)
		q.Id = 4242
		b, _ := q.Pack()
		a := c.Serve(context.Background(), &caddydns.Request{Client: netip.MustParseAddrPort("192.0.2.7:5353"), Size: caddydns.MaxMessage}, b, nil)
		m := new(dns.Msg)
		if err := m.Unpack(a.Wire); err != nil {
			t.Fatal(err)
		}
		return m
	}
	m := ask("WhoAmI.", dns.TypeTXT)
	if m.Id != 4242 || len(m.Answer) != 1 || m.Answer[0].(*dns.TXT).Txt[0] != "192.0.2.7" || m.Question[0].Name != "WhoAmI." {
		t.Fatalf("whoami. TXT: %v", m)
	}
	if m := ask("whoami.", dns.TypeA); m.Rcode != dns.RcodeRefused {
		t.Fatalf("whoami. A: %v, want it passed on (REFUSED)", m)
	}
}

// TestWhoamiCaddyfile: the handler is a subdirective of dot and doh as
// soon as its module is registered.
func TestWhoamiCaddyfile(t *testing.T) {
	cfg := "{\n\tlocal_certs\n\tskip_install_trust\n\tdot 127.0.0.1:8853 {\n\t\tserver_name dns.example.test\n\t\twhoami\n\t\tforward 127.0.0.1:53\n\t}\n}\n"
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), nil)
	if err != nil || !strings.Contains(string(out), `{"handler":"whoami"},{"handler":"forward"`) {
		t.Fatalf("adapted to %s (%v)", out, err)
	}
}

// TestArchitectureDoc: docs/architecture.md shows this file, as it is.
func TestArchitectureDoc(t *testing.T) {
	code, err := os.ReadFile("whoami.go")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../../docs/architecture.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc), "```go\n"+string(code)+"```\n") {
		t.Fatal("docs/architecture.md does not show examples/whoami/whoami.go as it is")
	}
}
