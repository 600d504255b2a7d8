// Package caddyfile registers the Caddyfile global options and directives
// of dnsfront that span its packages: the `ocsp` global option (and, with
// the DNS transports, `dot` and `doh`). Each module's own
// UnmarshalCaddyfile stays beside its type.
package caddyfile

import (
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	"github.com/dnsfront/dnsfront/ocspfile"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("ocsp", parseOCSP)
}

// parseOCSP sets up the `ocsp` app from the global option (see
// ocspfile.App.UnmarshalCaddyfile for the syntax). The option may appear
// once; its certificates and managed source form one app.
func parseOCSP(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		return nil, d.Err("ocsp option already specified: list every certificate in one ocsp block")
	}
	app := new(ocspfile.App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "ocsp", Value: caddyconfig.JSON(app, nil)}, nil
}
