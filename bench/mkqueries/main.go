// Command mkqueries writes the query files the benchmarks use: a dnsperf
// data file, a list of DoH GET URLs (RFC 8484, base64url, ID 0) and one
// DoH POST body, all for the same names of the example zone.
package main

import (
	"encoding/base64"
	"flag"
	"fmt"
	"log"
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
	flag.Parse()
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
