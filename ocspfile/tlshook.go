package ocspfile

import (
	"bytes"
	"cmp"
	"crypto/tls"
	"fmt"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/caddyserver/certmagic"
)

// StapleConnectionPolicies makes the TLS configs of provisioned connection
// policies serve the app's staples, for transports that build their TLS
// config from the tls app themselves (the `dot` app, through an interface
// of its own): a certificate the app lists is served with its current
// staple, as the policy's certificate_selection takes it (all when it has
// none) and with its default_sni for clients that send no SNI; any other
// certificate the tls app picks (`tls internal`, ACME, files) gets the
// app's latest valid staple for it when there is one. Either way a
// changed staple reaches the next handshake.
func (a *App) StapleConnectionPolicies(cps caddytls.ConnectionPolicies) {
	for _, p := range cps {
		if p.TLSConfig != nil && p.TLSConfig.GetCertificate != nil {
			p.TLSConfig.GetCertificate = a.wrapGetCertificate(p, p.TLSConfig.GetCertificate)
		}
	}
}

// HasCertificates reports whether the app lists certificates (supplied
// or issued) that a TLS listener can serve.
func (a *App) HasCertificates() bool { return len(a.certEntries()) > 0 }

// wrapGetCertificate is policy p's certificate lookup, next, with the
// app's certificates and staples put in (see StapleConnectionPolicies).
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

// GetCertificate returns the configured certificate that fits hello, with
// its current valid staple. Without SNI, the first certificate the client
// supports is chosen. It never returns nil without an error: certmagic
// would fall through to on-demand issuance.
func (a *App) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return a.getCertificate(hello, nil, "")
}

// getCertificate is GetCertificate for a connection policy: only the
// certificates that sel (when not nil) selects, and defaultSNI as the
// name of a client that sends none.
func (a *App) getCertificate(hello *tls.ClientHelloInfo, sel *caddytls.CustomCertSelectionPolicy, defaultSNI string) (*tls.Certificate, error) {
	name := strings.ToLower(strings.TrimSuffix(cmp.Or(hello.ServerName, defaultSNI), "."))
	var fallback *entry
	for _, e := range a.certEntries() {
		if name != "" && e.leaf.VerifyHostname(name) != nil {
			continue
		}
		if sel != nil && !e.selected(hello, sel) {
			continue
		}
		if hello.SupportsCertificate(&e.cert) == nil {
			return e.serve(time.Now()), nil
		}
		if fallback == nil {
			fallback = e
		}
	}
	if fallback != nil {
		return fallback.serve(time.Now()), nil
	}
	return nil, fmt.Errorf("ocsp app: no certificate for server name %q", hello.ServerName)
}

// selected reports whether a connection policy's certificate selection
// takes e, by the same rules as for the tls app's own certificates.
func (e *entry) selected(hello *tls.ClientHelloInfo, sel *caddytls.CustomCertSelectionPolicy) bool {
	c := e.cert
	c.Leaf = e.leaf
	_, err := sel.SelectCertificate(hello, []certmagic.Certificate{{Certificate: c, Tags: e.tags}})
	return err == nil
}
