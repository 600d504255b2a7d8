// Package cfparse holds the Caddyfile argument parsers the dnsfront
// modules share, with errors that keep the line number.
package cfparse

import (
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/dnsfront/dnsfront/internal/netprefix"
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

// Rate reads the one rate argument (a number a second, above 0, such as
// 100 or 0.5) of the directive under the cursor into into.
func Rate(d *caddyfile.Dispenser, into *float64) error {
	name := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return d.ArgErr()
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || !(v > 0) || v > 1e9 {
		return d.Errf("%s %q: want a rate above 0", name, s)
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

// Prefixes reads the one or more client prefixes (or bare addresses) that
// are the arguments of the directive under the cursor.
func Prefixes(d *caddyfile.Dispenser) ([]string, error) {
	name := d.Val()
	list := d.RemainingArgs()
	if len(list) == 0 {
		return nil, d.Errf("%s: want one or more prefixes", name)
	}
	for _, p := range list {
		if _, err := netprefix.Parse(p); err != nil {
			return nil, d.Errf("%s: %v", name, err)
		}
	}
	return list, nil
}

// OneOf reads the one argument of the directive under the cursor, which
// must be one of choices.
func OneOf(d *caddyfile.Dispenser, into *string, choices ...string) error {
	name := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return d.ArgErr()
	}
	for _, c := range choices {
		if s == c {
			*into = s
			return nil
		}
	}
	return d.Errf("%s %q: want %s", name, s, strings.Join(choices, " or "))
}

// PrefixLengths reads the two arguments of `prefix <v4len> <v6len>`:
// 0-32 and 0-128.
func PrefixLengths(d *caddyfile.Dispenser, v4, v6 *int) error {
	name := d.Val()
	var a, b string
	if !d.AllArgs(&a, &b) {
		return d.Errf("%s: want the IPv4 and the IPv6 length, e.g. %s 24 56", name, name)
	}
	x, err1 := strconv.Atoi(a)
	y, err2 := strconv.Atoi(b)
	if err1 != nil || err2 != nil || x < 0 || x > 32 || y < 0 || y > 128 {
		return d.Errf("%s %s %s: want 0-32 and 0-128", name, a, b)
	}
	*v4, *v6 = x, y
	return nil
}
