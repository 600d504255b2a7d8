// Package dotapp is the `dot` Caddy app: DNS over TLS servers (RFC 7858)
// with RFC 7766 connection handling, TLS from Caddy's tls app (with the
// ocsp app's staples), answering through the caddydns handler chain.
package dotapp

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/dnsfront/dnsfront/internal/portshare"
)

func init() {
	caddy.RegisterModule(App{})
}

// App is the `dot` app: a set of DNS over TLS servers.
type App struct {
	// Servers by name (the name labels metrics and logs).
	Servers map[string]*Server `json:"servers,omitempty"`

	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "dot", New: func() caddy.Module { return new(App) }}
}

// Provision sets up each server.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	return provisionServers(ctx, a.Servers, a.logger)
}

// Validate checks that no two servers listen on the same address.
func (a *App) Validate() error { return validateServers(a.Servers) }

// Start opens every server's listeners.
func (a *App) Start() error { return startServers(a.Servers) }

// Stop closes the listeners. Open connections are handed to the server
// that replaces this one on the same address (a reload) or drained.
func (a *App) Stop() error {
	stopServers(a.Servers)
	return nil
}

// Cleanup releases what the servers hold beyond the config: their
// places in the session ticket ring and the connection rate limiters.
func (a *App) Cleanup() error {
	cleanupServers(a.Servers)
	return nil
}

// What the dot and doh apps do with their servers.

func cleanupServers(servers map[string]*Server) {
	for _, s := range servers {
		s.cleanup()
	}
}

func provisionServers(ctx caddy.Context, servers map[string]*Server, logger *zap.Logger) error {
	for name, s := range servers {
		if err := s.provision(ctx, name, logger.With(zap.String("server", name))); err != nil {
			return fmt.Errorf("server %s: %w", name, err)
		}
	}
	return nil
}

func validateServers(servers map[string]*Server) error {
	seen := make(map[string]string)
	for name, s := range servers {
		for _, addr := range s.addrs {
			for port := addr.StartPort; port <= addr.EndPort; port++ {
				k := addr.JoinHostPort(port - addr.StartPort)
				if other, dup := seen[k]; dup {
					return fmt.Errorf("servers %s and %s both listen on %s", other, name, k)
				}
				seen[k] = name
			}
		}
	}
	return nil
}

func startServers(servers map[string]*Server) error {
	for name, s := range servers {
		if err := s.start(); err != nil {
			// the caller stops the apps of a config that failed to start
			return fmt.Errorf("server %s: %w", name, err)
		}
	}
	if !twinChecked.Swap(true) {
		if err := portshare.Check(); err != nil {
			stopServers(servers) // Caddy stops only the apps that started
			return err
		}
	}
	return nil
}

// twinChecked is set once the first dot or doh app of the process has
// checked that no other process listens on its addresses (see portshare).
var twinChecked atomic.Bool

func stopServers(servers map[string]*Server) {
	var wg sync.WaitGroup
	for _, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.stop()
		}()
	}
	wg.Wait()
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
)
