package forward

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/caddydns/dnswire"
)

// dohClient asks a DNS over HTTPS upstream (RFC 8484): each query a POST
// of application/dns-message, with ID 0 (RFC 8484 4.1), over HTTP/2
// connections the transport keeps and shares among the queries in flight
// (HTTP/1.1 when the upstream speaks only that). Redirects are not
// followed: an upstream that answers anything but 200 with a DNS message
// to its question has failed the query.
type dohClient struct {
	url string
	tr  *http.Transport
	hop caddydns.Hop
}

// dohHeader is every query's header (http.Transport does not change it).
var dohHeader = http.Header{
	"Content-Type": {dnsMessageType},
	"Accept":       {dnsMessageType},
}

const dnsMessageType = "application/dns-message"

func newDoHClient(url string, tlsCfg *tls.Config) *dohClient {
	tlsCfg.NextProtos = []string{"h2", "http/1.1"}
	return &dohClient{url: url, tr: &http.Transport{
		TLSClientConfig:     tlsCfg,
		ForceAttemptHTTP2:   true,
		DialContext:         (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: 5 * time.Second,
		MaxIdleConnsPerHost: 16, // HTTP/1.1's; HTTP/2 shares one connection
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		Proxy:               nil, // a resolver's upstream is not reached through HTTP_PROXY
	}}
}

// errDoHAnswer: the upstream's HTTP answer is not a DNS answer to the
// query.
var errDoHAnswer = errors.New("not a DNS answer to the query")

// exchange POSTs packed (its ID set to 0) and returns the answer, or an
// error once deadline passes.
func (c *dohClient) exchange(ctx context.Context, r *caddydns.Request, deadline time.Time, question, packed []byte) (*caddydns.Wire, error) {
	dnswire.SetID(packed, 0)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(packed))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.url, err)
	}
	req.Header = dohHeader
	req.ContentLength = int64(len(packed))
	tapQuery(r, c.hop, packed)
	resp, err := c.tr.RoundTrip(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: HTTP status %d: %w", c.url, resp.StatusCode, errDoHAnswer)
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || mt != dnsMessageType {
		return nil, fmt.Errorf("%s: Content-Type %q: %w", c.url, resp.Header.Get("Content-Type"), errDoHAnswer)
	}
	if resp.ContentLength > caddydns.MaxMessage {
		return nil, fmt.Errorf("%s: Content-Length %d: %w", c.url, resp.ContentLength, errDoHAnswer)
	}
	bp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bp)
	b, err := readAtMost((*bp)[:0], resp.Body, caddydns.MaxMessage)
	if cap(b) <= 4096 {
		*bp = b[:0] // a rare larger answer's room is let go
	}
	if err != nil {
		return nil, fmt.Errorf("%s: reading the answer: %w", c.url, err)
	}
	l, ok := dnswire.Walk(b)
	if !ok || b[0]|b[1] != 0 || dnswire.Answers(b, &l, question) == dnswire.OtherQuestion {
		return nil, fmt.Errorf("%s: %w", c.url, errDoHAnswer)
	}
	a := caddydns.NewWire(b, &l) // a copy
	tapResponse(r, c.hop, a)
	return a, nil
}

// readBufs hold answers while they are read and checked.
var readBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// readAtMost appends what rd holds to b, failing past max octets.
func readAtMost(b []byte, rd io.Reader, max int) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			if len(b) > max {
				return nil, fmt.Errorf("over %d octets", max)
			}
			b = append(b, 0)[:len(b)]
		}
		n, err := rd.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if len(b) > max {
			return nil, fmt.Errorf("over %d octets", max)
		}
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

func (c *dohClient) close() { c.tr.CloseIdleConnections() }
