#!/usr/bin/env bash
# Memory per idle HTTP/2 connection of two Caddy binaries with dnsfront,
# in turns, for a change too small to see in run.sh's idle row: each
# turn starts a fresh server from the bench's config (ports moved to
# 3xxxx), opens 10,000 connections with the HTTP/2 preface sent (bench's
# idleconns -h2), and prints the RSS growth per connection.
#
#   HOLD=1 bash bench/run.sh &      # the certificates, the config, idleconns
#   bash bench/idlepair.sh OLD NEW [turns]
set -euo pipefail
A=$1 B=$2 TURNS=${3:-3} N=${N:-10000}
T=$(ls -d /tmp/dnsfront-bench.* 2>/dev/null | head -1)
[ -n "$T" ] && [ -f "$T/Caddyfile" ] || { echo "start HOLD=1 bash bench/run.sh first" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
workdir dnsfront-idlepair
sed -e "s/localhost:2999/localhost:2998/" -e "s/127.0.0.1:\(8[0-9][0-9][0-9]\)\b/127.0.0.1:3\1/" \
	-e "s/https:\/\/:8443/https:\/\/:38443/" "$T/Caddyfile" > "$W/Caddyfile"
for turn in $(seq "$TURNS"); do
	for bin in "$A" "$B"; do
		HOME=$T taskset -c 0 "$bin" run --config "$W/Caddyfile" --adapter caddyfile > "$W/log" 2>&1 &
		pid=$!
		for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/38444) 2>/dev/null && break; sleep 0.1; done
		sleep 2
		read -r n rss0 rss1 <<<"$(idle_hold "$pid" "$T/idleconns" 1 127.0.0.1:38444 "$N" -h2)"
		kill "$pid"; wait "$pid" 2>/dev/null || true
		printf '%s %-30s %s connections, %s bytes each\n' "$turn" "$bin" "$n" $(((rss1 - rss0) * 1024 / n))
	done
done
