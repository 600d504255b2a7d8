#!/usr/bin/env bash
# Draws bench/results/latest.png from a bench/run.sh raw TSV (medians per
# scenario and server), with gnuplot (installed with apt-get if missing).
#   bash bench/chart.sh bench/results/latest.tsv bench/results/latest.png
set -euo pipefail
RAW=${1:-bench/results/latest.tsv}
OUT=${2:-bench/results/latest.png}
if ! command -v gnuplot >/dev/null; then
	SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq gnuplot-nox >/dev/null
fi
DATA=$(mktemp)
trap 'rm -f "$DATA"' EXIT
# one line per scenario and server: "scenario / server" and the median q/s
awk -F'\t' 'NR > 1 {k = $1 " / " $2; if (!(k in seen)) {order[++n] = k; seen[k] = 1}; v[k] = v[k] " " $4}
function median(s,   a, m, i, j, t) {m = split(s, a, " "); for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] + 0 < a[i] + 0) {t = a[i]; a[i] = a[j]; a[j] = t}; return a[int((m + 1) / 2)]}
END {for (i = 1; i <= n; i++) {k = order[i]; c = (k ~ /dnsfront/) ? 2792847 : (k ~ /dnsdist/) ? 15167855 : (k ~ /unbound/) ? 4553629 : 10066329; printf "\"%s\"\t%.0f\t%d\n", k, median(v[k]), c}}' "$RAW" > "$DATA"
gnuplot <<EOF2
set terminal pngcairo size 1400,800 font "sans,10"
set output "$OUT"
set title "dnsfront vs dnsdist vs unbound: median queries (requests) per second, server on one core"
set style fill solid 0.8
set boxwidth 0.7
set xtics rotate by -40 left
set grid ytics
set bmargin 16
set rmargin 14
set logscale y
set yrange [100:*]
set ylabel "q/s (log scale)"
# teal dnsfront, orange dnsdist, blue unbound, grey others
plot "$DATA" using 0:2:3:xtic(1) with boxes lc rgb variable notitle, \
     "" using 0:2:(sprintf("%.0f", \$2)) with labels offset 0,0.7 font "sans,8" notitle
EOF2
echo "wrote $OUT"
