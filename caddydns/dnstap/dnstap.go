// Package dnstap is `dns.handlers.dnstap`: the queries, the answers and
// the upstream exchanges, as dnstap messages (the standard log format of
// DNS servers) to a unix socket, a TCP address or a file.
package dnstap

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/internal/cfparse"
)

func init() {
	caddy.RegisterModule(Dnstap{})
}

// DefaultBuffer is how many messages wait for the output at most; past
// it they are dropped (and counted), never waited for.
const DefaultBuffer = 10_000

// Dnstap sends CLIENT_QUERY and CLIENT_RESPONSE for every query that
// passes it, and FORWARDER_QUERY and FORWARDER_RESPONSE for every
// exchange of forward after it, with the transport (DoT, DoH) and the
// client's address. Place it first. Handlers with the same output share
// one connection, across servers and reloads.
type Dnstap struct {
	// Output is unix:<path>, tcp:<host:port> or file:<path> (a bare path
	// is a file).
	Output string `json:"output"`
	// Identity names this server in every message. Default: the host
	// name.
	Identity string `json:"identity,omitempty"`
	// Buffer is how many messages may wait for the output. Default 10000.
	Buffer int `json:"buffer,omitempty"`

	out  *output
	key  string
	head []byte // appendHead's for Identity
}

// CaddyModule returns the Caddy module information.
func (Dnstap) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "dns.handlers.dnstap", New: func() caddy.Module { return new(Dnstap) }}
}

// Provision opens (or shares) the output.
func (d *Dnstap) Provision(ctx caddy.Context) error {
	if d.Buffer == 0 {
		d.Buffer = DefaultBuffer
	}
	if d.Buffer < 1 {
		return fmt.Errorf("dnstap: buffer %d: want at least 1", d.Buffer)
	}
	if d.Identity == "" {
		d.Identity, _ = os.Hostname()
	}
	d.head = appendHead(nil, []byte(d.Identity))
	network, addr, err := parseOutput(d.Output)
	if err != nil {
		return err
	}
	d.key = network + ":" + addr + fmt.Sprintf("|%d", d.Buffer)
	v, _, err := outputs.LoadOrNew(d.key, func() (caddy.Destructor, error) {
		return newOutput(network, addr, d.Buffer, ctx.Logger())
	})
	if err != nil {
		return fmt.Errorf("dnstap: output %q: %w", d.Output, err)
	}
	d.out = v.(*output)
	return registerMetrics(ctx)
}

// parseOutput reads an output: unix:, tcp: or file: and its address.
func parseOutput(s string) (network, addr string, err error) {
	network, addr, ok := strings.Cut(s, ":")
	switch {
	case s == "":
		return "", "", fmt.Errorf("dnstap: no output (unix:<path>, tcp:<host:port> or file:<path>)")
	case !ok || (network != "unix" && network != "tcp" && network != "file"):
		return "file", s, nil
	case addr == "":
		return "", "", fmt.Errorf("dnstap: output %q: no address", s)
	case network == "tcp":
		if _, err := netip.ParseAddrPort(addr); err != nil {
			return "", "", fmt.Errorf("dnstap: output %q: want an IP address and port: %v", s, err)
		}
	}
	return network, addr, nil
}

// Cleanup releases the output; it lives on while another config uses it.
func (d *Dnstap) Cleanup() error {
	if d.key != "" {
		_, _ = outputs.Delete(d.key)
	}
	return nil
}

// WatchesOnly marks the handler as one that passes every query on
// (caddydns.Watcher).
func (*Dnstap) WatchesOnly() {}

// ServeDNS sends the query's CLIENT_QUERY, and taps the rest of its way.
func (d *Dnstap) ServeDNS(ctx context.Context, r *caddydns.Request, next caddydns.Next) (caddydns.Response, error) {
	q := r.Octets()
	if q == nil {
		q, _ = r.Msg.Pack()
	}
	d.out.add(d.head, clientQuery, r.Start(), r.Client, r.Transport, caddydns.Hop{Addr: r.Local}, q)
	r.Tap = d
	return next(ctx, r)
}

// ClientResponse implements caddydns.Tap.
func (d *Dnstap) ClientResponse(r *caddydns.Request, at time.Time, msg []byte) {
	d.out.add(d.head, clientResponse, at, r.Client, r.Transport, caddydns.Hop{Addr: r.Local}, msg)
}

// ForwarderQuery implements caddydns.Tap.
func (d *Dnstap) ForwarderQuery(r *caddydns.Request, to caddydns.Hop, msg []byte) {
	d.out.add(d.head, forwarderQuery, time.Now(), r.Client, r.Transport, to, msg)
}

// ForwarderResponse implements caddydns.Tap.
func (d *Dnstap) ForwarderResponse(r *caddydns.Request, from caddydns.Hop, msg []byte) {
	d.out.add(d.head, forwarderResponse, time.Now(), r.Client, r.Transport, from, msg)
}

// UnmarshalCaddyfile reads:
//
//	dnstap <output> {
//		identity <name>
//		buffer <n>
//	}
func (d *Dnstap) UnmarshalCaddyfile(disp *caddyfile.Dispenser) error {
	disp.Next() // handler name
	if !disp.Args(&d.Output) {
		return disp.Errf("dnstap: want an output: unix:<path>, tcp:<host:port> or file:<path>")
	}
	if _, _, err := parseOutput(d.Output); err != nil {
		return disp.Err(err.Error())
	}
	if disp.NextArg() {
		return disp.ArgErr()
	}
	for n := disp.Nesting(); disp.NextBlock(n); {
		switch opt := disp.Val(); opt {
		case "identity":
			if !disp.AllArgs(&d.Identity) {
				return disp.ArgErr()
			}
		case "buffer":
			if err := cfparse.Int(disp, &d.Buffer, 1); err != nil {
				return err
			}
		default:
			return disp.Errf("unrecognized subdirective '%s'", opt)
		}
	}
	return nil
}

// Interface guards
var (
	_ caddydns.Handler      = (*Dnstap)(nil)
	_ caddydns.Watcher      = (*Dnstap)(nil)
	_ caddydns.Tap          = (*Dnstap)(nil)
	_ caddy.Provisioner     = (*Dnstap)(nil)
	_ caddy.CleanerUpper    = (*Dnstap)(nil)
	_ caddyfile.Unmarshaler = (*Dnstap)(nil)
)
