// Command caddy is Caddy with the dnsfront modules and Caddy's standard
// modules, for `go run ./cmd/caddy ...` in a checkout.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// plug in Caddy's standard modules
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	// plug in dnsfront
	_ "github.com/dnsfront/dnsfront"
)

func main() {
	caddycmd.Main()
}
