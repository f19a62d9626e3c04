#!/usr/bin/env bash
# exrp memory over time: one long-running `exec-allinone --role exrp` injects BATCHES batches
# of N recordings (same setup as bench/exrp.sh: the webdav role as the store, fsync on,
# examples/fakecloud as the cloud) and its RSS is read after each batch. An allocator that
# fragments shows as RSS that keeps growing from batch to batch.
#
#   bench/exrp-rss.sh [--batches K] [--recordings N] [--workers W] [--sink cloud|local]
#                     [--bin PATH] [--no-build] [--out FILE]
#
#   --batches K      batches injected into the same exrp process (default 4)
#   --recordings N   recordings per batch (default 2000)
#   --workers W      exrp `workers` (default 8)
#   --sink S         cloud (the fake cloud, default) or local (the local sink)
#   --bin PATH       exec-allinone binary for exrp (default target/release/exec-allinone);
#                    EXRP_ENV="VAR=value ..." is put in its environment (allocator tunables)
#   --no-build       use existing target/release files
#   --out FILE       append the result line (markdown) to FILE
#
# Prints one markdown table row: the label (EXRP_LABEL or the binary's name), RSS idle, RSS
# after each batch, the peak (VmHWM), the thread count at the end, and recordings/s per batch.
# Hooks for a closer look: ON_START="CMD" runs `CMD PID` in the background once exrp is up
# (e.g. a script calling `heaptrack -p`); AFTER_BATCH="CMD" runs `CMD PID BATCH` after each
# batch (e.g. `gdb -p PID -batch -ex 'call (void)malloc_stats()'`, which prints to exrp's log).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/bench/lib.sh"
K=4
N=2000
W=8
SINK=cloud
BUILD=1
OUT=""
EXRP_BIN=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --batches) K=$2; shift ;;
        --recordings) N=$2; shift ;;
        --workers) W=$2; shift ;;
        --sink) SINK=$2; shift ;;
        --bin) EXRP_BIN=$2; shift ;;
        *) bench_arg "$@"; shift $((SHIFT - 1)) ;;
    esac
    shift
done
if [[ $BUILD == 1 ]]; then
    log "building (release)"
    (cd "$ROOT" && cargo build --release --quiet --bin exec-allinone --example fakecloud --example exrpload)
fi
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release/exec-allinone
EXRP_BIN=${EXRP_BIN:-$BIN}
FAKECLOUD=$TARGET/release/examples/fakecloud
LOAD=$TARGET/release/examples/exrpload
command -v jq >/dev/null || { log "jq is needed (apt-get install jq)"; exit 1; }

work_dir exrp-rss

status() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.0f", k / 1024}'; }

start_store
start_cloud --client-id bench --secret bench-secret

dir="$WORK/exrp"
mkdir -p "$dir"
{
    printf '[admin]\nlisten = "127.0.0.1:0"\n[exrp]\nlisten = "127.0.0.1:0"\nstate_dir = "%s"\nworkers = %s\n' "$dir/state" "$W"
    printf '[exrp.transient_storage]\nurl = "%s"\nusername = "mcp"\npassword = "secret1"\n' "$STORE"
    if [[ $SINK == cloud ]]; then
        printf '[exrp.genesys_cloud]\napi_url = "%s"\nlogin_url = "%s"\nclient_id = "bench"\nclient_secret = "bench-secret"\n' "$CLOUD" "$CLOUD"
    else
        printf '[exrp.local_sink]\ndir = "%s"\n' "$dir/injected"
    fi
} >"$dir/exrp.toml"
# shellcheck disable=SC2086
start exrp env ${EXRP_ENV:-} "$EXRP_BIN" --role exrp --config "$dir/exrp.toml"
pid=$LAST_PID
[[ -z ${ON_START:-} ]] || $ON_START "$pid" &
sleep 1
row="| ${EXRP_LABEL:-$(basename "$EXRP_BIN")} ${EXRP_ENV:-} | $(mib "$(status "$pid" VmRSS)")"
rates=""
for b in $(seq 1 "$K"); do
    log "batch $b starts"
    j=$("$LOAD" --store "$STORE" --user mcp --password secret1 --exrp "http://$(addr exrp exrp)" \
        --recordings "$N" --per-call 2 --concurrency 16 --file "$ROOT/assets/sample.opus" || true)
    sleep 2
    rss=$(status "$pid" VmRSS)
    log "batch $b: $(jq -c '{done, dead, recordings_per_s}' <<<"$j") RSS $(mib "$rss") MiB (anon $(mib "$(status "$pid" RssAnon)"), file $(mib "$(status "$pid" RssFile)"), shmem $(mib "$(status "$pid" RssShmem)")), threads $(status "$pid" Threads)"
    row+=" → $(mib "$rss")"
    [[ -z ${AFTER_BATCH:-} ]] || $AFTER_BATCH "$pid" "$b" >&2
    rates+="$(jq -r '.recordings_per_s | floor' <<<"$j") "
done
row+=" | $(mib "$(status "$pid" VmHWM)") | $(status "$pid" Threads) | ${rates% } |"
echo "$row"
[[ -z $OUT ]] || echo "$row" >>"$OUT"
