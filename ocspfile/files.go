package ocspfile

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
)

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
