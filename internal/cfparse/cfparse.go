// Package cfparse holds the Caddyfile argument parsers the dnsfront
// modules share, with errors that keep the line number.
package cfparse

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// Duration reads the one duration argument of the directive under the
// cursor into into; it must be positive unless allowZero.
func Duration(d *caddyfile.Dispenser, into *caddy.Duration, allowZero bool) error {
	name := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return d.ArgErr()
	}
	v, err := caddy.ParseDuration(s)
	if err != nil {
		return d.Errf("%s: %v", name, err)
	}
	if v < 0 || (v == 0 && !allowZero) {
		return d.Errf("%s must be positive, got %s", name, s)
	}
	*into = caddy.Duration(v)
	return nil
}

// Int reads the one whole-number argument of the directive under the
// cursor, which must be at least least.
func Int(d *caddyfile.Dispenser, into *int, least int) error {
	name := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return d.ArgErr()
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < least {
		return d.Errf("%s: want a whole number of at least %d, got %q", name, least, s)
	}
	*into = v
	return nil
}

// OptionalArg reads at most one argument into into.
func OptionalArg(d *caddyfile.Dispenser, into *string) error {
	if d.NextArg() {
		*into = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}
