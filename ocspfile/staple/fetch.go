package staple

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"

	"golang.org/x/crypto/ocsp"
)

// maxResponseSize bounds what is read from a responder.
const maxResponseSize = 1 << 20

// FetchResponse asks an OCSP responder (url, or the first OCSP URL of
// leaf) for the status of leaf, as an RFC 6960 HTTP POST.
func FetchResponse(ctx context.Context, client *http.Client, url string, leaf, issuer *x509.Certificate) ([]byte, error) {
	if url == "" {
		if len(leaf.OCSPServer) == 0 {
			return nil, fmt.Errorf("certificate %s names no OCSP responder: set a responder url", FormatSerial(leaf.SerialNumber))
		}
		url = leaf.OCSPServer[0]
	}
	req, err := ocsp.CreateRequest(leaf, issuer, nil)
	if err != nil {
		return nil, fmt.Errorf("ocsp request: %w", err)
	}
	httpReq, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(req))
	if err != nil {
		return nil, fmt.Errorf("ocsp responder %s: %w", url, err)
	}
	httpReq.Header.Set("Content-Type", "application/ocsp-request")
	httpReq.Header.Set("Accept", "application/ocsp-response")
	resp, err := client.Do(httpReq)
	if err != nil {
		return nil, fmt.Errorf("ocsp responder: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseSize+1))
	if err != nil {
		return nil, fmt.Errorf("ocsp responder %s: reading response: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("ocsp responder %s: HTTP %s", url, resp.Status)
	}
	if len(body) > maxResponseSize {
		return nil, fmt.Errorf("ocsp responder %s: response larger than %d bytes", url, maxResponseSize)
	}
	return body, nil
}
