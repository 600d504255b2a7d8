package ocspfile

import (
	"bytes"
	"crypto/tls"
	"errors"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
)

// StapleConnectionPolicies makes the TLS configs of provisioned connection
// policies serve the ocsp app's staples, for transports that build their
// TLS config from the tls app themselves (the `dot` app): a certificate
// the app lists is served with its current staple; any other certificate
// the tls app picks (`tls internal`, ACME, files) gets the app's latest
// valid staple for it when there is one. Either way a changed staple
// reaches the next handshake. Without an ocsp app it does nothing.
func StapleConnectionPolicies(ctx caddy.Context, cps caddytls.ConnectionPolicies) error {
	appIface, err := ctx.AppIfConfigured("ocsp")
	if errors.Is(err, caddy.ErrNotConfigured) {
		return nil
	}
	if err != nil {
		return err
	}
	app := appIface.(*App)
	for _, p := range cps {
		if p.TLSConfig != nil && p.TLSConfig.GetCertificate != nil {
			p.TLSConfig.GetCertificate = app.wrapGetCertificate(p, p.TLSConfig.GetCertificate)
		}
	}
	return nil
}

// wrapGetCertificate serves, for policy p, the app's certificates that
// p's certificate_selection takes (all when it has none), with p's
// default_sni for clients that send no SNI; then the tls app's own.
// HasCertificates reports whether the config's ocsp app lists
// certificates (supplied or issued) that a TLS listener can serve.
func HasCertificates(ctx caddy.Context) bool {
	appIface, err := ctx.AppIfConfigured("ocsp")
	if err != nil {
		return false
	}
	return len(appIface.(*App).certEntries()) > 0
}

func (a *App) wrapGetCertificate(p *caddytls.ConnectionPolicy, next func(*tls.ClientHelloInfo) (*tls.Certificate, error)) func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		if len(a.certEntries()) > 0 {
			if c, err := a.getCertificate(hello, p.CertSelection, p.DefaultSNI); err == nil {
				return c, nil
			}
		}
		c, err := next(hello)
		if err != nil || c == nil {
			return c, err
		}
		if st := a.StapleFor(c.Leaf); st != nil && !bytes.Equal(st, c.OCSPStaple) {
			cp := *c
			cp.OCSPStaple = st
			return &cp, nil
		}
		return c, nil
	}
}
