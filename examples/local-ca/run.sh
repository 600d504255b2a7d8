#!/bin/sh
# The "Local PKI" story of dnsdist's OCSP page, done with dnsfront, end to
# end on loopback: make a CA and a server certificate with openssl, sign an
# OCSP response for the certificate, serve DoT and DoH with it stapled,
# check the staple, then sign a newer one and reload without a restart.
#
#   sh examples/local-ca/run.sh          (from the repository root)
#
# Files go to examples/local-ca/work (or $WORK). Ports: 127.0.0.1:8853
# (DoT), :8443 (DoH), admin localhost:2019.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
WORK=${WORK:-$here/work}
mkdir -p "$WORK"
cd "$WORK"

echo "== build caddy with dnsfront"
(cd "$here/../.." && go build -o "$WORK/caddy" ./cmd/caddy)
CADDY="$WORK/caddy"

echo "== 1. a CA and a server certificate (openssl)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
	-keyout ca.key -out ca.pem -days 3650 -subj "/CN=Example Local DNS CA" \
	-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
	-keyout server.key -out server.csr -subj "/CN=dns.example.test" 2>/dev/null
printf 'subjectAltName=DNS:dns.example.test,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
	-out server-cert.pem -days 90 -extfile server.ext 2>/dev/null
cat server-cert.pem ca.pem > server.pem   # the certificate and its chain

echo "== 2. an OCSP response for it (dnsdist: generateOCSPResponse)"
"$CADDY" ocsp generate --cert server.pem --ca-cert ca.pem --ca-key ca.key --out server.ocsp --validity 7d
openssl ocsp -respin server.ocsp -issuer ca.pem -CAfile ca.pem -cert server.pem 2>&1 | grep -E "verify OK|: good"

echo "== 3. serve DoT and DoH with the staple"
export WORK ZONE="$here/../example.test.zone"
"$CADDY" start --config "$here/Caddyfile" --adapter caddyfile

check() {
	out=$(openssl s_client -connect 127.0.0.1:8853 -alpn dot -servername dns.example.test \
		-CAfile ca.pem -status </dev/null 2>/dev/null)
	echo "$out" | grep -q "OCSP Response Status: successful" || { echo "no staple on DoT"; exit 1; }
	echo "$out" | grep "This Update" | head -1
	kdig +tls-ca=ca.pem +tls-hostname=dns.example.test +tls-ocsp-stapling @127.0.0.1 -p 8853 www.example.test A +short
	kdig +https=/dns-query +tls-ca=ca.pem +tls-hostname=dns.example.test +tls-ocsp-stapling @127.0.0.1 -p 8443 www.example.test A +short
}
trap '"$CADDY" stop >/dev/null 2>&1 || true' EXIT
echo "== 4. check: the staple is served and verified (openssl, kdig over TLS and HTTPS)"
first=$(check)
echo "$first"

echo "== 5. a newer response, then reload (no restart)"
sleep 1   # a newer thisUpdate
"$CADDY" ocsp generate --cert server.pem --ca-cert ca.pem --ca-key ca.key --out server.ocsp --validity 7d
curl -sf -X POST localhost:2019/ocsp/reload >/dev/null   # or: caddy reload --force --config ...
second=$(check)
echo "$second"
if [ "$(echo "$first" | head -1)" = "$(echo "$second" | head -1)" ]; then
	echo "FAIL: the staple did not change after the reload"
	exit 1
fi
echo "OK: the new staple is served"
