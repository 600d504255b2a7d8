//go:build dohnethttp

package dotapp

import (
	"context"

	"golang.org/x/net/http2"
)

// Built with -tags dohnethttp, the DoH server serves HTTP/2 through Go's
// own server (x/net's http2.Server, the one net/http bundles) instead of
// its connection loop: the benchmark's "plain net/http" row, the figure
// the loop is measured against (docs/performance.md). Not for operators.
func init() { serveH2 = serveH2NetHTTP }

func serveH2NetHTTP(c *conn) {
	srv := c.srv.Load()
	d := srv.doh
	h2 := &http2.Server{MaxConcurrentStreams: uint32(srv.set.maxInFlight), MaxReadFrameSize: h2MaxFrame}
	h2.ServeConn(c.tc, &http2.ServeConnOpts{
		Context:    context.WithValue(context.Background(), connKey{}, c),
		BaseConfig: d.h1,
		Handler:    h1Handler{},
	})
	c.closeOut()
}
