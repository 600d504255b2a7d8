package ocspfile

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"hash/fnv"
	"io/fs"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/dnsfront/dnsfront/ocspfile/staple"
)

func init() {
	caddy.RegisterModule(Storage{})
}

// Storage wraps Caddy's storage so that certmagic, when it staples a
// certificate it manages (`tls internal`, ACME) or loaded from files,
// gets the staple from the `ocsp` app: certmagic reads
// `ocsp/<name>-<hash>` before asking any responder. The app validates
// every staple it answers with (certmagic checks neither signature nor
// serial). Everything else goes to the backend untouched.
//
// certmagic staples a cached certificate when it loads it and again after
// half-life (tls `automation.ocsp_interval`); a reload does not restaple a
// certificate that stays cached. Certificates listed in the ocsp app and
// served by `get_certificate ocsp` or the `dot` app get a changed staple
// at once.
type Storage struct {
	// BackendRaw is the storage to wrap. Default: Caddy's default
	// file_system storage.
	BackendRaw json.RawMessage `json:"backend,omitempty" caddy:"namespace=caddy.storage inline_key=module"`

	ctx     caddy.Context
	backend certmagic.Storage
}

// CaddyModule returns the Caddy module information.
func (Storage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "caddy.storage.ocsp", New: func() caddy.Module { return new(Storage) }}
}

// Provision loads the backend.
func (s *Storage) Provision(ctx caddy.Context) error {
	s.ctx = ctx
	if s.BackendRaw == nil {
		s.backend = caddy.DefaultStorage
		return nil
	}
	mod, err := ctx.LoadModule(s, "BackendRaw")
	if err != nil {
		return fmt.Errorf("loading storage backend: %w", err)
	}
	conv, ok := mod.(caddy.StorageConverter)
	if !ok {
		return fmt.Errorf("storage backend %T is not a storage module", mod)
	}
	if s.backend, err = conv.CertMagicStorage(); err != nil {
		return fmt.Errorf("storage backend: %w", err)
	}
	return nil
}

// CertMagicStorage implements caddy.StorageConverter.
func (s *Storage) CertMagicStorage() (certmagic.Storage, error) {
	return &hookedStorage{Storage: s.backend, ctx: s.ctx}, nil
}

// UnmarshalCaddyfile sets up the storage from Caddyfile tokens. Syntax:
//
//	storage ocsp {
//		backend <storage module> [<args...>]
//	}
func (s *Storage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // module name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "backend":
			if s.BackendRaw != nil {
				return d.Err("backend already specified")
			}
			if !d.NextArg() {
				return d.ArgErr()
			}
			name := d.Val()
			mod, err := caddyfile.UnmarshalModule(d, "caddy.storage."+name)
			if err != nil {
				return err
			}
			s.BackendRaw = caddyconfig.JSONModuleObject(mod, "module", name, nil)
		default:
			return d.Errf("unrecognized subdirective '%s'", d.Val())
		}
	}
	return nil
}

// hookedStorage answers certmagic's staple look-ups from the ocsp app.
type hookedStorage struct {
	certmagic.Storage
	ctx caddy.Context
}

func (h *hookedStorage) Load(ctx context.Context, key string) ([]byte, error) {
	if strings.HasPrefix(key, "ocsp/") {
		if app := h.app(); app != nil {
			if der, handled := app.stapleForStorageKey(ctx, h.Storage, key); handled {
				if der == nil {
					return nil, fs.ErrNotExist
				}
				return der, nil
			}
		}
	}
	return h.Storage.Load(ctx, key)
}

func (h *hookedStorage) app() *App {
	if h.ctx.Err() != nil {
		return nil
	}
	app, err := h.ctx.AppIfConfigured("ocsp")
	if err != nil {
		return nil
	}
	return app.(*App)
}

// stapleForStorageKey finds the certificate certmagic means by an OCSP
// storage key and returns its current valid staple (obtaining one if it is
// missing or past half-life). handled is false for certificates the app
// has no source for: certmagic then does as it always does.
func (a *App) stapleForStorageKey(ctx context.Context, backend certmagic.Storage, key string) (der []byte, handled bool) {
	e := a.entryForStorageKey(ctx, backend, key)
	if e == nil {
		return nil, false
	}
	a.refresh(ctx, e, time.Time{})
	return e.serve(time.Now()).OCSPStaple, true
}

func (a *App) entryForStorageKey(ctx context.Context, backend certmagic.Storage, key string) *entry {
	name, hash, ok := parseStapleKey(key)
	if !ok {
		return nil
	}
	for _, e := range a.certEntries() {
		if e.storageHash == hash {
			return e
		}
	}
	if a.managed == nil {
		return nil
	}
	a.managedMu.Lock()
	defer a.managedMu.Unlock()
	if e, ok := a.managedEntries[key]; ok {
		return e
	}
	bundle, err := findManagedBundle(ctx, backend, name, hash)
	if err != nil {
		a.logger.Debug("no managed certificate for ocsp storage key", zap.String("key", key), zap.Error(err))
		return nil
	}
	certs, err := staple.ParseCertificatesPEM(bundle)
	if err != nil || len(certs) < 2 {
		a.logger.Warn("managed certificate has no issuer in its chain: not stapled", zap.String("key", key), zap.Error(err))
		return nil
	}
	e := a.newEntry("managed "+name, certs[0], certs[1], a.managed)
	a.managedEntries[key] = e
	return e
}

// parseStapleKey splits certmagic's "ocsp/<safe name>-<fnv hash>".
func parseStapleKey(key string) (name, hash string, ok bool) {
	base := strings.TrimPrefix(key, "ocsp/")
	i := strings.LastIndexByte(base, '-')
	if i <= 0 || i == len(base)-1 || strings.Contains(base, "/") {
		return "", "", false
	}
	return base[:i], base[i+1:], true
}

// findManagedBundle finds the stored certificate (certificates/<issuer>/
// <name>/<name>.crt) whose PEM bytes hash to hash, as certmagic names it.
func findManagedBundle(ctx context.Context, backend certmagic.Storage, name, hash string) ([]byte, error) {
	issuers, err := backend.List(ctx, "certificates", false)
	if err != nil {
		return nil, err
	}
	for _, issuerDir := range issuers {
		b, err := backend.Load(ctx, issuerDir+"/"+name+"/"+name+".crt")
		if err != nil {
			continue
		}
		if fastHash(b) == hash {
			return b, nil
		}
	}
	return nil, fs.ErrNotExist
}

// bundleHash is certmagic's staple key hash for a certificate loaded from
// files: the FNV-32a of its chain re-encoded as PEM.
func bundleHash(chain [][]byte) string {
	var buf bytes.Buffer
	for _, der := range chain {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	return fastHash(buf.Bytes())
}

// fastHash is certmagic's (crypto.go), which names staples in storage.
func fastHash(b []byte) string {
	h := fnv.New32a()
	h.Write(b)
	return fmt.Sprintf("%x", h.Sum32())
}

// Interface guards
var (
	_ caddy.StorageConverter = (*Storage)(nil)
	_ caddy.Provisioner      = (*Storage)(nil)
	_ caddyfile.Unmarshaler  = (*Storage)(nil)
)
