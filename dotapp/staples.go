package dotapp

import (
	"errors"
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
)

// Stapler is what a DoT server needs of the app that keeps OCSP staples
// (the `ocsp` app), which builds no TLS listener of its own: to serve its
// certificates and staples through the server's connection policies, and
// to say whether it has certificates to serve. The app is found by name
// in the config, so dotapp does not import it (DoH gets the same through
// the tls app's `get_certificate ocsp`).
type Stapler interface {
	StapleConnectionPolicies(caddytls.ConnectionPolicies)
	HasCertificates() bool
}

// staplerOf returns the config's Stapler, or nil when there is none.
func staplerOf(ctx caddy.Context) (Stapler, error) {
	app, err := ctx.AppIfConfigured("ocsp")
	if errors.Is(err, caddy.ErrNotConfigured) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	st, ok := app.(Stapler)
	if !ok {
		return nil, fmt.Errorf("the ocsp app (%T) does not serve staples to connection policies", app)
	}
	return st, nil
}
