#!/usr/bin/env bash
# Prints the markdown table of medians from a bench/run.sh raw TSV.
#   bash bench/table.sh bench/results/latest.tsv
set -euo pipefail
RAW=$1
echo "Ratios: a forwarder against dnsdist in the same scenario; a server answering from its own data against unbound;"
echo "a DoH row also against Caddy's respond in the same kind of row (the ceiling of Caddy's HTTP stack: GET, POST with the same body, new connections),"
echo "as the median of the rounds' ratios (each round measures dnsfront's long-connection DoH rows and the ceiling in turns of short slices, so both see the same seconds of a noisy machine); a new-connection row"
echo "also compares CPU per connection (the rate is bound by the one-core client for every server). nsd's CPU is not counted (it works in a child process)."
echo "Core busy: the server core and the client core (load generator, and nsd unless UPSTREAM_CPU moved it), median %; a client core near 100% means the row is bound by the client, not the server."
echo
echo "| scenario | server | median q/s | avg latency ms | CPU s per 100k | RSS MB after | core busy % server / client | ratio |"
echo "|---|---|---:|---:|---:|---:|---:|---|"
awk -F'\t' 'NR > 1 {k = $1 "\t" $2; if (!(k in seen)) {order[++n] = k; seen[k] = 1}; vals[k] = vals[k] " " $4; byround[k, $3] = $4; if ($3 > rounds) rounds = $3
	if ($2 ~ /respond/) respround[kind($1), $3] = $4; lat[k] = lat[k] " " $5; cpu[k] = cpu[k] " " $6; if ($7 > rss[k]) rss[k] = $7; sb[k] = sb[k] " " $8; cb[k] = cb[k] " " $9}
	function kind(scenario) {return scenario ~ /new conn/ ? "new" : scenario ~ /POST/ ? "post" : "h2"}
	function median(s,   a, m, i, j, t) {m = split(s, a, " "); for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] + 0 < a[i] + 0) {t = a[i]; a[i] = a[j]; a[j] = t}; return a[int((m + 1) / 2)]}
	END {
		for (i = 1; i <= n; i++) {k = order[i]; split(k, p, "\t"); q[k] = median(vals[k]);
			c[k] = median(cpu[k])
			if (p[2] ~ /^dnsdist/) {dd[p[1]] = q[k]; ddc[p[1]] = c[k]}; if (p[2] ~ /^unbound/) ub[p[1]] = q[k]; if (p[2] ~ /respond/) resp[kind(p[1])] = q[k]
			if (p[2] == "dnsfront zone (own data)") zone[p[1]] = q[k]}
		for (i = 1; i <= n; i++) {k = order[i]; split(k, p, "\t"); r = "";
			if (p[2] ~ /own data/ && p[2] !~ /^unbound/ && ub[p[1]] > 0) r = sprintf("%.2f x unbound", q[k] / ub[p[1]]);
			else if (p[2] ~ /^dnsfront/ && dd[p[1]] > 0) r = sprintf("%.2f x dnsdist", q[k] / dd[p[1]]);
			# a cache against dnsfront zone in the same scenario
			if (p[2] == "dnsfront cache" && zone[p[1]] > 0) r = r sprintf(", %.2f x dnsfront zone", q[k] / zone[p[1]])
			if (p[1] ~ /new conn/ && p[2] ~ /^dnsfront/ && ddc[p[1]] > 0) r = r sprintf(", CPU per connection %.2f x dnsdist", c[k] / ddc[p[1]]);
			rk = kind(p[1])
			if (p[1] ~ /^DoH/ && p[2] ~ /^dnsfront/ && resp[rk] > 0) {
				ratios = ""
				for (j = 1; j <= rounds; j++) if (byround[k, j] > 0 && respround[rk, j] > 0) ratios = ratios " " byround[k, j] / respround[rk, j]
				r = r (r == "" ? "" : ", ") sprintf("%.2f x respond", median(ratios))
			}
			busy = sb[k] ~ /[0-9]/ ? median(sb[k]) " / " median(cb[k]) : ""
			printf "| %s | %s | %.0f | %s | %s | %s | %s | %s |\n", p[1], p[2], q[k], median(lat[k]), median(cpu[k]), rss[k], busy, r}
	}' "$RAW"
