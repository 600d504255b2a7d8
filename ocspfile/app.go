package ocspfile

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddypki"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/dnsfront/dnsfront/internal/portshare"
	"github.com/dnsfront/dnsfront/ocspfile/staple"
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
		a.refresh(ctx, e, false)
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

// provisionIssued sets up a certificate the app issues from the pki app.
func (a *App) provisionIssued(ctx caddy.Context, c *Certificate) (*entry, error) {
	if c.Certificate != "" || c.Key != "" {
		return nil, errors.New("give either issue or certificate and key, not both")
	}
	is := &issuer{names: c.Issue, caID: c.CA, lifetime: time.Duration(c.Lifetime)}
	if is.caID == "" {
		is.caID = caddypki.DefaultCAID
	}
	if is.lifetime <= 0 {
		is.lifetime = DefaultIssueLifetime
	}
	pkiApp, err := ctx.App("pki")
	if err != nil {
		return nil, fmt.Errorf("issue: loading pki app: %w", err)
	}
	ca, ok := pkiApp.(*caddypki.PKI).CAs[is.caID]
	if !ok {
		return nil, fmt.Errorf("issue: no CA %q in the pki app", is.caID)
	}
	is.ca = ca
	a.logRoot(is.caID)
	src, err := loadSource(ctx, c, &PKISource{CA: is.caID})
	if err != nil {
		return nil, fmt.Errorf("issue %v: %w", c.Issue, err)
	}
	return a.issuedEntry(ctx, is, src)
}

// rootsLogged are the pki CAs whose root file was named in the log, once
// a process: clients of issued certificates trust that root.
var rootsLogged sync.Map

// logRoot names, once, the file of the root certificate that issued
// certificates of CA caID chain to, when storage is on the file system
// (`kdig +tls-ca=<it>`, `curl --cacert <it>`).
func (a *App) logRoot(caID string) {
	fs, ok := a.ctx.Storage().(*certmagic.FileStorage)
	if !ok {
		return
	}
	root := filepath.Join(fs.Path, "pki", "authorities", caID, "root.crt")
	if abs, err := filepath.Abs(root); err == nil {
		root = abs
	}
	if _, done := rootsLogged.LoadOrStore(root, true); !done {
		a.logger.Info("issued certificates chain to this root: clients trust it with it", zap.String("ca", caID),
			zap.String("root_certificate", root))
	}
}

// issuedEntry gets (from storage, or newly issued) the certificate of is
// and makes its entry.
func (a *App) issuedEntry(ctx context.Context, is *issuer, src Source) (*entry, error) {
	pair, err := is.certificate(ctx, a.ctx.Storage(), time.Now())
	if err != nil {
		return nil, fmt.Errorf("issue %v: %w", is.names, err)
	}
	issuerCert, err := x509.ParseCertificate(pair.Certificate[1])
	if err != nil {
		return nil, err
	}
	e := a.newEntry("issued "+is.names[0], pair.Leaf, issuerCert, src)
	e.cert = pair
	e.storageHash = bundleHash(pair.Certificate)
	e.reissue, e.renewAt = is, renewAt(pair.Leaf)
	return e, nil
}

// renew issues a new certificate for an issued entry, obtains its staple,
// and puts it in the old one's place; the old entry's loop ends.
func (a *App) renew(ctx context.Context, old *entry) error {
	e, err := a.issuedEntry(ctx, old.reissue, old.source)
	if err != nil {
		return err
	}
	a.refresh(ctx, e, true)
	a.entriesMu.Lock()
	next := slices.Clone(a.certEntries())
	for i, x := range next {
		if x == old {
			next[i] = e
		}
	}
	a.entries.Store(&next)
	a.entriesMu.Unlock()
	_, _ = slots.Delete(old.slot.key)
	a.logger.Info("issued certificate renewed", zap.Strings("names", old.reissue.names),
		zap.String("serial", e.labels[1]), zap.Time("not_after", e.leaf.NotAfter))
	a.wg.Add(1)
	go a.maintain(ctx, e)
	return nil
}

func (a *App) provisionCertificate(ctx caddy.Context, c *Certificate) (*entry, error) {
	repl := caddy.NewReplacer()
	c.Certificate, c.Key, c.Issuer = repl.ReplaceAll(c.Certificate, ""), repl.ReplaceAll(c.Key, ""), repl.ReplaceAll(c.Issuer, "")
	if c.Certificate == "" || c.Key == "" {
		return nil, errors.New("certificate and key files are required")
	}
	pair, err := loadKeyPair(c.Certificate, c.Key)
	if err != nil {
		return nil, err
	}
	var issuer *x509.Certificate
	if c.Issuer != "" {
		certs, err := staple.ReadCertificates(c.Issuer)
		if err != nil {
			return nil, fmt.Errorf("issuer: %w", err)
		}
		issuer = certs[0]
	} else if len(pair.Certificate) > 1 {
		if issuer, err = x509.ParseCertificate(pair.Certificate[1]); err != nil {
			return nil, fmt.Errorf("certificate %s: chain: %w", c.Certificate, err)
		}
	} else {
		return nil, fmt.Errorf("certificate %s holds no issuer certificate: add the CA certificate after it, or set issuer", c.Certificate)
	}
	if err := pair.Leaf.CheckSignatureFrom(issuer); err != nil {
		return nil, fmt.Errorf("certificate %s was not issued by %q (issuer %s): %w", c.Certificate,
			issuer.Subject.String(), cmp.Or(c.Issuer, "second certificate of the chain"), err)
	}
	if len(pair.Certificate) == 1 {
		// clients check a staple against the issuer in the served chain
		// (kdig +tls-ocsp-stapling refuses it otherwise)
		pair.Certificate = append(pair.Certificate, issuer.Raw)
	}
	src, err := loadSource(ctx, c, new(ResponderSource))
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", c.Certificate, err)
	}
	e := a.newEntry(c.Certificate, pair.Leaf, issuer, src)
	e.cert = pair
	e.storageHash = bundleHash(pair.Certificate)
	return e, nil
}

// loadSource loads the certificate's staple source, or provisions def
// when it names none.
func loadSource(ctx caddy.Context, c *Certificate, def interface {
	Source
	caddy.Provisioner
}) (Source, error) {
	if c.SourceRaw == nil {
		if err := def.Provision(ctx); err != nil {
			return nil, err
		}
		return def, nil
	}
	mod, err := ctx.LoadModule(c, "SourceRaw")
	if err != nil {
		return nil, fmt.Errorf("loading staple source: %w", err)
	}
	return mod.(Source), nil
}

// newEntry makes the per-config entry for a certificate and takes a
// reference to its staple slot, which outlives the config.
func (a *App) newEntry(name string, leaf, issuer *x509.Certificate, src Source) *entry {
	sum := sha256.Sum256(leaf.Raw)
	key := hex.EncodeToString(sum[:])
	s, _, _ := slots.LoadOrNew(key, func() (caddy.Destructor, error) { return newSlot(key), nil })
	e := &entry{
		name:        name,
		leaf:        leaf,
		issuer:      issuer,
		source:      src,
		slot:        s.(*slot),
		mustStaple:  hasMustStaple(leaf),
		rescheduled: make(chan struct{}, 1),
	}
	e.labels = [2]string{subjectName(leaf), staple.FormatSerial(leaf.SerialNumber)}
	return e
}

// Start begins keeping the staples fresh.
func (a *App) Start() error {
	if !twinChecked.Swap(true) {
		// the admin API listens by now: a second instance of the same
		// config would share it, and reloads would reach either
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
	for {
		select {
		case <-ctx.Done():
			return
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
			a.refresh(ctx, e, false)
			<-e.rescheduled // our own refresh's signal
		}
		timer.Reset(next())
	}
}

// Reload obtains every staple again now, whatever its age (POST
// /ocsp/reload), and returns the state of each.
func (a *App) Reload(ctx context.Context) []Status {
	for _, e := range a.allEntries() {
		a.refresh(ctx, e, true)
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

// StapleFor returns the current valid staple for leaf, from any source the
// app knows it by, or nil. Transports that build their own TLS config
// call it on each handshake to staple certificates Caddy manages.
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
