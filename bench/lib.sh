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
