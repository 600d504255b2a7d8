// Package dohhandler is `http.handlers.doh`: DNS over HTTPS (RFC 8484)
// inside any Caddy site, answering through the caddydns handler chain.
package dohhandler

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

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

	logger    *zap.Logger
	responses *responseMetrics
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
	h.responses = newResponseMetrics(ctx, h.Name)
	return h.sayTryIt(ctx)
}

// queryParam returns the value of key in a raw query string without
// building url.Values (this runs for every GET).
func queryParam(raw, key string) (string, bool) {
	for raw != "" {
		var kv string
		kv, raw, _ = strings.Cut(raw, "&")
		k, v, _ := strings.Cut(kv, "=")
		if k != key {
			continue
		}
		if strings.ContainsAny(v, "%+") {
			u, err := url.QueryUnescape(v)
			if err != nil {
				return "", true
			}
			v = u
		}
		return v, true
	}
	return "", false
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// ServeHTTP answers a DoH request. It is kept small, with the request's
// decoding and the answer's encoding in functions of their own: a
// forwarded query's deepest call (the upstream write) runs on top of
// this frame and Caddy's, and every byte kept off that path spares
// HTTP/2's per-request goroutine a stack copy (8 to 16 KB).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	query, done, err := h.readQuery(w, r, bp)
	if done {
		return err
	}
	a := h.Chain.Serve(r.Context(), &caddydns.Request{
		Transport: "doh", Server: h.Name, Client: clientAddr(r), Size: caddydns.MaxMessage,
	}, query, (*bp)[:0])
	if a.Wire != nil {
		*bp = a.Wire[:0]
	}
	return h.writeAnswer(w, r, &a)
}

// readQuery reads the DNS query of a GET (?dns=), HEAD or POST request
// into *bp. When it returns done, the request has been answered (an
// HTTP error, or the JSON API).
func (h *Handler) readQuery(w http.ResponseWriter, r *http.Request, bp *[]byte) (query []byte, done bool, err error) {
	var wire []byte
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		param, ok := queryParam(r.URL.RawQuery, "dns")
		if !ok || param == "" {
			if _, hasName := queryParam(r.URL.RawQuery, "name"); !h.DisableJSON && (hasName || acceptsJSON(r)) {
				return nil, true, h.serveJSON(w, r)
			}
			return nil, true, h.fail(w, http.StatusBadRequest, "missing dns parameter: send the query base64url-encoded in ?dns=")
		}
		param = strings.TrimRight(param, "=") // padding is tolerated
		need := base64.RawURLEncoding.DecodedLen(len(param))
		if need > caddydns.MaxMessage {
			return nil, true, h.fail(w, http.StatusRequestURITooLong, "dns parameter holds more than 65535 octets")
		}
		// the decoded query, then the encoded one, in the pooled buffer
		buf := (*bp)[:0]
		if cap(buf) < need+len(param) {
			buf = make([]byte, 0, need+len(param))
			*bp = buf
		}
		src := append(buf[need:need], param...)
		n, err := base64.RawURLEncoding.Decode(buf[:need], src)
		if err != nil {
			return nil, true, h.fail(w, http.StatusBadRequest, "dns parameter is not base64url: "+err.Error())
		}
		wire = buf[:n]
	case http.MethodPost:
		if !isMessageType(r.Header.Get("Content-Type")) {
			return nil, true, h.fail(w, http.StatusUnsupportedMediaType, "POST body must be "+MessageType)
		}
		var err error
		if wire, err = readBody(r, bp); err != nil {
			if errors.Is(err, errBodyTooLarge) {
				return nil, true, h.fail(w, http.StatusRequestEntityTooLarge, "body holds more than 65535 octets")
			}
			if limit, ok := errors.AsType[*http.MaxBytesError](err); ok { // Caddy's request_body max_size
				return nil, true, h.fail(w, http.StatusRequestEntityTooLarge,
					"body over the server's limit of "+strconv.FormatInt(limit.Limit, 10)+" octets (request_body max_size)")
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil, true, h.fail(w, http.StatusRequestTimeout, "the body did not come in time (the server's read_body_idle timeout)")
			}
			return nil, true, h.fail(w, http.StatusBadRequest, "reading body: "+err.Error())
		}
	default:
		w.Header().Set("Allow", "GET, HEAD, POST")
		return nil, true, h.fail(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed: use GET or POST")
	}
	return wire, false, nil
}

var errBodyTooLarge = errors.New("body too large")

// isMessageType reports whether a Content-Type is application/dns-message
// (any case, with or without parameters). The plain form, which clients
// send, is matched without parsing (the parser allocates a map).
func isMessageType(ct string) bool {
	if ct == MessageType {
		return true
	}
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == MessageType
}

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

// writeAnswer writes the packed answer out as the response.
func (h *Handler) writeAnswer(w http.ResponseWriter, r *http.Request, a *caddydns.Answer) error {
	if a.Drop {
		dropped()
	}
	if a.Malformed {
		return h.fail(w, http.StatusBadRequest, "not a DNS message")
	}
	out := a.Wire
	// each response its own values (Caddy's header directive edits them
	// in place: TestDoHHeaderEdits), made in two allocations: the values'
	// slice, and the length and max-age in one string
	vals := make([]string, 3)
	var b [40]byte
	t := strconv.AppendInt(b[:0], int64(len(out)), 10)
	n := len(t)
	cacheable := a.Cacheable
	if cacheable {
		t = strconv.AppendUint(append(t, "max-age="...), uint64(a.TTL), 10)
	}
	text := string(t)
	vals[0], vals[1], vals[2] = MessageType, text[:n], text[n:]
	hdr := w.Header()
	hdr["Content-Type"] = vals[0:1:1]
	hdr["Content-Length"] = vals[1:2:2]
	if cacheable {
		hdr["Cache-Control"] = vals[2:3:3]
	}
	w.WriteHeader(http.StatusOK)
	h.responses.count(http.StatusOK)
	if r.Method != http.MethodHead {
		writeLast(w, r, out)
	}
	return nil
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

// fail writes an HTTP error with a short text body.
func (h *Handler) fail(w http.ResponseWriter, status int, msg string) error {
	if ce := h.logger.Check(zapcore.DebugLevel, "doh request refused"); ce != nil {
		ce.Write(zap.Int("status", status), zap.String("reason", msg))
	}
	h.responses.count(status)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, msg+"\n")
	return nil
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

func acceptsJSON(r *http.Request) bool {
	for _, a := range strings.Split(r.Header.Get("Accept"), ",") {
		if mt, _, err := mime.ParseMediaType(strings.TrimSpace(a)); err == nil && mt == JSONType {
			return true
		}
	}
	return false
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
