package forward

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// upstreamSpec says what an upstream is; it is the key of the pool.
type upstreamSpec struct {
	proto      string // udp, tcp, tls
	addr       string // host:port
	serverName string // tls
	caFiles    string // tls: comma-joined PEM files, "" = system roots
}

func (s upstreamSpec) key() string {
	return s.proto + "://" + s.addr + "|" + s.serverName + "|" + s.caFiles
}

// String is the upstream's name in metrics and logs.
func (s upstreamSpec) String() string { return s.proto + "://" + s.addr }

// parseUpstream reads "udp://host:port", "tcp://...", "tls://..." or a
// bare "host[:port]" (UDP). Ports default to 53, or 853 for tls.
func parseUpstream(s string) (upstreamSpec, error) {
	spec := upstreamSpec{proto: "udp"}
	rest := s
	if i := strings.Index(s, "://"); i >= 0 {
		u, err := url.Parse(s)
		if err != nil {
			return spec, fmt.Errorf("upstream %q: %w", s, err)
		}
		if u.Path != "" || u.RawQuery != "" || u.User != nil {
			return spec, fmt.Errorf("upstream %q: only scheme://host:port is allowed", s)
		}
		spec.proto, rest = u.Scheme, u.Host
	}
	port := "53"
	switch spec.proto {
	case "udp", "tcp", "dns":
		if spec.proto == "dns" {
			spec.proto = "udp"
		}
	case "tls":
		port = "853"
	default:
		return spec, fmt.Errorf("upstream %q: unsupported scheme %q (udp, tcp or tls)", s, spec.proto)
	}
	host, p, err := net.SplitHostPort(rest)
	if err != nil {
		host, p = strings.Trim(rest, "[]"), port
	}
	if host == "" {
		return spec, fmt.Errorf("upstream %q: no host", s)
	}
	spec.addr = net.JoinHostPort(host, p)
	return spec, nil
}
