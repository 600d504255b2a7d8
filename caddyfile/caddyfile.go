// Package caddyfile registers the Caddyfile global options and directives
// of dnsfront that span its packages: the `ocsp`, `dot` and `doh` global
// options and the `doh` directive. Each module's own
// UnmarshalCaddyfile stays beside its type.
package caddyfile

import (
	"encoding/json"
	"fmt"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/dnsfront/dnsfront/dohhandler"
	"github.com/dnsfront/dnsfront/dotapp"
	"github.com/dnsfront/dnsfront/ocspfile"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("ocsp", parseOCSP)
	httpcaddyfile.RegisterGlobalOption("dot", parseDoT)
	httpcaddyfile.RegisterGlobalOption("doh", parseDoHServer)
	httpcaddyfile.RegisterHandlerDirective("doh", parseDoH)
	// before respond, so that a site can answer DoH on its path and
	// something else everywhere else without an order line
	httpcaddyfile.RegisterDirectiveOrder("doh", httpcaddyfile.Before, "respond")
}

// parseDoH sets up the `doh` directive (see dohhandler.Handler).
func parseDoH(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	handler := new(dohhandler.Handler)
	err := handler.UnmarshalCaddyfile(h.Dispenser)
	return handler, err
}

// parseDoT adds a DNS over TLS server to the `dot` app for each `dot`
// global option (see dotapp.Server.UnmarshalCaddyfile). Servers are named
// dot0, dot1, ... in the order they appear.
func parseDoT(d *caddyfile.Dispenser, existing any) (any, error) {
	srv := new(dotapp.Server)
	return addServer(d, existing, "dot", 853, srv, &srv.Listen)
}

// parseDoHServer adds a dedicated DNS over HTTPS server to the `doh` app
// for each `doh` global option (see dotapp.DoHServer.UnmarshalCaddyfile);
// the `doh` directive inside a site is the Caddy handler. Servers are
// named doh0, doh1, ... in the order they appear.
func parseDoHServer(d *caddyfile.Dispenser, existing any) (any, error) {
	srv := new(dotapp.DoHServer)
	return addServer(d, existing, "doh", 443, srv, &srv.Listen)
}

// serversApp is the JSON of the dot and doh apps: their servers by name.
type serversApp[S any] struct {
	Servers map[string]S `json:"servers,omitempty"`
}

// addServer reads srv (whose listen addresses are *listen) from the
// option's tokens, gives its host-less addresses the Caddyfile's
// default_bind, and adds it to the app named kind as kind0, kind1, ...
func addServer[S caddyfile.Unmarshaler](d *caddyfile.Dispenser, existing any, kind string, port uint, srv S, listen *[]string) (any, error) {
	var app serversApp[S]
	if existing != nil {
		prev, ok := existing.(httpcaddyfile.App)
		if !ok {
			return nil, d.Errf("unexpected value for %s option: %T", kind, existing)
		}
		if err := json.Unmarshal(prev.Value, &app); err != nil {
			return nil, err
		}
	}
	var seg caddyfile.Segment
	for d.Next() {
		seg = append(seg, d.Token())
	}
	d.Reset()
	if err := srv.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	bound, err := applyDefaultBind(seg, *listen, kind, port)
	if err != nil {
		return nil, err
	}
	*listen = bound
	if app.Servers == nil {
		app.Servers = make(map[string]S)
	}
	app.Servers[fmt.Sprintf("%s%d", kind, len(app.Servers))] = srv
	return httpcaddyfile.App{Name: kind, Value: caddyconfig.JSON(app, nil)}, nil
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
