package dnswire

import (
	"encoding/binary"
	"iter"
	"net/netip"

	"github.com/miekg/dns"
)

// Addresses yields the address of each A and AAAA record (class IN) of
// msg, laid out in l by Walk, and each address of the ipv4hint and
// ipv6hint parameters of its SVCB and HTTPS records (RFC 9460 7.3: a
// client may connect to them), in every section, in order: what a filter
// on the addresses of an answer reads without decoding it. A record whose
// RDATA is not an address's length is not one, and a hint cut short
// yields its whole addresses only.
func Addresses(msg []byte, l *Layout) iter.Seq[netip.Addr] {
	return func(yield func(netip.Addr) bool) {
		if l.End > len(msg) || l.QEnd < HeaderLen {
			return
		}
		total := int(binary.BigEndian.Uint16(msg[6:])) + int(binary.BigEndian.Uint16(msg[8:])) + int(binary.BigEndian.Uint16(msg[10:]))
		var scratch Layout // skipName notes pointers in it; l stays as Walk left it
		off := l.QEnd
		for range total {
			var ok bool
			if off, ok = scratch.skipName(msg, off); !ok || off+10 > l.End {
				return
			}
			typ := binary.BigEndian.Uint16(msg[off:])
			class := binary.BigEndian.Uint16(msg[off+2:])
			rdata := off + 10
			off = rdata + int(binary.BigEndian.Uint16(msg[off+8:]))
			if off > l.End {
				return
			}
			if class != dns.ClassINET {
				continue
			}
			var a netip.Addr
			switch {
			case typ == dns.TypeA && off-rdata == 4:
				a = netip.AddrFrom4([4]byte(msg[rdata:off]))
			case typ == dns.TypeAAAA && off-rdata == 16:
				a = netip.AddrFrom16([16]byte(msg[rdata:off]))
			case typ == dns.TypeSVCB || typ == dns.TypeHTTPS:
				if !svcbHints(msg[:off], rdata, yield) {
					return
				}
				continue
			default:
				continue
			}
			if !yield(a) {
				return
			}
		}
	}
}

// svcbHints yields the addresses of the ipv4hint and ipv6hint parameters
// of the SVCB RDATA at rdata in msg (which ends with it); false when
// yield asked to stop.
func svcbHints(msg []byte, rdata int, yield func(netip.Addr) bool) bool {
	var scratch Layout
	off, ok := scratch.skipName(msg, rdata+2) // SvcPriority, TargetName
	if !ok {
		return true
	}
	for off+4 <= len(msg) {
		key, n := binary.BigEndian.Uint16(msg[off:]), int(binary.BigEndian.Uint16(msg[off+2:]))
		v := msg[off+4 : min(off+4+n, len(msg))]
		off += 4 + n
		size := 0
		switch key {
		case 4: // ipv4hint
			size = 4
		case 6: // ipv6hint
			size = 16
		default:
			continue
		}
		for ; len(v) >= size; v = v[size:] {
			a, _ := netip.AddrFromSlice(v[:size])
			if !yield(a) {
				return false
			}
		}
	}
	return true
}
