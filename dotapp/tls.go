package dotapp

import (
	"crypto/tls"
	"errors"
	"fmt"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"go.uber.org/zap"
)

func (s *Server) provisionTLS(ctx caddy.Context) error {
	if len(s.TLSConnPolicies) == 0 {
		s.TLSConnPolicies = caddytls.ConnectionPolicies{new(caddytls.ConnectionPolicy)}
	}
	for _, p := range s.TLSConnPolicies {
		if p.ALPN == nil {
			p.ALPN = []string{"dot"}
			if s.doh != nil {
				p.ALPN = []string{"h2", "http/1.1"}
			}
		}
		if p.DefaultSNI == "" && len(s.ServerNames) > 0 {
			p.DefaultSNI = s.ServerNames[0]
		}
	}
	if err := s.TLSConnPolicies.Provision(ctx); err != nil {
		return fmt.Errorf("tls connection policies: %w", err)
	}
	st, err := staplerOf(ctx)
	if err != nil {
		return fmt.Errorf("ocsp staples: %w", err)
	}
	if st != nil {
		st.StapleConnectionPolicies(s.TLSConnPolicies)
	}
	s.warnMissingCertificates()
	s.tlsCfg = s.TLSConnPolicies.TLSConfig(ctx)
	if err := tickets.register(s.tlsCfg); err != nil {
		return fmt.Errorf("session ticket keys: %w", err)
	}
	cfg := s.tlsCfg
	s.onCleanup(func() { tickets.unregister(cfg) })
	if tlsApp, err := ctx.AppIfConfigured("tls"); err == nil && len(s.ServerNames) > 0 {
		// the names Caddy publishes ECH configs for, when it has them
		// (like the http app's sites)
		alpn := []string{"dot"}
		if s.doh != nil {
			alpn = []string{"h2", "http/1.1"}
		}
		tlsApp.(*caddytls.TLS).RegisterServerNames(s.ServerNames, alpn)
	}
	if !s.mayHaveCertificate(ctx, st) {
		return errors.New("no certificate to serve: list one in the ocsp app (certificate, or issue <name>), " +
			"give the server a server_name (the tls app then manages its certificate), or load one in the tls app")
	}
	return nil
}

// maxWarnedNames bounds the server names a server warns about (a client
// chooses them: the set must not grow without end).
const maxWarnedNames = 64

// warnMissingCertificates makes a handshake that finds no certificate for
// its server name say so at warn level, once per name (the handshake's own
// failure is logged at debug level, per connection).
func (s *Server) warnMissingCertificates() {
	var mu sync.Mutex
	warned := make(map[string]bool)
	for _, p := range s.TLSConnPolicies {
		if p.TLSConfig == nil || p.TLSConfig.GetCertificate == nil {
			continue
		}
		next := p.TLSConfig.GetCertificate
		p.TLSConfig.GetCertificate = func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			c, err := next(hello)
			if err == nil && c != nil {
				return c, nil
			}
			mu.Lock()
			first := !warned[hello.ServerName] && len(warned) < maxWarnedNames
			if first {
				warned[hello.ServerName] = true
			}
			last := first && len(warned) == maxWarnedNames
			mu.Unlock()
			if first {
				s.logger.Warn("no certificate for this server name: its handshakes fail (logged once a name)",
					zap.String("server_name", hello.ServerName), zap.Strings("server_names", s.ServerNames), zap.Error(err),
					zap.Bool("last_name_logged", last))
			}
			return c, err
		}
	}
}

// mayHaveCertificate reports whether any certificate can reach this
// server's handshakes; false means every handshake would fail. Any
// source counts: the ocsp app's certificates, server_name, the tls app's
// loaded certificates or automation (subjects, get_certificate managers,
// on-demand), or an http app (its sites' certificates, managed by the
// tls app at start).
func (s *Server) mayHaveCertificate(ctx caddy.Context, st Stapler) bool {
	if len(s.ServerNames) > 0 || (st != nil && st.HasCertificates()) {
		return true
	}
	if _, err := ctx.AppIfConfigured("http"); !errors.Is(err, caddy.ErrNotConfigured) {
		return true // configured (an http app that fails says why itself)
	}
	tlsIface, err := ctx.AppIfConfigured("tls")
	if err != nil {
		return false
	}
	t := tlsIface.(*caddytls.TLS)
	if len(t.CertificatesRaw) > 0 {
		return true
	}
	if t.Automation != nil {
		if t.Automation.OnDemand != nil {
			return true
		}
		for _, p := range t.Automation.Policies {
			if len(p.SubjectsRaw) > 0 || len(p.ManagersRaw) > 0 || len(p.Managers) > 0 || p.OnDemand {
				return true
			}
		}
	}
	return false
}
