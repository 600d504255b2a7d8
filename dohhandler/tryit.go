package dohhandler

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// tryItSaid holds the URLs a "try it" line was logged for, so that a
// reload does not say them again.
var tryItSaid sync.Map

// sayTryIt arranges for one "try it" line per listener the handler serves
// on, logged once the config has started (the HTTP app's routes and
// listeners are known only then): a curl command for the JSON API at the
// handler's path, with --resolve when the site matches a host name.
func (h *Handler) sayTryIt(ctx caddy.Context) error {
	ev, err := ctx.App("events")
	if err != nil {
		return err
	}
	return ev.(*caddyevents.App).On("started", caddyevents.Handler(tryItHandler{h, ctx}))
}

type tryItHandler struct {
	h   *Handler
	ctx caddy.Context
}

func (t tryItHandler) Handle(context.Context, caddy.Event) error {
	app, err := t.ctx.AppIfConfigured("http")
	if err != nil {
		return nil // the handler runs outside the http app (a test)
	}
	name, qtype, _ := strings.Cut(t.h.Chain.ExampleQuery(), " ")
	for _, srv := range app.(*caddyhttp.App).Servers {
		scheme := "http"
		if len(srv.TLSConnPolicies) > 0 {
			scheme = "https"
		}
		for _, site := range findHandler(srv.Routes, t.h, site{}) {
			for _, l := range srv.Listen {
				na, err := caddy.ParseNetworkAddress(l)
				if err != nil || na.IsUnixNetwork() || na.IsFdNetwork() {
					continue
				}
				for p := na.StartPort; p <= na.EndPort; p++ {
					cmd := site.curl(scheme, na.Host, p, name, qtype)
					if _, said := tryItSaid.LoadOrStore(cmd, struct{}{}); !said {
						t.h.logger.Info("try it", zap.String("server", t.h.Name), zap.String("query", cmd))
					}
				}
			}
		}
	}
	return nil
}

// site is where a route tree leads to the handler: the host and path its
// matchers ask for on the way.
type site struct{ host, path string }

// findHandler walks routes (into subroutes) and returns a site for each
// place h is reached.
func findHandler(routes caddyhttp.RouteList, h *Handler, at site) []site {
	var out []site
	for _, r := range routes {
		here := at
		for _, set := range r.MatcherSets {
			for _, m := range set {
				switch m := m.(type) {
				case *caddyhttp.MatchHost:
					if len(*m) > 0 && here.host == "" {
						here.host = (*m)[0]
					}
				case *caddyhttp.MatchPath:
					if len(*m) > 0 && here.path == "" {
						here.path = (*m)[0]
					}
				}
			}
		}
		for _, mh := range r.Handlers {
			switch mh := mh.(type) {
			case *Handler:
				if mh == h {
					out = append(out, here)
				}
			case *caddyhttp.Subroute:
				out = append(out, findHandler(mh.Routes, h, here)...)
			}
		}
	}
	return out
}

// curl is the command that asks name/qtype of the JSON API at the site
// on host:port. -k: the CA root is logged by the ocsp app, and a
// first try should not depend on where it is.
func (s site) curl(scheme, host string, port uint, name, qtype string) string {
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	path := strings.TrimRight(s.path, "*")
	if path == "" || !strings.HasPrefix(path, "/") {
		path = "/dns-query"
	}
	target := net.JoinHostPort(host, fmt.Sprint(port))
	resolve := ""
	if s.host != "" && !strings.ContainsAny(s.host, "*{") && net.ParseIP(s.host) == nil {
		ip := host
		if strings.Contains(ip, ":") {
			ip = "[" + ip + "]"
		}
		resolve = fmt.Sprintf("--resolve %s:%d:%s ", s.host, port, ip)
		target = net.JoinHostPort(s.host, fmt.Sprint(port))
	}
	return fmt.Sprintf("curl -sk %s'%s://%s%s?name=%s&type=%s'", resolve, scheme, target, path, name, qtype)
}
