//go:build linux

package dotapp

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/miekg/dns"
	"golang.org/x/net/http2"
)

// TestMaxConnectionDuration: a DoT connection that keeps asking is
// closed once it has lived past max_connection_duration, between two
// queries or after answering the one it was reading (whose answer then
// tells the client to close: keepalive 0; the others give the idle
// timeout), long before its idle timeout; and so is a quiet one.
func TestMaxConnectionDuration(t *testing.T) {
	s := newTestServer(t)
	s.MaxConnectionDuration = caddy.Duration(300 * time.Millisecond)
	_, addr := listenParking(t, s, dotVecs, 30*time.Second, 0)

	busy := dialDoT(t, addr)
	answered, closing := 0, false // closing: an answer announced keepalive 0
	for id := uint16(1); ; id++ {
		q := new(dns.Msg)
		q.SetQuestion("www.example.org.", dns.TypeA)
		q.Id = id
		q.SetEdns0(1232, false)
		q.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_TCP_KEEPALIVE{Code: dns.EDNS0TCPKEEPALIVE}}
		if _, err := busy.Write(frame(q)); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("after %d answers the connection was still open: %v", answered, err)
			}
			break // closed after the last answer
		}
		m, err := readAnswer(busy)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("after %d answers the connection was neither answered nor closed: %v", answered, err)
			}
			break
		}
		if closing {
			t.Fatalf("an answer (ID %d) after the one that announced keepalive 0", m.Id)
		}
		answered++
		for _, o := range m.IsEdns0().Option {
			if k, ok := o.(*dns.EDNS0_TCP_KEEPALIVE); ok {
				switch k.Timeout {
				case 0:
					closing = true
				case 300: // idle_timeout 30s
				default:
					t.Fatalf("answer %d: keepalive %d, want 300 (30s) or 0", m.Id, k.Timeout)
				}
			}
		}
		time.Sleep(10 * time.Millisecond) // a client that asks now and then
	}
	if answered < 2 {
		t.Fatalf("%d answers before the connection ended", answered)
	}

	quiet := dialDoT(t, addr)
	ask(t, quiet, 1)
	if _, err := quiet.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a quiet connection past max_connection_duration: %v, want it closed", err)
	}
}

// TestH2MaxConnectionDuration: an HTTP/2 connection in use past
// max_connection_duration gets GOAWAY, its requests are answered, and
// the client goes on over a new connection; an HTTP/1.1 one is answered
// with Connection: close, and likewise.
func TestH2MaxConnectionDuration(t *testing.T) {
	s := newTestDoHServer(t)
	s.tlsCfg.NextProtos = []string{"h2", "http/1.1"}
	s.MaxConnectionDuration = caddy.Duration(300 * time.Millisecond)
	_, addr := listenParking(t, s, dohVecs, 30*time.Second, 0)
	dials := 0
	dial := func(network string, cfg *tls.Config) (net.Conn, error) {
		dials++
		return tls.Dial(network, addr, cfg)
	}
	t.Run("h2", func(t *testing.T) {
		dials = 0
		getUntilRedial(t, &dials, &http.Client{Timeout: 5 * time.Second, Transport: &http2.Transport{
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
			DialTLS:         func(network, _ string, cfg *tls.Config) (net.Conn, error) { return dial(network, cfg) },
		}})
	})
	t.Run("http/1.1", func(t *testing.T) {
		dials = 0
		getUntilRedial(t, &dials, &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			DialTLSContext: func(_ context.Context, network, _ string) (net.Conn, error) {
				return dial(network, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
			},
		}})
	})
}

// getUntilRedial asks through client, a request every 10 ms, until it
// has dialled a second connection; every request must be answered.
func getUntilRedial(t *testing.T, dials *int, client *http.Client) {
	t.Helper()
	for i := 0; *dials < 2; i++ {
		if i == 500 {
			t.Fatalf("%d requests on one connection past max_connection_duration", i)
		}
		resp, err := client.Get("https://dns.example.org" + dnsGET(t, "www.example.org."))
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || len(body) == 0 {
			t.Fatalf("request %d: status %d, %d octets", i, resp.StatusCode, len(body))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
