//go:build linux

package dotapp

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestH2ParkAndResume: a quiet HTTP/2 connection parks (no goroutine of
// its own), a request wakes it and is answered on the same connection,
// and once the idle timeout passes while parked it ends with a GOAWAY.
func TestH2ParkAndResume(t *testing.T) {
	s := newTestDoHServer(t)
	s.tlsCfg.NextProtos = []string{"h2", "http/1.1"}
	s, addr := listenParking(t, s, dohVecs, time.Second, 0)
	dials := 0
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http2.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		DialTLS: func(network, _ string, cfg *tls.Config) (net.Conn, error) {
			dials++
			return tls.Dial(network, addr, cfg)
		},
	}}
	get := func() {
		t.Helper()
		resp, err := client.Get("https://dns.example.org" + dnsGET(t, "www.example.org."))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || len(body) == 0 {
			t.Fatalf("status %d, %d octets", resp.StatusCode, len(body))
		}
	}
	get()
	waitParked(t, s, 1)
	get() // resumed
	if dials != 1 {
		t.Fatalf("%d connections, want the parked one resumed", dials)
	}
	waitParked(t, s, 1)
	// the idle timeout ends it while parked: the gauges go back to 0, and
	// the next request opens a new connection
	waitParked(t, s, 0)
	waitMetric(t, "connections open", s.metrics.open, 0)
	get()
	if dials != 2 {
		t.Fatalf("%d connections after the idle timeout, want 2", dials)
	}
}
