package dohhandler

import (
	"context"
	"encoding/base64"
	"mime"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/dnsfront/dnsfront/caddydns"
)

// Endpoint is DoH's semantics (RFC 8484 and the JSON API) without an
// HTTP server: a request as any server decodes it in, the response to
// send out. The Caddy handler (Handler) and the dedicated DoH server
// (the `doh` app in dotapp) both answer through it, so that GET, POST,
// HEAD, the JSON API, the error statuses, Cache-Control and the answer's
// finishing (padding, the client's ID) are one implementation.
type Endpoint struct {
	chain       *caddydns.Chain
	name        string
	disableJSON bool
	logger      *zap.Logger
	responses   *responseMetrics
}

// NewEndpoint returns the endpoint of a provisioned chain. name labels
// its metrics (dnsfront_doh_responses_total{server}) and its queries'.
func NewEndpoint(ctx caddy.Context, chain *caddydns.Chain, name string, disableJSON bool) *Endpoint {
	return &Endpoint{chain: chain, name: name, disableJSON: disableJSON,
		logger: ctx.Logger(), responses: newResponseMetrics(ctx, name)}
}

// Request is a DoH request, as an HTTP server decoded it.
type Request struct {
	Method      string // GET, HEAD, POST, ...
	RawQuery    string // the target's query, without '?'
	ContentType string
	Accept      string
	// Body is a POST's body, read whole by the server (which answers 413
	// itself, through Refuse, to one over caddydns.MaxMessage octets).
	Body   []byte
	Client netip.AddrPort
	// Local is the server's address the client reached (Request.Local).
	Local netip.AddrPort
	// ServerName is the TLS server name (SNI) the client asked for.
	ServerName string
	// Path is the request's path.
	Path string
}

// Reply is the response to a Request.
type Reply struct {
	Status      int
	ContentType string
	// CacheControl is the Cache-Control value ("max-age=N"), or "".
	CacheControl string
	// Allow is the Allow header of a 405.
	Allow string
	// Body is the response's body; a server omits it for HEAD.
	Body []byte
	// Drop means a handler dropped the request (caddydns.ErrDrop): the
	// server sends no response (HTTP/2: the stream is reset; HTTP/1.1:
	// the connection is closed).
	Drop bool
	// Header holds the fields the server adds after its own: the
	// dedicated server's `header` and `respond` options.
	Header []Field
}

// Field is a response header field, its name in lower case (as HTTP/2
// sends it).
type Field struct{ Name, Value string }

// Nosniff reports whether the reply is text, sent with
// X-Content-Type-Options: nosniff (unless the server's own fields set
// that header).
func (r *Reply) Nosniff() bool {
	if r.ContentType != TextType {
		return false
	}
	for _, f := range r.Header {
		if f.Name == "x-content-type-options" {
			return false
		}
	}
	return true
}

// TextType is the Content-Type of the replies that are text.
const TextType = "text/plain; charset=utf-8"

// Serve answers req. A DNS message is decoded into and answered in *bp
// (a pooled buffer the caller owns; it may be replaced by a larger one),
// and Reply.Body then aliases it.
func (e *Endpoint) Serve(ctx context.Context, req *Request, bp *[]byte) Reply {
	var wire []byte
	switch req.Method {
	case http.MethodGet, http.MethodHead:
		param, ok := queryParam(req.RawQuery, "dns")
		if !ok || param == "" {
			if _, hasName := queryParam(req.RawQuery, "name"); !e.disableJSON && (hasName || acceptsJSON(req.Accept)) {
				return e.serveJSON(ctx, req)
			}
			return e.Refuse(http.StatusBadRequest, "missing dns parameter: send the query base64url-encoded in ?dns=")
		}
		var status int
		var msg string
		if wire, status, msg = decodeGET(param, bp); status != 0 {
			return e.Refuse(status, msg)
		}
	case http.MethodPost:
		if !isMessageType(req.ContentType) {
			return e.Refuse(http.StatusUnsupportedMediaType, "POST body must be "+MessageType)
		}
		if len(req.Body) > caddydns.MaxMessage {
			return e.Refuse(http.StatusRequestEntityTooLarge, BodyTooLarge)
		}
		wire = req.Body
	default:
		r := e.Refuse(http.StatusMethodNotAllowed, "method "+req.Method+" not allowed: use GET or POST")
		r.Allow = "GET, HEAD, POST"
		return r
	}
	r := caddydns.AcquireRequest()
	r.Transport, r.Server, r.Client, r.Local, r.Size = "doh", e.name, req.Client, req.Local, caddydns.MaxMessage
	r.ServerName, r.Path = req.ServerName, req.Path
	a := e.chain.Serve(ctx, r, wire, (*bp)[:0])
	caddydns.ReleaseRequest(r)
	if a.Wire != nil {
		*bp = a.Wire[:0]
	}
	return e.answer(&a)
}

// BodyTooLarge is the text of a 413 for a body over 65535 octets.
const BodyTooLarge = "body holds more than 65535 octets"

// decodeGET decodes a GET's dns parameter into *bp, or says which status
// refuses it and why.
func decodeGET(param string, bp *[]byte) ([]byte, int, string) {
	param = strings.TrimRight(param, "=") // padding is tolerated
	need := base64.RawURLEncoding.DecodedLen(len(param))
	if need > caddydns.MaxMessage {
		return nil, http.StatusRequestURITooLong, "dns parameter holds more than 65535 octets"
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
		return nil, http.StatusBadRequest, "dns parameter is not base64url: " + err.Error()
	}
	return buf[:n], 0, ""
}

// answer makes the reply of a chain's answer.
func (e *Endpoint) answer(a *caddydns.Answer) Reply {
	if a.Drop {
		return Reply{Drop: true}
	}
	if a.Malformed {
		return e.Refuse(http.StatusBadRequest, "not a DNS message")
	}
	e.responses.count(http.StatusOK)
	r := Reply{Status: http.StatusOK, ContentType: MessageType, Body: a.Wire}
	if a.Cacheable {
		r.CacheControl = maxAge(a.TTL)
	}
	return r
}

// maxAge is Cache-Control's value for a TTL; the common small ones are
// made once.
func maxAge(ttl uint32) string {
	if ttl < uint32(len(maxAges)) {
		return maxAges[ttl]
	}
	return "max-age=" + strconv.FormatUint(uint64(ttl), 10)
}

var maxAges = func() []string {
	s := make([]string, 3601)
	for i := range s {
		s[i] = "max-age=" + strconv.Itoa(i)
	}
	return s
}()

// Refuse is the reply to a request refused with an HTTP error: a short
// text saying what was wrong, counted by status.
func (e *Endpoint) Refuse(status int, msg string) Reply {
	if ce := e.logger.Check(zapcore.DebugLevel, "doh request refused"); ce != nil {
		ce.Write(zap.Int("status", status), zap.String("reason", msg))
	}
	e.responses.count(status)
	return Reply{Status: status, ContentType: TextType, Body: []byte(msg + "\n")}
}

// Respond counts a reply the server made itself (the dedicated server's
// `respond` paths) as Refuse counts its own, and returns it.
func (e *Endpoint) Respond(rep Reply) Reply {
	e.responses.count(rep.Status)
	return rep
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

func acceptsJSON(accept string) bool {
	if accept == "" {
		return false
	}
	for _, a := range strings.Split(accept, ",") {
		if mt, _, err := mime.ParseMediaType(strings.TrimSpace(a)); err == nil && mt == JSONType {
			return true
		}
	}
	return false
}
