// Command idleconns opens many DNS over TLS connections, completes each
// handshake, sends nothing (or, with -query, one query whose answer it
// reads; with -silent, not even a ClientHello; with -h2, the HTTP/2
// preface of a DoH client), and holds them open until its standard input
// closes: the benchmark reads the server's memory meanwhile.
package main

import (
	"crypto/tls"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"sync"
	"time"

	"github.com/miekg/dns"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:853", "server address")
	n := flag.Int("n", 10000, "connections")
	query := flag.String("query", "", "a name to ask for (type A) on each connection before it goes idle; empty: ask nothing")
	silent := flag.Bool("silent", false, "connect over TCP and send nothing, not even a ClientHello")
	h2 := flag.Bool("h2", false, "DNS over HTTPS: ALPN h2, and the HTTP/2 preface and SETTINGS sent after the handshake")
	flag.Parse()
	var frame []byte
	if *query != "" {
		q := new(dns.Msg)
		q.SetQuestion(dns.Fqdn(*query), dns.TypeA)
		b, err := q.Pack()
		if err != nil {
			log.Fatal(err)
		}
		frame = append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...)
	}
	cfg := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"dot"}} // a load generator: the certificate is not the point
	if *h2 {
		cfg.NextProtos = []string{"h2"}
	}
	conns := make([]net.Conn, 0, *n)
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 50)
	failed := 0
	for i := 0; i < *n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var c net.Conn
			var err error
			if *silent {
				c, err = net.DialTimeout("tcp", *addr, 10*time.Second)
			} else {
				c, err = tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", *addr, cfg)
			}
			if err == nil && frame != nil {
				err = askOnce(c, frame)
			}
			if err == nil && *h2 {
				// the client preface, then an empty SETTINGS frame
				_, err = io.WriteString(c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				return
			}
			conns = append(conns, c)
		}()
	}
	wg.Wait()
	fmt.Printf("open %d failed %d\n", len(conns), failed)
	if len(conns) == 0 {
		log.Fatal("no connection")
	}
	_, _ = io.Copy(io.Discard, os.Stdin) // hold until told to stop
	for _, c := range conns {
		c.Close()
	}
}

// askOnce sends one framed query and reads its answer.
func askOnce(c net.Conn, frame []byte) error {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(frame); err != nil {
		return err
	}
	var l [2]byte
	if _, err := io.ReadFull(c, l[:]); err != nil {
		return err
	}
	_, err := io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint16(l[:])))
	return err
}
