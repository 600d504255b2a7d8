// Package dohhandler is `http.handlers.doh`: DNS over HTTPS (RFC 8484)
// inside any Caddy site, answering through the caddydns handler chain.
package dohhandler

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/dnsfront/dnsfront/caddydns"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Media types of RFC 8484 and of the JSON API.
const (
	MessageType = "application/dns-message"
	JSONType    = "application/dns-json"
)

// Handler answers DNS over HTTPS requests (RFC 8484): GET with the query
// in the `dns` parameter (base64url), POST with the query as an
// application/dns-message body, HEAD as GET without the body; and the JSON
// API Google and Cloudflare serve (`?name=&type=`), unless disabled.
// Requests are answered through the same handler chain as DoT. A DNS
// failure (no upstream answered) is a SERVFAIL answer with HTTP 200, as
// RFC 8484 4.2.1 intends; a bad HTTP request gets a 4xx with a short text
// saying what was wrong.
type Handler struct {
	caddydns.Chain

	// Name labels the handler's metrics. Default: "doh".
	Name string `json:"name,omitempty"`
	// DisableJSON turns the JSON API off.
	DisableJSON bool `json:"disable_json,omitempty"`

	logger   *zap.Logger
	endpoint *Endpoint
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.doh", New: func() caddy.Module { return new(Handler) }}
}

// Provision sets up the chain.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.Name == "" {
		h.Name = "doh"
	}
	if err := h.Chain.Provision(ctx, h.Name, "doh"); err != nil {
		return err
	}
	h.endpoint = NewEndpoint(ctx, &h.Chain, h.Name, h.DisableJSON)
	return h.sayTryIt(ctx)
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// ServeHTTP answers a DoH request through the Endpoint. It is kept
// small, with the body's reading and the answer's writing in functions of
// their own: a forwarded query's deepest call (the upstream write) runs
// on top of this frame and Caddy's, and every byte kept off that path
// spares HTTP/2's per-request goroutine a stack copy (8 to 16 KB).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	req := Request{Method: r.Method, RawQuery: r.URL.RawQuery, Client: clientAddr(r), Local: localAddr(r), Path: r.URL.EscapedPath()}
	if r.TLS != nil {
		req.ServerName = r.TLS.ServerName
	}
	if r.Method == http.MethodPost {
		req.ContentType = r.Header.Get("Content-Type")
		if isMessageType(req.ContentType) { // else refused unread
			body, refused := h.readPOST(r, bp)
			if refused != nil {
				return h.write(w, r, refused)
			}
			req.Body = body
		}
	} else {
		req.Accept = r.Header.Get("Accept")
	}
	reply := h.endpoint.Serve(r.Context(), &req, bp)
	return h.write(w, r, &reply)
}

// readPOST reads a POST's body into *bp, or returns the reply that
// refuses it.
func (h *Handler) readPOST(r *http.Request, bp *[]byte) ([]byte, *Reply) {
	wire, err := readBody(r, bp)
	if err == nil {
		return wire, nil
	}
	var rep Reply
	if errors.Is(err, errBodyTooLarge) {
		rep = h.endpoint.Refuse(http.StatusRequestEntityTooLarge, BodyTooLarge)
	} else if limit, ok := errors.AsType[*http.MaxBytesError](err); ok { // Caddy's request_body max_size
		rep = h.endpoint.Refuse(http.StatusRequestEntityTooLarge,
			"body over the server's limit of "+strconv.FormatInt(limit.Limit, 10)+" octets (request_body max_size)")
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		rep = h.endpoint.Refuse(http.StatusRequestTimeout, "the body did not come in time (the server's read_body_idle timeout)")
	} else {
		rep = h.endpoint.Refuse(http.StatusBadRequest, "reading body: "+err.Error())
	}
	return nil, &rep
}

var errBodyTooLarge = errors.New("body too large")

// idleBody returns Caddy's idle-timeout reader when it is what r's body
// is read through and a single timer can stand in for it. Caddy bounds
// each Read of a request body by its idle read timeout (read_body_idle,
// 1m by default): on HTTP/2 the reader arms the stream's read deadline
// before the Read and clears it after, two messages to the connection's
// goroutine, which wake it each time (~2 us of a forwarded POST's CPU,
// 3%, measured side by side with and without). A DNS message is
// read in one go of a known length, so one timer that closes the body
// when the timeout passes keeps the same bound on that read. With a
// minimum rate or a hard deadline configured (read_body), on another
// protocol, or with the body wrapped again (access logs), Caddy's reader
// is used as it is.
func idleBody(r *http.Request) (*caddyhttp.IdleTimeoutReader, bool) {
	idle, ok := r.Body.(*caddyhttp.IdleTimeoutReader)
	if !ok || r.ProtoMajor != 2 || idle.Deadline.Timeout <= 0 || idle.Deadline.MinRate > 0 || !idle.Deadline.HardDeadline.IsZero() {
		return nil, false
	}
	return idle, true
}

// readBody reads a POST body into *bp. With a Content-Length (every
// HTTP/2 client sends one for a DNS message) it reads exactly that many
// octets, in one Read when they are there (see idleBody), and a length
// over 65535 is refused before anything is read.
func readBody(r *http.Request, bp *[]byte) ([]byte, error) {
	if n := r.ContentLength; n >= 0 {
		if n > caddydns.MaxMessage {
			return nil, errBodyTooLarge
		}
		if int64(cap(*bp)) < n {
			*bp = make([]byte, 0, n)
		}
		buf := (*bp)[:n]
		if idle, ok := idleBody(r); ok {
			// the same bound as Caddy's idle deadline on this one read
			var timedOut atomic.Bool
			t := time.AfterFunc(idle.Deadline.Timeout, func() {
				timedOut.Store(true)
				_ = idle.ReadCloser.Close()
			})
			defer t.Stop()
			if _, err := io.ReadFull(idle.ReadCloser, buf); err != nil {
				if timedOut.Load() {
					err = os.ErrDeadlineExceeded
				}
				return nil, err
			}
			return buf, nil
		}
		if _, err := io.ReadFull(r.Body, buf); err != nil {
			return nil, err
		}
		return buf, nil
	}
	buf := bytes.NewBuffer((*bp)[:0])
	if _, err := buf.ReadFrom(io.LimitReader(r.Body, caddydns.MaxMessage+1)); err != nil {
		return nil, err
	}
	if buf.Len() > caddydns.MaxMessage {
		return nil, errBodyTooLarge
	}
	return buf.Bytes(), nil
}

// write sends a reply out.
func (h *Handler) write(w http.ResponseWriter, r *http.Request, rep *Reply) error {
	if rep.Drop {
		dropped()
	}
	SetHeaders(w.Header(), rep)
	w.WriteHeader(rep.Status)
	if r.Method != http.MethodHead {
		writeLast(w, r, rep.Body)
	}
	return nil
}

// SetHeaders sets a reply's header fields in hdr. Each response has
// values of its own (Caddy's header directive edits them in place:
// TestDoHHeaderEdits), made in two allocations: the values' slice, and
// the length.
func SetHeaders(hdr http.Header, rep *Reply) {
	vals := make([]string, 3)
	vals[0], vals[1], vals[2] = rep.ContentType, strconv.Itoa(len(rep.Body)), rep.CacheControl
	if rep.ContentType != "" {
		hdr["Content-Type"] = vals[0:1:1]
	}
	hdr["Content-Length"] = vals[1:2:2]
	if rep.CacheControl != "" {
		hdr["Cache-Control"] = vals[2:3:3]
	}
	if rep.Allow != "" {
		hdr.Set("Allow", rep.Allow)
	}
	if rep.Nosniff() {
		hdr.Set("X-Content-Type-Options", "nosniff")
	}
	for _, f := range rep.Header {
		hdr.Add(f.Name, f.Value)
	}
}

// dropped ends a request a handler dropped (caddydns.ErrDrop) with no
// response: net/http resets its HTTP/2 stream, or closes its HTTP/1.1
// connection (as Caddy's reverse proxy does when it must abort).
func dropped() { panic(http.ErrAbortHandler) }

// writeLast writes the answer, the handler's last write. On HTTP/2,
// Caddy's idle-timeout writer arms the stream's write deadline before a
// write, clears it after, and arms it again when the handler returns
// (to bound the flush that follows): three messages to the connection's
// goroutine, each a closure and a timer, for a response written in one
// go. Clearing between writes is there for handlers that pause between
// writes (on HTTP/2 an armed deadline resets the stream when it fires,
// even with no write in flight); after the last write nothing pauses,
// so the deadline armed for it is left to bound the flush, as the one
// armed on return would: one message instead of three (1-4.5 us of a
// forwarded GET's CPU, side by side). The deadline is Caddy's own (idle
// timeout, capped by a hard deadline and by any deadline set by another
// handler). When another writer wraps Caddy's (access logs), or with a
// minimum rate set (write_idle's second argument: the deadline armed on
// return counts the answer's octets as sent), Caddy's writer works as it
// is.
func writeLast(w http.ResponseWriter, r *http.Request, out []byte) {
	if idle, ok := w.(*caddyhttp.IdleTimeoutWriter); ok && r.ProtoMajor == 2 && idle.ClearBetweenWrites && idle.Deadline.MinRate <= 0 {
		idle.ClearBetweenWrites = false
		defer func() { idle.ClearBetweenWrites = true }()
	}
	_, _ = w.Write(out)
}

// localAddr is the server's address the request's connection reached
// (behind Caddy's proxy_protocol listener wrapper, the header's; a UDP
// address over HTTP/3).
func localAddr(r *http.Request) netip.AddrPort {
	var ap netip.AddrPort
	switch a := r.Context().Value(http.LocalAddrContextKey).(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	case net.Addr:
		ap, _ = netip.ParseAddrPort(a.String())
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// clientAddr is the client as Caddy determined it (trusted proxies
// included), not raw headers.
func clientAddr(r *http.Request) netip.AddrPort {
	ip, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
			return ap
		}
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(addr.Unmap(), 0)
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	doh [<matcher>] {
//		name <metrics label>
//		json off
//		<dns handler> ...    # zone, forward: answered in this order
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for n := d.Nesting(); d.NextBlock(n); {
		switch opt := d.Val(); opt {
		case "name":
			if !d.AllArgs(&h.Name) {
				return d.ArgErr()
			}
		case "json":
			var v string
			if !d.AllArgs(&v) || (v != "on" && v != "off") {
				return d.Err("json takes on or off")
			}
			h.DisableJSON = v == "off"
		default:
			ok, err := h.Chain.UnmarshalHandler(d)
			if err != nil {
				return err
			}
			if !ok {
				return d.Errf("unrecognized subdirective '%s' (not a doh option nor a dns handler)", opt)
			}
		}
	}
	if len(h.HandlersRaw) == 0 {
		return d.Err("doh needs at least one dns handler, e.g. forward or zone")
	}
	return nil
}

// Interface guards
var (
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
