package integration

import (
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

const floodSite = `{
	servers {
		trusted_proxies static 127.0.0.1/32
	}
}
https://127.0.0.1:{{.HTTPS}} {
	tls internal
	doh {
		ratelimit {
			qps 20
			burst 40
			prefix 32 128
			max_clients {{.MaxClients}}
		}
		zone example.test {
			record "@ 300 IN SOA ns hostmaster 1 7200 3600 1209600 300"
			record "www 300 IN A 192.0.2.80"
		}
	}
}
`

// TestRateLimitFloodThroughServer: a running Caddy's DoH site behind a
// trusted proxy gets requests from 200,000 distinct client addresses
// (X-Forwarded-For; DNSFRONT_FLOOD=1000000 for the full million),
// each a new rate-limit bucket: the live heap grows within the
// documented 250 bytes a tracked client (max_clients 10,000, so the
// limiter forgets most of them), and an ordinary client asking ten times
// a second all along is answered every time.
func TestRateLimitFloodThroughServer(t *testing.T) {
	n := 200_000
	if v := os.Getenv("DNSFRONT_FLOOD"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			t.Fatalf("DNSFRONT_FLOOD=%q: want a count of addresses", v)
		}
	}
	const maxClients = 10_000
	dir := t.TempDir()
	port := freePort(t)
	c := startCaddy(t, dir, floodSite, Vars{"HTTPS": port, "MaxClients": maxClients})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	waitListen(t, addr)
	// the site's certificate is issued after the listener opens
	if err := eventually(30*time.Second, func() bool {
		conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err == nil {
			conn.Close()
		}
		return err == nil
	}); err != nil {
		t.Fatal("the site never completed a TLS handshake")
	}

	q := new(dns.Msg).SetQuestion("www.example.test.", dns.TypeA)
	q.Id = 0
	wire, _ := q.Pack()
	url := "https://" + addr + "/dns-query?dns=" + base64.RawURLEncoding.EncodeToString(wire)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true, MaxConnsPerHost: 4}}
	defer client.CloseIdleConnections()
	ask := func(from string) (int, error) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("X-Forwarded-For", from)
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		m := new(dns.Msg)
		if resp.StatusCode != http.StatusOK || m.Unpack(body) != nil {
			return 0, fmt.Errorf("%s", resp.Status)
		}
		return m.Rcode, nil
	}
	// warm up (TLS, HTTP/2, the handler's pools), then the baseline
	for i := range 100 {
		if _, err := ask(fmt.Sprintf("192.0.2.%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	before := c.heapLive()

	// the ordinary client, ten times a second while the flood runs
	stop := make(chan struct{})
	var ordinary, ordinaryBad atomic.Int64
	var ordErr atomic.Value
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				rc, err := ask("198.51.100.7")
				ordinary.Add(1)
				if err != nil || rc != dns.RcodeSuccess {
					ordinaryBad.Add(1)
					ordErr.Store(fmt.Sprintf("rcode %s, %v", dns.RcodeToString[rc], err))
				}
			}
		}
	})
	var next, failed atomic.Int64
	var flood sync.WaitGroup
	for range 64 {
		flood.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				from := fmt.Sprintf("10.%d.%d.%d", byte(i>>16), byte(i>>8), byte(i))
				if rc, err := ask(from); err != nil || rc != dns.RcodeSuccess {
					failed.Add(1)
				}
			}
		})
	}
	flood.Wait()
	close(stop)
	wg.Wait()
	after := c.heapLive()

	if f := failed.Load(); f > 0 {
		t.Fatalf("%d of %d first queries from new addresses were not answered (each is within its own burst)", f, n)
	}
	if ordinary.Load() == 0 || ordinaryBad.Load() > 0 {
		t.Fatalf("the ordinary client: %d of %d queries not answered (%v)", ordinaryBad.Load(), ordinary.Load(), ordErr.Load())
	}
	grew := after - before
	t.Logf("%d client addresses, the ordinary client asked %d times; live heap %d -> %d bytes (%+d)", n, ordinary.Load(), before, after, grew)
	// 250 bytes for each of max_clients (docs/ratelimit.md), and 2 MiB for
	// what HTTP/2 and the handler keep warm; unbounded, 200,000 clients
	// would take ~28 MB
	if budget := int64(250*maxClients + 2<<20); grew > budget {
		t.Fatalf("the live heap grew by %d bytes for %d client addresses: over the budget of %d", grew, n, budget)
	}
}
