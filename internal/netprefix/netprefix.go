// Package netprefix reads the client prefixes of the ACL and the rate
// limit's exemptions: "192.0.2.0/24", "2001:db8::/32", or a bare address
// (a prefix of its full length).
package netprefix

import (
	"fmt"
	"net/netip"
	"strings"
)

// Parse reads one prefix, or a bare address. A prefix with bits set past
// its length (192.0.2.1/24) is refused: it is most likely a typo for the
// address, or for another length.
func Parse(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP address or prefix", s)
		}
		if a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q: a zone is not allowed", s)
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP prefix: %v", s, err)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%q has bits set past its length (did you mean %s?)", s, p.Masked())
	}
	return p, nil
}

// List is a list of prefixes.
type List []netip.Prefix

// ParseList reads prefixes; field names the option in errors.
func ParseList(field string, ss []string) (List, error) {
	l := make(List, 0, len(ss))
	for i, s := range ss {
		p, err := Parse(s)
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %w", field, i, err)
		}
		l = append(l, p)
	}
	return l, nil
}

// Contains reports whether a (an IPv4-mapped IPv6 address counts as IPv4)
// is in one of the prefixes.
func (l List) Contains(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range l {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
