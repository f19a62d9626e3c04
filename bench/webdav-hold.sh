#!/usr/bin/env bash
# webdav peak memory at 1000 concurrent slow uploads: `exec-allinone --role webdav` (fsync on)
# takes `davload hold` (1000 connections, each PUTs 1 MiB spread over 10 s); its VmHWM (peak
# RSS, from /proc/PID/status) is read after the run. A fresh server and data dir per run.
#
#   bench/webdav-hold.sh [--reps N] [--bin PATH] [--count C] [--no-build] [--out FILE]
#
#   --reps N     runs (default 3); the median is printed
#   --bin PATH   exec-allinone binary (default target/release/exec-allinone);
#                WEBDAV_ENV="VAR=value ..." is put in its environment (allocator tunables)
#   --count C    concurrent uploads (default 1000)
#   --no-build   use existing target/release files
#   --out FILE   append the result line (markdown) to FILE
#
# AFTER_RUN="CMD" runs `CMD PID RUN` after each run, before the server is stopped.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/bench/lib.sh"
REPS=3
COUNT=1000
BUILD=1
OUT=""
SRV_BIN=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reps) REPS=$2; shift ;;
        --bin) SRV_BIN=$2; shift ;;
        --count) COUNT=$2; shift ;;
        *) bench_arg "$@"; shift $((SHIFT - 1)) ;;
    esac
    shift
done
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
if [[ $BUILD == 1 ]]; then
    log "building (release)"
    (cd "$ROOT" && cargo build --release --quiet --bin exec-allinone --example davload)
fi
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release/exec-allinone
SRV_BIN=${SRV_BIN:-$BIN}
DAVLOAD=$TARGET/release/examples/davload
command -v curl >/dev/null || { log "curl is needed"; exit 1; }
ulimit -n 65536 2>/dev/null || true

WORK=$(mktemp -d "${TMPDIR:-/tmp}/webdav-hold.XXXX")
PID=""
cleanup() {
    [[ -z $PID ]] || kill "$PID" 2>/dev/null || true
    wait 2>/dev/null || true
    [[ -n "${KEEP_WORK:-}" ]] || rm -rf "$WORK"
}
trap cleanup EXIT
"$BIN" htpasswd -c "$WORK/htpasswd" bench secret1 2>/dev/null

hwms=()
for r in $(seq 1 "$REPS"); do
    rm -rf "$WORK/data"
    mkdir -p "$WORK/data"
    printf '[admin]\nlisten = "127.0.0.1:0"\n[webdav]\nlisten = "127.0.0.1:0"\nprefix = "/recordings"\nroot = "%s"\nhtpasswd = "%s"\nfsync = true\n' \
        "$WORK/data" "$WORK/htpasswd" >"$WORK/webdav.toml"
    # shellcheck disable=SC2086
    env ${WEBDAV_ENV:-} "$SRV_BIN" --role webdav --config "$WORK/webdav.toml" >"$WORK/stdout" 2>"$WORK/stderr" &
    PID=$!
    addr=""
    for _ in $(seq 300); do
        addr=$(sed -n 's/^READY .*webdav=\([^ ]*\).*/\1/p' "$WORK/stdout" | head -n1)
        [[ -n $addr ]] && break
        sleep 0.05
    done
    [[ -n $addr ]] || { cat "$WORK/stdout" "$WORK/stderr" >&2; exit 1; }
    URL="http://$addr/recordings/bench/"
    curl -sf -u bench:secret1 -X MKCOL "$URL" >/dev/null
    sleep 0.5
    idle=$(awk '/^VmRSS:/ {print $2}' "/proc/$PID/status")
    j=$("$DAVLOAD" --url "$URL" --user bench --password secret1 --size 1MiB --count "$COUNT" --name h hold --duration 10 || true)
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$PID/status")
    [[ -z ${AFTER_RUN:-} ]] || $AFTER_RUN "$PID" "$r" >&2
    log "run $r: idle $((idle / 1024)) MiB, VmHWM $(awk -v k="$hwm" 'BEGIN {printf "%.1f", k / 1024}') MiB, davload: $(head -c 300 <<<"$j")"
    hwms+=("$hwm")
    kill "$PID"
    wait "$PID" 2>/dev/null || true
    PID=""
done
med=$(printf '%s\n' "${hwms[@]}" | sort -n | awk '{a[NR] = $1} END {printf "%.1f", a[int((NR + 1) / 2)] / 1024}')
all=$(printf '%s\n' "${hwms[@]}" | awk '{printf "%s%.1f", (NR > 1 ? " / " : ""), $1 / 1024}')
row="| ${WEBDAV_LABEL:-$(basename "$SRV_BIN")} ${WEBDAV_ENV:-} | $all | $med |"
echo "$row"
[[ -z $OUT ]] || echo "$row" >>"$OUT"
