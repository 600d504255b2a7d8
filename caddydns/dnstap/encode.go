package dnstap

import (
	"encoding/binary"
	"net/netip"
	"time"

	tap "github.com/dnstap/golang-dnstap"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/dnsfront/dnsfront/caddydns"
)

// The dnstap protobuf's field numbers (dnstap.proto, as golang-dnstap
// generates it), and the values dnsfront sends, from golang-dnstap's
// generated enums.
const (
	fieldIdentity = 1
	fieldVersion  = 2
	fieldMessage  = 14
	fieldType     = 15

	fieldMsgType          = 1
	fieldSocketFamily     = 2
	fieldSocketProtocol   = 3
	fieldQueryAddress     = 4
	fieldResponseAddress  = 5
	fieldQueryPort        = 6
	fieldResponsePort     = 7
	fieldQueryTimeSec     = 8
	fieldQueryTimeNsec    = 9
	fieldQueryMessage     = 10
	fieldResponseTimeSec  = 12
	fieldResponseTimeNsec = 13
	fieldResponseMessage  = 14

	typeMessage = uint64(tap.Dnstap_MESSAGE)

	clientQuery       = int(tap.Message_CLIENT_QUERY)
	clientResponse    = int(tap.Message_CLIENT_RESPONSE)
	forwarderQuery    = int(tap.Message_FORWARDER_QUERY)
	forwarderResponse = int(tap.Message_FORWARDER_RESPONSE)

	familyINET  = uint64(tap.SocketFamily_INET)
	familyINET6 = uint64(tap.SocketFamily_INET6)

	protocolUDP = uint64(tap.SocketProtocol_UDP)
	protocolTCP = uint64(tap.SocketProtocol_TCP)
	protocolDOT = uint64(tap.SocketProtocol_DOT)
	protocolDOH = uint64(tap.SocketProtocol_DOH)
)

var version = []byte("dnsfront")

// appendHead appends what is the same in every message of an identity:
// its identity, version and type fields (appendFrame's head).
func appendHead(dst, id []byte) []byte {
	dst = protowire.AppendTag(dst, fieldIdentity, protowire.BytesType)
	dst = protowire.AppendBytes(dst, id)
	dst = protowire.AppendTag(dst, fieldVersion, protowire.BytesType)
	dst = protowire.AppendBytes(dst, version)
	dst = protowire.AppendTag(dst, fieldType, protowire.VarintType)
	return protowire.AppendVarint(dst, typeMessage)
}

// appendFrame appends one frame-stream data frame to dst: its length
// (4 octets, big-endian), then the dnstap message of a query's message
// msg of the given kind, seen at at, for the client (over transport) and,
// for the forwarder's kinds, the upstream's hop; head is appendHead's for
// the identity. It encodes the protobuf in place, with no allocation;
// golang-dnstap's generated code decodes it (TestAppendFrame).
//
// A client's message has the server's address the client reached (up's
// Addr, from Request.Local) as its response address, in the client's
// family (IPv4-mapped for an IPv6 client). A forwarder's message has the
// upstream's socket family and protocol, and its address as the response
// address. Its query address is the
// client's (as CoreDNS gives it), which ties the exchange to the query:
// IPv4-mapped when the upstream is IPv6, and 16 octets for an IPv6 client
// of an IPv4 upstream (readers go by the length).
func appendFrame(dst, head []byte, kind int, at time.Time, client netip.AddrPort, transport string, up caddydns.Hop, msg []byte) []byte {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	dst = append(dst, head...)

	// the Message, its length written when it is known: 3 octets are
	// kept for it (a message is less than 2^21 octets), and what follows
	// moved back over those not needed
	dst = protowire.AppendTag(dst, fieldMessage, protowire.BytesType)
	lenAt := len(dst)
	dst = append(dst, 0, 0, 0)
	body := len(dst)

	dst = appendVarintField(dst, fieldMsgType, uint64(kind))
	forwarder := kind == forwarderQuery || kind == forwarderResponse
	side := client.Addr()
	if forwarder && up.Addr.IsValid() {
		side = up.Addr.Addr()
	}
	family := familyINET
	if side.Is6() && !side.Is4In6() {
		family = familyINET6
	}
	dst = appendVarintField(dst, fieldSocketFamily, family)
	protocol := protocolDOT
	switch {
	case forwarder:
		protocol = hopProtocol(up.Transport)
	case transport == "doh":
		protocol = protocolDOH
	}
	dst = appendVarintField(dst, fieldSocketProtocol, protocol)
	if client.IsValid() {
		dst = appendAddr(dst, fieldQueryAddress, client.Addr(), family == familyINET6)
		dst = appendVarintField(dst, fieldQueryPort, uint64(client.Port()))
	}
	if up.Addr.IsValid() {
		dst = appendAddr(dst, fieldResponseAddress, up.Addr.Addr(), !forwarder && family == familyINET6)
		dst = appendVarintField(dst, fieldResponsePort, uint64(up.Addr.Port()))
	}
	secField, nsecField, msgField := protowire.Number(fieldQueryTimeSec), protowire.Number(fieldQueryTimeNsec), protowire.Number(fieldQueryMessage)
	if kind == clientResponse || kind == forwarderResponse {
		secField, nsecField, msgField = fieldResponseTimeSec, fieldResponseTimeNsec, fieldResponseMessage
	}
	dst = appendVarintField(dst, secField, uint64(at.Unix()))
	dst = protowire.AppendTag(dst, nsecField, protowire.Fixed32Type)
	dst = protowire.AppendFixed32(dst, uint32(at.Nanosecond()))
	dst = protowire.AppendTag(dst, msgField, protowire.BytesType)
	dst = protowire.AppendBytes(dst, msg)

	n := len(dst) - body
	w := protowire.SizeVarint(uint64(n))
	protowire.AppendVarint(dst[lenAt:lenAt], uint64(n))
	if w < 3 {
		copy(dst[lenAt+w:], dst[body:])
		dst = dst[:len(dst)-(3-w)]
	}
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start-4))
	return dst
}

func appendVarintField(dst []byte, num protowire.Number, v uint64) []byte {
	dst = protowire.AppendTag(dst, num, protowire.VarintType)
	return protowire.AppendVarint(dst, v)
}

// appendAddr appends an address field: 4 octets for IPv4 (an IPv4-mapped
// IPv6 address included) unless as16, 16 for IPv6.
func appendAddr(dst []byte, num protowire.Number, a netip.Addr, as16 bool) []byte {
	dst = protowire.AppendTag(dst, num, protowire.BytesType)
	if (a.Is4() || a.Is4In6()) && !as16 {
		b := a.Unmap().As4()
		return protowire.AppendBytes(dst, b[:])
	}
	b := a.As16()
	return protowire.AppendBytes(dst, b[:])
}

// hopProtocol is the dnstap protocol of a forwarder's transport.
func hopProtocol(transport string) uint64 {
	switch transport {
	case "tcp":
		return protocolTCP
	case "tls":
		return protocolDOT
	case "https":
		return protocolDOH
	}
	return protocolUDP
}
