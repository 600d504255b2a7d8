package route

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/miekg/dns"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dnsfront/dnsfront/caddydns"
	_ "github.com/dnsfront/dnsfront/caddydns/zone" // the handler the routes run
	"github.com/dnsfront/dnsfront/internal/handlertest"
)

const zoneHandler = `{"handler":"zone","origin":"example.org","records":["@ 3600 IN SOA ns.example.org. hostmaster.example.org. 1 3600 600 86400 60","www 60 IN A 192.0.2.99"]}`

func newRoute(t testing.TB, match string) *Route {
	t.Helper()
	rt := new(Route)
	handlertest.Provision(t, rt, `{"match":`+match+`,"handle":[`+zoneHandler+`]}`)
	return rt
}

// ask sends name/qtype through rt as the chain would, and returns the
// answer's A record: 192.0.2.99 from the route's zone, 192.0.2.1 from
// the chain's next handler.
func ask(t testing.TB, rt *Route, sni, client, name string, qtype uint16) string {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	r := &caddydns.Request{Msg: q, Server: "test", ServerName: sni, Client: netip.AddrPortFrom(netip.MustParseAddr(client), 5300)}
	res, err := rt.ServeDNS(context.Background(), r, func(_ context.Context, r *caddydns.Request) (caddydns.Response, error) {
		m := new(dns.Msg)
		m.SetReply(r.Msg)
		rr, _ := dns.NewRR(r.Msg.Question[0].Name + " 60 IN A 192.0.2.1")
		m.Answer = append(m.Answer, rr)
		return caddydns.Response{Msg: m}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	m, err := res.Message()
	if err != nil || len(m.Answer) == 0 {
		return "none"
	}
	return m.Answer[0].(*dns.A).A.String()
}

const routed, passed = "192.0.2.99", "192.0.2.1"

// TestServerName: the route takes the queries of the server names it
// names (any case, a trailing dot, a wildcard of one label), and its
// zone's misses go on down the chain.
func TestServerName(t *testing.T) {
	rt := newRoute(t, `{"server_name":["family.dns.example","*.kids.dns.example"]}`)
	for _, c := range []struct{ sni, name, want string }{
		{"family.dns.example", "www.example.org.", routed},
		{"FAMILY.dns.Example.", "www.example.org.", routed},
		{"anna.kids.dns.example", "www.example.org.", routed},
		{"a.anna.kids.dns.example", "www.example.org.", passed}, // a wildcard is one label
		{"kids.dns.example", "www.example.org.", passed},
		{"dns.example", "www.example.org.", passed},
		{"", "www.example.org.", passed},
		{"family.dns.example", "www.example.net.", passed}, // the route's zone passes it on
	} {
		if got := ask(t, rt, c.sni, "192.0.2.10", c.name, dns.TypeA); got != c.want {
			t.Errorf("SNI %q, %s: %s, want %s", c.sni, c.name, got, c.want)
		}
	}
}

// TestPath: the DoH path, exactly; a DoT query (no path) is not held.
func TestPath(t *testing.T) {
	rt := newRoute(t, `{"path":["/dns-query/kids","/q/family"]}`)
	for path, want := range map[string]bool{"/dns-query/kids": true, "/q/family": true, "/dns-query": false, "/dns-query/kids/x": false, "/dns-query/Kids": false, "": false} {
		q := new(dns.Msg)
		q.SetQuestion("www.example.org.", dns.TypeA)
		if got := rt.holds(&caddydns.Request{Msg: q, Path: path}); got != want {
			t.Errorf("path %q: %v, want %v", path, got, want)
		}
	}
}

// TestMatchers: client, name and type; each set matcher must hold.
func TestMatchers(t *testing.T) {
	for _, c := range []struct {
		match, sni, client, name string
		qtype                    uint16
		want                     string
	}{
		{`{"client":["10.0.0.0/8","::1"]}`, "", "10.1.2.3", "www.example.org.", dns.TypeA, routed},
		{`{"client":["10.0.0.0/8","::1"]}`, "", "::ffff:10.1.2.3", "www.example.org.", dns.TypeA, routed},
		{`{"client":["10.0.0.0/8","::1"]}`, "", "192.0.2.10", "www.example.org.", dns.TypeA, passed},
		{`{"name":["example.org"]}`, "", "192.0.2.10", "www.example.org.", dns.TypeA, routed},
		{`{"name":["Example.ORG."]}`, "", "192.0.2.10", "WWW.example.org.", dns.TypeA, routed},
		{`{"name":["www.example.org"]}`, "", "192.0.2.10", "www.example.org.", dns.TypeA, routed},
		{`{"name":["example.org"]}`, "", "192.0.2.10", "www.notexample.org.", dns.TypeA, passed},
		{`{"name":["example.org"]}`, "", "192.0.2.10", `www\.example.org.`, dns.TypeA, passed},   // the label "www.example" under org.
		{`{"name":["example.org"]}`, "", "192.0.2.10", `www.x\.example.org.`, dns.TypeA, passed}, // x.example is one label: not under example.org
		{`{"name":["."]}`, "", "192.0.2.10", "www.example.org.", dns.TypeA, routed},
		{`{"type":["A","TYPE28"]}`, "", "192.0.2.10", "www.example.org.", dns.TypeA, routed},
		{`{"type":["aaaa"]}`, "", "192.0.2.10", "www.example.org.", dns.TypeA, passed},
		{`{"server_name":["dns.example"],"type":["A"]}`, "dns.example", "192.0.2.10", "www.example.org.", dns.TypeA, routed},
		{`{"server_name":["dns.example"],"type":["A"]}`, "other.example", "192.0.2.10", "www.example.org.", dns.TypeA, passed},
		{`{"server_name":["dns.example"],"client":["10.0.0.0/8"]}`, "dns.example", "192.0.2.10", "www.example.org.", dns.TypeA, passed},
		// not: a block list's exceptions
		{`{"name":["example.org"],"not":[{"name":["ok.example.org"]}]}`, "", "192.0.2.10", "www.example.org.", dns.TypeA, routed},
		{`{"name":["example.org"],"not":[{"name":["ok.example.org"]}]}`, "", "192.0.2.10", "a.OK.example.org.", dns.TypeA, passed},
		{`{"name":["example.org"],"not":[{"name":["www.example.org"],"type":["AAAA"]}]}`, "", "192.0.2.10", "www.example.org.", dns.TypeA, routed}, // a set's matchers all must hold
		{`{"name":["example.org"],"not":[{"name":["www.example.org"],"type":["A"]}]}`, "", "192.0.2.10", "www.example.org.", dns.TypeA, passed},
		{`{"name":["example.org"],"not":[{"type":["AAAA"]},{"client":["192.0.2.0/24"]}]}`, "", "192.0.2.10", "www.example.org.", dns.TypeA, passed}, // any set leaves it
		{`{"name":["example.org"],"not":[{"type":["AAAA"]},{"client":["192.0.2.0/24"]}]}`, "", "198.51.100.1", "www.example.org.", dns.TypeA, routed},
		{`{"not":[{"client":["192.0.2.0/24"]}]}`, "", "192.0.2.10", "www.example.org.", dns.TypeA, passed},
		{`{"not":[{"client":["192.0.2.0/24"]}]}`, "", "198.51.100.1", "www.example.org.", dns.TypeA, routed},
	} {
		if got := ask(t, newRoute(t, c.match), c.sni, c.client, c.name, c.qtype); got != c.want {
			t.Errorf("%s: SNI %q from %s, %s %s: %s, want %s", c.match, c.sni, c.client, c.name, dns.TypeToString[c.qtype], got, c.want)
		}
	}
}

func TestBadConfig(t *testing.T) {
	handlertest.BadConfigs(t, func() caddy.Provisioner { return new(Route) }, map[string]string{
		`{"handle":[` + zoneHandler + `]}`:                                                         "route: no matcher: give server_name, client, name, name_file, name_regexp, type, path or not",
		`{"match":{"name":["example.org"],"not":[{}]},"handle":[` + zoneHandler + `]}`:             "route: match.not[0]: no matcher",
		`{"match":{"not":[{"type":["A"]},{"name":["a..b"]}]},"handle":[` + zoneHandler + `]}`:      `route: match.not[1].name[0]: "a..b" is not a domain name`,
		`{"match":{"not":[{"not":[{"type":["A"]}],"type":["A"]}]},"handle":[` + zoneHandler + `]}`: "route: match.not[0].not[0]: a not has no not of its own",
		`{"match":{"name":["example.org"]}}`:                                                       "route: no handlers",
		`{"match":{"client":["10.0.0.1/8"]},"handle":[` + zoneHandler + `]}`:                       `route: match.client[0]: "10.0.0.1/8" has bits set past its length`,
		`{"match":{"server_name":["a.*.example"]},"handle":[` + zoneHandler + `]}`:                 `route: match.server_name[0]: "a.*.example": a wildcard is one label, leftmost`,
		`{"match":{"server_name":["dns.example:853"]},"handle":[` + zoneHandler + `]}`:             `route: match.server_name[0]: "dns.example:853" is not a host name`,
		`{"match":{"server_name":[""]},"handle":[` + zoneHandler + `]}`:                            `route: match.server_name[0]: an empty name`,
		`{"match":{"name":["a..b"]},"handle":[` + zoneHandler + `]}`:                               `route: match.name[0]: "a..b" is not a domain name`,
		`{"match":{"type":["AAAB"]},"handle":[` + zoneHandler + `]}`:                               `route: match.type[0]: "AAAB" is not a record type`,
		`{"match":{"path":["dns-query/kids"]},"handle":[` + zoneHandler + `]}`:                     `route: match.path[0]: "dns-query/kids" is not a request path`,
		`{"match":{"type":["A"]},"handle":[{"handler":"nosuch"}]}`:                                 "route: loading its handlers",
	})
}

func TestCaddyfile(t *testing.T) {
	rt := new(Route)
	d := caddyfile.NewTestDispenser("route {\n\tserver_name family.dns.example *.kids.dns.example\n\tclient 10.0.0.0/8\n\tname example.org\n\ttype A AAAA\n\tpath /dns-query/kids\n\tzone example.org {\n\t\trecord \"www 60 IN A 192.0.2.99\"\n\t}\n}")
	if err := rt.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(rt)
	want := `{"match":{"server_name":["family.dns.example","*.kids.dns.example"],"client":["10.0.0.0/8"],"name":["example.org"],"type":["A","AAAA"],"path":["/dns-query/kids"]},` +
		`"handle":[{"handler":"zone","origin":"example.org","records":["www 60 IN A 192.0.2.99"]}]}`
	if string(got) != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	rt = new(Route)
	d = caddyfile.NewTestDispenser("route {\n\tname ads.example\n\tnot {\n\t\tname ok.ads.example\n\t\tclient 10.0.0.0/8\n\t}\n\tnot {\n\t\ttype AAAA\n\t}\n\tzone example.org\n}")
	if err := rt.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if got, _ := json.Marshal(rt.Match); string(got) != `{"name":["ads.example"],"not":[{"client":["10.0.0.0/8"],"name":["ok.ads.example"]},{"type":["AAAA"]}]}` {
		t.Errorf("not: %s", got)
	}
	for in, msg := range map[string]string{
		"route {\n\tnot {\n\t\tnot {\n\t\t\tname a.example\n\t\t}\n\t}\n}": "a not block has no not of its own, at Testfile:3",
		"route {\n\tnot {\n\t\tzone example.org\n\t}\n}":                   "unrecognized matcher 'zone' in not (server_name, client, name, name_file, name_regexp, type, path), at Testfile:3",
		"route {\n\tnot x {\n\t\tname a.example\n\t}\n}":                   "wrong argument count",
		"route {\n\tserver_name\n}":                                        "server_name takes one or more values, at Testfile:2",
		"route {\n\tclient 10.1.0.0/8\n}":                                  "client: \"10.1.0.0/8\" has bits set past its length",
		"route {\n\tsni dns.example\n}":                                    "unrecognized subdirective 'sni' (not a route matcher nor a dns handler), at Testfile:2",
		"route x y {\n\tname example.org\n}":                               "wrong argument count",
	} {
		err := new(Route).UnmarshalCaddyfile(caddyfile.NewTestDispenser(in))
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q: %v, want %q", in, err, msg)
		}
	}
}

// BenchmarkPass is the cost of a route to a query it does not take: it
// allocates nothing.
func BenchmarkPass(b *testing.B) {
	rt := newRoute(b, `{"server_name":["family.dns.example","*.kids.dns.example"],"type":["A"]}`)
	q := new(dns.Msg)
	q.SetQuestion("www.example.org.", dns.TypeA)
	r := &caddydns.Request{Msg: q, ServerName: "dns.example", Client: netip.MustParseAddrPort("192.0.2.1:5300")}
	next := func(context.Context, *caddydns.Request) (caddydns.Response, error) { return caddydns.Response{}, nil }
	b.ReportAllocs()
	for b.Loop() {
		_, _ = rt.ServeDNS(context.Background(), r, next)
	}
}

// BenchmarkNameList is the name matcher over a block list of 100,000
// names: a map lookup a label of the query's name, no allocation for a
// name in lower case.
func BenchmarkNameList(b *testing.B) {
	names := make([]string, 100000)
	for i := range names {
		names[i] = fmt.Sprintf(`"blocked%d.example"`, i)
	}
	rt := newRoute(b, `{"name":[`+strings.Join(names, ",")+`]}`)
	q := new(dns.Msg)
	q.SetQuestion("www.ads.blocked99999.example.", dns.TypeA)
	r := &caddydns.Request{Msg: q, Client: netip.MustParseAddrPort("192.0.2.1:5300")}
	if !rt.holds(r) {
		b.Fatal("no match")
	}
	q.SetQuestion("www.example.org.", dns.TypeA)
	b.ReportAllocs()
	for b.Loop() {
		if rt.holds(r) {
			b.Fatal("a match")
		}
	}
}

// FuzzName: the name matcher, which reads a client's query name, agrees
// with dns.IsSubDomain on every name miekg/dns would decode, escapes
// included, and never panics on any string.
func FuzzName(f *testing.F) {
	for _, s := range []string{"www.example.org.", `a\.example.org.`, `a\\.example.org.`, `x\046example.org.`, "EXAMPLE.ORG.", ".", `\`, "org."} {
		f.Add(s)
	}
	set := []string{"example.org.", `b\.c.example.net.`, "x.test."}
	quoted := make([]string, len(set))
	for i, n := range set {
		b, _ := json.Marshal(n)
		quoted[i] = string(b)
	}
	rt := newRoute(f, `{"name":[`+strings.Join(quoted, ",")+`]}`)
	f.Fuzz(func(t *testing.T, name string) {
		got := rt.holdsName(name)
		if _, ok := dns.IsDomainName(name); !ok || !dns.IsFqdn(name) || strings.Contains(name, `\0`) || strings.ContainsAny(name, "0123456789") && strings.Contains(name, `\`) {
			return // decimal escapes (\046 is a dot) are compared as written
		}
		want := false
		for _, n := range set {
			want = want || dns.IsSubDomain(n, dns.CanonicalName(name))
		}
		if got != want {
			t.Fatalf("holdsName(%q) = %v, dns.IsSubDomain says %v", name, got, want)
		}
	})
}

// TestNameFile: a route's names from files (a name a line, hosts lines,
// ||name^, comments, CRLF) hold as inline names do, in a not too; a
// changed file is read again, and a broken one leaves the names before.
func TestNameFile(t *testing.T) {
	dir := t.TempDir()
	block := filepath.Join(dir, "block.txt")
	allow := filepath.Join(dir, "allow.txt")
	write := func(path, text string) {
		t.Helper()
		tmp := path + ".new"
		if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil { // as a list updater replaces it
			t.Fatal(err)
		}
	}
	write(block, "# a block list\r\n! an adblock comment\r\n\r\nPlain.Example\r\n0.0.0.0 ads.example tracker.example # two names\n127.0.0.1 localhost\n::1 ip6-localhost ip6-loopback\nfe80::1%lo0 localhost\n255.255.255.255 broadcasthost\n0.0.0.0 0.0.0.0\n||adblock.example^\n*.wild.example\n")
	write(allow, "ok.ads.example\n")
	rt := new(Route)
	core, logs := observer.New(zap.InfoLevel)
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	handlertest.Provision(t, rt, `{"match":{"name":["inline.example"],"name_file":["`+block+`"],"not":[{"name_file":["`+allow+`"]}]},"name_file_poll":"1h","handle":[`+zoneHandler+`]}`)
	holds := func(name string) bool {
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		return rt.holds(&caddydns.Request{Msg: q, Client: netip.MustParseAddrPort("192.0.2.1:5300")})
	}
	for name, want := range map[string]bool{
		"plain.example.": true, "www.PLAIN.example.": true, "ads.example.": true, "x.tracker.example.": true,
		"adblock.example.": true, "wild.example.": true, "a.wild.example.": true, "inline.example.": true,
		"localhost.": false, "ip6-loopback.": false, "broadcasthost.": false, "ok.ads.example.": false, "www.ok.ads.example.": false, "other.example.": false,
		"0.0.0.0.": false, "example.": false,
	} {
		if got := holds(name); got != want {
			t.Errorf("%s: held %v, want %v", name, got, want)
		}
	}
	// the watcher, with a logger to wait on: a changed file is read again
	lists := []*nameFiles{{x: &rt.matcher, inline: []string{"inline.example."}, files: []string{block}, field: "match", stamps: []fileStamp{stampOf(block)}}}
	go watch(ctx, lists, 10*time.Millisecond, zap.New(core))
	waitLog := func(msg string, n int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for logs.FilterMessage(msg).Len() < n {
			if time.Now().After(deadline) {
				t.Fatalf("no %q logged: %v", msg, logs.All())
			}
			time.Sleep(5 * time.Millisecond) // polling the log, the watcher's signal
		}
	}
	write(block, "new.example\n")
	waitLog("name files read again", 1)
	if !holds("new.example.") {
		t.Errorf("a name added to the file: held false")
	}
	if holds("ads.example.") {
		t.Errorf("a name taken out of the file: held true")
	}
	if !holds("inline.example.") {
		t.Errorf("the inline name after the file changed: held false")
	}
	write(block, "new.example\nnot a name\n")
	waitLog("name files not read again: the names read before stay", 1)
	if e := logs.FilterMessage("name files not read again: the names read before stay").All()[0]; !strings.Contains(fmt.Sprint(e.ContextMap()["error"]), block+`:2: "not a name"`) {
		t.Errorf("the error: %v", e.ContextMap())
	}
	if !holds("new.example.") {
		t.Errorf("after a broken file, the names before: held false")
	}
	write(block, "fixed.example\n")
	waitLog("name files read again", 2)
	if !holds("fixed.example.") {
		t.Errorf("after the file was mended: held false")
	}
}

// TestNameFileErrors: a line a name file cannot have is an error naming
// the file and the line.
func TestNameFileErrors(t *testing.T) {
	dir := t.TempDir()
	for i, c := range []struct{ text, want string }{
		{"ok.example\nads.example tracker.example\n", `:2: "ads.example tracker.example": not a name, a hosts line (an address, then names) or ||name^`},
		{"||ads.example^$important\n", `:1: "||ads.example^$important": an adblock rule other than ||name^`},
		{"0.0.0.0\n", `:1: "0.0.0.0": an address and no name`},
		{"a..b\n", `:1: "a..b" is not a domain name`},
		{"@@||ok.example^\n", `:1: "@@||ok.example^" is not a domain name`},
		{"/ads[0-9]+/\n", `:1: "/ads[0-9]+/" is not a domain name`},
		// an element-hiding rule names no name to block
		{"! comment\nexample.com##.banner\n", `:2: "example.com##.banner" is not a domain name`},
		{strings.Repeat("a", 70000) + "\n", "a line over 65536 octets"},
	} {
		path := filepath.Join(dir, fmt.Sprintf("list%d.txt", i))
		if err := os.WriteFile(path, []byte(c.text), 0o644); err != nil {
			t.Fatal(err)
		}
		err := new(Route).matcher.compile(&Match{NameFile: []string{path}}, "match", new([]*nameFiles))
		if err == nil || !strings.Contains(err.Error(), "route: match.name_file[0]: "+path) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%.40q: %v, want %q", c.text, err, c.want)
		}
	}
	handlertest.BadConfigs(t, func() caddy.Provisioner { return new(Route) }, map[string]string{
		`{"match":{"name_file":["` + filepath.Join(dir, "none.txt") + `"]},"handle":[` + zoneHandler + `]}`:     "route: match.name_file[0]: open " + filepath.Join(dir, "none.txt") + ": no such file or directory",
		`{"match":{"name":["a.example"]},"name_file_poll":"-1s","handle":[` + zoneHandler + `]}`:                "route: name_file_poll -1s: want a positive duration",
		`{"match":{"type":["A"],"not":[{"name_file":["` + filepath.Join(dir, "none.txt") + `"]}]},"handle":[]}`: "route: match.not[0].name_file[0]: open",
	})
}

// BenchmarkNameFile reads a block list of 100,000 hosts lines: the time
// a read takes, and the memory a name takes (the Go heap after a
// collection, per name).
func BenchmarkNameFile(b *testing.B) {
	var sb strings.Builder
	for i := range 100_000 {
		fmt.Fprintf(&sb, "0.0.0.0 ads%d.tracker-example.com\n", i)
	}
	path := filepath.Join(b.TempDir(), "hosts")
	if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	var before, after runtime.MemStats
	for b.Loop() {
		runtime.GC()
		runtime.ReadMemStats(&before)
		set := make(nameSetOf)
		if err := readNameFile(set, path); err != nil || len(set) != 100_000 {
			b.Fatal(err, len(set))
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(len(set)), "B/name")
		runtime.KeepAlive(set)
	}
}

// FuzzNameFile: any file is read or refused with an error naming its
// line, never a panic; what is read is canonical names only.
func FuzzNameFile(f *testing.F) {
	f.Add("# c\n0.0.0.0 ads.example tracker.example\r\nplain.example\n||a.example^\n*.w.example\n127.0.0.1 localhost\n")
	f.Add("a b\n")
	f.Add("||x^$y\n::1\n")
	f.Fuzz(func(t *testing.T, text string) {
		set := make(nameSetOf)
		err := readNames(set, strings.NewReader(text), "list")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "list:") {
				t.Fatalf("an error not naming the file: %v", err)
			}
			return
		}
		for name := range set {
			if _, ok := dns.IsDomainName(name); !ok || name != dns.CanonicalName(name) {
				t.Fatalf("%q read as a name", name)
			}
		}
	})
}

// TestRouteMetrics: a route counts the queries it takes, by server, under
// its name or, unnamed, its matchers; the Caddyfile names it by its
// argument.
func TestRouteMetrics(t *testing.T) {
	named := new(Route)
	handlertest.Provision(t, named, `{"name":"kids","match":{"name":["example.org"]},"handle":[`+zoneHandler+`]}`)
	unnamed := newRoute(t, `{"server_name":["family.dns.example"],"type":["A","AAAA"],"not":[{"client":["10.0.0.0/8"]}]}`)
	if got, want := unnamed.taken.label, "server_name family.dns.example; type A AAAA; not (client 10.0.0.0/8)"; got != want {
		t.Errorf("default label %q, want %q", got, want)
	}
	kids := routeQueries.WithLabelValues("test", "kids")
	before := handlertest.MetricValue(kids)
	for _, name := range []string{"www.example.org.", "example.org.", "www.example.com."} {
		ask(t, named, "", "192.0.2.1", name, dns.TypeA)
	}
	if got := handlertest.MetricValue(kids) - before; got != 2 {
		t.Errorf("the route took 2 queries of 3, counted %v", got)
	}
	rt := new(Route)
	if err := rt.UnmarshalCaddyfile(caddyfile.NewTestDispenser("route kids {\n\tname example.org\n\tzone example.org\n}")); err != nil || rt.Name != "kids" {
		t.Errorf("route kids {...}: %v, name %q", err, rt.Name)
	}
	long := (&Match{Name: []string{strings.Repeat("a", 60) + ".example", strings.Repeat("b", 60) + ".example"}}).label()
	if len(long) != maxLabel || !strings.HasSuffix(long, "...") {
		t.Errorf("a long label: %d octets, %q", len(long), long)
	}
}

// TestNameRegexp: a regular expression matches the whole name, in lower
// case and without its final dot (dnsdist's RE2Rule test: the name
// itself, not a name under it); several are alternatives; it works in a
// not; the Caddyfile keeps its backslashes; a bad one is an error.
func TestNameRegexp(t *testing.T) {
	rt := new(Route)
	d := caddyfile.NewTestDispenser("route {\n\tname_regexp re2\\.tests\\.powerdns\\.com ads[0-9]+\\..*\n\tnot {\n\t\tname_regexp ads7\\..*\n\t}\n\tzone example.org\n}")
	if err := rt.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if want := []string{`re2\.tests\.powerdns\.com`, `ads[0-9]+\..*`}; !slices.Equal(rt.Match.NameRegexp, want) || len(rt.Match.Not) != 1 {
		t.Fatalf("Caddyfile: %q, not %v; want %q", rt.Match.NameRegexp, rt.Match.Not, want)
	}
	b, _ := json.Marshal(rt.Match)
	x := newRoute(t, string(b))
	holds := func(name string) bool {
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		return x.holds(&caddydns.Request{Msg: q, Client: netip.MustParseAddrPort("192.0.2.1:5300")})
	}
	for name, want := range map[string]bool{
		"re2.tests.powerdns.com.": true, "RE2.Tests.PowerDNS.com.": true, "sub.re2.tests.powerdns.com.": false,
		"re2xtests.powerdns.com.": false, "ads12.example.": true, "ads.example.": false, "ads7.example.": false,
	} {
		if got := holds(name); got != want {
			t.Errorf("%s: held %v, want %v", name, got, want)
		}
	}
	handlertest.BadConfigs(t, func() caddy.Provisioner { return new(Route) }, map[string]string{
		`{"match":{"name_regexp":["ads("]},"handle":[` + zoneHandler + `]}`:  `route: match.name_regexp[0]: "ads(": error parsing regexp: missing closing ): ` + "`ads(`",
		`{"match":{"name_regexp":["a)|(b"]},"handle":[` + zoneHandler + `]}`: `route: match.name_regexp[0]: "a)|(b": error parsing regexp: unexpected )`,
	})
}

// BenchmarkNameRegexp is a route with one regular expression, for a name
// it does not match.
func BenchmarkNameRegexp(b *testing.B) {
	rt := newRoute(b, `{"name_regexp":["ads[0-9]+\\..*\\.example"]}`)
	q := new(dns.Msg)
	q.SetQuestion("www.tracker.example.org.", dns.TypeA)
	r := &caddydns.Request{Msg: q, Client: netip.MustParseAddrPort("192.0.2.1:5300")}
	b.ReportAllocs()
	for b.Loop() {
		if rt.holds(r) {
			b.Fatal("a match")
		}
	}
}

// TestHostsHousekeeping: a hosts file's names for the machine itself
// (localhost, ip6-loopback, broadcasthost) are skipped on hosts lines,
// and kept when a plain list names them.
func TestHostsHousekeeping(t *testing.T) {
	set := make(nameSetOf)
	if err := readNames(set, strings.NewReader("127.0.0.1 localhost ads.example\n::1 ip6-loopback\nbroadcasthost\n"), "list"); err != nil {
		t.Fatal(err)
	}
	if _, ok := set["localhost."]; ok || len(set) != 2 {
		t.Errorf("read %v, want ads.example. and broadcasthost. (named alone)", set)
	}
	if _, ok := set["broadcasthost."]; !ok {
		t.Errorf("a plain line's broadcasthost was skipped: %v", set)
	}
}
