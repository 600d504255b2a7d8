// Package route is `dns.handlers.route`: handlers of their own for the
// queries its matchers hold: by the TLS server name the client asked for
// (SNI), the client's address, the query's name or type, the DoH path. Like a route
// in Caddy's HTTP app or caddy-l4's subroute, its handlers come first
// for those queries, and the chain's handlers after the route still
// answer what they pass on.
package route

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/internal/netprefix"
	"github.com/dnsfront/dnsfront/internal/promreg"
)

func init() {
	caddy.RegisterModule(Route{})
}

// Route runs its handlers for the queries that Match holds; any other
// query goes on down the chain as if the route were not there. Its
// handlers' next is the chain's handler after the route: a zone in the
// route that has no answer for a name passes it on to the chain's
// forward, and a route that ends in a forward answers all it takes.
type Route struct {
	// Name labels the route in metrics (dnsfront_route_queries_total).
	// Default: its matchers, as "server_name kids.example; type A".
	Name string `json:"name,omitempty"`
	// Match is what a query must have for the route to take it.
	Match Match `json:"match"`
	// HandlersRaw are the route's DNS handlers, in order.
	HandlersRaw []json.RawMessage `json:"handle,omitempty" caddy:"namespace=dns.handlers inline_key=handler"`

	// NameFilePoll is how often the name files of the route's matchers
	// are checked for changes, and read again when they have changed.
	// Default: 1m.
	NameFilePoll caddy.Duration `json:"name_file_poll,omitempty"`

	handlers []caddydns.Handler
	matcher
	taken *routeCounters
}

// matcher is a Match compiled; not is its Not's, or nil.
type matcher struct {
	sni     nameSet
	clients netprefix.List
	// names are Name's and NameFile's, canonical: lower case, fully
	// qualified ("." holds all); swapped whole when a name file changes
	// (nil: no name matcher)
	names *atomic.Pointer[nameSetOf]
	// regexps are NameRegexp's, anchored at both ends
	regexps []*regexp.Regexp
	types   []uint16
	paths   []string
	not     []*matcher
}

// Match holds a query when each of its fields that is set holds it: any
// one of the field's values (a route for two names takes both).
type Match struct {
	// ServerName is the TLS server names (SNI) the client's connection
	// asked for: a name, or a wildcard of one label (*.dns.example).
	// Clients that route by it (tenants, filtering profiles) connect to
	// the name; the server needs a certificate for it.
	ServerName []string `json:"server_name,omitempty"`
	// Client is the client's address: prefixes or addresses (the real
	// client's: PROXY protocol on DoT, trusted proxies on DoH).
	Client []string `json:"client,omitempty"`
	// Name is the query's name or a name above it (example.org holds
	// www.example.org), in any letter case.
	Name []string `json:"name,omitempty"`
	// NameFile is files of names that hold as Name's do (block lists):
	// a name a line, a hosts file's lines (an address, then names), or
	// ||name^; # starts a comment. They are read at each config load,
	// and again when they change (Route.NameFilePoll); a file that fails
	// to read then leaves the names read before.
	NameFile []string `json:"name_file,omitempty"`
	// NameRegexp is regular expressions (Go's RE2 syntax) of which one
	// must match the query's whole name, in lower case and without its
	// final dot (dnsdist's RE2Rule): "ads[0-9]*\\.example\\.com".
	NameRegexp []string `json:"name_regexp,omitempty"`
	// Type is the query's type: a mnemonic (AAAA), TYPEnnn or a number.
	Type []string `json:"type,omitempty"`
	// Path is the HTTP path a DoH query came by, exactly (per-client
	// URLs: the dedicated DoH server's sub_paths, or a Caddy site's
	// routes). A DoT query has none.
	Path []string `json:"path,omitempty"`
	// Not are matcher sets the route does not take a query of: a query
	// any of them holds (all of its fields hold it) is left to the chain
	// (a block list's exceptions), as Caddy's not matcher. They have no
	// Not of their own.
	Not []Match `json:"not,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Route) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "dns.handlers.route", New: func() caddy.Module { return new(Route) }}
}

// Provision reads the matchers and loads the handlers.
func (rt *Route) Provision(ctx caddy.Context) error {
	if rt.Match.empty() {
		return fmt.Errorf("route: no matcher: give server_name, client, name, name_file, name_regexp, type, path or not (a route that takes every query is the handlers themselves)")
	}
	var lists []*nameFiles
	if err := rt.matcher.compile(&rt.Match, "match", &lists); err != nil {
		return err
	}
	poll := time.Duration(rt.NameFilePoll)
	switch {
	case poll < 0:
		return fmt.Errorf("route: name_file_poll %v: want a positive duration", poll)
	case poll == 0:
		poll = DefaultNameFilePoll
	}
	if len(rt.HandlersRaw) == 0 {
		return fmt.Errorf("route: no handlers: a route runs handlers (zone, forward, ...) for the queries it matches")
	}
	mods, err := ctx.LoadModule(rt, "HandlersRaw")
	if err != nil {
		return fmt.Errorf("route: loading its handlers: %w", err)
	}
	for _, mod := range mods.([]any) {
		rt.handlers = append(rt.handlers, mod.(caddydns.Handler))
	}
	label := rt.Name
	if label == "" {
		label = rt.Match.label()
	}
	rt.taken = &routeCounters{label: label}
	if err := promreg.Register(ctx.GetMetricsRegistry(), routeQueries); err != nil {
		return err
	}
	if len(lists) > 0 {
		go watch(ctx, lists, poll, ctx.Logger())
	}
	return nil
}

func (m *Match) empty() bool {
	return len(m.ServerName)+len(m.Client)+len(m.Name)+len(m.NameFile)+len(m.NameRegexp)+len(m.Type)+len(m.Path)+len(m.Not) == 0
}

// compile reads m's matchers into x, and the name files' names; field
// names errors (match, or match.not). A matcher with name files is
// added to lists, to be watched.
func (x *matcher) compile(m *Match, field string, lists *[]*nameFiles) error {
	for i, p := range m.Path {
		if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, "?# ") {
			return fmt.Errorf("route: %s.path[%d]: %q is not a request path (it starts with / and has no ?, # or space)", field, i, p)
		}
	}
	x.paths = m.Path
	for i, n := range m.ServerName {
		if err := x.sni.add(n); err != nil {
			return fmt.Errorf("route: %s.server_name[%d]: %v", field, i, err)
		}
	}
	var err error
	if x.clients, err = netprefix.ParseList("route: "+field+".client", m.Client); err != nil {
		return err
	}
	inline := make([]string, 0, len(m.Name))
	for i, n := range m.Name {
		if _, ok := dns.IsDomainName(n); !ok || n == "" {
			return fmt.Errorf("route: %s.name[%d]: %q is not a domain name", field, i, n)
		}
		inline = append(inline, dns.CanonicalName(n))
	}
	if len(m.Name)+len(m.NameFile) > 0 {
		x.names = new(atomic.Pointer[nameSetOf])
		files := &nameFiles{x: x, inline: inline, files: m.NameFile, field: field}
		if _, err := files.load(); err != nil {
			return err
		}
		if len(m.NameFile) > 0 {
			*lists = append(*lists, files)
		}
	}
	for i, p := range m.NameRegexp {
		// checked alone first: the error then names only what was given,
		// and a pattern that closes the anchoring group (a)|(b) fails
		if _, err := regexp.Compile(p); err != nil {
			return fmt.Errorf("route: %s.name_regexp[%d]: %q: %v", field, i, p, err)
		}
		x.regexps = append(x.regexps, regexp.MustCompile(`^(?:`+p+`)$`))
	}
	for i, t := range m.Type {
		qtype, ok := caddydns.ParseType(t)
		if !ok {
			return fmt.Errorf("route: %s.type[%d]: %q is not a record type (AAAA, TYPE65 or 65)", field, i, t)
		}
		x.types = append(x.types, qtype)
	}
	for i := range m.Not {
		f := fmt.Sprintf("%s.not[%d]", field, i)
		switch {
		case field != "match":
			return fmt.Errorf("route: %s: a not has no not of its own", f)
		case m.Not[i].empty():
			return fmt.Errorf("route: %s: no matcher: give server_name, client, name, name_file, name_regexp, type or path", f)
		}
		n := new(matcher)
		if err := n.compile(&m.Not[i], f, lists); err != nil {
			return err
		}
		x.not = append(x.not, n)
	}
	return nil
}

// ServeDNS runs the route's handlers for a query it matches, then the
// chain's; any other query goes straight on.
func (rt *Route) ServeDNS(ctx context.Context, r *caddydns.Request, next caddydns.Next) (caddydns.Response, error) {
	if !rt.holds(r) {
		return next(ctx, r)
	}
	rt.taken.of(r.Server).Inc()
	for i := len(rt.handlers) - 1; i >= 0; i-- {
		h, after := rt.handlers[i], next
		next = func(ctx context.Context, r *caddydns.Request) (caddydns.Response, error) {
			return h.ServeDNS(ctx, r, after)
		}
	}
	return next(ctx, r)
}

// holds reports whether every matcher that is set holds r, and none of
// its not sets does.
func (x *matcher) holds(r *caddydns.Request) bool {
	if !x.sni.empty() && !x.sni.holds(r.ServerName) {
		return false
	}
	if len(x.clients) > 0 && !x.clients.Contains(r.Client.Addr()) {
		return false
	}
	if len(x.paths) > 0 && !slices.Contains(x.paths, r.Path) {
		return false
	}
	q := r.Msg.Question[0]
	if len(x.types) > 0 && !containsType(x.types, q.Qtype) {
		return false
	}
	if x.names != nil && !x.holdsName(q.Name) {
		return false
	}
	if len(x.regexps) > 0 && !x.matchesName(q.Name) {
		return false
	}
	for _, n := range x.not {
		if n.holds(r) {
			return false
		}
	}
	return true
}

// holdsName reports whether name (fully qualified, any case) or a name
// above it is one of the route's: one map lookup a label, however many
// names the route has (a block list).
func (x *matcher) holdsName(name string) bool {
	names := *x.names.Load()
	if _, ok := names["."]; ok {
		return true
	}
	name = strings.ToLower(name) // no copy when it is lower case already
	for i := 0; i < len(name); {
		if _, ok := names[name[i:]]; ok {
			return true
		}
		// on past the next label's end: a dot no backslash escapes
		for ; i < len(name) && name[i] != '.'; i++ {
			if name[i] == '\\' {
				i++
			}
		}
		i++
	}
	return false
}

// matchesName reports whether one of the route's regular expressions
// matches name (fully qualified, any case) whole, in lower case and
// without its final dot.
func (x *matcher) matchesName(name string) bool {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	for _, rx := range x.regexps {
		if rx.MatchString(name) {
			return true
		}
	}
	return false
}

func containsType(types []uint16, t uint16) bool {
	for _, x := range types {
		if x == t {
			return true
		}
	}
	return false
}

// nameSet is a set of TLS server names: exact, and wildcards of one
// label.
type nameSet struct {
	exact     []string // lower case
	wildcards []string // ".dns.example" for *.dns.example
}

func (s *nameSet) add(n string) error {
	n = strings.ToLower(strings.TrimSuffix(n, "."))
	base := strings.TrimPrefix(n, "*.")
	switch {
	case n == "":
		return fmt.Errorf("an empty name")
	case strings.Contains(base, "*"):
		return fmt.Errorf("%q: a wildcard is one label, leftmost (*.dns.example)", n)
	case strings.ContainsAny(n, " /:\\"):
		return fmt.Errorf("%q is not a host name", n)
	}
	if _, ok := dns.IsDomainName(base); !ok {
		return fmt.Errorf("%q is not a host name", n)
	}
	if base != n {
		s.wildcards = append(s.wildcards, "."+base)
	} else {
		s.exact = append(s.exact, n)
	}
	return nil
}

func (s *nameSet) empty() bool { return len(s.exact)+len(s.wildcards) == 0 }

// holds reports whether sni is in the set, in any letter case.
func (s *nameSet) holds(sni string) bool {
	if sni == "" {
		return false
	}
	sni = strings.TrimSuffix(sni, ".")
	for _, n := range s.exact {
		if strings.EqualFold(sni, n) {
			return true
		}
	}
	for _, w := range s.wildcards {
		// one label before the suffix
		if len(sni) > len(w) && strings.EqualFold(sni[len(sni)-len(w):], w) && !strings.Contains(sni[:len(sni)-len(w)], ".") {
			return true
		}
	}
	return false
}

// Interface guards.
var (
	_ caddy.Provisioner = (*Route)(nil)
	_ caddydns.Handler  = (*Route)(nil)
)

var routeQueries = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "dnsfront",
	Name:      "route_queries_total",
	Help:      "Queries a route took (its matchers held them), by server and route (its name, or its matchers): a block list's blocked queries.",
}, []string{"server", "route"})

// routeCounters are a route's counters, one a server, bound to their
// labels as servers first use them: a query costs a map read.
type routeCounters struct {
	label string
	by    sync.Map // server -> prometheus.Counter
}

func (c *routeCounters) of(server string) prometheus.Counter {
	if v, ok := c.by.Load(server); ok {
		return v.(prometheus.Counter)
	}
	v, _ := c.by.LoadOrStore(server, routeQueries.WithLabelValues(server, c.label))
	return v.(prometheus.Counter)
}

// maxLabel bounds a route's default label.
const maxLabel = 120

// label describes m's matchers for a metric: "server_name a b; type A;
// not (name c)", cut at maxLabel.
func (m *Match) label() string {
	var parts []string
	add := func(field string, vals []string) {
		if len(vals) > 0 {
			parts = append(parts, field+" "+strings.Join(vals, " "))
		}
	}
	add("server_name", m.ServerName)
	add("client", m.Client)
	add("name", m.Name)
	add("name_file", m.NameFile)
	add("name_regexp", m.NameRegexp)
	add("type", m.Type)
	add("path", m.Path)
	for i := range m.Not {
		parts = append(parts, "not ("+m.Not[i].label()+")")
	}
	l := strings.Join(parts, "; ")
	if len(l) > maxLabel {
		l = l[:maxLabel-3] + "..."
	}
	return l
}
