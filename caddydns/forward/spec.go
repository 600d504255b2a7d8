package forward

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// upstreamSpec says what an upstream is; it is the key of the pool.
type upstreamSpec struct {
	proto      string // udp, tcp, tls, https
	addr       string // host:port
	path       string // https: the request path
	serverName string // tls, https
	caFiles    string // tls, https: comma-joined PEM files, "" = system roots
	proxy      bool   // udp, tcp, tls: a PROXY header before each query
}

func (s upstreamSpec) key() string {
	k := s.String() + "|" + s.serverName + "|" + s.caFiles
	if s.proxy {
		k += "|proxy"
	}
	return k
}

// String is the upstream's name in metrics and logs.
func (s upstreamSpec) String() string { return s.proto + "://" + s.addr + s.path }

// url is an https upstream's request URL (without :443).
func (s upstreamSpec) url() string {
	if host, port, _ := net.SplitHostPort(s.addr); port == "443" {
		if strings.Contains(host, ":") {
			host = "[" + host + "]"
		}
		return s.proto + "://" + host + s.path
	}
	return s.String()
}

// DefaultDoHPath is an https upstream's path when its URL has none.
const DefaultDoHPath = "/dns-query"

// parseUpstream reads "udp://host:port", "tcp://...", "tls://...",
// "https://host[:port][/path]" or a bare "host[:port]" (UDP). Ports
// default to 53, 853 for tls, 443 for https (whose path defaults to
// /dns-query).
func parseUpstream(s string) (upstreamSpec, error) {
	spec := upstreamSpec{proto: "udp"}
	rest := s
	if i := strings.Index(s, "://"); i >= 0 {
		u, err := url.Parse(s)
		if err != nil {
			return spec, fmt.Errorf("upstream %q: %w", s, err)
		}
		if u.Scheme == "https" {
			// DNS over HTTPS: https://host[:port][/path], POST to the path
			if u.RawQuery != "" || u.Fragment != "" || u.User != nil || strings.Contains(u.Path, "{") {
				return spec, fmt.Errorf("upstream %q: only https://host[:port][/path] is allowed (POST has no query or template)", s)
			}
			spec.path = u.EscapedPath()
			if spec.path == "" || spec.path == "/" {
				spec.path = DefaultDoHPath
			}
		} else if u.Path != "" || u.RawQuery != "" || u.User != nil {
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
	case "https":
		port = "443"
	default:
		return spec, fmt.Errorf("upstream %q: unsupported scheme %q (udp, tcp, tls or https)", s, spec.proto)
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
