package ocspfile

import (
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/dnsfront/dnsfront/dotapp"
)

func TestGenerationBackdate(t *testing.T) {
	zero, hour := caddy.Duration(0), caddy.Duration(time.Hour)
	for _, tc := range []struct {
		in   *caddy.Duration
		want time.Duration
	}{
		{nil, 0},           // unset: GenerateOptions' default (1h)
		{&zero, -1},        // 0: none
		{&hour, time.Hour}, // as given
	} {
		if got := (Generation{Backdate: tc.in}).options().Backdate; got != tc.want {
			t.Errorf("backdate %v: options %v, want %v", tc.in, got, tc.want)
		}
	}
}

// The ocsp app is what the dot app takes staples from.
var _ dotapp.Stapler = (*App)(nil)
