package forward

import (
	"context"

	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns"
)

func query(name string, qtype uint16) *dns.Msg {
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	return q
}

// serve runs r.Msg through c as a transport would, packed, and returns
// the answer's octets (in buf when it is large enough).
func serve(ctx context.Context, c *caddydns.Chain, r *caddydns.Request, buf []byte) []byte {
	b, err := r.Msg.Pack()
	if err != nil {
		panic(err)
	}
	return c.Serve(ctx, r, b, buf).Wire
}

// serveMsg is serve with the answer decoded; nil when it does not decode.
func serveMsg(ctx context.Context, c *caddydns.Chain, r *caddydns.Request) *dns.Msg {
	m := new(dns.Msg)
	if m.Unpack(serve(ctx, c, r, nil)) != nil {
		return nil
	}
	return m
}
