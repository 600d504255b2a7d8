package zone

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/miekg/dns"
	"go.uber.org/zap"

	"github.com/dnsfront/dnsfront/caddydns"
)

func init() {
	caddy.RegisterModule(Publisher{})
}

// ECH makes the zone answer, for each of its names that Caddy protects
// with Encrypted Client Hello (ECH), the records that let a client find
// the encrypted DNS endpoints and their ECH keys from dnsfront itself:
//
//   - <name> HTTPS: alpn h2, the DoH port, and the ech SvcParam (RFC 9460),
//     for browsers and DoH clients;
//   - _dns.<name> SVCB (RFC 9461): one record for DoT (alpn dot, its port)
//     and one for DoH (alpn h2, its port, dohpath), each with ech.
//
// The ECH config list is the one Caddy's tls app publishes to the
// `tls.ech.publishers.dnsfront` module (Publisher); before any
// publication (or without that publisher), the tls app's current ECH
// keys are read directly. Either way a key rotation reaches the records
// with no reload.
type ECH struct {
	// Names are the (inner) names to answer for. Default: the names Caddy
	// published an ECH config list for through the dnsfront publisher,
	// that are in this zone.
	Names []string `json:"names,omitempty"`
	// DoTPort is the DoT servers' port. Default 853; -1 for no DoT record.
	DoTPort int `json:"dot_port,omitempty"`
	// DoHPort is the DoH endpoint's port. Default 443; -1 for no DoH record.
	DoHPort int `json:"doh_port,omitempty"`
	// DoHPath is the dohpath SvcParam (an RFC 6570 template). Default
	// "/dns-query{?dns}".
	DoHPath string `json:"doh_path,omitempty"`
	// TTL of the records, in seconds. Default 300: shorter than Caddy's
	// rotation keeps an old key usable (it serves replaced keys for 60 days).
	TTL uint32 `json:"ttl,omitempty"`

	names []string // canonical
	keys  func(*tls.ClientHelloInfo) ([]tls.EncryptedClientHelloKey, error)
}

func (e *ECH) provision(ctx caddy.Context, origin string) error {
	if e.DoTPort == 0 {
		e.DoTPort = 853
	}
	if e.DoHPort == 0 {
		e.DoHPort = 443
	}
	for _, p := range []int{e.DoTPort, e.DoHPort} {
		if p < -1 || p > 65535 {
			return fmt.Errorf("ech: port %d: want 1-65535, or -1 for none", p)
		}
	}
	if e.DoTPort < 0 && e.DoHPort < 0 {
		return errors.New("ech: dot_port and doh_port are both -1: no record to answer")
	}
	if e.DoHPath == "" {
		e.DoHPath = "/dns-query{?dns}"
	}
	if e.TTL == 0 {
		e.TTL = 300
	}
	for _, n := range e.Names {
		c := dns.CanonicalName(n)
		if _, ok := dns.IsDomainName(c); !ok || !caddydns.InDomain(c, origin) {
			return fmt.Errorf("ech: name %q is not a domain name in the zone %s", n, origin)
		}
		e.names = append(e.names, c)
	}
	tlsIface, err := ctx.AppIfConfigured("tls")
	if err != nil {
		if errors.Is(err, caddy.ErrNotConfigured) {
			return errors.New("ech: the tls app has no encrypted_client_hello (Caddyfile: the global option `ech <public_name>`)")
		}
		return fmt.Errorf("ech: %w", err)
	}
	if tlsIface.(*caddytls.TLS).EncryptedClientHello == nil {
		return errors.New("ech: the tls app has no encrypted_client_hello (Caddyfile: the global option `ech <public_name>`)")
	}
	// the tls app's live keys, as its connection policies use them
	cp := caddytls.ConnectionPolicies{new(caddytls.ConnectionPolicy)}
	if err := cp.Provision(ctx); err != nil {
		return fmt.Errorf("ech: %w", err)
	}
	e.keys = cp.TLSConfig(ctx).GetEncryptedClientHelloKeys
	loadPublished(ctx)
	return nil
}

// configList returns the ECH config list to publish: the dnsfront
// publisher's, or one made from the tls app's current keys.
func (e *ECH) configList() []byte {
	var keys []tls.EncryptedClientHelloKey
	if e.keys != nil {
		keys, _ = e.keys(nil)
	}
	if p := published.get(); p != nil && (e.keys == nil || served(p.list, keys)) {
		return p.list
	}
	var body []byte
	for _, k := range keys {
		if k.SendAsRetry { // not yet rotated out
			body = append(body, k.Config...)
		}
	}
	if len(body) == 0 || len(body) > 0xffff {
		return nil
	}
	return append([]byte{byte(len(body) >> 8), byte(len(body))}, body...)
}

// served reports whether every config of the ECH config list has its key
// among keys: a publication kept in storage from before a change of the
// tls app's ECH configs is not answered.
func served(list []byte, keys []tls.EncryptedClientHelloKey) bool {
	if len(list) < 2 || int(list[0])<<8|int(list[1]) != len(list)-2 {
		return false
	}
	for rest := list[2:]; len(rest) > 0; {
		if len(rest) < 4 {
			return false
		}
		n := 4 + (int(rest[2])<<8 | int(rest[3]))
		if n > len(rest) {
			return false
		}
		if !slices.ContainsFunc(keys, func(k tls.EncryptedClientHelloKey) bool { return bytes.Equal(k.Config, rest[:n]) }) {
			return false
		}
		rest = rest[n:]
	}
	return true
}

// covers reports whether name (canonical) is one of the ECH names.
func (e *ECH) covers(origin, name string) bool {
	if len(e.names) > 0 {
		return slices.Contains(e.names, name)
	}
	p := published.get()
	return p != nil && caddydns.InDomain(name, origin) && slices.Contains(p.names, name)
}

// answer returns the synthesized answer for name and qtype, or nil when
// the zone's own data answers.
func (e *ECH) answer(q *dns.Msg, origin, name string, qtype uint16, soa dns.RR) *dns.Msg {
	// cheap tests first: this runs for every query the zone sees
	target, svcb := name, false
	rest, underDNS := cutDNSLabel(name)
	switch {
	case underDNS && e.covers(origin, rest):
		target, svcb = rest, true
	case qtype == dns.TypeHTTPS && e.covers(origin, name):
	default:
		return nil
	}
	list := e.configList()
	if list == nil {
		return nil // ECH not ready: the zone's own records, if any
	}
	m := new(dns.Msg)
	m.SetReply(q)
	m.Authoritative = true
	hdr := func(t uint16) dns.RR_Header {
		return dns.RR_Header{Name: q.Question[0].Name, Rrtype: t, Class: dns.ClassINET, Ttl: e.TTL}
	}
	ech := &dns.SVCBECHConfig{ECH: list}
	switch {
	case svcb && qtype == dns.TypeSVCB:
		prio := uint16(1)
		if e.DoTPort > 0 {
			m.Answer = append(m.Answer, &dns.SVCB{Hdr: hdr(dns.TypeSVCB), Priority: prio, Target: target,
				Value: []dns.SVCBKeyValue{&dns.SVCBAlpn{Alpn: []string{"dot"}}, &dns.SVCBPort{Port: uint16(e.DoTPort)}, ech}})
			prio++
		}
		if e.DoHPort > 0 {
			m.Answer = append(m.Answer, &dns.SVCB{Hdr: hdr(dns.TypeSVCB), Priority: prio, Target: target,
				Value: []dns.SVCBKeyValue{&dns.SVCBAlpn{Alpn: []string{"h2"}}, &dns.SVCBPort{Port: uint16(e.DoHPort)}, ech,
					&dns.SVCBDoHPath{Template: e.DoHPath}}})
		}
	case svcb:
		// _dns.<name> exists (it has an SVCB record): NODATA
		m.Ns = append(m.Ns, soa)
	case e.DoHPort > 0:
		v := []dns.SVCBKeyValue{&dns.SVCBAlpn{Alpn: []string{"h2"}}}
		if e.DoHPort != 443 {
			v = append(v, &dns.SVCBPort{Port: uint16(e.DoHPort)})
		}
		m.Answer = append(m.Answer, &dns.HTTPS{SVCB: dns.SVCB{Hdr: hdr(dns.TypeHTTPS), Priority: 1, Target: ".", Value: append(v, ech)}})
	default:
		m.Ns = append(m.Ns, soa)
	}
	return m
}

// cutDNSLabel returns name without a leading "_dns." label.
func cutDNSLabel(name string) (string, bool) {
	const l = "_dns."
	if len(name) > len(l) && name[:len(l)] == l {
		return name[len(l):], true
	}
	return "", false
}

// unmarshalECH reads `ech [<names...>] { dot <port>|off; doh <port>|off [<path>]; ttl <seconds> }`.
func (e *ECH) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	e.Names = d.RemainingArgs()
	port := func(into *int) error {
		if !d.NextArg() {
			return d.ArgErr()
		}
		if d.Val() == "off" {
			*into = -1
			return nil
		}
		var p int
		if _, err := fmt.Sscan(d.Val(), &p); err != nil || p < 1 || p > 65535 {
			return d.Errf("%s port %q: want 1-65535 or off", "ech", d.Val())
		}
		*into = p
		return nil
	}
	for n := d.Nesting(); d.NextBlock(n); {
		switch d.Val() {
		case "dot":
			if err := port(&e.DoTPort); err != nil {
				return err
			}
			if d.NextArg() {
				return d.ArgErr()
			}
		case "doh":
			if err := port(&e.DoHPort); err != nil {
				return err
			}
			if d.NextArg() {
				e.DoHPath = d.Val()
			}
			if d.NextArg() {
				return d.ArgErr()
			}
		case "ttl":
			var s string
			if !d.AllArgs(&s) {
				return d.ArgErr()
			}
			var ttl uint32
			if _, err := fmt.Sscan(s, &ttl); err != nil || ttl == 0 {
				return d.Errf("ech ttl %q: want seconds, more than 0", s)
			}
			e.TTL = ttl
		default:
			return d.Errf("unrecognized ech subdirective '%s'", d.Val())
		}
	}
	return nil
}

// Publisher is the ECH publisher `tls.ech.publishers.dnsfront`: Caddy's
// tls app hands it the ECH config list and the inner names it protects
// (at start, and after each key rotation), and dnsfront's zone handlers
// answer HTTPS and SVCB records with it. The publication is kept in
// Caddy's storage (dnsfront/ech/published.json), since Caddy does not
// publish again what it published before a restart.
type Publisher struct {
	ctx caddy.Context
}

// CaddyModule returns the Caddy module information.
func (Publisher) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "tls.ech.publishers.dnsfront", New: func() caddy.Module { return new(Publisher) }}
}

// Provision keeps the context, for storage.
func (p *Publisher) Provision(ctx caddy.Context) error {
	p.ctx = ctx
	return nil
}

// PublisherKey implements caddytls.ECHPublisher.
func (Publisher) PublisherKey() string { return "dnsfront" }

// PublishECHConfigList implements caddytls.ECHPublisher.
func (p *Publisher) PublishECHConfigList(ctx context.Context, innerNames []string, list []byte) error {
	pub := &publication{list: list}
	for _, n := range innerNames {
		pub.names = append(pub.names, dns.CanonicalName(n))
	}
	slices.Sort(pub.names)
	published.set(pub)
	caddy.Log().Named("zone.ech").Info("ECH config list published to the zone", zap.Strings("names", innerNames),
		zap.Int("bytes", len(list)))
	if stor := p.ctx.Storage(); stor != nil {
		b, _ := json.Marshal(storedPublication{Names: pub.names, List: base64.StdEncoding.EncodeToString(list), At: time.Now().UTC()})
		if err := stor.Store(ctx, publishedKey, b); err != nil {
			return fmt.Errorf("storing the ECH publication: %w", err)
		}
	}
	return nil
}

var publishedKey = path.Join("dnsfront", "ech", "published.json")

type storedPublication struct {
	Names []string  `json:"names"`
	List  string    `json:"ech_config_list"`
	At    time.Time `json:"published_at"`
}

type publication struct {
	names []string
	list  []byte
}

// published is the last publication, for every zone of the process.
var published publicationBox

type publicationBox struct {
	mu sync.RWMutex
	p  *publication
}

func (b *publicationBox) get() *publication {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.p
}

func (b *publicationBox) set(p *publication) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.p = p
}

// loadPublished reads the publication kept in storage, once a process,
// when none was made in it.
func loadPublished(ctx caddy.Context) {
	if published.get() != nil || ctx.Storage() == nil {
		return
	}
	b, err := ctx.Storage().Load(ctx, publishedKey)
	if err != nil {
		return
	}
	var sp storedPublication
	if json.Unmarshal(b, &sp) != nil {
		return
	}
	list, err := base64.StdEncoding.DecodeString(sp.List)
	if err != nil {
		return
	}
	published.mu.Lock()
	if published.p == nil {
		published.p = &publication{names: sp.Names, list: list}
	}
	published.mu.Unlock()
}

// Interface guards
var (
	_ caddytls.ECHPublisher = (*Publisher)(nil)
	_ caddy.Provisioner     = (*Publisher)(nil)
)
