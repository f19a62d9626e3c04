#!/usr/bin/env bash
# Where the CPU of one recording goes: the sandbox's four roles as four processes (webdav, lb,
# excp, exrp; the sandbox's settings, other ports), `simulate` through them, then each
# process's user and system CPU per recording from /proc. For planning throughput work.
#
#   bench/roles-cpu.sh [--calls N] [--no-build]
#
# Loopback, ports 28000, 23650, 28080, 24650, 24080 (all below Linux's ephemeral range,
# 32768 and up, so no client connection's port can take one); state under $TMPDIR.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/bench/lib.sh"
CALLS=1500
BUILD=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --calls) CALLS=$2; shift ;;
        *) bench_arg "$@"; shift $((SHIFT - 1)) ;;
    esac
    shift
done
command -v jq >/dev/null || { log "jq is needed (apt-get install jq)"; exit 1; }
if [[ $BUILD == 1 ]]; then
    log "building (release)"
    (cd "$ROOT" && cargo build --release --quiet --bin exec-allinone)
fi
BIN=$ROOT/target/release/exec-allinone
work_dir roles-cpu
D=$WORK/data
mkdir -p "$D/recordings"
"$BIN" htpasswd -c "$D/htpasswd" mcp mcp-sandbox 2>/dev/null
admin='[admin]
listen = "127.0.0.1:0"'
printf '%s\n[webdav]\nlisten = "127.0.0.1:28000"\nroot = "%s"\nhtpasswd = "%s"\n' "$admin" "$D/recordings" "$D/htpasswd" >"$WORK/webdav.toml"
printf '%s\n[lb.pools.excp]\nlisten = "127.0.0.1:23650"\nservers = ["127.0.0.1:24650"]\n[lb.pools.exrp]\nlisten = "127.0.0.1:28080"\nservers = ["127.0.0.1:24080"]\n' "$admin" >"$WORK/lb.toml"
printf '%s\n[excp]\nlisten = "127.0.0.1:24650"\nrecording_processor_url = "http://127.0.0.1:28080"\nstate_dir = "%s"\nquiet_period = "30s"\n' "$admin" "$D/excp" >"$WORK/excp.toml"
printf '%s\n[exrp]\nlisten = "127.0.0.1:24080"\nstate_dir = "%s"\nscan_interval = "10s"\ninstance = "roles-cpu"\n[exrp.transient_storage]\ntype = "WebDAV"\nurl = "http://127.0.0.1:28000/recordings"\nusername = "mcp"\npassword = "mcp-sandbox"\n[exrp.local_sink]\ndir = "%s"\n' \
    "$admin" "$D/exrp" "$D/injected" >"$WORK/exrp.toml"
declare -A PID
for role in webdav lb excp exrp; do
    start "$role" "$BIN" --role "$role" --config "$WORK/$role.toml"
    PID[$role]=$LAST_PID
done
log "simulate --calls $CALLS --concurrency 64"
/usr/bin/time -f "%U %S" -o "$WORK/simulate.time" "$BIN" simulate --calls "$CALLS" --concurrency 64 --timeout 600 \
    --webdav http://127.0.0.1:28000/recordings --excp http://127.0.0.1:23650 --sink-dir "$D/injected" \
    --report "$WORK/report.json" >"$WORK/simulate.out" 2>"$WORK/simulate.err" || log "simulate reported a failure"
n=$(jq -r '.delivered' "$WORK/report.json")
hz=$(getconf CLK_TCK)
echo "recordings: $n delivered, $(jq -r '.recordings_per_second | . * 10 | round / 10' "$WORK/report.json")/s, $(nproc) cores"
echo "| process | CPU µs/recording | user | system |"
echo "|---|---:|---:|---:|"
for role in webdav lb excp exrp; do
    read -r u s < <(awk '{print $14, $15}' "/proc/${PID[$role]}/stat")
    us() { echo $(( $1 * 1000000 / hz / n )); }
    echo "| $role | $(us $((u + s))) | $(us "$u") | $(us "$s") |"
done
read -r u s <"$WORK/simulate.time"
awk -v u="$u" -v s="$s" -v n="$n" 'BEGIN {printf "| simulate | %d | %d | %d |\n", (u + s) * 1e6 / n, u * 1e6 / n, s * 1e6 / n}'
