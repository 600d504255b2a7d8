package ocspfile

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"go.uber.org/zap"

	"github.com/dnsfront/dnsfront/internal/portshare"
)

func init() {
	caddy.RegisterModule(App{})
}

// App is the `ocsp` app: it owns the OCSP staples of the certificates it is
// given, keeps each one validated and fresh, and serves them on every TLS
// handshake that takes its certificate from the tls app:
//
//   - certificates listed in Certificates are served, with their staple,
//     by the `tls.get_certificate.ocsp` manager (Caddyfile: `tls {
//     get_certificate ocsp }`) and by the `dot` app; a changed staple
//     reaches the very next handshake;
//   - certificates Caddy manages itself (`tls internal`, ACME) get their
//     staple from the Managed source through the `caddy.storage.ocsp`
//     storage module, which certmagic asks when it staples.
//
// A staple that fails validation is never served; the last valid one stays
// until it expires. Staples survive config reloads.
type App struct {
	// Certificates supplied by the operator, each with its staple source.
	Certificates []*Certificate `json:"certificates,omitempty"`

	// ManagedRaw is the staple source for certificates Caddy manages
	// (`tls internal`, ACME), used through the `caddy.storage.ocsp`
	// storage module. Usually `pki` for `tls internal` certificates.
	ManagedRaw json.RawMessage `json:"managed,omitempty" caddy:"namespace=ocsp.sources inline_key=source"`

	// StoragePoll is how often the app looks in Caddy's storage for a
	// staple that another instance sharing the storage (a fleet) has
	// made, and serves it when it is newer than its own: the bound on how
	// long an instance serves an older staple than its fleet's. Default:
	// 1 minute.
	StoragePoll caddy.Duration `json:"storage_poll,omitempty"`

	ctx     caddy.Context
	logger  *zap.Logger
	events  *caddyevents.App
	managed Source
	// entries are the certificates of Certificates, copy-on-write: a
	// renewed issued certificate replaces its entry while handshakes read
	entries   *atomic.Pointer[[]*entry]
	entriesMu *sync.Mutex

	managedMu      *sync.Mutex
	managedEntries map[string]*entry // by certmagic's OCSP storage key

	cancel context.CancelFunc
	wg     *sync.WaitGroup
}

// Certificate is a certificate the operator supplies as files, or one the
// app issues from Caddy's internal CA, with its staple.
type Certificate struct {
	// Certificate is the PEM file with the certificate, followed by the
	// chain that is served with it.
	Certificate string `json:"certificate,omitempty"`
	// Key is the PEM file with the certificate's private key.
	Key string `json:"key,omitempty"`
	// Issue makes the app issue the certificate itself, for these names,
	// from a CA of Caddy's pki app (instead of Certificate and Key): like
	// `tls internal`, but with the first name as the subject's common
	// name, which clients built on GnuTLS (kdig) require. It is kept in
	// Caddy's storage and issued again at two thirds of its lifetime; its
	// staple source defaults to `pki`.
	Issue []string `json:"issue,omitempty"`
	// CA is the pki app's CA that issues Issue. Default: "local".
	CA string `json:"ca,omitempty"`
	// Lifetime of an issued certificate. Default: 7 days.
	Lifetime caddy.Duration `json:"lifetime,omitempty"`
	// Issuer is the PEM file with the certificate of the CA that issued
	// the certificate. Default: the second certificate of Certificate.
	Issuer string `json:"issuer,omitempty"`
	// Tags name the certificate for connection policies'
	// certificate_selection (any_tag, all_tags): a DoT server or a site
	// whose policy selects by tag is served only the certificates that
	// match. Default: none.
	Tags []string `json:"tags,omitempty"`
	// SourceRaw says where the staple comes from: `file`, `local_ca`,
	// `pki` or `responder`. Default: `responder` (the certificate's OCSP
	// URL).
	SourceRaw json.RawMessage `json:"source,omitempty" caddy:"namespace=ocsp.sources inline_key=source"`
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "ocsp", New: func() caddy.Module { return new(App) }}
}

// Provision loads every certificate and key (an unreadable one is a
// configuration error), and obtains a first staple for each (a bad staple
// is logged and not served, and never fails the configuration).
func (a *App) Provision(ctx caddy.Context) error {
	a.ctx = ctx
	a.logger = ctx.Logger()
	a.managedEntries = make(map[string]*entry)
	a.managedMu, a.wg, a.entriesMu = new(sync.Mutex), new(sync.WaitGroup), new(sync.Mutex)
	a.entries = new(atomic.Pointer[[]*entry])
	registerMetrics(ctx.GetMetricsRegistry(), a.logger)
	ev, err := ctx.App("events")
	if err != nil {
		return fmt.Errorf("loading events app: %w", err)
	}
	a.events = ev.(*caddyevents.App)

	if a.StoragePoll < 0 {
		return fmt.Errorf("storage_poll %s: want a positive duration", time.Duration(a.StoragePoll))
	}
	if a.StoragePoll == 0 {
		a.StoragePoll = caddy.Duration(DefaultStoragePoll)
	}
	if a.ManagedRaw != nil {
		mod, err := ctx.LoadModule(a, "ManagedRaw")
		if err != nil {
			return fmt.Errorf("loading managed staple source: %w", err)
		}
		a.managed = mod.(Source)
	}
	var entries []*entry
	for i, c := range a.Certificates {
		var e *entry
		var err error
		if len(c.Issue) > 0 {
			e, err = a.provisionIssued(ctx, c)
		} else {
			e, err = a.provisionCertificate(ctx, c)
		}
		if err != nil {
			if len(c.Issue) > 0 {
				return fmt.Errorf("issue %s: %w", strings.Join(c.Issue, " "), err)
			}
			return err // it names the certificate's files
		}
		e.tags = c.Tags
		// two entries for one certificate would fight over one staple slot
		for _, o := range entries {
			if e.slot == o.slot {
				return fmt.Errorf("certificates[%d]: %s is listed twice (also as %s)", i, e.name, o.name)
			}
		}
		entries = append(entries, e)
	}
	a.entries.Store(&entries)
	for _, e := range entries {
		a.refresh(ctx, e, time.Time{})
	}
	return nil
}

// certEntries returns the current entries of Certificates.
func (a *App) certEntries() []*entry {
	if a.entries == nil {
		return nil
	}
	if p := a.entries.Load(); p != nil {
		return *p
	}
	return nil
}

// Start begins keeping the staples fresh.
func (a *App) Start() error {
	if _, err := a.ctx.AppIfConfigured("dot"); errors.Is(err, caddy.ErrNotConfigured) && !twinChecked.Swap(true) {
		// the admin API listens by now: a second instance of the same
		// config would share it, and reloads would reach either (with a
		// dot app, the dot app checks once its listeners are open too)
		if err := portshare.Check(); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithCancel(a.ctx)
	a.cancel = cancel
	for _, e := range a.certEntries() {
		a.wg.Add(1)
		go a.maintain(ctx, e)
	}
	a.logger.Info("ocsp stapling started", zap.Int("certificates", len(a.certEntries())), zap.Bool("managed", a.managed != nil))
	return nil
}

// twinChecked is set once the first ocsp app of the process has checked
// that no other process listens on its addresses (see portshare).
var twinChecked atomic.Bool

// Stop ends the refresh loops and waits for them.
func (a *App) Stop() error {
	if a.cancel != nil {
		a.cancel()
	}
	a.wg.Wait()
	return nil
}

// Cleanup releases the staple slots; a slot lives on while the next
// config uses it.
func (a *App) Cleanup() error {
	for _, e := range a.allEntries() {
		_, _ = slots.Delete(e.slot.key)
	}
	return nil
}

func (a *App) allEntries() []*entry {
	a.managedMu.Lock()
	defer a.managedMu.Unlock()
	all := slices.Clone(a.certEntries())
	for _, e := range a.managedEntries {
		all = append(all, e)
	}
	return all
}

// maintain refreshes one staple at its source's pace until ctx ends.
func (a *App) maintain(ctx context.Context, e *entry) {
	defer a.wg.Done()
	defer func() {
		if r := recover(); r != nil {
			a.logger.Error("ocsp refresh loop panicked", zap.String("certificate", e.name), zap.Any("panic", r))
		}
	}()
	next := func() time.Duration {
		d := time.Until(e.nextRefresh())
		if e.reissue != nil {
			d = min(d, time.Until(e.renewAt))
		}
		return max(d, minRefreshDelay)
	}
	timer := time.NewTimer(next())
	defer timer.Stop()
	// a staple the app makes may be made by another instance of the fleet
	var poll <-chan time.Time
	if _, polled := e.source.(Poller); !polled {
		t := time.NewTicker(time.Duration(a.StoragePoll))
		defer t.Stop()
		poll = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-poll:
			if !a.pickUp(ctx, e) {
				continue
			}
			timer.Stop() // a new staple: a new refresh time
		case <-e.rescheduled:
			// refreshed elsewhere: the next refresh time changed
			timer.Stop()
		case <-timer.C:
			if e.reissue != nil && !time.Now().Before(e.renewAt) {
				err := a.renew(ctx, e)
				if err == nil {
					return // the new entry has its own loop
				}
				a.logger.Error("renewing issued certificate", zap.Strings("names", e.reissue.names), zap.Error(err))
				e.renewAt = time.Now().Add(time.Minute)
			}
			a.refresh(ctx, e, time.Time{})
			<-e.rescheduled // our own refresh's signal
		}
		timer.Reset(next())
	}
}

// Reload obtains every staple again now, whatever its age (POST
// /ocsp/reload), and returns the state of each.
func (a *App) Reload(ctx context.Context) []Status {
	asked := time.Now()
	for _, e := range a.allEntries() {
		a.refresh(ctx, e, asked)
	}
	return a.Statuses()
}

// Statuses reports the state of every staple the app owns.
func (a *App) Statuses() []Status {
	all := a.allEntries()
	out := make([]Status, 0, len(all))
	for _, e := range all {
		out = append(out, e.status(time.Now()))
	}
	return out
}

// StapleFor returns the current valid staple for leaf, from any source the
// app knows it by, or nil. The certificate lookups StapleConnectionPolicies
// wraps call it on each handshake, to staple a certificate the tls app
// picked.
func (a *App) StapleFor(leaf *x509.Certificate) []byte {
	if leaf == nil {
		return nil
	}
	sum := sha256.Sum256(leaf.Raw)
	if s := lookupSlot(hex.EncodeToString(sum[:])); s != nil {
		if st := s.staple.Load(); st.ValidAt(time.Now()) {
			return st.DER
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
