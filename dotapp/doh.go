package dotapp

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/dohhandler"
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
		ds.Server.doh = &dohSide{path: path, disableJSON: ds.DisableJSON}
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
	path        string
	disableJSON bool
	endpoint    *dohhandler.Endpoint

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
	*tls.Conn
	c    *conn
	once sync.Once
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
	case r.URL.Path != d.path:
		rep = d.notFound()
	case r.Method == http.MethodPost && r.ContentLength > caddydns.MaxMessage:
		rep = d.endpoint.Refuse(http.StatusRequestEntityTooLarge, dohhandler.BodyTooLarge)
	default:
		req := dohhandler.Request{Method: r.Method, RawQuery: r.URL.RawQuery,
			ContentType: r.Header.Get("Content-Type"), Accept: r.Header.Get("Accept"), Client: c.client}
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
	dohhandler.SetHeaders(w.Header(), &rep)
	w.WriteHeader(rep.Status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(rep.Body)
	}
}

// notFound is the reply to a request for another path.
func (d *dohSide) notFound() dohhandler.Reply {
	return d.endpoint.Refuse(http.StatusNotFound, "not found: DNS over HTTPS is at "+d.path)
}

// Interface guards
var (
	_ caddy.App          = (*DoHApp)(nil)
	_ caddy.Provisioner  = (*DoHApp)(nil)
	_ caddy.CleanerUpper = (*DoHApp)(nil)
	_ caddy.Validator    = (*DoHApp)(nil)
)
