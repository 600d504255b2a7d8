#!/usr/bin/env bash
# DoH GET latency (p50, p99, p99.9, max) of two Caddy binaries with
# dnsfront, both held at once on ports of their own (1xxxx and 2xxxx) and
# loaded in turns by h2load -c 10 -m 10 --log-file, so that both meet the
# same minutes of a noisy machine. Each turn logs seconds (4) of requests
# after one of warm-up, as bench/run.sh's latency rows do.
#
#   HOLD=1 bash bench/run.sh &      # nsd, the certificates, the config, the URLs
#   bash bench/latpair.sh OLD NEW [turns] [seconds]
#
# PEER=1 loads the held dnsdist (port 9443) in the same turns, a third
# row each turn.
set -euo pipefail
A=$1 B=$2 TURNS=${3:-4} SECS=${4:-4}
T=$(ls -d /tmp/dnsfront-bench.* 2>/dev/null | head -1)
[ -n "$T" ] && [ -f "$T/Caddyfile" ] || { echo "start HOLD=1 bash bench/run.sh first" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
workdir dnsfront-latpair
i=0
for bin in "$A" "$B"; do
	i=$((i + 1))
	mkdir -p "$W/$i"
	sed -e "s/localhost:2999/localhost:299$i/" -e "s/127.0.0.1:\(8[0-9][0-9][0-9]\)\b/127.0.0.1:$i\1/" \
		-e "s/https:\/\/:8443/https:\/\/:${i}8443/" "$T/Caddyfile" > "$W/$i/Caddyfile"
	sed "s#127.0.0.1:8444#127.0.0.1:${i}8444#" "$T/urls-8444.txt" > "$W/$i/urls.txt"
	HOME=$T taskset -c 0 "$bin" run --config "$W/$i/Caddyfile" --adapter caddyfile > "$W/$i/log" 2>&1 &
	pids+=($!)
	for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/${i}8444") 2>/dev/null && break; sleep 0.1; done
done
sleep 2
mkdir -p "$W/3"
cp "$T/urls-9443.txt" "$W/3/urls.txt"
sides="1 2"
[ "${PEER:-0}" = 1 ] && sides="1 2 3"
for turn in $(seq "$TURNS"); do
	for i in $sides; do
		bin=$A; [ "$i" = 2 ] && bin=$B; [ "$i" = 3 ] && bin=dnsdist
		rm -f "$W/$i/h2.log"
		taskset -c 1 h2load -c 10 -m 10 -D "$SECS" --warm-up-time 1 -i "$W/$i/urls.txt" --log-file="$W/$i/h2.log" > "$W/$i/out" 2>&1
		awk '{print $3}' "$W/$i/h2.log" | sort -n | awk -v t="$turn" -v b="$bin" -v s="$SECS" \
			'{a[NR] = $1} END {printf "%s %-30s %.0f req/s  p50 %.3f  p99 %.3f  p99.9 %.3f  max %.3f ms\n", t, b, NR / s, a[int(NR * .5) + 1] / 1000, a[int(NR * .99) + 1] / 1000, a[int(NR * .999) + 1] / 1000, a[NR] / 1000}'
	done
done
