# Shared by the bench scripts (sourced).

# workdir PREFIX: makes a work directory /tmp/PREFIX.XXXXXX in W, and when
# the script ends (normally, on Ctrl-C or on SIGTERM) stops every process
# whose pid is in the array pids and removes W.
pids=()
workdir() {
	W=$(mktemp -d "/tmp/$1.XXXXXX")
	trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"' EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

# idle_hold PID IDLECONNS CPU ADDR COUNT [idleconns options]: opens COUNT
# idle connections to ADDR with the idleconns binary on core CPU, reads
# the RSS of process PID before and while they are open (2 s after the
# last is open: the server parks them meanwhile), then closes them.
# Prints "connections rss_before_kb rss_with_kb".
idle_hold() {
	local pid=$1 bin=$2 cpu=$3 addr=$4 count=$5 rss0 rss1 line
	shift 5
	rss0=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
	coproc IDLECONNS { taskset -c "$cpu" "$bin" -addr "$addr" -n "$count" "$@" 2>&1; }
	read -r line <&"${IDLECONNS[0]}"
	sleep 2
	rss1=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
	eval "exec ${IDLECONNS[1]}>&-"
	wait "$IDLECONNS_PID" 2>/dev/null || true
	echo "$(echo "$line" | awk '{print $2}') $rss0 $rss1"
}
