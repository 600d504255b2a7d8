#!/usr/bin/env bash
# Side-by-side benchmark: dnsfront against dnsdist and unbound, all from
# this machine, alternating A B C for several rounds, servers pinned to one
# core and load generators to the other. nsd, the forwarders' upstream,
# runs on the load generators' core (UPSTREAM_CPU): it stands in for a
# resolver on another machine, and its CPU must not come out of the core
# the forwarders are measured on. Each row says how busy both cores were,
# so a row bound by the client core shows as such. dnsfront's DoH rows
# over long-lived connections and Caddy's respond, their ceiling, are
# measured in turns of SLICES slices a round (see interleave).
#
#   bash bench/run.sh                 # all scenarios, 3 rounds
#   ROUNDS=5 DURATION=20 bash bench/run.sh
#   SCENARIOS="dot doh" bash bench/run.sh
#   HOLD=1 bash bench/run.sh          # start the servers and keep them up for manual runs
#   BIN=/tmp/caddy-old bash bench/run.sh  # a Caddy with dnsfront built before, instead of this tree's
#
# Installs what it needs (dnsdist, nsd, unbound, nghttp2-client, dnsperf,
# openssl) with apt-get. Everything listens on 127.0.0.1 only. Prints a
# table and writes it to bench/results/latest.md (with the raw numbers in
# bench/results/latest.tsv).
#
# Upstream for the forwarders (dnsfront forward, dnsdist): nsd serving
# examples/example.test.zone on 127.0.0.1:5301 (rrl off), and zipf.test,
# a wildcard zone (TTL 5 s) for the cache rows, where dnsfront's cache,
# dnsdist's packet cache and unbound's own cache forward to nsd. unbound and
# "dnsfront zone" answer from their own copy of the zone: those rows are
# labelled so.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
# dnsfront's DoH rows and Caddy's respond are measured in turns of this many slices a round
SLICES=${SLICES:-5}
# the DoH latency rows: seconds of requests logged, after one of warm-up
LATENCY_SECONDS=${LATENCY_SECONDS:-4}
SCENARIOS=${SCENARIOS:-"idle udp dot latency doh dohserver handshake cache controls"}
IDLE_CONNS=${IDLE_CONNS:-10000}
# unbound needs two descriptors per TCP client and the open-files limit
# here is 16,384: it gets fewer (the table says how many each server had)
UNBOUND_IDLE_CONNS=${UNBOUND_IDLE_CONNS:-6000}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
UPSTREAM_CPU=${UPSTREAM_CPU:-$CLIENT_CPU}

need_pkgs=()
for p in dnsdist:dnsdist nsd:nsd unbound:unbound h2load:nghttp2-client dnsperf:dnsperf openssl:openssl fstrm_capture:fstrm-bin; do
	command -v "${p%%:*}" >/dev/null || need_pkgs+=("${p#*:}")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
	SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# shellcheck source=bench/lib.sh
. bench/lib.sh
workdir dnsfront-bench
T=$W

echo "== build dnsfront and the query files ($T)"
if [ -n "${BIN:-}" ]; then
	cp "$BIN" "$T/caddy" # a binary built before (another commit, for a before/after)
else
	go build -o "$T/caddy" ./cmd/caddy
fi
go build -tags dohnethttp -o "$T/caddy-nethttp" ./cmd/caddy
mkdir -p "$T/nethttp" "$T/gogc"
go run ./bench/mkqueries -out "$T"
# the GET URLs for each server's DoH port, and for dnsfront's zone path
for port in 8443 8444 8445 8446 9443 10443; do
	sed "s#https://127.0.0.1:8443#https://127.0.0.1:$port#" "$T/get-urls.txt" > "$T/urls-$port.txt"
done
sed "s#/dns-query#/zone-query#" "$T/get-urls.txt" > "$T/urls-zone.txt"
go build -o "$T/idleconns" ./bench/idleconns
# golang-dnstap's own command: the controls row's collector with
# TAP_COLLECTOR=golang or TAP_TEXT=1
go build -o "$T/dnstap" github.com/dnstap/golang-dnstap/dnstap
ulimit -n 65536 2>/dev/null || ulimit -n 16384 2>/dev/null || true
cp examples/example.test.zone "$T/example.test.zone"
printf '$ORIGIN zipf.test.\n$TTL 5\n@ IN SOA ns1 hostmaster 1 7200 3600 1209600 5\n@ IN NS ns1\nns1 IN A 127.0.0.1\n* IN A 192.0.2.99\n' > "$T/zipf.test.zone"

echo "== certificate, key and OCSP staple shared by every server"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/ca.key" -out "$T/ca.pem" \
	-days 30 -subj "/CN=bench CA" -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/server.key" -out "$T/server.csr" \
	-subj "/CN=dns.example.test" 2>/dev/null
printf 'subjectAltName=DNS:dns.example.test,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > "$T/ext.cnf"
openssl x509 -req -in "$T/server.csr" -CA "$T/ca.pem" -CAkey "$T/ca.key" -CAcreateserial -days 20 \
	-out "$T/leaf.pem" -extfile "$T/ext.cnf" 2>/dev/null
cat "$T/leaf.pem" "$T/ca.pem" > "$T/server.pem"
"$T/caddy" ocsp generate --cert "$T/server.pem" --ca-cert "$T/ca.pem" --ca-key "$T/ca.key" --out "$T/server.ocsp" >/dev/null

cat > "$T/nsd.conf" <<EOF
server:
	ip-address: 127.0.0.1@5301
	username: ""
	chroot: ""
	zonesdir: "$T"
	database: ""
	pidfile: "$T/nsd.pid"
	logfile: "$T/nsd.log"
	xfrdfile: "$T/xfrd.state"
	xfrdir: "$T"
	zonelistfile: "$T/zone.list"
	server-count: 1
	rrl-ratelimit: 0
	verbosity: 0
remote-control:
	control-enable: no
zone:
	name: example.test
	zonefile: "$T/example.test.zone"
zone:
	name: zipf.test
	zonefile: "$T/zipf.test.zone"
EOF

cat > "$T/Caddyfile" <<EOF
{
	admin localhost:2999
	default_bind 127.0.0.1
	auto_https disable_redirects
	local_certs
	skip_install_trust
	log {
		level WARN
	}
	ocsp {
		certificate $T/server.pem $T/server.key {
			staple file $T/server.ocsp
		}
	}
	dot 127.0.0.1:8853 {
		idle_timeout 30s
		forward udp://127.0.0.1:5301
	}
	# the dedicated DoH server
	doh 127.0.0.1:8444 {
		idle_timeout 30s
		forward udp://127.0.0.1:5301
	}
	dot 127.0.0.1:8854 {
		zone example.test $T/example.test.zone
	}
	# plain forwarding behind the controls an open front end runs: an
	# ACL, a rate limit no client reaches, dnstap to a socket, ECS strip
	dot 127.0.0.1:8856 {
		idle_timeout 30s
		dnstap unix:$T/tap.sock
		acl {
			allow 127.0.0.0/8 ::1
		}
		ratelimit {
			qps 100000000
		}
		ecs strip
		forward udp://127.0.0.1:5301
	}
	dot 127.0.0.1:8855 {
		idle_timeout 30s
		cache {
			max_entries 1000000
			max_bytes 1GiB
		}
		forward udp://127.0.0.1:5301
	}
	# the dedicated DoH server through the same cache (one store with
	# 8855's, as dnsdist's DoH and DoT share their pool's packet cache)
	doh 127.0.0.1:8447 {
		idle_timeout 30s
		cache {
			max_entries 1000000
			max_bytes 1GiB
		}
		forward udp://127.0.0.1:5301
	}
}
https://:8443 {
	tls {
		get_certificate ocsp
	}
	doh /dns-query {
		forward udp://127.0.0.1:5301
	}
	doh /zone-query {
		zone example.test $T/example.test.zone
	}
	doh /cache-query {
		cache
		forward udp://127.0.0.1:5301
	}
	respond /respond "x"
}
EOF

# the dedicated DoH server again, in a build whose HTTP/2 is Go's own
# (-tags dohnethttp): the plain net/http figure its connection loop is
# measured against
cat > "$T/Caddyfile-nethttp" <<EOF
{
	admin off
	log {
		level WARN
	}
	ocsp {
		certificate $T/server.pem $T/server.key {
			staple file $T/server.ocsp
		}
	}
	doh 127.0.0.1:8445 {
		idle_timeout 30s
		forward udp://127.0.0.1:5301
	}
}
EOF

# the dedicated DoH server once more, in a process run with GOGC=400
# (the Go collector's pacing, an operator's knob): the latency rows show
# what the collector costs the tail
sed -e 's/127.0.0.1:8445/127.0.0.1:8446/' "$T/Caddyfile-nethttp" > "$T/Caddyfile-gogc"

cat > "$T/dnsdist.conf" <<EOF
setSecurityPollSuffix("")
setTCPRecvTimeout(30)
newServer({address="127.0.0.1:5301"})
addTLSLocal("127.0.0.1:9853", "$T/server.pem", "$T/server.key", {ocspResponses={"$T/server.ocsp"}})
addDOHLocal("127.0.0.1:9443", "$T/server.pem", "$T/server.key", "/dns-query", {ocspResponses={"$T/server.ocsp"}})
-- the cache rows: frontends of their own, on a pool with a packet cache
newServer({address="127.0.0.1:5301", pool="cached"})
getPool("cached"):setCache(newPacketCache(1000000, {maxTTL=86400}))
addTLSLocal("127.0.0.1:9855", "$T/server.pem", "$T/server.key", {ocspResponses={"$T/server.ocsp"}})
addDOHLocal("127.0.0.1:9444", "$T/server.pem", "$T/server.key", "/dns-query", {ocspResponses={"$T/server.ocsp"}})
addAction(OrRule({DSTPortRule(9855), DSTPortRule(9444)}), PoolAction("cached"))
webserver("127.0.0.1:8084")
setWebserverConfig({apiKey="bench", acl="127.0.0.0/8"})
EOF

cat > "$T/unbound.conf" <<EOF
server:
	interface: 127.0.0.1@10853
	interface: 127.0.0.1@10443
	tls-port: 10853
	https-port: 10443
	tls-service-key: "$T/server.key"
	tls-service-pem: "$T/server.pem"
	username: ""
	chroot: ""
	directory: "$T"
	pidfile: "$T/unbound.pid"
	do-daemonize: no
	use-syslog: no
	verbosity: 0
	num-threads: 1
	access-control: 127.0.0.0/8 allow
	module-config: "iterator"
	incoming-num-tcp: 6500
	tcp-idle-timeout: 30000
	do-not-query-localhost: no
	msg-cache-size: 64m
	rrset-cache-size: 128m
auth-zone:
	name: "example.test"
	zonefile: "$T/example.test.zone"
	for-downstream: yes
	for-upstream: no
forward-zone:
	name: "zipf.test"
	forward-addr: 127.0.0.1@5301
remote-control:
	control-enable: yes
	control-interface: 127.0.0.1
	control-port: 8953
	control-use-cert: no
EOF

# start VAR name host:port command...: runs a server pinned to the server
# core, waits until it accepts connections, and sets VAR to its pid
start() {
	local var=$1 name=$2 addr=$3
	shift 3
	taskset -c "${CPU:-$SERVER_CPU}" "$@" >"$T/$name.log" 2>&1 </dev/null &
	local pid=$!
	pids+=("$pid")
	printf -v "$var" '%s' "$pid"
	for _ in $(seq 100); do
		if (exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}") 2>/dev/null; then
			return
		fi
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	echo "$name did not start:" >&2
	cat "$T/$name.log" >&2
	exit 1
}

# start_servers: dnsfront, dnsdist and unbound, fresh
start_servers() {
	start DNSFRONT dnsfront 127.0.0.1:8853 env HOME="$T" "$T/caddy" run --config "$T/Caddyfile" --adapter caddyfile
	start NETHTTP dnsfront-nethttp 127.0.0.1:8445 env HOME="$T/nethttp" "$T/caddy-nethttp" run --config "$T/Caddyfile-nethttp" --adapter caddyfile
	start GOGC400 dnsfront-gogc 127.0.0.1:8446 env HOME="$T/gogc" GOGC=400 "$T/caddy" run --config "$T/Caddyfile-gogc" --adapter caddyfile
	start DNSDIST dnsdist 127.0.0.1:9853 dnsdist --supervised --disable-syslog -C "$T/dnsdist.conf"
	start UNBOUND unbound 127.0.0.1:10853 unbound -d -c "$T/unbound.conf"
	sleep 1
}

# descendants PID: its children, grandchildren, ...
descendants() {
	local c
	for c in $(pgrep -P "$1"); do
		echo "$c"
		descendants "$c"
	done
}

# pin_nsd N: moves nsd to core N (the process started, xfrd, and below it
# nsd's main and server processes)
pin_nsd() {
	local p
	for p in "$NSD" $(descendants "$NSD"); do taskset -a -p -c "$1" "$p" >/dev/null; done
}

# restart_servers: fresh processes, for a memory measurement that a
# process's earlier allocations would distort
restart_servers() {
	local p
	for p in "$DNSFRONT" "$NETHTTP" "$GOGC400" "$DNSDIST" "$UNBOUND"; do
		kill "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	start_servers
}

echo "== start nsd (upstream, on CPU $UPSTREAM_CPU), dnsfront, dnsdist, unbound (servers on CPU $SERVER_CPU)"
CPU=$UPSTREAM_CPU start NSD nsd 127.0.0.1:5301 nsd -d -c "$T/nsd.conf"
# the dnstap collector of the controls row, next to the upstream: it reads
# the frames and keeps them as frames, as a collector that archives them
# does. fstrm_capture (the Frame Streams library's own capture tool, what
# BIND's, Knot's and unbound's docs use) by default; TAP_COLLECTOR=golang
# is golang-dnstap's command, which costs the client's core about twice
# as much a frame (docs/performance.md); TAP_TEXT=1 is that command
# formatting each message as quiet text, on the client's core.
if [ -n "${TAP_TEXT:-}" ] || [ "${TAP_COLLECTOR:-fstrm}" = golang ]; then
	taskset -c "$UPSTREAM_CPU" "$T/dnstap" -u "$T/tap.sock" ${TAP_TEXT:+-q} -w /dev/null > "$T/dnstap.log" 2>&1 &
else
	taskset -c "$UPSTREAM_CPU" fstrm_capture -t protobuf:dnstap.Dnstap -u "$T/tap.sock" -w /dev/null > "$T/dnstap.log" 2>&1 &
fi
TAP=$!
pids+=($!)
start_servers

if [ -n "${HOLD:-}" ]; then
	# keep the servers up for manual runs: ports as in the configs above
	echo "== servers up (dnsfront $DNSFRONT, dnsdist $DNSDIST, unbound $UNBOUND, nsd $NSD); files in $T; Ctrl-C ends"
	sleep infinity &
	pids+=($!)
	wait $!
fi

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
udp_rcvbuf_errors() { awk '/^Udp: [0-9]/ {print $6}' /proc/net/snmp; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# core_ticks N: "busy total" jiffies of core N
core_ticks() { awk -v c="cpu$1" '$1 == c {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t}' /proc/stat; }
# busy_pct "busy0 total0" "busy1 total1"
busy_pct() { echo "$1 $2" | awk '{d = $4 - $2; printf "%.0f", (d > 0 ? ($3 - $1) * 100 / d : 0)}'; }
TICK=$(getconf CLK_TCK)
RAW="$T/raw.tsv"
printf 'scenario\tserver\tround\tqps\tavg_ms\tcpu_s_per_100k\trss_mb\tserver_core_busy_pct\tclient_core_busy_pct\n' > "$RAW"

# sums per row key (scenario|name) of the samples taken so far
declare -A S_N S_SECS S_LAT S_TICKS S_SB S_ST S_CB S_CT

# sample KEY PID command...: runs the client on the client core once and
# adds what it did to the sums under KEY: answers, seconds, latency, the
# server process's CPU ticks, both cores' busy and total ticks
sample() {
	local key=$1 pid=$2
	shift 2
	local before after out qps avg n drops0 drops1 sc0 sc1 cc0 cc1 sb0 st0 sb1 st1 cb0 ct0 cb1 ct1
	drops0=$(udp_rcvbuf_errors)
	before=$(cpu_ticks "$pid")
	sc0=$(core_ticks "$SERVER_CPU") cc0=$(core_ticks "$CLIENT_CPU")
	out=$(taskset -c "$CLIENT_CPU" "$@" 2>&1) || true
	sc1=$(core_ticks "$SERVER_CPU") cc1=$(core_ticks "$CLIENT_CPU")
	after=$(cpu_ticks "$pid")
	drops1=$(udp_rcvbuf_errors)
	[ "$drops1" = "$drops0" ] || echo "   ($key: $((drops1 - drops0)) UDP datagrams dropped at a full receive buffer, kernel count)" >&2
	case "$1" in
	dnsperf)
		qps=$(echo "$out" | awk '/Queries per second/ {print $4}')
		avg=$(echo "$out" | awk '/Average Latency/ {printf "%.3f", $4 * 1000; exit}')
		n=$(echo "$out" | awk '/Queries completed/ {print $3}')
		local lost
		lost=$(echo "$out" | awk '/Queries lost/ {print $3}')
		[ "${lost:-0}" = 0 ] || echo "   ($key: $lost queries lost)" >&2
		;;
	h2load)
		qps=$(echo "$out" | awk '/^finished in/ {gsub(",", "", $4); print $4}')
		avg=$(echo "$out" | awk '/^time for request:/ {v=$6; u=v; sub(/[a-z]+$/, "", v); if (u ~ /us$/) v/=1000; if (u ~ /[^m]s$/ && u !~ /us$/ && u !~ /ms$/) v*=1000; printf "%.3f", v}')
		n=$(echo "$out" | awk '/^requests:/ {print $8}')
		local failed
		failed=$(echo "$out" | awk '/^requests:/ {print $10}')
		[ "${failed:-0}" = 0 ] || echo "   ($key: $failed requests failed)" >&2
		;;
	esac
	if [ -z "${qps:-}" ] || [ -z "${n:-}" ] || [ "$n" = 0 ]; then
		echo "   $key: no result:" >&2
		echo "$out" | tail -5 >&2
		return 1
	fi
	read -r sb0 st0 <<<"$sc0"
	read -r sb1 st1 <<<"$sc1"
	read -r cb0 ct0 <<<"$cc0"
	read -r cb1 ct1 <<<"$cc1"
	S_N[$key]=$((${S_N[$key]:-0} + n))
	S_SECS[$key]=$(awk -v s="${S_SECS[$key]:-0}" -v n="$n" -v q="$qps" 'BEGIN {printf "%.6f", s + n / q}')
	S_LAT[$key]=$(awk -v s="${S_LAT[$key]:-0}" -v n="$n" -v a="$avg" 'BEGIN {printf "%.6f", s + n * a}')
	S_TICKS[$key]=$((${S_TICKS[$key]:-0} + after - before))
	S_SB[$key]=$((${S_SB[$key]:-0} + sb1 - sb0)) S_ST[$key]=$((${S_ST[$key]:-0} + st1 - st0))
	S_CB[$key]=$((${S_CB[$key]:-0} + cb1 - cb0)) S_CT[$key]=$((${S_CT[$key]:-0} + ct1 - ct0))
}

# forget KEY: clears the sums under KEY
forget() {
	unset "S_N[$1]" "S_SECS[$1]" "S_LAT[$1]" "S_TICKS[$1]" "S_SB[$1]" "S_ST[$1]" "S_CB[$1]" "S_CT[$1]"
}

# record SCENARIO NAME PID: writes the row of this round from the sums of
# its samples (rates over their summed time), and clears them
record() {
	local scenario=$1 name=$2 pid=$3 key="$1|$2"
	if [ "${S_N[$key]:-0}" = 0 ]; then
		forget "$key"
		return
	fi
	local qps avg cpu rss sbusy cbusy
	qps=$(awk -v n="${S_N[$key]}" -v s="${S_SECS[$key]}" 'BEGIN {printf "%.2f", n / s}')
	avg=$(awk -v n="${S_N[$key]}" -v l="${S_LAT[$key]}" 'BEGIN {printf "%.3f", l / n}')
	cpu=$(awk -v a="${S_TICKS[$key]}" -v t="$TICK" -v n="${S_N[$key]}" 'BEGIN {printf "%.2f", a / t / n * 100000}')
	rss=$(awk -v k="$(rss_kb "$pid")" 'BEGIN {printf "%.1f", k / 1024}')
	sbusy=$(busy_pct "0 0" "${S_SB[$key]} ${S_ST[$key]}") cbusy=$(busy_pct "0 0" "${S_CB[$key]} ${S_CT[$key]}")
	forget "$key"
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scenario" "$name" "$round" "$qps" "$avg" "$cpu" "$rss" "$sbusy" "$cbusy" >> "$RAW"
	printf '   %-28s %-22s %10s q/s  avg %s ms  cpu %s s/100k  rss %s MB  cores busy %s%% / %s%%\n' "$scenario" "$name" "$qps" "$avg" "$cpu" "$rss" "$sbusy" "$cbusy"
}

# measure SCENARIO NAME PID command...: one row, one run of the client
measure() {
	local scenario=$1 name=$2 pid=$3
	shift 3
	sample "$scenario|$name" "$pid" "$@" || true
	record "$scenario" "$name" "$pid"
}

# interleave ROW...: rows of one process, each "scenario|name|pid|command"
# (the command's words split on blanks, its -n already a slice's share),
# measured in turn SLICES times and each recorded from the sum of its
# slices. On this machine the speed of a core drifts by 10-25% from one
# ten seconds to the next: rows that are compared (dnsfront's DoH against
# Caddy's respond) see the same seconds when taken in turns this short.
interleave() {
	local i row scenario name pid cmd
	for i in $(seq "$SLICES"); do
		for row in "$@"; do
			IFS='|' read -r scenario name pid cmd <<<"$row"
			# shellcheck disable=SC2086
			sample "$scenario|$name" "$pid" $cmd || true
		done
	done
	for row in "$@"; do
		IFS='|' read -r scenario name pid cmd <<<"$row"
		record "$scenario" "$name" "$pid"
	done
}

# idle_measure kind name pid addr [idleconns options]: memory per idle DoT
# connection: handshake done and nothing sent, one query asked, or no
# ClientHello at all (kind says which; silent ones are measured within the
# servers' handshake timeouts)
IDLE="$T/idle.tsv"
idle_measure() {
	local kind=$1 name=$2 pid=$3 addr=$4 rss0 rss1 n count=$IDLE_CONNS
	shift 4
	[ "$name" = unbound ] && count=$UNBOUND_IDLE_CONNS
	read -r n rss0 rss1 <<<"$(idle_hold "$pid" "$T/idleconns" "$CLIENT_CPU" "$addr" "$count" "$@")"
	local per
	per=$(awk -v a="$rss1" -v b="$rss0" -v n="$n" 'BEGIN {printf "%.0f", (a - b) * 1024 / n}')
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$round" "$n" "$per" "$((rss1 / 1024))" "$kind" >> "$IDLE"
	printf '   %-28s %-22s %s connections  %s bytes each  rss %s MB\n' "idle, $kind" "$name" "$n" "$per" "$((rss1 / 1024))"
	sleep 3 # let the server let go of them
}

# latency_row NAME PORT FILE: p50, p99 and max of the DoT answers to
# FILE under -c 10 -q 100 for 5 s (dnsperf -v prints every answer's
# latency), appended to latency.tsv
latency_row() {
	local name=$1 port=$2 file=$3
	taskset -c "$CLIENT_CPU" dnsperf -m dot -s 127.0.0.1 -p "$port" -d "$file" -l 5 -c 10 -q 100 -v \
		-O suppress=unexpected,timeout,congestion,sendfailed,sockready 2>/dev/null |
		awk '/^> / {print $NF * 1000}' | sort -n |
		awk -v n="$name" -v r="$round" '{a[NR] = $1} END {if (NR) printf "%s\t%s\t%d\t%.3f\t%.3f\t%.3f\n", n, r, NR, a[int(NR * .5) + 1], a[int(NR * .99) + 1], a[NR]}' >> "$T/latency.tsv"
	tail -1 "$T/latency.tsv" | awk -F'\t' '{printf "   %-28s %-22s %s answers  p50 %s ms  p99 %s ms  max %s ms\n", "DoT latency -c 10 -q 100", $1, $3, $4, $5, $6}'
}

# cache_counts SERVER: "hits misses coalesced" of its cache so far
cache_counts() {
	case $1 in
	dnsfront) curl -s localhost:2999/dns/cache |
		awk -F'[:,]' '/"hits"/ {h += $2} /"misses"/ {m += $2} /"coalesced"/ {c += $2} END {print h + 0, m + 0, c + 0}' ;;
	dnsdist) curl -s -H 'X-API-Key: bench' http://127.0.0.1:8084/api/v1/servers/localhost/statistics |
		grep -o '"name": *"cache-\(hits\|misses\)"[^}]*' | awk -F'[:,}]' '/hits/ {h = $NF} /misses/ {m = $NF} END {print h + 0, m + 0, 0}' ;;
	unbound) unbound-control -c "$T/unbound.conf" stats_noreset 2>/dev/null |
		awk -F= '/^total.num.cachehits=/ {h = $2} /^total.num.cachemiss=/ {m = $2} END {print h + 0, m + 0, 0}' ;;
	esac
}

# cache_measure SCENARIO NAME SERVER PID command...: measure, and note the
# hit ratio the server reached during the run, and the share of queries
# answered without an upstream query of their own: the hits and the
# misses that joined an identical one under way (dnsfront's coalesced;
# 0 for the peers, whose counters do not tell them apart)
cache_measure() {
	local scenario=$1 name=$2 server=$3 pid=$4 h0 m0 c0 h1 m1 c1
	shift 4
	read -r h0 m0 c0 <<<"$(cache_counts "$server")"
	measure "$scenario" "$name" "$pid" "$@"
	read -r h1 m1 c1 <<<"$(cache_counts "$server")"
	awk -v s="$scenario" -v n="$name" -v r="$round" -v h=$((h1 - h0)) -v m=$((m1 - m0)) -v c=$((c1 - c0)) -v out="$T/hits.tsv" \
		'BEGIN {if (h + m > 0) {printf "%s\t%s\t%s\t%.1f\t%.1f\n", s, n, r, h * 100 / (h + m), (h + c) * 100 / (h + m) >> out; printf "   %-28s %-22s hit ratio %.1f%%, %.1f%% with no upstream query of its own\n", s, n, h * 100 / (h + m), (h + c) * 100 / (h + m)}}'
}

DP="dnsperf -d $T/dnsperf.txt -l $DURATION"
H2N=$((DURATION * 15000))
for round in $(seq "$ROUNDS"); do
	echo "== round $round of $ROUNDS"
	for s in $SCENARIOS; do
		case $s in
		udp)
			# nsd on the server core for this row: the ceiling is nsd
			# alone on a core against dnsperf on the other
			pin_nsd "$SERVER_CPU"
			measure "UDP ceiling (nsd direct)" nsd "$NSD" $DP -s 127.0.0.1 -p 5301 -c 10 -q 100
			pin_nsd "$UPSTREAM_CPU"
			;;
		dot)
			measure "DoT -c 10 -q 100" "dnsfront forward" "$DNSFRONT" $DP -m dot -s 127.0.0.1 -p 8853 -c 10 -q 100
			measure "DoT -c 10 -q 100" "dnsdist forward" "$DNSDIST" $DP -m dot -s 127.0.0.1 -p 9853 -c 10 -q 100
			measure "DoT -c 10 -q 100" "dnsfront zone (own data)" "$DNSFRONT" $DP -m dot -s 127.0.0.1 -p 8854 -c 10 -q 100
			measure "DoT -c 10 -q 100" "unbound (own data)" "$UNBOUND" $DP -m dot -s 127.0.0.1 -p 10853 -c 10 -q 100
			;;
		controls)
			# the cost of acl + ratelimit (not reached) + dnstap to a
			# socket + ecs strip, against plain forwarding, alternating
			measure "DoT forward -c 10 -q 100" "dnsfront forward" "$DNSFRONT" $DP -m dot -s 127.0.0.1 -p 8853 -c 10 -q 100
			# and what the collector took of the client's core a query
			key="DoT forward -c 10 -q 100|dnsfront forward + controls + dnstap"
			tap0=$(cpu_ticks "$TAP")
			sample "$key" "$DNSFRONT" $DP -m dot -s 127.0.0.1 -p 8856 -c 10 -q 100 || true
			tap1=$(cpu_ticks "$TAP")
			awk -v a="$((tap1 - tap0))" -v t="$TICK" -v n="${S_N[$key]:-0}" \
				'BEGIN {if (n > 0) printf "   (the dnstap collector on the client'"'"'s core: cpu %.2f s/100k queries)\n", a / t / n * 100000}'
			record "${key%%|*}" "${key#*|}" "$DNSFRONT"
			;;
		doh)
			# dnsfront's rows and Caddy's respond for the same kind of
			# request (the ceiling) are interleaved in slices, so that
			# the ratio compares the same seconds of a noisy machine
			h2="h2load -c 10 -m 10 -n $((H2N / SLICES))"
			post="-d $T/post.bin -H content-type:application/dns-message"
			interleave "DoH GET h2 -c 10 -m 10|dnsfront|$DNSFRONT|$h2 -i $T/urls-8443.txt" \
				"HTTP/2 ceiling -c 10 -m 10|caddy respond|$DNSFRONT|$h2 https://127.0.0.1:8443/respond" \
				"DoH GET h2 -c 10 -m 10|dnsfront zone (own data)|$DNSFRONT|$h2 -i $T/urls-zone.txt"
			measure "DoH GET h2 -c 10 -m 10" dnsdist "$DNSDIST" h2load -c 10 -m 10 -n $H2N -i "$T/urls-9443.txt"
			measure "DoH GET h2 -c 10 -m 10" "unbound (own data)" "$UNBOUND" h2load -c 10 -m 10 -n $H2N -i "$T/urls-10443.txt"
			# the ceiling for POST: the same request shape (a body in a
			# DATA frame), answered by respond
			interleave "DoH POST h2 -c 10 -m 10|dnsfront|$DNSFRONT|$h2 $post https://127.0.0.1:8443/dns-query" \
				"HTTP/2 ceiling POST -c 10 -m 10|caddy respond|$DNSFRONT|$h2 $post https://127.0.0.1:8443/respond"
			# shellcheck disable=SC2086
			measure "DoH POST h2 -c 10 -m 10" dnsdist "$DNSDIST" h2load -c 10 -m 10 -n $H2N $post https://127.0.0.1:9443/dns-query
			# shellcheck disable=SC2086
			measure "DoH POST h2 -c 10 -m 10" "unbound (own data)" "$UNBOUND" h2load -c 10 -m 10 -n $H2N $post https://127.0.0.1:10443/dns-query
			;;
		dohserver)
			# the dedicated DoH server (8444) against dnsdist's DoH, the
			# same server with Go's own HTTP/2 (8445, plain net/http) and
			# the Caddy handler (8443), all forwarding to nsd
			post="-d $T/post.bin -H content-type:application/dns-message"
			for target in "dnsfront doh server":8444:"$DNSFRONT" "dnsdist":9443:"$DNSDIST" \
				"dnsfront doh server, Go's net/http h2":8445:"$NETHTTP" "dnsfront handler (Caddy site)":8443:"$DNSFRONT"; do
				IFS=: read -r name port pid <<<"$target"
				measure "DoH server GET h2 -c 10 -m 10" "$name" "$pid" h2load -c 10 -m 10 -n $H2N -i "$T/urls-$port.txt"
				# shellcheck disable=SC2086
				measure "DoH server POST h2 -c 10 -m 10" "$name" "$pid" h2load -c 10 -m 10 -n $H2N $post "https://127.0.0.1:$port/dns-query"
			done
			# p50/p99/p99.9 of each request under the same load, in a
			# steady state: h2load --log-file (a line a request, its time
			# in us) over LATENCY_SECONDS after a second of warm-up whose
			# requests are not logged (the handshakes, the first requests
			# and whatever collection they bring); 75,000 requests from
			# the start (under a second) let one collection more or less
			# move the p99
			for target in "dnsfront doh server":8444 "dnsdist":9443 "dnsfront doh server, GOGC=400":8446; do
				name=${target%:*} port=${target##*:}
				rm -f "$T/h2.log"
				taskset -c "$CLIENT_CPU" h2load -c 10 -m 10 -D "$LATENCY_SECONDS" --warm-up-time 1 -i "$T/urls-$port.txt" --log-file="$T/h2.log" >/dev/null 2>&1 || true
				awk '{print $3 / 1000}' "$T/h2.log" | sort -n |
					awk -v n="$name" -v r="$round" '{a[NR] = $1} END {if (NR) printf "%s\t%s\t%d\t%.3f\t%.3f\t%.3f\t%.3f\n", n, r, NR, a[int(NR * .5) + 1], a[int(NR * .99) + 1], a[NR], a[int(NR * .999) + 1]}' >> "$T/doh-latency.tsv"
				tail -1 "$T/doh-latency.tsv" | awk -F'\t' '{printf "   %-28s %-22s %s answers  p50 %s ms  p99 %s ms  p99.9 %s ms  max %s ms\n", "DoH GET latency -c 10 -m 10", $1, $3, $4, $5, $7, $6}'
			done
			# a new TLS connection per GET, staple attached
			for target in "dnsfront doh server":8444:"$DNSFRONT" "dnsdist":9443:"$DNSDIST"; do
				IFS=: read -r name port pid <<<"$target"
				measure "DoH server new conn per query" "$name" "$pid" h2load -n 3000 -c 3000 -m 1 -t 1 -i "$T/urls-$port.txt"
			done
			# memory per idle HTTP/2 connection (preface and SETTINGS sent,
			# no request), fresh processes, round 1; IDLE_REPEAT times
			# (the table gives the median): a Go server's RSS depends on
			# where its heap goal stood when it is read
			if [ "$round" = 1 ]; then
				for _ in $(seq "${IDLE_REPEAT:-3}"); do
					restart_servers
					idle_measure "HTTP/2 (DoH), preface sent" "dnsfront" "$DNSFRONT" 127.0.0.1:8444 -h2
					idle_measure "HTTP/2 (DoH), preface sent" "dnsdist" "$DNSDIST" 127.0.0.1:9443 -h2
				done
			fi
			;;
		idle)
			# fresh processes only: a C allocator reuses what it already holds
			[ "$round" = 1 ] || continue
			for kind in "nothing sent" "after one query" "silent, no ClientHello"; do
				# each kind from fresh processes (another scenario, or the
				# kind before, may have run first in this round)
				restart_servers
				case $kind in
				"nothing sent") opt= ;;
				"after one query") opt="-query www.example.test" ;;
				*) opt=-silent ;;
				esac
				idle_measure "$kind" "dnsfront" "$DNSFRONT" 127.0.0.1:8853 $opt
				idle_measure "$kind" "dnsdist" "$DNSDIST" 127.0.0.1:9853 $opt
				idle_measure "$kind" "unbound" "$UNBOUND" 127.0.0.1:10853 $opt
			done
			;;
		latency)
			# p50/p99 under the DoT load: dnsperf -v prints every answer's latency
			for target in "dnsfront forward":8853 "dnsdist forward":9853 "dnsfront zone (own data)":8854 "unbound (own data)":10853; do
				latency_row "${target%:*}" "${target##*:}" "$T/dnsperf.txt"
			done
			;;
		handshake)
			# a new TLS connection per query, staple attached
			measure "DoT new conn per query" "dnsfront forward" "$DNSFRONT" $DP -m dot -s 127.0.0.1 -p 8853 -c 20 -q 20 -O num-queries-per-conn=1
			measure "DoT new conn per query" "dnsdist forward" "$DNSDIST" $DP -m dot -s 127.0.0.1 -p 9853 -c 20 -q 20 -O num-queries-per-conn=1
			measure "DoT new conn per query" "unbound (own data)" "$UNBOUND" $DP -m dot -s 127.0.0.1 -p 10853 -c 20 -q 20 -O num-queries-per-conn=1
			# DoH: h2load, 3,000 clients connecting at once, one GET each
			# (dnsperf's DoH mode with one query per connection swings
			# between ~800/s and ~300/s from run to run, for every server)
			for target in "dnsfront forward":8443:"$DNSFRONT" "dnsdist forward":9443:"$DNSDIST" "unbound (own data)":10443:"$UNBOUND"; do
				IFS=: read -r name port pid <<<"$target"
				measure "DoH new conn per query" "$name" "$pid" h2load -n 3000 -c 3000 -m 1 -t 1 -i "$T/urls-$port.txt"
			done
			# the same through Caddy's HTTP stack with no DNS work: its ceiling
			measure "DoH new conn per query" "caddy respond" "$DNSFRONT" h2load -n 3000 -c 3000 -m 1 -t 1 "https://127.0.0.1:8443/respond"
			;;
		cache)
			# through each server's cache: Zipf names (~90% hits) and a
			# file of 100 names (all hits once warm); unbound forwards
			# zipf.test to nsd and caches it itself
			for f in zipf hits; do
				sc="DoT cache, zipf -c 10 -q 100"
				[ $f = zipf ] || sc="DoT cache, 100% hits -c 10 -q 100"
				Z="dnsperf -d $T/$f.txt -l $DURATION"
				cache_measure "$sc" "dnsfront cache" dnsfront "$DNSFRONT" $Z -m dot -s 127.0.0.1 -p 8855 -c 10 -q 100
				cache_measure "$sc" "dnsdist packet cache" dnsdist "$DNSDIST" $Z -m dot -s 127.0.0.1 -p 9855 -c 10 -q 100
				cache_measure "$sc" "unbound cache" unbound "$UNBOUND" $Z -m dot -s 127.0.0.1 -p 10853 -c 10 -q 100
				# a hit is an answer from memory: dnsfront's zone, in the
				# same round, is what a hit may cost at most
				[ $f = zipf ] || measure "$sc" "dnsfront zone (own data)" "$DNSFRONT" $DP -m dot -s 127.0.0.1 -p 8854 -c 10 -q 100
			done
			# latency through each cache, Zipf names (warm by now)
			for target in "dnsfront cache":8855 "dnsdist packet cache":9855 "unbound cache":10853; do
				latency_row "${target%:*}, zipf" "${target##*:}" "$T/zipf.txt"
			done
			# every query a miss (names asked once): the cache's cost on a
			# miss, against forwarding without it; and what each entry
			# costs in memory (RSS growth / misses, each a new entry). Each
			# round asks names of its own: from round 2 on, the same names
			# would be round 1's, expired, and refreshed in place
			sed "s/^u/r${round}u/" "$T/unique.txt" > "$T/unique-$round.txt"
			U="dnsperf -d $T/unique-$round.txt -l $DURATION"
			for srv in "dnsfront cache:dnsfront:$DNSFRONT:8855" "dnsfront forward, no cache:-:$DNSFRONT:8853" "dnsdist packet cache:dnsdist:$DNSDIST:9855"; do
				IFS=: read -r name server pid port <<<"$srv"
				rss0=$(rss_kb "$pid")
				read -r h0 m0 _ <<<"$(cache_counts "$server")"
				measure "DoT cache, 0% hits -c 10 -q 100" "$name" "$pid" $U -m dot -s 127.0.0.1 -p "$port" -c 10 -q 100
				read -r h1 m1 _ <<<"$(cache_counts "$server")"
				rss1=$(rss_kb "$pid")
				[ "$server" = - ] || awk -v n="$name" -v r="$round" -v m=$((m1 - m0)) -v d=$((rss1 - rss0)) -v out="$T/entries.tsv" \
					'BEGIN {if (m > 0) {printf "%s\t%s\t%d\t%.0f\n", n, r, m, d * 1024 / m >> out; printf "   %-28s %-22s %d new entries, %.0f bytes each (RSS growth)\n", "cache memory", n, m, d * 1024 / m}}'
			done
			sed "s#https://127.0.0.1:8443/cache-query#https://127.0.0.1:9444/dns-query#" "$T/zipf-urls.txt" > "$T/zipf-urls-9444.txt"
			sed "s#https://127.0.0.1:8443/cache-query#https://127.0.0.1:10443/dns-query#" "$T/zipf-urls.txt" > "$T/zipf-urls-10443.txt"
			sed "s#https://127.0.0.1:8443/cache-query#https://127.0.0.1:8447/dns-query#" "$T/zipf-urls.txt" > "$T/zipf-urls-8447.txt"
			cache_measure "DoH GET cache, zipf h2 -c 10 -m 10" "dnsfront doh server cache" dnsfront "$DNSFRONT" h2load -c 10 -m 10 -n $H2N -i "$T/zipf-urls-8447.txt"
			cache_measure "DoH GET cache, zipf h2 -c 10 -m 10" "dnsfront cache (Caddy handler)" dnsfront "$DNSFRONT" h2load -c 10 -m 10 -n $H2N -i "$T/zipf-urls.txt"
			cache_measure "DoH GET cache, zipf h2 -c 10 -m 10" "dnsdist packet cache" dnsdist "$DNSDIST" h2load -c 10 -m 10 -n $H2N -i "$T/zipf-urls-9444.txt"
			cache_measure "DoH GET cache, zipf h2 -c 10 -m 10" "unbound cache" unbound "$UNBOUND" h2load -c 10 -m 10 -n $H2N -i "$T/zipf-urls-10443.txt"
			;;
		esac
	done
done

mkdir -p bench/results
{
	echo "# dnsfront benchmark, $(date -u +%Y-%m-%dT%H:%MZ)"
	echo
	echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); servers on CPU $SERVER_CPU, clients on CPU $CLIENT_CPU, nsd on CPU $UPSTREAM_CPU;"
	echo "$ROUNDS rounds of ${DURATION}s, alternating; medians. dnsdist $(dnsdist --version 2>&1 | head -1 | awk '{print $2}'),"
	echo "unbound $(unbound -V 2>&1 | awk '/^Version/ {print $2; exit}'), nsd $(nsd -v 2>&1 | head -1 | awk '{print $3}'), dnsperf $(dnsperf -h 2>&1 | awk '/^Version/ {print $2; exit}'), $(h2load --version | head -1)."
	echo
	bash bench/table.sh "$RAW"
	if [ "$(wc -l <"$RAW")" -gt 1 ]; then
		bash bench/chart.sh "$RAW" bench/results/latest.png >/dev/null
	fi
	if [ -s "$T/latency.tsv" ]; then
		echo
		echo "DoT latency under load (dnsperf -m dot -c 10 -q 100 -v, 5 s; per-answer latencies; median over rounds):"
		echo
		echo "| server | answers | p50 ms | p99 ms | max ms |"
		echo "|---|---:|---:|---:|---:|"
		awk -F'\t' '{k = $1; if (!(k in seen)) {o[++n] = k; seen[k] = 1}; c[k] = c[k] " " $3; p[k] = p[k] " " $4; q[k] = q[k] " " $5; x[k] = x[k] " " $6}
		function median(s,   a, m, i, j, t) {m = split(s, a, " "); for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] + 0 < a[i] + 0) {t = a[i]; a[i] = a[j]; a[j] = t}; return a[int((m + 1) / 2)]}
		END {for (i = 1; i <= n; i++) {k = o[i]; printf "| %s | %s | %s | %s | %s |\n", k, median(c[k]), median(p[k]), median(q[k]), median(x[k])}}' "$T/latency.tsv"
		cp "$T/latency.tsv" bench/results/latest-latency.tsv
	fi
	if [ -s "$T/doh-latency.tsv" ]; then
		echo
		echo "DoH GET latency under load (h2load -c 10 -m 10 --log-file, per-request times over ${LATENCY_SECONDS} s after 1 s of warm-up; median over rounds):"
		echo
		echo "| server | requests | p50 ms | p99 ms | p99.9 ms | max ms |"
		echo "|---|---:|---:|---:|---:|---:|"
		awk -F'\t' '{k = $1; if (!(k in seen)) {o[++n] = k; seen[k] = 1}; c[k] = c[k] " " $3; p[k] = p[k] " " $4; q[k] = q[k] " " $5; x[k] = x[k] " " $6; y[k] = y[k] " " $7}
		function median(s,   a, m, i, j, t) {m = split(s, a, " "); for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] + 0 < a[i] + 0) {t = a[i]; a[i] = a[j]; a[j] = t}; return a[int((m + 1) / 2)]}
		END {for (i = 1; i <= n; i++) {k = o[i]; printf "| %s | %s | %s | %s | %s | %s |\n", k, median(c[k]), median(p[k]), median(q[k]), median(y[k]), median(x[k])}}' "$T/doh-latency.tsv"
		cp "$T/doh-latency.tsv" bench/results/latest-doh-latency.tsv
	fi
	if [ -s "$T/entries.tsv" ]; then
		echo
		echo "Memory per cache entry (the 0%-hit row: RSS growth over the run / misses, each a new entry while the cache has room; per round: round 1 is the figure, later rounds find the cache full, where a miss need not make an entry):"
		echo
		echo "| server | round | new entries | bytes per entry |"
		echo "|---|---:|---:|---:|"
		awk -F'\t' '{printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4}' "$T/entries.tsv"
	fi
	if [ -s "$T/hits.tsv" ]; then
		echo
		echo "Hit ratio each cache reached in its rows (hits / (hits + misses) during the run, from its own counters; median over rounds), and the queries answered without an upstream query of their own (hits, and misses that joined an identical query under way: dnsfront's coalesced; the peers' counters do not tell these apart):"
		echo
		echo "| scenario | server | hit ratio % | no upstream query of its own % |"
		echo "|---|---|---:|---:|"
		awk -F'\t' '{k = $1 "\t" $2; if (!(k in seen)) {o[++n] = k; seen[k] = 1}; v[k] = v[k] " " $4; w[k] = w[k] " " ($5 == "" ? $4 : $5)}
		function median(s,   a, m, i, j, t) {m = split(s, a, " "); for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] + 0 < a[i] + 0) {t = a[i]; a[i] = a[j]; a[j] = t}; return a[int((m + 1) / 2)]}
		END {for (i = 1; i <= n; i++) {split(o[i], f, "\t"); printf "| %s | %s | %s | %s |\n", f[1], f[2], median(v[o[i]]), median(w[o[i]])}}' "$T/hits.tsv"
		cp "$T/hits.tsv" bench/results/latest-hits.tsv
	fi
	if [ -s "$IDLE" ]; then
		echo
		echo "Memory held by idle connections, DoT and HTTP/2 ($IDLE_CONNS opened, $UNBOUND_IDLE_CONNS for unbound, handshake done and nothing sent, or one query asked and answered, or a TCP connection with no ClientHello; RSS growth / connections; round 1, fresh processes for each kind and each measurement; a row measured more than once gives its median, and every measurement in brackets):"
		echo
		echo "| idle connections | server | connections open | bytes per connection | RSS MB with them |"
		echo "|---|---|---:|---:|---:|"
		awk -F'\t' '{k = $6 "\t" $1; if (!(k in m)) o[++c] = k; m[k]++; n[k] = $3; b[k] = b[k] " " $4; r[k] = $5}
			function median(s,   a, m, i, j, t) {m = split(s, a, " "); for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] + 0 < a[i] + 0) {t = a[i]; a[i] = a[j]; a[j] = t}; return a[int((m + 1) / 2)]}
			END {for (i = 1; i <= c; i++) {k = o[i]; split(k, f, "\t"); v = median(b[k]); if (m[k] > 1) v = v " (" substr(b[k], 2) ")"; printf "| %s | %s | %s | %s | %s |\n", f[1], f[2], n[k], v, r[k]}}' "$IDLE"
	fi
} > bench/results/latest.md
cp "$RAW" bench/results/latest.tsv
[ -s "$IDLE" ] && cp "$IDLE" bench/results/latest-idle.tsv
echo
cat bench/results/latest.md
