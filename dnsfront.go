// Package dnsfront registers the dnsfront Caddy modules: DNS over TLS (the
// `dot` app), DNS over HTTPS (`http.handlers.doh`), the DNS handler chain
// (`dns.handlers.*`) and OCSP stapling under the operator's control (the
// `ocsp` app). Build Caddy with it:
//
//	xcaddy build --with github.com/dnsfront/dnsfront
package dnsfront

import (
	// plug in the modules
	_ "github.com/dnsfront/dnsfront/caddydns/acl"
	_ "github.com/dnsfront/dnsfront/caddydns/answer"
	_ "github.com/dnsfront/dnsfront/caddydns/cache"
	_ "github.com/dnsfront/dnsfront/caddydns/dnstap"
	_ "github.com/dnsfront/dnsfront/caddydns/ecs"
	_ "github.com/dnsfront/dnsfront/caddydns/forward"
	_ "github.com/dnsfront/dnsfront/caddydns/nsid"
	_ "github.com/dnsfront/dnsfront/caddydns/querylog"
	_ "github.com/dnsfront/dnsfront/caddydns/ratelimit"
	_ "github.com/dnsfront/dnsfront/caddydns/rebind"
	_ "github.com/dnsfront/dnsfront/caddydns/route"
	_ "github.com/dnsfront/dnsfront/caddydns/zone"
	_ "github.com/dnsfront/dnsfront/caddyfile"
	_ "github.com/dnsfront/dnsfront/dohhandler"
	_ "github.com/dnsfront/dnsfront/dotapp"
	_ "github.com/dnsfront/dnsfront/ocspfile"
)
