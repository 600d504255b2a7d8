package integration

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// ecsSite: one DoT server per ECS policy (and one with no ecs handler),
// all forwarding to the test upstream, which answers ecs.up.test. TXT
// with the option it was sent.
const ecsSite = `{
	ocsp {
		issue dns.example.test 127.0.0.1
	}
	dot 127.0.0.1:{{.None}} {
		forward udp://{{.Up}}
	}
	dot 127.0.0.1:{{.Strip}} {
		ecs strip
		forward udp://{{.Up}}
	}
	dot 127.0.0.1:{{.Pass}} {
		ecs pass
		cache
		forward udp://{{.Up}}
	}
	dot 127.0.0.1:{{.Add}} {
		ecs add {
			prefix 24 56
		}
		cache
		forward udp://{{.Up}}
	}
	dot 127.0.0.1:{{.Fixed}} {
		ecs add {
			subnet 203.0.113.0/24
		}
		forward udp://{{.Up}}
	}
}
`

// TestECSPolicies: what the upstream is sent under each policy (kdig as
// the client, with and without +subnet), what the client gets back (its
// own option with a scope, or none when it sent none), and FORMERR for a
// malformed option.
func TestECSPolicies(t *testing.T) {
	up := newTestUpstream(t, 1)
	ports := map[string]int{}
	vars := Vars{"Up": up.addr}
	for _, p := range []string{"None", "Strip", "Pass", "Add", "Fixed"} {
		ports[p] = freePort(t)
		vars[p] = ports[p]
	}
	startCaddy(t, t.TempDir(), ecsSite, vars)
	for _, p := range ports {
		waitListen(t, fmt.Sprintf("127.0.0.1:%d", p))
	}
	ask := func(policy, from string, extra ...string) string {
		args := append([]string{"+tls", "+retry=0", "-b", from, "@127.0.0.1", "-p", fmt.Sprint(ports[policy]), "ecs.up.test", "TXT"}, extra...)
		return kdig(t, args...)
	}
	for _, tc := range []struct {
		policy, from, subnet string
		sent                 string // what the upstream saw
		echo                 string // the client's option in the answer; "" none
	}{
		{"None", "127.0.0.2", "192.0.2.1/32", "no ecs", ""}, // an ECS-unaware forwarder: the option is ignored
		{"Strip", "127.0.0.2", "192.0.2.1/32", "no ecs", "192.0.2.1/32/0"},
		{"Strip", "127.0.0.2", "", "no ecs", ""},
		{"Pass", "127.0.0.2", "192.0.2.0/24", "ecs 192.0.2.0/24", "192.0.2.0/24/24"},
		{"Pass", "127.0.0.2", "", "no ecs", ""},
		{"Add", "127.0.0.7", "", "ecs 127.0.0.0/24", ""},
		{"Add", "127.0.0.7", "192.0.2.1/32", "ecs 127.0.0.0/24", "192.0.2.1/32/24"},
		{"Fixed", "127.0.0.7", "", "ecs 203.0.113.0/24", ""},
	} {
		var extra []string
		if tc.subnet != "" {
			extra = append(extra, "+subnet="+tc.subnet)
		}
		out := ask(tc.policy, tc.from, extra...)
		name := fmt.Sprintf("%s from %s with %q", tc.policy, tc.from, tc.subnet)
		if !strings.Contains(out, `"`+tc.sent+`"`) {
			t.Errorf("%s: the upstream did not see %q:\n%s", name, tc.sent, out)
		}
		got := ""
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) == 3 && f[0] == ";;" && f[1] == "CLIENT-SUBNET:" {
				got = f[2]
			}
		}
		if got != tc.echo {
			t.Errorf("%s: the client got ECS %q back, want %q:\n%s", name, got, tc.echo, out)
		}
	}

	// an answer the upstream scoped 0 is for every subnet (RFC 7871
	// 7.3.1): the cache keeps it once, and a client of another subnet gets
	// it with its own option back, scope 0; an answer scoped 24 is not
	// shared between subnets
	echoOf := func(out string) string {
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) == 3 && f[0] == ";;" && f[1] == "CLIENT-SUBNET:" {
				return f[2]
			}
		}
		return ""
	}
	zero := func(policy, from string, extra ...string) string {
		args := append([]string{"+tls", "+retry=0", "-b", from, "@127.0.0.1", "-p", fmt.Sprint(ports[policy]), "zero.up.test", "TXT"}, extra...)
		return kdig(t, args...)
	}
	before := up.answered.Load()
	zero("Pass", "127.0.0.2", "+subnet=192.0.2.0/24")
	out := zero("Pass", "127.0.0.2", "+subnet=198.51.100.0/24")
	if n := up.answered.Load() - before; n != 1 || echoOf(out) != "198.51.100.0/24/0" {
		t.Errorf("pass: upstream asked %d times (want 1), ECS %q back (want 198.51.100.0/24/0):\n%s", n, echoOf(out), out)
	}
	// the add server's cache is the same store (the same options): the
	// answer kept for every subnet serves its clients too
	for _, from := range []string{"127.0.0.7", "127.0.1.7"} {
		if out := zero("Add", from); !strings.Contains(out, `"ecs 192.0.2.0/24"`) || up.answered.Load() != before+1 {
			t.Errorf("add from %s: not served the answer scoped 0 (upstream asked %d times):\n%s", from, up.answered.Load()-before, out)
		}
	}
	ask("Add", "127.0.1.7") // ecs.up.test, scoped 24: asked for this /24
	if n := up.answered.Load() - before; n != 2 {
		t.Errorf("add: an answer scoped 24 was shared with another subnet (upstream asked %d times, want 2)", n)
	}

	// a malformed option (a scope in a query, more address octets than
	// the prefix needs): FORMERR (RFC 7871 6), whatever the policy
	for _, p := range []string{"Strip", "Pass"} {
		c := dialDoT(t, net.JoinHostPort("127.0.0.1", fmt.Sprint(ports[p])))
		for _, data := range [][]byte{{0, 1, 24, 8, 192, 0, 2}, {0, 1, 16, 0, 192, 0, 2}} {
			q := question("ecs.up.test.", dns.TypeTXT, 9)
			q.SetEdns0(1232, false)
			q.IsEdns0().Option = append(q.IsEdns0().Option, &dns.EDNS0_LOCAL{Code: dns.EDNS0SUBNET, Data: data})
			c.send(t, q)
			m, err := c.recv(5 * time.Second)
			if err != nil || m.Rcode != dns.RcodeFormatError {
				t.Errorf("%s: ECS %v: %v %v, want FORMERR", p, data, m, err)
			}
		}
	}
}
