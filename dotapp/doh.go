package dotapp

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/dohhandler"
	"github.com/dnsfront/dnsfront/internal/netprefix"
)

func init() {
	caddy.RegisterModule(DoHApp{})
}

// DefaultDoHPath is where a dedicated DoH server answers by default
// (RFC 8484's example, and what clients assume).
const DefaultDoHPath = "/dns-query"

// DoHApp is the `doh` app: dedicated DNS over HTTPS servers, for DoH
// endpoints with an address or port of their own. They are DoT's servers
// with another connection protocol: the same listeners (SO_REUSEPORT,
// listener wrappers), TLS (the tls app's connection policies, the ocsp
// app's staples), limits, reload hand-over and handler chain. HTTP/2
// (ALPN h2) is served by a connection loop of its own on x/net's Framer
// and HPACK; HTTP/1.1 (ALPN http/1.1, or none) by net/http on the same
// listener. Requests are answered by dohhandler's Endpoint, as
// `http.handlers.doh` answers them inside a Caddy site.
type DoHApp struct {
	// Servers by name (the name labels metrics and logs).
	Servers map[string]*DoHServer `json:"servers,omitempty"`

	servers map[string]*Server
	logger  *zap.Logger
}

// DoHServer is one dedicated DNS over HTTPS server: a Server (listen
// defaults to port 443, ALPN to h2 and http/1.1) and where it answers.
type DoHServer struct {
	Server
	// Path is the request path DoH is answered on; any other gets 404.
	// Default: /dns-query.
	Path string `json:"path,omitempty"`
	// DisableJSON turns the JSON API (?name=&type=) off.
	DisableJSON bool `json:"disable_json,omitempty"`
	// SubPaths answers DoH on the paths under Path too (Path/kids,
	// Path/tenant-42: per-client URLs, which a route's path matcher
	// tells apart; dnsdist's exactPathMatching=false).
	SubPaths bool `json:"sub_paths,omitempty"`
	// Headers are response header fields added to every response (DoH
	// answers, errors and Responses), by name: CORS headers for
	// browsers, Strict-Transport-Security, ... (dnsdist's
	// customResponseHeaders). Names are sent in lower case. The fields
	// the server sets itself (Content-Type, Content-Length,
	// Cache-Control, Allow) and connection-specific ones are refused.
	Headers map[string]string `json:"headers,omitempty"`
	// Responses are fixed responses on paths of their own: a health
	// check for a load balancer, a landing page, a redirect (dnsdist's
	// responses map).
	Responses []DoHResponse `json:"responses,omitempty"`
	// DisableCacheControl leaves Cache-Control out of the answers (for a
	// server behind an HTTP cache or CDN that should not keep them;
	// dnsdist's sendCacheControlHeaders=false).
	DisableCacheControl bool `json:"disable_cache_control,omitempty"`
	// TrustedProxies are the peers (IP addresses or prefixes, or
	// "private_ranges") whose X-Forwarded-For is believed: a request
	// from one of them is the client's that the field names, right to
	// left past the trusted proxies, for the DNS handlers (acl,
	// ratelimit, ecs, the query log). Another peer's X-Forwarded-For is
	// ignored. The connection limits stay the connection's.
	TrustedProxies []string `json:"trusted_proxies,omitempty"`
	// Cleartext serves DoH without TLS, for a server behind a proxy or
	// load balancer that terminates TLS: HTTP/2 with prior knowledge
	// (RFC 9113 3.3, the client preface first) and HTTP/1.1 on the same
	// plain TCP listener (dnsdist's DoH frontend without a certificate).
	// Queries and answers cross the network unencrypted, so the proxy
	// should reach it over loopback or a private network; with
	// trusted_proxies, the proxy's X-Forwarded-For names the client. It
	// takes no TLS connection policies or server names. Listen defaults
	// to port 80.
	Cleartext bool `json:"cleartext,omitempty"`
}

// DoHResponse is a fixed response to every request for one path.
type DoHResponse struct {
	// Path is the request path, matched exactly (the query aside).
	Path string `json:"path"`
	// Status is the HTTP status, 200 to 599.
	Status int `json:"status"`
	// Body is the response's body; its Content-Type is text/plain unless
	// Headers sets one.
	Body string `json:"body,omitempty"`
	// Headers are fields of this response, on top of the server's (a
	// field of the same name replaces the server's): Location for a
	// redirect, Content-Type.
	Headers map[string]string `json:"headers,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (DoHApp) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "doh", New: func() caddy.Module { return new(DoHApp) }}
}

// Provision sets up each server.
func (a *DoHApp) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	a.servers = make(map[string]*Server, len(a.Servers))
	for name, ds := range a.Servers {
		path := ds.Path
		if path == "" {
			path = DefaultDoHPath
		}
		if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, "?#") {
			return fmt.Errorf("server %s: path %q is not a request path (it starts with / and has no ? or #)", name, ds.Path)
		}
		side := &dohSide{path: path, subPaths: ds.SubPaths, disableJSON: ds.DisableJSON, noCacheControl: ds.DisableCacheControl,
			cleartext: ds.Cleartext}
		if err := side.setResponses(ds); err != nil {
			return fmt.Errorf("server %s: %w", name, err)
		}
		if err := side.setTrusted(ds.TrustedProxies); err != nil {
			return fmt.Errorf("server %s: %w", name, err)
		}
		ds.Server.doh = side
		a.servers[name] = &ds.Server
	}
	return provisionServers(ctx, a.servers, a.logger)
}

// Validate checks that no two servers listen on the same address.
func (a *DoHApp) Validate() error { return validateServers(a.servers) }

// Start opens every server's listeners.
func (a *DoHApp) Start() error { return startServers(a.servers) }

// Stop closes the listeners. Open connections are handed to the server
// that replaces this one on the same address (a reload) or drained: a
// draining HTTP/2 connection gets a GOAWAY, and its streams in flight
// are answered.
func (a *DoHApp) Stop() error {
	stopServers(a.servers)
	return nil
}

// Cleanup releases what the servers hold beyond the config (see
// App.Cleanup).
func (a *DoHApp) Cleanup() error {
	cleanupServers(a.servers)
	return nil
}

// dohSide is what a DoH server has beyond a DoT server's parts.
type dohSide struct {
	path           string
	subPaths       bool
	disableJSON    bool
	endpoint       *dohhandler.Endpoint
	headers        []dohhandler.Field           // added to every response
	responses      map[string]*dohhandler.Reply // by path
	noCacheControl bool
	trusted        netprefix.List // whose X-Forwarded-For is believed
	cleartext      bool           // no TLS: h2 with prior knowledge, or HTTP/1.1

	// HTTP/1.1: net/http, fed the connections that did not choose h2
	h1     *http.Server
	h1ln   *connListener
	h1once sync.Once
}

func (d *dohSide) provision(ctx caddy.Context, s *Server) {
	d.endpoint = dohhandler.NewEndpoint(ctx, &s.Chain, s.name, d.disableJSON)
	d.h1ln = &connListener{conns: make(chan net.Conn), done: make(chan struct{})}
	d.h1 = &http.Server{
		Handler:           h1Handler{},
		ReadHeaderTimeout: s.set.read,
		ReadTimeout:       s.set.read,
		WriteTimeout:      s.set.write,
		IdleTimeout:       s.set.idle,
		MaxHeaderBytes:    h2HeaderListSize,
		ErrorLog:          zap.NewStdLog(s.logger.Named("http1")),
		ConnContext: func(ctx context.Context, nc net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, nc.(*h1Conn).c)
		},
	}
}

// serveH1 hands an HTTP/1.1 connection to net/http.
func (d *dohSide) serveH1(c *conn) {
	d.h1once.Do(func() { go func() { _ = d.h1.Serve(d.h1ln) }() })
	select {
	case d.h1ln.conns <- &h1Conn{Conn: c.tc, c: c}:
	case <-d.h1ln.done:
		c.abort()
		c.closeOut()
	}
}

// stop ends the HTTP/1.1 side: no new connections. Those open go on
// (they may have been handed over); while draining, net/http closes
// each once idle.
func (d *dohSide) stop(draining bool) {
	d.h1ln.Close()
	if draining {
		d.h1.SetKeepAlivesEnabled(false)
	}
}

type connKey struct{}

// h1Conn is an HTTP/1.1 connection as net/http sees it; closing it
// closes and counts out the DoH connection.
type h1Conn struct {
	net.Conn // TLS, or a cleartext connection
	c        *conn
	once     sync.Once
}

func (h *h1Conn) Close() error {
	h.once.Do(h.c.closeOut)
	return nil
}

// connListener is the listener net/http serves: connections come from
// the server's own accept loop, after their handshake.
type connListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return dohAddr{} }

type dohAddr struct{}

func (dohAddr) Network() string { return "tcp" }
func (dohAddr) String() string  { return "doh" }

// h1Handler answers HTTP/1.1 requests through the Endpoint of the server
// that owns the connection now.
type h1Handler struct{}

func (h1Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c := r.Context().Value(connKey{}).(*conn)
	srv := c.enter()
	defer srv.active.Add(-1)
	if c.expired(srv) {
		w.Header().Set("Connection", "close") // max_connection_duration: net/http closes it after this answer
	}
	d := srv.doh
	bp := packPool.Get().(*[]byte)
	defer packPool.Put(bp)
	var rep dohhandler.Reply
	switch {
	case !d.isDoH(r.URL.Path):
		rep = d.other(r.URL.Path)
	case r.Method == http.MethodPost && r.ContentLength > caddydns.MaxMessage:
		rep = d.endpoint.Refuse(http.StatusRequestEntityTooLarge, dohhandler.BodyTooLarge)
	default:
		req := dohhandler.Request{Method: r.Method, RawQuery: r.URL.RawQuery,
			ContentType: r.Header.Get("Content-Type"), Accept: r.Header.Get("Accept"), Client: c.client, Local: c.local, ServerName: c.sni, Path: r.URL.EscapedPath()}
		if xff := r.Header.Values("X-Forwarded-For"); len(xff) > 0 {
			if msg := d.forwardedFor(&req.Client, strings.Join(xff, ",")); msg != "" {
				rep = d.endpoint.Refuse(http.StatusBadRequest, msg)
				break
			}
		}
		if r.Method == http.MethodPost {
			body, err := io.ReadAll(io.LimitReader(r.Body, caddydns.MaxMessage+1))
			if err != nil {
				rep = d.endpoint.Refuse(http.StatusBadRequest, "reading body: "+err.Error())
				break
			}
			req.Body = body
		}
		rep = d.endpoint.Serve(r.Context(), &req, bp)
	}
	if rep.Drop {
		panic(http.ErrAbortHandler) // net/http closes the connection
	}
	d.finish(&rep)
	dohhandler.SetHeaders(w.Header(), &rep)
	w.WriteHeader(rep.Status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(rep.Body)
	}
}

// isDoH reports whether DoH is answered on path: the server's, or one
// under it with sub_paths.
func (d *dohSide) isDoH(path string) bool {
	if path == d.path {
		return true
	}
	return d.subPaths && len(path) > len(d.path) && strings.HasPrefix(path, d.path) &&
		(path[len(d.path)] == '/' || strings.HasSuffix(d.path, "/"))
}

// other is the reply to a request for a path that is not DoH's: its
// fixed response, or 404.
func (d *dohSide) other(path string) dohhandler.Reply {
	if r := d.responses[path]; r != nil {
		return d.endpoint.Respond(*r)
	}
	return d.endpoint.Refuse(http.StatusNotFound, "not found: DNS over HTTPS is at "+d.path)
}

// finish adds the server's header fields to a reply that has none of its
// own (a fixed response has them already), and takes Cache-Control out
// when the server sends none.
func (d *dohSide) finish(rep *dohhandler.Reply) {
	if rep.Header == nil {
		rep.Header = d.headers
	}
	if d.noCacheControl {
		rep.CacheControl = ""
	}
}

// setTrusted takes the trusted proxies.
func (d *dohSide) setTrusted(list []string) error {
	d.trusted = nil
	for i, s := range list {
		if s == "private_ranges" { // Caddy's shorthand, as its trusted_proxies takes it
			for _, r := range caddyhttp.PrivateRangesCIDR() {
				p, err := caddyhttp.CIDRExpressionToPrefix(r)
				if err != nil {
					return fmt.Errorf("trusted_proxies[%d]: private_ranges: %v", i, err)
				}
				d.trusted = append(d.trusted, p.Masked()) // Caddy writes 127.0.0.1/8
			}
			continue
		}
		p, err := netprefix.Parse(s)
		if err != nil {
			return fmt.Errorf("trusted_proxies[%d]: %w", i, err)
		}
		d.trusted = append(d.trusted, p)
	}
	return nil
}

// forwardedFor sets *client to the address X-Forwarded-For (its fields
// joined with commas) gives, when the peer is a trusted proxy: read from
// the right, the first address that is not a trusted proxy's, or the
// leftmost if all are. It returns what was wrong when an address it
// reads is not one: a trusted proxy wrote it, so the request is refused
// rather than taken as the proxy's own. Addresses left of the client's,
// which the client may have written, are not read.
func (d *dohSide) forwardedFor(client *netip.AddrPort, xff string) string {
	if len(d.trusted) == 0 || !d.trusted.Contains(client.Addr()) {
		return ""
	}
	for rest := xff; rest != ""; {
		entry := rest
		if i := strings.LastIndexByte(rest, ','); i >= 0 {
			entry, rest = rest[i+1:], rest[:i]
		} else {
			rest = ""
		}
		entry = strings.Trim(entry, " \t")
		if entry == "" {
			continue // an empty list element (RFC 9110 5.6.1)
		}
		ap, ok := parseForwarded(entry)
		if !ok {
			if len(entry) > 64 {
				entry = entry[:64] + "..."
			}
			return fmt.Sprintf("X-Forwarded-For: %q is not an IP address", entry)
		}
		*client = ap
		if !d.trusted.Contains(ap.Addr()) {
			break
		}
	}
	return ""
}

// parseForwarded reads one X-Forwarded-For element: an address, with or
// without a port (192.0.2.1, 192.0.2.1:4200, 2001:db8::1,
// [2001:db8::1]:443). No port is port 0.
func parseForwarded(s string) (netip.AddrPort, bool) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port()), true
	}
	if len(s) > 2 && s[0] == '[' && s[len(s)-1] == ']' {
		s = s[1 : len(s)-1]
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a.Unmap().WithZone(""), 0), true
}

// setResponses checks and takes a server's headers and responses.
func (d *dohSide) setResponses(ds *DoHServer) error {
	var err error
	if d.headers, err = headerFields(ds.Headers, "headers", false); err != nil {
		return err
	}
	for i, r := range ds.Responses {
		where := fmt.Sprintf("responses[%d]", i)
		switch {
		case !strings.HasPrefix(r.Path, "/") || strings.ContainsAny(r.Path, "?#"):
			return fmt.Errorf("%s: path %q is not a request path (it starts with / and has no ? or #)", where, r.Path)
		case d.isDoH(r.Path):
			return fmt.Errorf("%s: path %s is where DNS over HTTPS is answered", where, r.Path)
		case d.responses[r.Path] != nil:
			return fmt.Errorf("%s: path %s has a response already", where, r.Path)
		case r.Status < 200 || r.Status > 599:
			return fmt.Errorf("%s: status %d: want 200 to 599", where, r.Status)
		case r.Body != "" && (r.Status == http.StatusNoContent || r.Status == http.StatusNotModified):
			return fmt.Errorf("%s: status %d has no body", where, r.Status)
		}
		own, err := headerFields(r.Headers, where+".headers", true)
		if err != nil {
			return err
		}
		rep := &dohhandler.Reply{Status: r.Status, Body: []byte(r.Body), Header: []dohhandler.Field{}}
		if r.Body != "" {
			rep.ContentType = dohhandler.TextType
		}
		// the server's fields, but those this response sets itself
		names := make(map[string]bool, len(own))
		for _, f := range own {
			names[f.Name] = true
		}
		for _, f := range d.headers {
			if !names[f.Name] {
				rep.Header = append(rep.Header, f)
			}
		}
		for _, f := range own {
			if f.Name == "content-type" {
				rep.ContentType = f.Value
				continue
			}
			rep.Header = append(rep.Header, f)
		}
		if d.responses == nil {
			d.responses = make(map[string]*dohhandler.Reply)
		}
		d.responses[r.Path] = rep
	}
	return nil
}

// headerFields checks the header fields of a config (where names them),
// in the order of their names. contentType allows Content-Type (a fixed
// response's own).
func headerFields(h map[string]string, where string, contentType bool) ([]dohhandler.Field, error) {
	if len(h) == 0 {
		return nil, nil
	}
	fields := make([]dohhandler.Field, 0, len(h))
	for name, value := range h {
		lower := strings.ToLower(name)
		switch {
		case !httpguts.ValidHeaderFieldName(name):
			return nil, fmt.Errorf("%s: %q is not a header field name", where, name)
		case !httpguts.ValidHeaderFieldValue(value):
			return nil, fmt.Errorf("%s: %s: the value %q has a character a header field cannot carry", where, name, value)
		case lower == "content-type" && contentType:
		case lower == "content-type", lower == "content-length", lower == "cache-control", lower == "allow":
			return nil, fmt.Errorf("%s: %s is set by the server itself", where, name)
		case lower == "connection", lower == "keep-alive", lower == "proxy-connection", lower == "transfer-encoding",
			lower == "upgrade", lower == "te", lower == "trailer":
			return nil, fmt.Errorf("%s: %s is connection-specific (HTTP/2 has none: RFC 9113 8.2.2)", where, name)
		}
		for _, f := range fields {
			if f.Name == lower {
				return nil, fmt.Errorf("%s: %s is given twice (names are not case-sensitive)", where, name)
			}
		}
		fields = append(fields, dohhandler.Field{Name: lower, Value: value})
	}
	slices.SortFunc(fields, func(a, b dohhandler.Field) int { return strings.Compare(a.Name, b.Name) })
	return fields, nil
}

// Interface guards
var (
	_ caddy.App          = (*DoHApp)(nil)
	_ caddy.Provisioner  = (*DoHApp)(nil)
	_ caddy.CleanerUpper = (*DoHApp)(nil)
	_ caddy.Validator    = (*DoHApp)(nil)
)
