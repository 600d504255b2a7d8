// Package querylog is `dns.handlers.query_log`: one structured log entry
// per query through Caddy's logging, so that Caddy's log config (outputs,
// encoders, filters, sampling) applies to it.
package querylog

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/miekg/dns"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/dnsfront/dnsfront/caddydns"
)

func init() {
	caddy.RegisterModule(QueryLog{})
}

// QueryLog logs every query that passes it, after the rest of the chain
// has answered: the client (the real one: PROXY protocol, trusted
// proxies), transport, server, name, type, rcode (or "dropped"),
// duration, the upstream that answered and the cache's verdict. Its
// logger is `dns.handlers.query_log`, at INFO. Place it first, so that it
// sees the queries an ACL or a rate limit refuses too.
type QueryLog struct {
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (QueryLog) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "dns.handlers.query_log", New: func() caddy.Module { return new(QueryLog) }}
}

// Provision takes the module's logger.
func (q *QueryLog) Provision(ctx caddy.Context) error {
	q.logger = ctx.Logger()
	return nil
}

// WatchesOnly marks the handler as one that passes every query on
// (caddydns.Watcher).
func (*QueryLog) WatchesOnly() {}

// ServeDNS passes the query on and logs it with its outcome.
func (q *QueryLog) ServeDNS(ctx context.Context, r *caddydns.Request, next caddydns.Next) (caddydns.Response, error) {
	start := time.Now()
	res, err := next(ctx, r)
	if ce := q.logger.Check(zapcore.InfoLevel, "query"); ce != nil {
		q.write(ce, r, res, err, time.Since(start))
	}
	return res, err
}

func (q *QueryLog) write(ce *zapcore.CheckedEntry, r *caddydns.Request, res caddydns.Response, err error, took time.Duration) {
	var rcode string
	switch {
	case err != nil && errors.Is(err, caddydns.ErrDrop):
		rcode = "dropped"
	case err != nil:
		rcode = dns.RcodeToString[dns.RcodeServerFailure]
	case res.Msg != nil:
		rcode = rcodeString(res.Msg.Rcode)
	case res.Wire != nil:
		rcode = rcodeString(res.Wire.Layout().Rcode)
	}
	qn := r.Msg.Question[0]
	fields := make([]zap.Field, 0, 12)
	fields = append(fields,
		zap.String("client", r.Client.Addr().String()),
		zap.Uint16("client_port", r.Client.Port()),
		zap.String("transport", r.Transport),
		zap.String("server", r.Server),
		zap.String("qname", qn.Name),
		zap.String("qtype", dns.Type(qn.Qtype).String()),
		zap.String("rcode", rcode),
		zap.Duration("duration", took),
	)
	if r.ServerName != "" {
		fields = append(fields, zap.String("server_name", r.ServerName))
	}
	if r.Upstream != "" {
		fields = append(fields, zap.String("upstream", r.Upstream))
	}
	if r.Cache != "" {
		fields = append(fields, zap.String("cache", r.Cache))
	}
	if err != nil && !errors.Is(err, caddydns.ErrDrop) {
		fields = append(fields, zap.Error(err))
	}
	ce.Write(fields...)
}

func rcodeString(rc int) string {
	if s, ok := dns.RcodeToString[rc]; ok {
		return s
	}
	return "RCODE" + strconv.Itoa(rc)
}

// UnmarshalCaddyfile reads a bare `query_log`.
func (q *QueryLog) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // handler name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(d.Nesting()) {
		return d.Errf("query_log takes no options: its output, level and sampling are Caddy's log config")
	}
	return nil
}

// Interface guards
var (
	_ caddydns.Handler      = (*QueryLog)(nil)
	_ caddydns.Watcher      = (*QueryLog)(nil)
	_ caddy.Provisioner     = (*QueryLog)(nil)
	_ caddyfile.Unmarshaler = (*QueryLog)(nil)
)
