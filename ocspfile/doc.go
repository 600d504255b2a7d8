// Package ocspfile is the `ocsp` Caddy app: OCSP stapling under the
// operator's control. It keeps a validated, fresh staple for each
// certificate it is given and serves it on every TLS handshake that
// takes that certificate. Its parts, by file:
//
//   - app.go: the App (its config, provisioning, start and stop, the
//     refresh loop of each certificate) and StapleFor.
//   - certs.go: the certificates, supplied as files (Certificate) or
//     issued by the app from a CA of Caddy's pki app (issue), and their
//     entries; issue.go issues and renews the latter.
//   - sources.go: where staples come from, modules in the namespace
//     `ocsp.sources`: file, local_ca, pki and responder.
//   - entry.go: a certificate in one config: its source, its slot, and
//     when to refresh it.
//   - slot.go, refresh.go, status.go: a certificate's staple slot, which
//     outlives config reloads (with rollback protection); a refresh and
//     what becomes of its result (kept in Caddy's storage, written to
//     write_to, events, logs); the state GET /ocsp/ reports.
//   - fleet.go: what instances sharing one storage share: the leases
//     under which a staple or a certificate is made once per fleet, the
//     staples kept in storage with the record of who made them, picking
//     up another instance's staple (storage_poll), and the check that the
//     pki CA is the fleet's; fleetcmd.go is `caddy ocsp status`.
//   - storage.go: a storage module that wraps Caddy's storage so that
//     certmagic, stapling a certificate it manages, gets the app's staple.
//   - tlshook.go: the handshake side, GetCertificate, and the connection
//     policies of transports that build their own TLS config (the `dot`
//     app takes them through its Stapler interface); manager.go is
//     `tls.get_certificate.ocsp` for Caddy's HTTP servers.
//   - admin.go: the admin API, GET /ocsp/ and POST /ocsp/reload.
//   - command.go: `caddy ocsp generate | inspect | fetch | status`.
//   - caddyfile.go, metrics.go: the `ocsp` global option; the metrics.
//
// Validation, generation, fetching and the errors are in the subpackage
// staple, which imports nothing of Caddy's.
package ocspfile
