#!/usr/bin/env bash
# excp benchmark: metadata POSTs per second one `exec-allinone --role excp` sustains, and its
# memory with 10,000 open calls.
#
#   bench/excp.sh [--quick] [--duration S] [--conc LIST] [--no-build] [--out FILE]
#
#   --quick        smoke run (2 s per point, 2,000 calls for the memory figure)
#   --duration S   measured seconds per point (default 10)
#   --conc LIST    comma list of concurrencies (default 1,16,64)
#   --no-build     use $POSTLOAD / $EXEC_BIN or existing target/release files
#   --out FILE     markdown report (default bench/results/excp-<date>.md)
#
# Every POST is a 1 KiB GIR recording object with its own CallUUID (postload --unique-calls),
# so each one opens a call and writes its state file (fsync on, as by default; a second run
# with fsync = false shows what the disk costs). quiet_period is 1 h so no call ends during the
# run: the figure is ingest alone. There is no incumbent to compare with (the vendor's EXCP is
# a closed container), so the report gives absolute figures. Loopback only; the state dir is a
# fresh directory under $TMPDIR (keep it on a real disk).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/bench/lib.sh"
DURATION=10
CONC="1,16,64"
BUILD=1
OUT=""
CALLS=10000
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) DURATION=2; CALLS=2000 ;;
        --duration) DURATION=$2; shift ;;
        --conc) CONC=$2; shift ;;
        *) bench_arg "$@"; shift $((SHIFT - 1)) ;;
    esac
    shift
done
OUT=${OUT:-$ROOT/bench/results/excp-$(date +%Y-%m-%d).md}

if [[ $BUILD == 1 && -z "${EXEC_BIN:-}${POSTLOAD:-}" ]]; then
    log "building (release)"
    (cd "$ROOT" && cargo build --release --quiet --bin exec-allinone --example postload)
fi
EXEC_BIN=${EXEC_BIN:-$ROOT/target/release/exec-allinone}
POSTLOAD=${POSTLOAD:-$ROOT/target/release/examples/postload}
command -v jq >/dev/null || { log "jq is needed (apt-get install jq)"; exit 1; }

work_dir excp-bench

# Starts excp with fsync $1 on a fresh state dir; sets EXCP_ADDR, ADMIN_ADDR, EXCP_PID.
start_excp() {
    local fsync=$1 dir
    dir=$(mktemp -d "$WORK/excp.XXXX")
    cat >"$dir/config.toml" <<EOF
[admin]
listen = "127.0.0.1:0"
[excp]
listen = "127.0.0.1:0"
recording_processor_url = "http://127.0.0.1:9"
state_dir = "$dir/state"
quiet_period = "1h"
max_open_calls = 1000000
fsync = $fsync
EOF
    "$EXEC_BIN" --role excp --config "$dir/config.toml" >"$dir/ready" 2>"$dir/stderr" &
    EXCP_PID=$!
    PIDS+=("$EXCP_PID")
    for _ in $(seq 1 100); do [[ -s "$dir/ready" ]] && break; sleep 0.1; done
    EXCP_ADDR=$(grep -o 'excp=[^ ]*' "$dir/ready" | cut -d= -f2)
    ADMIN_ADDR=$(grep -o 'admin=[^ ]*' "$dir/ready" | cut -d= -f2)
    [[ -n "$EXCP_ADDR" ]] || { log "excp did not start: $(cat "$dir/stderr")"; exit 1; }
}

stop_excp() { kill "$EXCP_PID" 2>/dev/null || true; wait "$EXCP_PID" 2>/dev/null || true; }

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
threads() { awk '/Threads/ {print $2}' "/proc/$1/status"; }
open_calls() { curl -s "http://$ADMIN_ADDR/metrics" | awk '/^excp_calls_open / {print $2}'; }

load() { # conc seconds
    "$POSTLOAD" --url "http://$EXCP_ADDR/api/v1/recording" --concurrency "$1" --duration "$2" --warmup 1 \
        --unique-calls --expect-prefix --expect-body '{"status":{"code":0,' --timeout 30
}

{
    echo "# excp benchmark $(date '+%Y-%m-%d %H:%M')"
    echo
    echo "$(nproc) cores, $(uname -sr), exec-allinone $("$EXEC_BIN" --version 2>/dev/null | awk '{print $2}') (commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)), state on $(df -T "$WORK" | awk 'NR==2 {print $2}'); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "1 KiB GIR recording POSTs, each a new call (state file written, fsynced when fsync is on, before the 200),"
    echo "${DURATION} s per point after 1 s of warm-up; postload on the same machine (one thread)."
    echo
    echo "| fsync | c | POSTs/s | p50 µs | p99 µs | errors | excp CPU µs/POST |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
} >"$OUT"

IFS=, read -r -a CONCS <<<"$CONC"
for fsync in true false; do
    for c in "${CONCS[@]}"; do
        start_excp "$fsync"
        cpu0=$(awk '{print $14+$15}' "/proc/$EXCP_PID/stat")
        log "fsync=$fsync c=$c"
        j=$(load "$c" "$DURATION" || true)
        cpu1=$(awk '{print $14+$15}' "/proc/$EXCP_PID/stat")
        all=$(jq -r '.all_requests' <<<"$j")
        cpu_us=$(awk -v a="$cpu0" -v b="$cpu1" -v n="$all" 'BEGIN { if (n > 0) printf "%.0f", (b - a) * 10000 / n; else print "NA" }')
        jq -r --arg f "$fsync" --arg c "$c" --arg cpu "$cpu_us" \
            '"| \($f) | \($c) | \(.req_per_s | floor) | \(.p50_us) | \(.p99_us) | \(.errors) | \($cpu) |"' <<<"$j" >>"$OUT"
        stop_excp
    done
done

# Memory: a fresh excp, then $CALLS new calls at c=16 (they stay open: quiet_period 1 h).
start_excp true
idle=$(rss_kib "$EXCP_PID")
log "memory: opening $CALLS calls"
"$POSTLOAD" --url "http://$EXCP_ADDR/api/v1/recording" --concurrency 16 --duration 600 --warmup 0 \
    --unique-calls --expect-prefix --expect-body '{"status":{"code":0,' --timeout 30 >/dev/null &
LOADER=$!
PIDS+=("$LOADER")
while kill -0 "$LOADER" 2>/dev/null; do
    n=$(open_calls || echo 0)
    if [[ "${n:-0}" -ge "$CALLS" ]]; then kill "$LOADER" 2>/dev/null || true; break; fi
    sleep 0.2
done
wait "$LOADER" 2>/dev/null || true
sleep 1
n=$(open_calls)
rss=$(rss_kib "$EXCP_PID")
thr=$(threads "$EXCP_PID")
{
    echo
    echo "| memory | value |"
    echo "|---|---:|"
    echo "| RSS idle (no call) | $((idle / 1024)) MiB |"
    echo "| open calls | $n |"
    echo "| RSS with them open | $((rss / 1024)) MiB |"
    echo "| per open call | $(awk -v a="$idle" -v b="$rss" -v n="$n" 'BEGIN { printf "%.1f KiB", (b - a) / n }') |"
    echo "| threads | $thr |"
} >>"$OUT"
log "written $OUT"
cat "$OUT"
