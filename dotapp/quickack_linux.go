package dotapp

import (
	"net"
	"syscall"
)

// quickAck makes the kernel acknowledge what it received at once. A
// client with Nagle on (dnsperf) sends its first query only once its TLS
// Finished is ACKed, and a query written in two parts only once the first
// is; with nothing to send, Linux would delay that ACK up to 40 ms
// (seen with tcpdump: 42 ms between the client's Finished and its query).
// Called after the handshake and when a query is partly read, not per
// query.
func quickAck(c net.Conn) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
	})
}
