package caddyfile

import (
	"fmt"
	"os"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// applyDefaultBind gives each listen address of a `dot` or `doh` option
// (kind; port is its default) that names
// no host the hosts of the Caddyfile's `default_bind`, as Caddy does for
// its site addresses: with `default_bind 127.0.0.1`, `dot :8853` listens on
// 127.0.0.1:8853, not on every interface.
//
// A global option's parser sees only its own tokens, so default_bind is
// read from the Caddyfile the tokens came from, and used only when that
// file's global block holds this very `dot` segment, token for token and
// line for line. When the file cannot be read or is not the one adapted
// (a Caddyfile posted to the admin API, or read from stdin), the
// addresses are kept as written; docs/dot.md says to give the host then.
func applyDefaultBind(seg caddyfile.Segment, listen []string, kind string, port uint) ([]string, error) {
	hostless := false
	for _, a := range listen {
		na, err := caddy.ParseNetworkAddressWithDefaults(a, "tcp", port)
		if err != nil {
			return nil, fmt.Errorf("%s listen address %q: %v", kind, a, err)
		}
		if na.Host == "" && !na.IsUnixNetwork() && !na.IsFdNetwork() {
			hostless = true
		}
	}
	if !hostless || len(seg) == 0 {
		return listen, nil
	}
	binds, ok := defaultBindOf(seg)
	if !ok || len(binds) == 0 {
		return listen, nil
	}
	var out []string
	for _, a := range listen {
		na, _ := caddy.ParseNetworkAddressWithDefaults(a, "tcp", port)
		if na.Host != "" || na.IsUnixNetwork() || na.IsFdNetwork() {
			out = append(out, a)
			continue
		}
		for _, b := range binds {
			netw, host, _, err := caddy.SplitNetworkAddress(b.Text)
			if err != nil {
				return nil, fmt.Errorf("%s:%d: default_bind %q: %v", b.File, b.Line, b.Text, err)
			}
			switch netw {
			case "", "tcp", "tcp4", "tcp6":
			default:
				return nil, fmt.Errorf("%s:%d: %s %s cannot follow default_bind %s (a %s address): give %s a host", b.File, b.Line, kind, a, b.Text, netw, kind)
			}
			if netw == "" {
				netw, _, _, _ = caddy.SplitNetworkAddress(a) // the dot address's own, if any
			}
			for p := na.StartPort; p <= na.EndPort; p++ {
				out = append(out, caddy.JoinNetworkAddress(netw, host, strconv.FormatUint(uint64(p), 10)))
			}
		}
	}
	return out, nil
}

// defaultBindOf returns the host tokens of every default_bind line in the
// global block of the Caddyfile seg comes from, and whether that file is
// the one being adapted (its global block holds seg unchanged).
func defaultBindOf(seg caddyfile.Segment) ([]caddyfile.Token, bool) {
	file := seg[0].File
	body, err := os.ReadFile(file)
	if err != nil {
		return nil, false
	}
	blocks, err := caddyfile.Parse(file, body)
	if err != nil || len(blocks) == 0 || len(blocks[0].Keys) > 0 {
		return nil, false
	}
	found := false
	var binds []caddyfile.Token
	for _, s := range blocks[0].Segments {
		switch {
		case sameSegment(s, seg):
			found = true
		case s.Directive() == "default_bind":
			for _, t := range s[1:] {
				if t.Text == "{" || t.Line != s[0].Line {
					break
				}
				binds = append(binds, t)
			}
		}
	}
	return binds, found
}

func sameSegment(a, b caddyfile.Segment) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Text != b[i].Text || a[i].Line != b[i].Line || a[i].File != b[i].File {
			return false
		}
	}
	return true
}
