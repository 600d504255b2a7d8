package ocspfile

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddypki"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/dnsfront/dnsfront/ocspfile/staple"
)

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
	ca, err := pkiCA(ctx, is.caID)
	if err != nil {
		return nil, fmt.Errorf("issue: %w", err)
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
	a.refresh(ctx, e, time.Now())
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

// pkiCA finds the CA caID in Caddy's pki app, loading the app as `tls
// internal` does when the config has none.
func pkiCA(ctx caddy.Context, caID string) (*caddypki.CA, error) {
	pkiApp, err := ctx.App("pki")
	if err != nil {
		return nil, fmt.Errorf("loading pki app: %w", err)
	}
	ca, ok := pkiApp.(*caddypki.PKI).CAs[caID]
	if !ok {
		return nil, fmt.Errorf("no CA %q in the pki app", caID)
	}
	if ca.StorageRaw == nil {
		if err := checkFleetCA(ctx, ctx.Storage(), ca, caID); err != nil {
			return nil, err
		}
	}
	return ca, nil
}

// loadKeyPair loads a certificate chain and its key like tls.LoadX509KeyPair,
// with errors that name the file at fault, and with Leaf set.
func loadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate file: %w", err) // "open <file>: <cause>"
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		// the cause first: "/etc/dns/server.key: no such file or directory"
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return tls.Certificate{}, fmt.Errorf("%s: %w (the key file of certificate %s)", keyFile, pe.Err, certFile)
		}
		return tls.Certificate{}, fmt.Errorf("%s: %w (the key file of certificate %s)", keyFile, err, certFile)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate %s with key %s: %w", certFile, keyFile, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return tls.Certificate{}, fmt.Errorf("certificate %s: %w", certFile, err)
		}
	}
	return cert, nil
}
