#!/usr/bin/env bash
# Side-by-side A/B of two Caddy binaries with dnsfront, for a change too
# small to see in run.sh's figures on a noisy machine (their spread from
# run to run is 5-10%): both run at once on the server core, each loaded
# by its own h2load on the client core, so both meet the same moments of
# noise; it prints each one's CPU per DoH request. The absolute figures
# are higher than in run.sh (two servers share the core); the difference
# between A and B is what it measures.
#
#   HOLD=1 bash bench/run.sh &      # nsd, the certificates, the query files
#   bash bench/pair.sh OLD NEW [kind] [requests] [times]
#
# kind: getf (GET, forwarding; the default), postf (POST, forwarding),
# both through the Caddy handler, gets / posts (the same through the
# dedicated DoH server on 8444), getr / postr (Caddy's respond), dotf (DoT, forwarding: dnsperf -m dot
# -c 10 -q 100 for 8 s, then CPU per query answered; requests is unused),
# dotctl (the same on 8856, forwarding behind the controls row's ACL,
# rate limit, dnstap to the bench's collector and ECS strip),
# dotmiss (the same through the cache on 8855, every name new: a cache
# miss's cost; the names are unique to each run), dotrefresh (the cache
# again, the same 500,000 names in every run: the first run stores them,
# the later ones find them expired, TTL 5 s, and refresh them), dothit
# (the cache on 8855 with the bench's 100%-hit file: after the first
# second every query is a hit).
# A and B swap ports every other time.
# KIND_B=getr gives B another kind than A: with A and B the same binary,
#
#   KIND_B=getr bash bench/pair.sh BIN BIN getf
#
# prints what forwarding costs over Caddy's respond, request for request.
# TURNS=1 runs the two loads one after the other instead (each server
# alone on the core, in turns): the sharing of a core changes how
# goroutines batch their work, and with it what a change saves.
set -euo pipefail
A=$1 B=$2 KIND=${3:-getf} N=${4:-60000} TIMES=${5:-4}
KIND_B=${KIND_B:-$KIND}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
T=$(ls -d /tmp/dnsfront-bench.* 2>/dev/null | head -1)
[ -n "$T" ] && [ -f "$T/Caddyfile" ] || { echo "start HOLD=1 bash bench/run.sh first" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
workdir dnsfront-pair
P=$W

# start NAME BINARY PORT ADMIN: a copy of the bench's dnsfront on other ports
start() {
	local name=$1 bin=$2 port=$3 admin=$4
	mkdir -p "$P/$name"
	cp "$bin" "$P/$name/caddy"
	# every port 8xxx of the config becomes 1 or 2 (port's first digit)
	# and 8xxx: 8853 is 18853 for A, 28853 for B
	sed -e "s/localhost:2999/localhost:$admin/" -e "s/127.0.0.1:\(8[0-9][0-9][0-9]\)\b/127.0.0.1:${port:0:1}\1/" \
		-e "s/https:\/\/:8443/https:\/\/:$port/" "$T/Caddyfile" > "$P/$name/Caddyfile"
	HOME=$T taskset -c "$SERVER_CPU" "$P/$name/caddy" run --config "$P/$name/Caddyfile" --adapter caddyfile \
		>"$P/$name/log" 2>&1 </dev/null &
	pids+=($!)
	for _ in $(seq 100); do
		(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return
		sleep 0.1
	done
	cat "$P/$name/log" >&2
	exit 1
}

# load PORT KIND: h2load's arguments for KIND against the server on PORT
load() {
	local port=$1
	case $2 in
	getf)
		sed "s#:8443/#:$port/#" "$T/get-urls.txt" > "$P/urls-$port.txt"
		echo "-i $P/urls-$port.txt" ;;
	postf) echo "-d $T/post.bin -H content-type:application/dns-message https://127.0.0.1:$port/dns-query" ;;
	gets)
		sed "s#:8443/#:${port:0:1}8444/#" "$T/get-urls.txt" > "$P/urls-$port.txt"
		echo "-i $P/urls-$port.txt" ;;
	posts) echo "-d $T/post.bin -H content-type:application/dns-message https://127.0.0.1:${port:0:1}8444/dns-query" ;;
	getr) echo "https://127.0.0.1:$port/respond" ;;
	postr) echo "-d $T/post.bin -H content-type:application/dns-message https://127.0.0.1:$port/respond" ;;
	*) echo "unknown kind $2" >&2; exit 1 ;;
	esac
}

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

start a "$A" 18443 2997
pa=${pids[-1]}
start b "$B" 28443 2996
pb=${pids[-1]}
sleep 1
how="side by side"
[ -z "${TURNS:-}" ] || how="in turns"
printf "A %s, B %s, %s: CPU us per request\n" "$KIND" "$KIND_B" "$how"
printf "%-8s %10s %10s %10s\n" run A B "B - A"
for i in $(seq "$TIMES"); do
	# the two loads start together (or, with TURNS, one after the
	# other); every other time B's first
	ports="18443 28443"
	[ $((i % 2)) = 1 ] || ports="28443 18443"
	for port in 18443 28443; do
		# names no run has asked (made before either load starts)
		[ "$KIND" != dotmiss ] || awk -v p="$port" -v i="$i" \
			'BEGIN {for (n = 0; n < 1500000; n++) printf "m%d-%d-%d.zipf.test A\n", p, i, n}' > "$P/miss-$port.txt"
		[ "$KIND" != dotrefresh ] || [ -f "$P/refresh-$port.txt" ] || awk -v p="$port" \
			'BEGIN {for (n = 0; n < 500000; n++) printf "f%d-%d.zipf.test A\n", p, n}' > "$P/refresh-$port.txt"
	done
	a0=$(ticks "$pa") b0=$(ticks "$pb")
	loads=()
	for port in $ports; do
		kind=$KIND
		[ "$port" = 18443 ] || kind=$KIND_B
		if [ "$kind" = dotf ] || [ "$kind" = dotctl ]; then
			dport=8853
			[ "$kind" = dotf ] || dport=8856
			taskset -c "$CLIENT_CPU" dnsperf -m dot -s 127.0.0.1 -p "${port:0:1}$dport" -d "$T/dnsperf.txt" -l 8 -c 10 -q 100 > "$P/h$port" 2>&1 &
		elif [ "$kind" = dotmiss ] || [ "$kind" = dotrefresh ] || [ "$kind" = dothit ]; then
			f=$P/miss-$port.txt
			[ "$kind" != dotrefresh ] || f=$P/refresh-$port.txt
			[ "$kind" != dothit ] || f=$T/hits.txt
			taskset -c "$CLIENT_CPU" dnsperf -m dot -s 127.0.0.1 -p "${port:0:1}8855" -d "$f" -l 8 -c 10 -q 100 > "$P/h$port" 2>&1 &
		else
			# shellcheck disable=SC2046
			taskset -c "$CLIENT_CPU" h2load -c 10 -m 10 -n "$N" $(load "$port" "$kind") > "$P/h$port" 2>&1 &
		fi
		loads+=($!)
		[ -z "${TURNS:-}" ] || wait $!
	done
	wait "${loads[@]}"
	declare -A done_n
	for port in 18443 28443; do
		if grep -q "Queries completed:" "$P/h$port"; then
			done_n[$port]=$(awk '/Queries completed:/ {print $3; exit}' "$P/h$port")
			grep -q "Queries lost: *0 " "$P/h$port" || { echo "queries lost:" >&2; cat "$P/h$port" >&2; exit 1; }
		else
			grep -q "status codes: $N 2xx" "$P/h$port" || { echo "not all answered 2xx:" >&2; cat "$P/h$port" >&2; exit 1; }
			done_n[$port]=$N
		fi
	done
	a1=$(ticks "$pa") b1=$(ticks "$pb")
	awk -v i="$i" -v a=$((a1 - a0)) -v b=$((b1 - b0)) -v na="${done_n[18443]}" -v nb="${done_n[28443]}" \
		'BEGIN {printf "%-8s %10.1f %10.1f %+10.1f\n", i, a * 10000 / na, b * 10000 / nb, b * 10000 / nb - a * 10000 / na}'
done
