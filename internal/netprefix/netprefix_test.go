package netprefix

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.0/24": "192.0.2.0/24", "192.0.2.7": "192.0.2.7/32", "::1": "::1/128", "2001:db8::/32": "2001:db8::/32",
	} {
		p, err := Parse(in)
		if err != nil || p.String() != want {
			t.Errorf("Parse(%q) = %v, %v; want %s", in, p, err, want)
		}
	}
	for in, msg := range map[string]string{
		"192.0.2.1/24": "did you mean 192.0.2.0/24", "example.org": "not an IP address", "10.0.0.0/33": "not an IP prefix", "fe80::1%eth0": "zone",
	} {
		if _, err := Parse(in); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("Parse(%q): %v, want an error with %q", in, err, msg)
		}
	}
	if _, err := ParseList("allow", []string{"10.0.0.0/8", "x"}); err == nil || !strings.HasPrefix(err.Error(), `allow[1]: "x"`) {
		t.Errorf("ParseList: %v, want it to name allow[1]", err)
	}
}

func TestContains(t *testing.T) {
	l, _ := ParseList("", []string{"10.0.0.0/8", "2001:db8::/32"})
	for a, want := range map[string]bool{"10.1.2.3": true, "::ffff:10.1.2.3": true, "11.0.0.1": false, "2001:db8::1": true, "2001:db9::1": false} {
		if got := l.Contains(netip.MustParseAddr(a)); got != want {
			t.Errorf("Contains(%s) = %v", a, got)
		}
	}
}
