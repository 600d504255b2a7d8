package ocspfile

import (
	"encoding/json"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/dnsfront/dnsfront/internal/cfparse"
	"github.com/dnsfront/dnsfront/ocspfile/staple"
)

// UnmarshalCaddyfile sets up the app from the tokens of the global option.
// Syntax:
//
//	ocsp {
//		certificate <cert_file> <key_file> {
//			issuer <ca_cert_file>
//			tags <tags...>
//			staple <source> [<args...>] {
//				...
//			}
//		}
//		issue <names...> {
//			ca <pki_ca_id>
//			lifetime <duration>
//			tags <tags...>
//			staple <source> [<args...>]
//		}
//		managed <source> [<args...>] {
//			...
//		}
//		storage_poll <duration>
//	}
//
// Sources and their arguments:
//
//	staple file <path> { poll_interval <duration> }
//	staple local_ca <ca_cert_file> <ca_key_file> { validity <d>; backdate <d>; hash sha1|sha256; write_to <path> }
//	staple pki [<ca_id>] { validity <d>; backdate <d>; hash sha1|sha256; write_to <path> }
//	staple responder [<url>] { timeout <d>; write_to <path> }
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // option name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "certificate":
			c := new(Certificate)
			if !d.AllArgs(&c.Certificate, &c.Key) {
				return d.Errf("certificate needs a certificate file and a key file")
			}
			for n := d.Nesting(); d.NextBlock(n); {
				switch d.Val() {
				case "issuer":
					if c.Issuer != "" {
						return d.Err("issuer already specified")
					}
					if !d.AllArgs(&c.Issuer) {
						return d.ArgErr()
					}
				default:
					if err := c.unmarshalShared(d); err != nil {
						return err
					}
				}
			}
			a.Certificates = append(a.Certificates, c)
		case "issue":
			c := &Certificate{Issue: d.RemainingArgs()}
			if len(c.Issue) == 0 {
				return d.Errf("issue needs the names to issue a certificate for")
			}
			for n := d.Nesting(); d.NextBlock(n); {
				switch d.Val() {
				case "ca":
					if !d.AllArgs(&c.CA) {
						return d.ArgErr()
					}
				case "lifetime":
					if err := cfparse.Duration(d, &c.Lifetime, false); err != nil {
						return err
					}
				default:
					if err := c.unmarshalShared(d); err != nil {
						return err
					}
				}
			}
			a.Certificates = append(a.Certificates, c)
		case "managed":
			if err := unmarshalSourceOnce(d, &a.ManagedRaw); err != nil {
				return err
			}
		case "storage_poll":
			if a.StoragePoll != 0 {
				return d.Err("storage_poll already specified")
			}
			if err := cfparse.Duration(d, &a.StoragePoll, false); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized subdirective '%s'", d.Val())
		}
	}
	return nil
}

// unmarshalShared reads the subdirectives a supplied and an issued
// certificate share: staple and tags.
func (c *Certificate) unmarshalShared(d *caddyfile.Dispenser) error {
	switch d.Val() {
	case "staple":
		return unmarshalSourceOnce(d, &c.SourceRaw)
	case "tags":
		return unmarshalTags(d, c)
	}
	return d.Errf("unrecognized subdirective '%s'", d.Val())
}

// unmarshalTags reads `tags <tags...>`, once.
func unmarshalTags(d *caddyfile.Dispenser, c *Certificate) error {
	if c.Tags != nil {
		return d.Err("tags already specified")
	}
	c.Tags = d.RemainingArgs()
	if len(c.Tags) == 0 {
		return d.ArgErr()
	}
	return nil
}

// unmarshalSourceOnce reads a source into *into, refusing a second one.
func unmarshalSourceOnce(d *caddyfile.Dispenser, into *json.RawMessage) error {
	if *into != nil {
		return d.Errf("%s source already specified", d.Val())
	}
	raw, err := unmarshalSource(d)
	if err != nil {
		return err
	}
	*into = raw
	return nil
}

// unmarshalSource reads `<directive> <source> [<args...>] [{...}]` with
// the dispenser on the directive.
func unmarshalSource(d *caddyfile.Dispenser) (json.RawMessage, error) {
	if !d.NextArg() {
		return nil, d.Errf("%s needs a source: file, local_ca, pki or responder", d.Val())
	}
	name := d.Val()
	mod, err := caddyfile.UnmarshalModule(d, "ocsp.sources."+name)
	if err != nil {
		return nil, err
	}
	return caddyconfig.JSONModuleObject(mod, "source", name, nil), nil
}

// UnmarshalCaddyfile: `file <path> { poll_interval <duration> }`.
func (f *FileSource) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // source name
	if !d.AllArgs(&f.Path) {
		return d.Errf("file needs the path of the OCSP response")
	}
	for n := d.Nesting(); d.NextBlock(n); {
		switch d.Val() {
		case "poll_interval":
			if err := cfparse.Duration(d, &f.Interval, false); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized subdirective '%s'", d.Val())
		}
	}
	return nil
}

// UnmarshalCaddyfile: `local_ca <ca_cert> <ca_key> { validity; backdate; hash; write_to }`.
func (l *LocalCASource) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // source name
	if !d.AllArgs(&l.CACert, &l.CAKey) {
		return d.Errf("local_ca needs the CA certificate file and the CA key file")
	}
	return unmarshalGeneration(d, &l.Generation, &l.WriteThrough)
}

// UnmarshalCaddyfile: `pki [<ca_id>] { validity; backdate; hash; write_to }`.
func (p *PKISource) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // source name
	if err := cfparse.OptionalArg(d, &p.CA); err != nil {
		return err
	}
	return unmarshalGeneration(d, &p.Generation, &p.WriteThrough)
}

// UnmarshalCaddyfile: `responder [<url>] { timeout; write_to }`.
func (r *ResponderSource) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // source name
	if err := cfparse.OptionalArg(d, &r.URL); err != nil {
		return err
	}
	for n := d.Nesting(); d.NextBlock(n); {
		switch d.Val() {
		case "timeout":
			if err := cfparse.Duration(d, &r.Timeout, false); err != nil {
				return err
			}
		case "write_to":
			if !d.AllArgs(&r.WriteTo) {
				return d.ArgErr()
			}
		default:
			return d.Errf("unrecognized subdirective '%s'", d.Val())
		}
	}
	return nil
}

// unmarshalGeneration reads the block of a source that signs responses:
// validity, backdate, hash, write_to.
func unmarshalGeneration(d *caddyfile.Dispenser, g *Generation, w *WriteThrough) error {
	for n := d.Nesting(); d.NextBlock(n); {
		switch d.Val() {
		case "validity":
			if err := cfparse.Duration(d, &g.Validity, false); err != nil {
				return err
			}
		case "backdate":
			var b caddy.Duration
			if err := cfparse.Duration(d, &b, true); err != nil {
				return err
			}
			g.Backdate = &b
		case "write_to":
			if !d.AllArgs(&w.WriteTo) {
				return d.ArgErr()
			}
		case "hash":
			if !d.AllArgs(&g.Hash) {
				return d.ArgErr()
			}
			if _, err := staple.ParseCertIDHash(g.Hash); err != nil {
				return d.Err(err.Error())
			}
		default:
			return d.Errf("unrecognized subdirective '%s'", d.Val())
		}
	}
	return nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*App)(nil)
	_ caddyfile.Unmarshaler = (*FileSource)(nil)
	_ caddyfile.Unmarshaler = (*LocalCASource)(nil)
	_ caddyfile.Unmarshaler = (*PKISource)(nil)
	_ caddyfile.Unmarshaler = (*ResponderSource)(nil)
)
