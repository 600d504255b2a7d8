package ocspfile

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"golang.org/x/crypto/ocsp"

	"github.com/dnsfront/dnsfront/internal/atomicfile"
	"github.com/dnsfront/dnsfront/ocspfile/staple"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "ocsp",
		Usage: "generate|inspect|fetch|status ...",
		Short: "Makes, checks and fetches OCSP responses for stapling",
		Long: `
Tools for the OCSP staples that the ocsp app serves.

  generate  signs a good OCSP response for a certificate with its CA's key
            (dnsdist's generateOCSPResponse)
  inspect   prints a response, and with --cert checks it as the server
            would before stapling it
  fetch     asks the certificate's OCSP responder, checks the answer, and
            writes it only if it is valid
  status    prints the staples kept in the config's storage (a fleet's
            shared storage): who made each, and when it expires

Files are written atomically (temporary file and rename) with mode 0644.
After replacing a staple file, make the running server use it with
'caddy reload --force' or 'curl -X POST localhost:2019/ocsp/reload'.`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.AddCommand(generateCommand(), inspectCommand(), fetchCommand(), statusCommand())
		},
	})
}

func generateCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "generate --cert <file> --ca-cert <file> --ca-key <file> --out <file> [--validity <duration>] [--backdate <duration>] [--hash sha1|sha256]",
		Short: "Signs a good OCSP response for a certificate with its CA's key",
		Args:  cobra.NoArgs,
	}
	f := c.Flags()
	cert := f.String("cert", "", "PEM file of the certificate (the first certificate is used)")
	caCert := f.String("ca-cert", "", "PEM file of the CA certificate that issued it")
	caKey := f.String("ca-key", "", "PEM file of the CA private key (RSA or ECDSA)")
	out := f.String("out", "", "file to write the DER response to")
	validity := f.String("validity", "7d", "how long the response is valid (never past the certificate's NotAfter)")
	backdate := f.String("backdate", "1h", "how far thisUpdate is moved into the past, for clock skew")
	hashName := f.String("hash", "sha1", "hash algorithm of the CertID: sha1 or sha256 (dnsdist writes sha256)")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := required(map[string]string{"--cert": *cert, "--ca-cert": *caCert, "--ca-key": *caKey, "--out": *out}); err != nil {
			return err
		}
		hash, err := staple.ParseCertIDHash(*hashName)
		if err != nil {
			return fmt.Errorf("--hash: %w", err)
		}
		v, err := caddy.ParseDuration(*validity)
		if err != nil || v <= 0 {
			return fmt.Errorf("--validity %q: want a positive duration such as 7d or 12h", *validity)
		}
		b, err := caddy.ParseDuration(*backdate)
		if err != nil || b < 0 {
			return fmt.Errorf("--backdate %q: want a duration such as 1h, or 0", *backdate)
		}
		if b == 0 {
			b = -1 // staple.GenerateOptions: negative means none
		}
		leaf, err := firstCertificate(*cert)
		if err != nil {
			return err
		}
		ca, err := firstCertificate(*caCert)
		if err != nil {
			return err
		}
		key, err := staple.ReadSigner(*caKey)
		if err != nil {
			return err
		}
		der, err := staple.Generate(leaf, ca, key, staple.GenerateOptions{Validity: v, Backdate: b, Hash: hash})
		if err != nil {
			return err
		}
		st, err := staple.Validate(der, leaf, ca, time.Now())
		if err != nil {
			return fmt.Errorf("generated response does not validate: %w", err)
		}
		if err := atomicfile.Write(*out, der, 0o644); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: good for serial %s, thisUpdate %s, nextUpdate %s\n",
			*out, staple.FormatSerial(leaf.SerialNumber), staple.FormatTime(st.ThisUpdate()), staple.FormatTime(st.NextUpdate()))
		return nil
	}
	return c
}

func inspectCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "inspect <response file> [--cert <file>] [--issuer <file>]",
		Short: "Prints an OCSP response and, with --cert, whether it may be stapled",
		Args:  cobra.ExactArgs(1),
	}
	f := c.Flags()
	cert := f.String("cert", "", "PEM file of the certificate (and its chain) the response is for")
	issuerFile := f.String("issuer", "", "PEM file of the issuing CA (default: the second certificate of --cert)")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		w := cmd.OutOrStdout()
		raw, err := os.ReadFile(args[0])
		if err != nil {
			return err
		}
		if err := describe(w, raw); err != nil {
			return fmt.Errorf("%s: %w", args[0], err)
		}
		if *cert == "" {
			fmt.Fprintln(w, "verdict:      not checked (give --cert to check it against a certificate)")
			return nil
		}
		leaf, issuer, err := leafAndIssuer(*cert, *issuerFile)
		if err != nil {
			return err
		}
		if _, err := staple.Validate(raw, leaf, issuer, time.Now()); err != nil {
			fmt.Fprintf(w, "verdict:      REFUSED: %v\n", err)
			return fmt.Errorf("%s: %w", args[0], err)
		}
		fmt.Fprintf(w, "verdict:      OK: may be stapled with %s (serial %s)\n", *cert, staple.FormatSerial(leaf.SerialNumber))
		return nil
	}
	return c
}

func fetchCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "fetch --cert <file> [--issuer <file>] --out <file> [--url <responder>]",
		Short: "Fetches an OCSP response from the responder and writes it if it is valid",
		Args:  cobra.NoArgs,
	}
	f := c.Flags()
	cert := f.String("cert", "", "PEM file of the certificate (and its chain)")
	issuerFile := f.String("issuer", "", "PEM file of the issuing CA (default: the second certificate of --cert)")
	out := f.String("out", "", "file to write the DER response to")
	url := f.String("url", "", "responder URL (default: the certificate's OCSP URL)")
	timeout := f.Duration("timeout", DefaultResponderTimeout, "timeout of the request")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := required(map[string]string{"--cert": *cert, "--out": *out}); err != nil {
			return err
		}
		leaf, issuer, err := leafAndIssuer(*cert, *issuerFile)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		der, err := staple.FetchResponse(ctx, &http.Client{}, *url, leaf, issuer)
		if err != nil {
			return err
		}
		st, err := staple.Validate(der, leaf, issuer, time.Now())
		if errors.Is(err, staple.ErrNoNextUpdate) {
			return fmt.Errorf("responder answered, but %w (an openssl ocsp responder sets one with -nmin or -ndays); %s not written", err, *out)
		}
		if err != nil {
			return fmt.Errorf("responder answered, but %w; %s not written", err, *out)
		}
		if err := atomicfile.Write(*out, st.DER, 0o644); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: good for serial %s, thisUpdate %s, nextUpdate %s\n",
			*out, staple.FormatSerial(leaf.SerialNumber), staple.FormatTime(st.ThisUpdate()), staple.FormatTime(st.NextUpdate()))
		return nil
	}
	return c
}

// describe prints what a response says, without judging it.
func describe(w io.Writer, raw []byte) error {
	der, err := staple.DecodeResponse(raw)
	if err != nil {
		return err
	}
	ids, err := staple.CertIDs(der)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "response:     successful, %d bytes, %d certificate status(es)\n", len(der), len(ids))
	for _, id := range ids {
		// the status of every entry, each parsed for its own serial
		r, err := ocsp.ParseResponseForCert(der, &x509.Certificate{SerialNumber: id.SerialNumber}, nil)
		if err != nil {
			return fmt.Errorf("%w: %w", staple.ErrMalformed, err)
		}
		status := map[int]string{ocsp.Good: "good", ocsp.Revoked: "revoked", ocsp.Unknown: "unknown"}[r.Status]
		if r.Status == ocsp.Revoked {
			status += fmt.Sprintf(" at %s, reason %d", staple.FormatTime(r.RevokedAt), r.RevocationReason)
		}
		fmt.Fprintf(w, "serial:       %s\n", staple.FormatSerial(id.SerialNumber))
		fmt.Fprintf(w, "  status:     %s\n", status)
		fmt.Fprintf(w, "  issuer:     name hash %X, key hash %X\n", id.NameHash, id.IssuerKeyHash)
		fmt.Fprintf(w, "  thisUpdate: %s\n", staple.FormatTime(r.ThisUpdate))
		if r.NextUpdate.IsZero() {
			fmt.Fprintf(w, "  nextUpdate: none\n")
		} else {
			fmt.Fprintf(w, "  nextUpdate: %s (%s)\n", staple.FormatTime(r.NextUpdate), untilText(r.NextUpdate))
		}
		fmt.Fprintf(w, "  producedAt: %s\n", staple.FormatTime(r.ProducedAt))
		fmt.Fprintf(w, "  signed by:  %s\n", signerText(r, &id))
	}
	return nil
}

// signerText says who signed r: the issuer itself (its certificate
// embedded or not), or a delegated responder, with what its certificate
// allows. An embedded certificate is the issuer when its name and key
// hash to the CertID's issuer hashes.
func signerText(r *ocsp.Response, id *staple.CertID) string {
	c := r.Certificate
	if c == nil {
		by := "key hash " + fmt.Sprintf("%X", r.ResponderKeyHash)
		if len(r.RawResponderName) > 0 {
			var name pkix.RDNSequence
			if _, err := asn1.Unmarshal(r.RawResponderName, &name); err == nil {
				by = fmt.Sprintf("name %q", name.String())
			}
		}
		return "responder " + by + ", no certificate embedded (the issuer itself, if it verifies against it)"
	}
	if id.CheckIssuer(c) == nil {
		return fmt.Sprintf("the issuer itself, %q (its certificate embedded)", c.Subject.String())
	}
	eku := "lacks id-kp-OCSPSigning: not allowed to sign for the issuer"
	if slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageOCSPSigning) {
		eku = "with id-kp-OCSPSigning"
	}
	return fmt.Sprintf("delegated responder %q, issued by %q, %s", c.Subject.String(), c.Issuer.String(), eku)
}

func untilText(t time.Time) string {
	d := time.Until(t).Round(time.Second)
	if d < 0 {
		return "expired " + (-d).String() + " ago"
	}
	return "in " + d.String()
}

func required(flags map[string]string) error {
	var missing []string
	for name, v := range flags {
		if v == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing required flag(s): %v", missing)
	}
	return nil
}

func firstCertificate(path string) (*x509.Certificate, error) {
	certs, err := staple.ReadCertificates(path)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

// leafAndIssuer reads a certificate and its issuer: from issuerFile, or the
// second certificate of certFile.
func leafAndIssuer(certFile, issuerFile string) (*x509.Certificate, *x509.Certificate, error) {
	certs, err := staple.ReadCertificates(certFile)
	if err != nil {
		return nil, nil, err
	}
	if issuerFile != "" {
		issuer, err := firstCertificate(issuerFile)
		return certs[0], issuer, err
	}
	if len(certs) < 2 {
		return nil, nil, errors.New(certFile + " holds only one certificate: give the CA certificate with --issuer")
	}
	return certs[0], certs[1], nil
}
