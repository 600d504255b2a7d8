package caddydns

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// UnmarshalHandler reads the handler directive under the dispenser's
// cursor (`zone ...`, `forward ...`) and appends it to the chain. ok is
// false, with nothing read, when no `dns.handlers` module has that name,
// so a transport can report its own "unrecognized subdirective".
func (c *Chain) UnmarshalHandler(d *caddyfile.Dispenser) (ok bool, err error) {
	name := d.Val()
	if _, err := caddy.GetModule("dns.handlers." + name); err != nil {
		return false, nil
	}
	mod, err := caddyfile.UnmarshalModule(d, "dns.handlers."+name)
	if err != nil {
		return true, err
	}
	c.HandlersRaw = append(c.HandlersRaw, caddyconfig.JSONModuleObject(mod, "handler", name, nil))
	return true, nil
}
