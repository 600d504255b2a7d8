// Command idleconns opens many DNS over TLS connections, completes each
// handshake, sends nothing, and holds them open until its standard input
// closes: the benchmark reads the server's memory meanwhile.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"sync"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:853", "server address")
	n := flag.Int("n", 10000, "connections")
	flag.Parse()
	cfg := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"dot"}} // a load generator: the certificate is not the point
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
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", *addr, cfg)
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
