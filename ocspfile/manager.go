package ocspfile

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
)

func init() {
	caddy.RegisterModule(Manager{})
}

// Manager serves the certificates of the `ocsp` app, each with its current
// valid staple, to any TLS listener of Caddy's tls app (`tls {
// get_certificate ocsp }`). It is asked on every handshake, so a changed
// staple is served from the next handshake on, with no restart. For a
// server name the app has no certificate for, it fails the handshake
// rather than let certmagic fall through to on-demand issuance.
type Manager struct {
	app *App
}

// CaddyModule returns the Caddy module information.
func (Manager) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "tls.get_certificate.ocsp", New: func() caddy.Module { return new(Manager) }}
}

// Provision finds the ocsp app of this config.
func (m *Manager) Provision(ctx caddy.Context) error {
	app, err := ctx.AppIfConfigured("ocsp")
	if err != nil {
		if errors.Is(err, caddy.ErrNotConfigured) {
			return errors.New("get_certificate ocsp: the ocsp app is not configured: list the certificates in the global ocsp option")
		}
		return fmt.Errorf("get_certificate ocsp: %w", err)
	}
	m.app = app.(*App)
	if len(m.app.certEntries()) == 0 {
		return errors.New("get_certificate ocsp: the ocsp app has no certificates: add a certificate to the global ocsp option")
	}
	return nil
}

// GetCertificate implements certmagic.Manager.
func (m *Manager) GetCertificate(_ context.Context, hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return m.app.GetCertificate(hello)
}

// UnmarshalCaddyfile sets up the manager from Caddyfile tokens. Syntax:
//
//	get_certificate ocsp
func (m *Manager) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // manager name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("get_certificate ocsp takes no block: the certificates are listed in the global ocsp option")
	}
	return nil
}

// Interface guards
var (
	_ certmagic.Manager     = (*Manager)(nil)
	_ caddy.Provisioner     = (*Manager)(nil)
	_ caddyfile.Unmarshaler = (*Manager)(nil)
)
