#!/bin/sh
# For servers that keep the staple as a file (a 'staple file' source, or
# another program such as dnsdist): fetch the response from the CA's
# responder, write it only if it passes every check, then have the running
# Caddy read it. Run from cron, e.g. every 6 hours:
#   0 */6 * * * /etc/dns/fetch-staple.sh
set -eu
CERT=${CERT:-/etc/dns/server.pem}      # the certificate and its chain
OUT=${OUT:-/etc/dns/server.ocsp}
caddy ocsp fetch --cert "$CERT" --out "$OUT"          # [--url http://ocsp.example.org]
curl -sf -X POST localhost:2019/ocsp/reload >/dev/null
