#!/usr/bin/env bash
# exrp benchmark: recordings per second one `exec-allinone --role exrp` injects into the fake
# Genesys Cloud (examples/fakecloud) and into the local sink, fetching from the real webdav
# role; and its memory with 10,000 queued jobs.
#
#   bench/exrp.sh [--quick] [--recordings N] [--workers LIST] [--no-build] [--out FILE]
#
#   --quick          smoke run (300 recordings, 2,000 queued jobs)
#   --recordings N   recordings per point (default 2000)
#   --workers LIST   comma list of exrp `workers` values (default 8,32)
#   --no-build       use existing target/release files
#   --out FILE       markdown report (default bench/results/exrp-<date>.md)
#
# Each recording is assets/sample.opus (7,220 bytes, real Ogg/Opus); 2 recordings per call.
# Per recording exrp does: LOCK, PROPFIND, PROPPATCH (job), GET, the Ogg check, presign,
# PROPPATCH (upload), PUT to the fake cloud, PROPPATCH (done), DELETE, and its queue commits
# (fsync on). There is no incumbent to compare with (the vendor's EXRP is a closed container),
# so the report gives absolute figures. Loopback only; state under $TMPDIR.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/bench/lib.sh"
N=2000
WORKERS="8,32"
BUILD=1
OUT=""
QUEUED=10000
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) N=300; QUEUED=2000 ;;
        --recordings) N=$2; shift ;;
        --workers) WORKERS=$2; shift ;;
        *) bench_arg "$@"; shift $((SHIFT - 1)) ;;
    esac
    shift
done
OUT=${OUT:-$ROOT/bench/results/exrp-$(date +%Y-%m-%d).md}
if [[ $BUILD == 1 ]]; then
    log "building (release)"
    (cd "$ROOT" && cargo build --release --quiet --bin exec-allinone --example fakecloud --example exrpload)
fi
BIN=$ROOT/target/release/exec-allinone
FAKECLOUD=$ROOT/target/release/examples/fakecloud
LOAD=$ROOT/target/release/examples/exrpload
command -v jq >/dev/null || { log "jq is needed (apt-get install jq)"; exit 1; }

work_dir exrp-bench

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
threads() { awk '/Threads/ {print $2}' "/proc/$1/status"; }

start_store
start_cloud --client-id bench --secret bench-secret

# exrp_config NAME WORKERS SINK(cloud|local) STORE_URL: writes the config, prints its path.
exrp_config() {
    local dir="$WORK/$1"
    mkdir -p "$dir"
    {
        printf '[admin]\nlisten = "127.0.0.1:0"\n[exrp]\nlisten = "127.0.0.1:0"\nstate_dir = "%s"\nworkers = %s\n' "$dir/state" "$2"
        printf '[exrp.transient_storage]\nurl = "%s"\nusername = "mcp"\npassword = "secret1"\n' "$4"
        if [[ $3 == cloud ]]; then
            printf '[exrp.genesys_cloud]\napi_url = "%s"\nlogin_url = "%s"\nclient_id = "bench"\nclient_secret = "bench-secret"\n' "$CLOUD" "$CLOUD"
        else
            printf '[exrp.local_sink]\ndir = "%s"\n' "$dir/injected"
        fi
    } >"$dir/exrp.toml"
    echo "$dir/exrp.toml"
}

{
    echo "# exrp benchmark $(date '+%Y-%m-%d %H:%M')"
    echo
    echo "$(nproc) cores, $(uname -sr), exec-allinone (commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)), state on $(df -T "$WORK" | awk 'NR==2 {print $2}'); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "$N recordings of $(stat -c %s "$ROOT/assets/sample.opus") bytes per point, 2 per call; the webdav role (fsync on) is the store,"
    echo "exrp runs with fsync on; the time runs from the first interaction-end to the last job done."
    echo
    echo "| sink | workers | recordings/s | injected | dead | exrp CPU ms/recording | exrp RSS after |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
} >"$OUT"

IFS=, read -r -a WS <<<"$WORKERS"
for sink in cloud local; do
    for w in "${WS[@]}"; do
        name="exrp-$sink-$w"
        cfg=$(exrp_config "$name" "$w" "$sink" "$STORE")
        start "$name" "$BIN" --role exrp --config "$cfg"
        pid=$LAST_PID
        cpu0=$(awk '{print $14+$15}' "/proc/$pid/stat")
        log "sink=$sink workers=$w: $N recordings"
        j=$("$LOAD" --store "$STORE" --user mcp --password secret1 --exrp "http://$(addr "$name" exrp)" \
            --recordings "$N" --per-call 2 --concurrency 16 --file "$ROOT/assets/sample.opus" || true)
        cpu1=$(awk '{print $14+$15}' "/proc/$pid/stat")
        rss=$(rss_kib "$pid")
        log "exrp open fds after the run: $(ls /proc/$pid/fd | wc -l), threads $(threads "$pid")"
        cpu=$(awk -v a="$cpu0" -v b="$cpu1" -v n="$N" 'BEGIN {printf "%.2f", (b-a)*10/n}')
        jq -r --arg s "$sink" --arg w "$w" --arg cpu "$cpu" --arg rss "$((rss / 1024)) MiB" \
            '"| \($s) | \($w) | \(.recordings_per_s | floor) | \(.done) | \(.dead) | \($cpu) | \($rss) |"' <<<"$j" >>"$OUT"
        kill "$pid"
        wait "$pid" 2>/dev/null || true
    done
done

# Memory with $QUEUED jobs waiting: this exrp's store URL is a closed port, so nothing finishes.
cfg=$(exrp_config exrp-queued 8 local "http://127.0.0.1:9/recordings")
start exrp-queued "$BIN" --role exrp --config "$cfg"
pid=$LAST_PID
sleep 1
idle=$(rss_kib "$pid")
log "memory: queueing $QUEUED jobs"
"$LOAD" --store "$STORE" --user mcp --password secret1 --exrp "http://$(addr exrp-queued exrp)" \
    --recordings "$QUEUED" --per-call 10 --concurrency 16 --file "$ROOT/assets/sample.opus" --no-wait >/dev/null
sleep 3
pending=$(curl -s "http://$(addr exrp-queued exrp)/health" | jq '.queue.pending + .queue.working')
rss=$(rss_kib "$pid")
{
    echo
    echo "| memory | value |"
    echo "|---|---:|"
    echo "| RSS idle (empty queue) | $((idle / 1024)) MiB |"
    echo "| jobs queued (WebDAV unreachable) | $pending |"
    echo "| RSS with them queued | $((rss / 1024)) MiB |"
    echo "| queue.db + WAL | $(du -ck "$WORK"/exrp-queued/state/queue.db* | tail -1 | cut -f1) KiB |"
    echo "| threads | $(threads "$pid") |"
} >>"$OUT"
log "written $OUT"
cat "$OUT"
