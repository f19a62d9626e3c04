# Helpers shared by bench scripts that start their processes in a work dir of their own.
# Sourced (`. "$ROOT/bench/lib.sh"`), not run.

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# work_dir NAME: a new $WORK under $TMPDIR; on exit every process in $PIDS is stopped and
# $WORK removed (kept with KEEP_WORK=1).
work_dir() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXX")
    PIDS=()
    trap cleanup EXIT
}
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ -n "${KEEP_WORK:-}" ]] || rm -rf "$WORK"
}

# start NAME CMD... : runs CMD with stdout to $WORK/NAME.ready and waits for its READY line;
# sets LAST_PID.
start() {
    local name=$1
    shift
    "$@" >"$WORK/$name.ready" 2>"$WORK/$name.log" <"${STDIN:-/dev/null}" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    for _ in $(seq 1 150); do grep -q READY "$WORK/$name.ready" 2>/dev/null && return 0; sleep 0.1; done
    log "$name did not start:"
    cat "$WORK/$name.log" >&2
    exit 1
}

# addr NAME LISTENER: the address LISTENER=... on NAME's READY line.
addr() { grep -o "$2=[^ ]*" "$WORK/$1.ready" | cut -d= -f2; }
