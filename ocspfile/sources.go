package ocspfile

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddypki"

	"github.com/dnsfront/dnsfront/ocspfile/staple"
)

func init() {
	caddy.RegisterModule(FileSource{})
	caddy.RegisterModule(LocalCASource{})
	caddy.RegisterModule(PKISource{})
	caddy.RegisterModule(ResponderSource{})
}

// Subject is the certificate a source obtains a staple for.
type Subject struct {
	Leaf   *x509.Certificate
	Issuer *x509.Certificate
}

// Source obtains OCSP responses for certificates: modules in the namespace
// `ocsp.sources`. What a source returns is validated by the app before it
// is stapled; a source need not check it.
type Source interface {
	// Obtain returns an OCSP response, DER or PEM, for s.
	Obtain(ctx context.Context, s Subject) ([]byte, error)
	// String names the source and its input in errors and the admin API,
	// as the Caddyfile writes it, e.g. "staple /etc/dns/a.ocsp".
	String() string
}

// Poller is a Source whose input may change at any moment (a file): the
// app asks it again every PollInterval instead of at the staple's half-life.
type Poller interface {
	PollInterval() time.Duration
}

// WriteThrough is embedded by the sources that make staples (generated or
// fetched): the app writes each new valid staple to WriteTo, atomically,
// for other servers to read.
type WriteThrough struct {
	// WriteTo is a file that receives each new valid staple (DER, mode
	// 0644, written through a temporary file and a rename). Empty: none.
	WriteTo string `json:"write_to,omitempty"`
}

func (w WriteThrough) writePath() string { return w.WriteTo }

type writeThrougher interface{ writePath() string }

// DefaultPollInterval is how often a staple file is checked for changes.
const DefaultPollInterval = time.Minute

// FileSource reads an OCSP response the operator supplies (DER or PEM, as
// `openssl ocsp -respout` writes it). The file is read again on every
// config reload, on POST /ocsp/reload, and every poll_interval.
type FileSource struct {
	// Path of the response file.
	Path string `json:"path,omitempty"`
	// Interval is how often the file is read again to notice a replaced
	// response. Default: 1m.
	Interval caddy.Duration `json:"poll_interval,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (FileSource) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "ocsp.sources.file", New: func() caddy.Module { return new(FileSource) }}
}

// Provision checks the configuration.
func (f *FileSource) Provision(ctx caddy.Context) error {
	if f.Path == "" {
		return errors.New("file source: path is required")
	}
	f.Path = caddy.NewReplacer().ReplaceAll(f.Path, "")
	return nil
}

// Obtain reads the file.
func (f *FileSource) Obtain(context.Context, Subject) ([]byte, error) {
	return os.ReadFile(f.Path)
}

func (f *FileSource) String() string { return "staple " + f.Path }

// PollInterval implements Poller.
func (f *FileSource) PollInterval() time.Duration {
	if f.Interval > 0 {
		return time.Duration(f.Interval)
	}
	return DefaultPollInterval
}

// Generation holds the settings shared by the sources that sign responses.
type Generation struct {
	// Validity of each response (nextUpdate - now), never past the
	// certificate's NotAfter. Default: 7 days.
	Validity caddy.Duration `json:"validity,omitempty"`
	// Backdate moves thisUpdate into the past to absorb clock skew; 0
	// for none. Default: 1h.
	Backdate *caddy.Duration `json:"backdate,omitempty"`
	// Hash is the hash algorithm of the responses' CertID: "sha1" or
	// "sha256". Default: "sha1".
	Hash string `json:"hash,omitempty"`

	hash crypto.Hash
}

// provision checks the settings; what names the source's field.
func (g *Generation) provision(what string) error {
	h, err := staple.ParseCertIDHash(g.Hash)
	if err != nil {
		return fmt.Errorf("%s: hash: %w", what, err)
	}
	g.hash = h
	return nil
}

func (g Generation) options() staple.GenerateOptions {
	o := staple.GenerateOptions{Validity: time.Duration(g.Validity), Hash: g.hash}
	switch {
	case g.Backdate == nil:
		// staple.GenerateOptions' zero Backdate is the default
	case *g.Backdate == 0:
		o.Backdate = -1 // none
	default:
		o.Backdate = time.Duration(*g.Backdate)
	}
	return o
}

// LocalCASource generates responses signed directly by the CA that issued
// the certificate, from the CA's certificate and key files (RSA or ECDSA):
// dnsdist's generateOCSPResponse, made automatic. Responses are made again
// at half-life.
type LocalCASource struct {
	// CACert is the PEM file of the CA certificate.
	CACert string `json:"ca_cert,omitempty"`
	// CAKey is the PEM file of the CA private key.
	CAKey string `json:"ca_key,omitempty"`
	Generation
	WriteThrough

	caCert *x509.Certificate
	caKey  crypto.Signer
}

// CaddyModule returns the Caddy module information.
func (LocalCASource) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "ocsp.sources.local_ca", New: func() caddy.Module { return new(LocalCASource) }}
}

// Provision loads the CA certificate and key.
func (l *LocalCASource) Provision(ctx caddy.Context) error {
	if l.CACert == "" || l.CAKey == "" {
		return errors.New("local_ca source: ca_cert and ca_key are required")
	}
	if err := l.Generation.provision("local_ca source"); err != nil {
		return err
	}
	certs, err := staple.ReadCertificates(l.CACert)
	if err != nil {
		return fmt.Errorf("local_ca source: ca_cert: %w", err)
	}
	l.caCert = certs[0]
	if l.caKey, err = staple.ReadSigner(l.CAKey); err != nil {
		return fmt.Errorf("local_ca source: ca_key: %w", err)
	}
	if !staple.KeyMatches(l.caKey, l.caCert) {
		return fmt.Errorf("local_ca source: ca_key %s is not the key of ca_cert %s", l.CAKey, l.CACert)
	}
	return nil
}

// Obtain signs a new good response.
func (l *LocalCASource) Obtain(_ context.Context, s Subject) ([]byte, error) {
	return staple.Generate(s.Leaf, l.caCert, l.caKey, l.options())
}

func (l *LocalCASource) String() string { return "local_ca " + l.CACert }

// PKISource generates responses from Caddy's own internal CA (the `pki`
// app, the issuer of `tls internal` certificates), with no files at all.
// Responses are signed by whichever of the CA's intermediate or root
// issued the certificate, and made again at half-life.
type PKISource struct {
	// CA is the ID of the pki app's CA. Default: "local".
	CA string `json:"ca,omitempty"`
	Generation
	WriteThrough

	ca *caddypki.CA
}

// CaddyModule returns the Caddy module information.
func (PKISource) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "ocsp.sources.pki", New: func() caddy.Module { return new(PKISource) }}
}

// Provision finds the CA in the pki app (loading the app as `tls internal`
// does when it is not configured).
func (p *PKISource) Provision(ctx caddy.Context) error {
	if p.CA == "" {
		p.CA = caddypki.DefaultCAID
	}
	if err := p.Generation.provision("pki source"); err != nil {
		return err
	}
	ca, err := pkiCA(ctx, p.CA)
	if err != nil {
		return fmt.Errorf("pki source: %w", err)
	}
	p.ca = ca
	return nil
}

// Obtain signs a new good response with the CA certificate that issued s.
func (p *PKISource) Obtain(_ context.Context, s Subject) ([]byte, error) {
	candidates := append([]*x509.Certificate{}, p.ca.IntermediateCertificateChain()...)
	candidates = append(candidates, p.ca.RootCertificate())
	for _, c := range candidates {
		if c == nil || s.Leaf.CheckSignatureFrom(c) != nil {
			continue
		}
		var key crypto.Signer
		if bytes.Equal(c.Raw, p.ca.RootCertificate().Raw) {
			k, err := p.ca.RootKey()
			if err != nil {
				return nil, fmt.Errorf("pki CA %q root key: %w", p.CA, err)
			}
			key = k
		} else {
			key = p.ca.IntermediateKey()
		}
		return staple.Generate(s.Leaf, c, key, p.options())
	}
	return nil, fmt.Errorf("certificate %s (%q) was not issued by pki CA %q", staple.FormatSerial(s.Leaf.SerialNumber),
		s.Leaf.Subject.String(), p.CA)
}

func (p *PKISource) String() string { return "pki " + p.CA }

// DefaultResponderTimeout bounds one request to an OCSP responder.
const DefaultResponderTimeout = 10 * time.Second

// ResponderSource fetches responses from the certificate's OCSP responder
// (the URL in its Authority Information Access extension, or URL), as
// `openssl ocsp -url` does, at half-life, with back-off on failure.
type ResponderSource struct {
	// URL overrides the responder named in the certificate.
	URL string `json:"url,omitempty"`
	// Timeout of one request. Default: 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	WriteThrough

	client *http.Client
}

// CaddyModule returns the Caddy module information.
func (ResponderSource) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "ocsp.sources.responder", New: func() caddy.Module { return new(ResponderSource) }}
}

// Provision sets up the HTTP client.
func (r *ResponderSource) Provision(ctx caddy.Context) error {
	timeout := time.Duration(r.Timeout)
	if timeout <= 0 {
		timeout = DefaultResponderTimeout
	}
	r.client = &http.Client{Timeout: timeout}
	return nil
}

// Obtain asks the responder with an RFC 6960 POST request.
func (r *ResponderSource) Obtain(ctx context.Context, s Subject) ([]byte, error) {
	return staple.FetchResponse(ctx, r.client, r.URL, s.Leaf, s.Issuer)
}

func (r *ResponderSource) String() string {
	if r.URL != "" {
		return "responder " + r.URL
	}
	return "responder (certificate's OCSP URL)"
}

// Interface guards
var (
	_ Source            = (*FileSource)(nil)
	_ Poller            = (*FileSource)(nil)
	_ caddy.Provisioner = (*FileSource)(nil)
	_ Source            = (*LocalCASource)(nil)
	_ caddy.Provisioner = (*LocalCASource)(nil)
	_ writeThrougher    = (*LocalCASource)(nil)
	_ Source            = (*PKISource)(nil)
	_ caddy.Provisioner = (*PKISource)(nil)
	_ writeThrougher    = (*PKISource)(nil)
	_ Source            = (*ResponderSource)(nil)
	_ caddy.Provisioner = (*ResponderSource)(nil)
	_ writeThrougher    = (*ResponderSource)(nil)
)
