// Command mkqueries writes the query files the benchmarks use: a dnsperf
// data file, a list of DoH GET URLs (RFC 8484, base64url, ID 0) and one
// DoH POST body, all for the same names of the example zone; and for the
// cache rows, queries for names under zipf.test (a wildcard zone) drawn
// with a Zipf distribution over 100,000 names (a busy resolver's mix,
// ~90% hits once warm), and a file of 100 names (all hits once warm).
package main

import (
	"encoding/base64"
	"flag"
	"fmt"
	"log"
	"math/rand"
	"os"
	"path/filepath"
	"strings"

	"github.com/miekg/dns"
)

var queries = []struct {
	name  string
	qtype uint16
}{
	{"www.example.test.", dns.TypeA},
	{"mail.example.test.", dns.TypeA},
	{"api.example.test.", dns.TypeA},
	{"ns1.example.test.", dns.TypeAAAA},
	{"www.example.test.", dns.TypeAAAA},
	{"example.test.", dns.TypeMX},
	{"example.test.", dns.TypeSOA},
	{"nope.example.test.", dns.TypeA},
}

func main() {
	dir := flag.String("out", ".", "directory for dnsperf.txt, get-urls.txt, post.bin")
	base := flag.String("url", "https://127.0.0.1:8443/dns-query", "DoH URL for the GET list")
	cacheURL := flag.String("cache-url", "https://127.0.0.1:8443/cache-query", "DoH URL for the cache rows' GET list")
	flag.Parse()
	writeCacheFiles(*dir, *cacheURL)
	var perf, urls strings.Builder
	for _, q := range queries {
		fmt.Fprintf(&perf, "%s %s\n", strings.TrimSuffix(q.name, "."), dns.TypeToString[q.qtype])
		m := new(dns.Msg)
		m.SetQuestion(q.name, q.qtype)
		m.Id = 0
		b, err := m.Pack()
		if err != nil {
			log.Fatal(err)
		}
		fmt.Fprintf(&urls, "%s?dns=%s\n", *base, base64.RawURLEncoding.EncodeToString(b))
	}
	m := new(dns.Msg)
	m.SetQuestion(queries[0].name, queries[0].qtype)
	m.Id = 0
	post, _ := m.Pack()
	for name, b := range map[string][]byte{"dnsperf.txt": []byte(perf.String()), "get-urls.txt": []byte(urls.String()), "post.bin": post} {
		if err := os.WriteFile(filepath.Join(*dir, name), b, 0o644); err != nil {
			log.Fatal(err)
		}
	}
}

// writeCacheFiles writes zipf.txt (dnsperf) and zipf-urls.txt (DoH GET)
// with the same 500,000 draws, hits.txt with 100 names, and unique.txt
// with 1,000,000 names, each asked once.
func writeCacheFiles(dir, url string) {
	z := rand.NewZipf(rand.New(rand.NewSource(1)), 1.01, 1, 99_999)
	var perf, urls, hits strings.Builder
	for i := 0; i < 500_000; i++ {
		name := fmt.Sprintf("n%d.zipf.test.", z.Uint64())
		fmt.Fprintf(&perf, "%s A\n", strings.TrimSuffix(name, "."))
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		m.Id = 0
		b, err := m.Pack()
		if err != nil {
			log.Fatal(err)
		}
		fmt.Fprintf(&urls, "%s?dns=%s\n", url, base64.RawURLEncoding.EncodeToString(b))
	}
	for i := 0; i < 100; i++ {
		fmt.Fprintf(&hits, "h%d.zipf.test A\n", i)
	}
	var unique strings.Builder // every query a miss: 1,000,000 names asked once
	for i := 0; i < 1_000_000; i++ {
		fmt.Fprintf(&unique, "u%d.zipf.test A\n", i)
	}
	for name, text := range map[string]string{"zipf.txt": perf.String(), "zipf-urls.txt": urls.String(), "hits.txt": hits.String(), "unique.txt": unique.String()} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			log.Fatal(err)
		}
	}
}
