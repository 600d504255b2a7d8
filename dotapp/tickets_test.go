package dotapp

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"testing"
	"time"

	"github.com/dnsfront/dnsfront/internal/testpki"
)

// TestTicketsOutliveConfigs: a session ticket from a server whose config
// is gone resumes on the config that replaced it (a reload), over real
// TLS 1.3 and 1.2; a config of its own (no ring) does not resume it.
func TestTicketsOutliveConfigs(t *testing.T) {
	ca := testpki.NewCA(t, "tickets CA", testpki.ECDSA)
	leaf := ca.Issue(t, testpki.LeafOptions{}, "dns.example.test")
	cert := tls.Certificate{Certificate: [][]byte{leaf.Cert.Raw}, PrivateKey: leaf.Key}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	serverConfig := func(ring bool) *tls.Config {
		cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
		if ring {
			if err := tickets.register(cfg); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tickets.unregister(cfg) })
		}
		return cfg
	}
	for _, version := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		cache := tls.NewLRUClientSessionCache(4)
		client := &tls.Config{RootCAs: roots, ServerName: "dns.example.test", ClientSessionCache: cache, MaxVersion: version}
		if resumed := handshake(t, serverConfig(true), client); resumed {
			t.Fatalf("version %x: the first handshake resumed", version)
		}
		if resumed := handshake(t, serverConfig(true), client); !resumed {
			t.Fatalf("version %x: a new config of the ring did not resume the old one's ticket", version)
		}
		if resumed := handshake(t, serverConfig(false), client); resumed {
			t.Fatalf("version %x: a config with keys of its own resumed the ring's ticket", version)
		}
	}
}

// handshake connects client to a server with cfg over loopback TCP, and
// says whether the session was resumed. The client reads once so that a
// TLS 1.3 ticket, sent after the handshake, reaches its cache.
func handshake(t *testing.T, cfg, client *tls.Config) bool {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		tc := tls.Server(c, cfg)
		if err := tc.Handshake(); err != nil {
			done <- err
			return
		}
		_, err = tc.Write([]byte{1})
		done <- err
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), client)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return c.ConnectionState().DidResume
}

// TestTicketRotation: a key a day, each kept for ticketKeys days, the
// newest first; registering again within the day rotates nothing; the
// rotation timer runs while a config is registered.
func TestTicketRotation(t *testing.T) {
	now := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	r := &ticketRing{configs: map[*tls.Config]struct{}{}, now: func() time.Time { return now }}
	a, b := new(tls.Config), new(tls.Config)
	if err := r.register(a); err != nil {
		t.Fatal(err)
	}
	first := r.keys[0]
	now = now.Add(time.Hour)
	if err := r.register(b); err != nil {
		t.Fatal(err)
	}
	if len(r.keys) != 1 || r.keys[0] != first {
		t.Fatalf("a second config within the day: %d keys, the first changed: %v", len(r.keys), r.keys[0] != first)
	}
	for day := 1; day <= 10; day++ {
		now = now.Add(ticketRotation)
		r.tick()
		if want := min(day+1, ticketKeys); len(r.keys) != want {
			t.Fatalf("day %d: %d keys, want %d", day, len(r.keys), want)
		}
		if day == 1 && (r.keys[0] == first || r.keys[1] != first) {
			t.Fatal("day 1: the new key is not first, or the old one not second")
		}
		if day == 3 {
			r.unregister(b)
		}
	}
	if r.timer == nil {
		t.Fatal("no rotation timer while a config is registered")
	}
	r.unregister(a)
	if r.timer != nil {
		t.Fatal("the rotation timer runs on with no config registered")
	}
}
