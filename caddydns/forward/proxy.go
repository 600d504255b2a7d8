package forward

import (
	"net"
	"net/netip"

	"github.com/pires/go-proxyproto"

	"github.com/dnsfront/dnsfront/caddydns"
)

// proxyHeader is the PROXY protocol v2 header an upstream with
// proxy_protocol gets before each query (each UDP datagram, or the
// connection of its own a TCP or TLS query takes): the client's address
// and the server's address it reached (Request.Local), over TCP (DoT and
// DoH are), so that a backend that reads the header (unbound's
// proxy-protocol-port, PowerDNS Recursor's proxy-protocol-from, dnsdist)
// applies its ACLs, ECS and logs to the real client. Two families (a
// client over IPv6 that reached an IPv4 address) are both written as
// IPv6 (an IPv4 one mapped), rather than the query dropped. A query of
// dnsfront's own (r nil: a health check) gets a LOCAL header: the
// upstream takes the connection's own addresses. The header is made by
// go-proxyproto, the library Caddy's proxy_protocol listener reads
// headers with.
func proxyHeader(r *caddydns.Request) ([]byte, error) {
	h := &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
	if r != nil && r.Client.IsValid() {
		local := r.Local
		if !local.IsValid() {
			// unknown: the unspecified address of the client's family
			local = netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
			if r.Client.Addr().Is6() {
				local = netip.AddrPortFrom(netip.IPv6Unspecified(), 0)
			}
		}
		h = proxyproto.HeaderProxyFromAddrs(2, net.TCPAddrFromAddrPort(r.Client), net.TCPAddrFromAddrPort(local))
	}
	return h.Format()
}
