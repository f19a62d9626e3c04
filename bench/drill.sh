#!/usr/bin/env bash
# Failure drill: the scaled-out path loses one of each kind of VM, and no recording is lost.
#
#   bench/drill.sh [--calls N] [--no-build] [--out FILE] [--keep]
#
#   --calls N      calls (default 1000; env CALLS works too)
#   --no-build     use the existing target/release files
#   --out FILE     also write the report (markdown) there
#   --keep         keep the work directory (logs, configs, JSON reports); kept anyway on failure
#
# Environment: CONCURRENCY (calls in flight, 200), PER_CALL (recordings per call, 2), TIMEOUT
# (bound in seconds from the start of simulate, 900), GARAGE (the garage binary; default
# ~/.cargo/bin/garage, `cargo install garage --locked`).
#
# On loopback, fixed ports 24300-24329: a 3-node Garage cluster (replication factor 3, one
# bucket, one key), two webdav front ends on the bucket ([webdav.s3], each given all three
# nodes), two excp keeping their calls in the bucket ([excp.s3], takeover after 10 s), two exrp
# sharing the store through the lb (takeover after 20 s), the fake Genesys Cloud, and one lb
# with three pools: dav (`hash = "$request_uri consistent"`, `request_buffering = false`, the
# two front ends), excp and exrp. `exec-allinone simulate` plays MCP through the lb (PUTs to the
# dav pool, metadata and end events to the excp pool), retrying while something is down. As the
# work progresses (two steps per recording: its PUT through the lb, its upload at the cloud),
# one Garage node, one front end, one excp and one exrp are SIGKILLed, at 15, 30, 45 and 60 % of
# the steps, and not restarted (the Garage node is the first node of the survivors). At the end the cloud's report is compared with simulate's,
# recording by recording (bench/lib.sh `cloud_summary`): the drill passes when every recording
# was delivered and none is duplicated, lost or partial. Reported per kill: when it happened,
# how long until the next recording reached the cloud, and for excp and exrp how long until the
# survivor took the dead one's work over.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/bench/lib.sh"
CALLS=${CALLS:-1000}
BUILD=1
OUT=""
KEEP=${KEEP_WORK:-}
while [[ $# -gt 0 ]]; do
    case "$1" in
        --calls) CALLS=$2; shift ;;
        --keep) KEEP=1 ;;
        *) bench_arg "$@"; shift $((SHIFT - 1)) ;;
    esac
    shift
done
CONCURRENCY=${CONCURRENCY:-200}
PER_CALL=${PER_CALL:-2}
TIMEOUT=${TIMEOUT:-900}
RECORDINGS=$((CALLS * PER_CALL))
EXPECTED_OBJECTS=$((RECORDINGS * 2))
STEPS=$((RECORDINGS * 2))
P=24300
PORT_FE1=$P PORT_FE2=$((P + 1)) PORT_LB_DAV=$((P + 2)) PORT_LB_EXCP=$((P + 3)) PORT_LB_EXRP=$((P + 4))
PORT_EXCP1=$((P + 5)) PORT_EXCP2=$((P + 6)) PORT_EXRP1=$((P + 7)) PORT_EXRP2=$((P + 8)) PORT_CLOUD=$((P + 9))
BUCKET=drill

command -v jq >/dev/null || { log "jq is needed (apt-get install jq)"; exit 1; }
command -v curl >/dev/null || { log "curl is needed (apt-get install curl)"; exit 1; }
need_garage
for port in $(seq $P $((P + 29))); do
    if port_busy "$port"; then
        log "port $port is in use: is another drill running?"
        exit 1
    fi
done
if [[ $BUILD == 1 ]]; then
    log "building (release)"
    (cd "$ROOT" && cargo build --release --quiet --bin exec-allinone --example fakecloud)
fi
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release/exec-allinone
FAKECLOUD=$TARGET/release/examples/fakecloud

WORK=$(mktemp -d "${TMPDIR:-/tmp}/drill.XXXX")
declare -A PID=() KILLED_AT=() KILL_MS=() KILL_UPLOADS=() RESUMED=() TAKEN=()
TAKEN_BEFORE=0 EXRP_TAKEN_BEFORE=0
SIM_PID=""
OK=0
cleanup() {
    stop_all "${PID[@]}" $SIM_PID
    if [[ -n "$KEEP" || $OK == 0 ]]; then
        log "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# ---------------------------------------------------------------- Garage: 3 nodes, 1 bucket
PIDS=()
start_garage $((P + 10)) $BUCKET
for n in 0 1 2; do PID[garage$n]=${GARAGE_PIDS[n]}; done
ENDPOINTS=("${GARAGE_ENDPOINTS[@]}")
# Each process is given all three nodes, starting at a different one.
endpoints_from() { printf '"%s", "%s", "%s"' "${ENDPOINTS[$1]}" "${ENDPOINTS[$((($1 + 1) % 3))]}" "${ENDPOINTS[$((($1 + 2) % 3))]}"; }
s3_table() { # first-node key-prefix
    printf 'endpoint = [%s]\nregion = "garage"\nbucket = "%s"\nkey_prefix = "%s"\naccess_key_id = "%s"\nsecret_access_key = "%s"\n' \
        "$(endpoints_from "$1")" "$BUCKET" "$2" "$GARAGE_KEY_ID" "$GARAGE_KEY_SECRET"
}
log "garage: 3 nodes, bucket $BUCKET"

# ---------------------------------------------------------------- our roles
"$BIN" htpasswd -c -m "$WORK/htpasswd" mcp drill-pass 2>/dev/null
for i in 1 2; do
    port_var=PORT_FE$i
    cat >"$WORK/fe$i.toml" <<EOF
shutdown_grace = "5s"
[admin]
listen = "127.0.0.1:0"
[webdav]
listen = "127.0.0.1:${!port_var}"
htpasswd = "$WORK/htpasswd"
[webdav.s3]
$(s3_table $((i - 1)) recordings)
EOF
    excp_port=PORT_EXCP$i exrp_port=PORT_EXRP$i
    cat >"$WORK/excp$i.toml" <<EOF
shutdown_grace = "5s"
[admin]
listen = "127.0.0.1:0"
[excp]
listen = "127.0.0.1:${!excp_port}"
recording_processor_url = "http://127.0.0.1:$PORT_LB_EXRP"
state_dir = "$WORK/excp$i"
retry_max = "5s"
instance = "excp$i"
takeover_after = "10s"
[excp.s3]
$(s3_table $((i - 1)) excp)
EOF
    cat >"$WORK/exrp$i.toml" <<EOF
shutdown_grace = "5s"
[admin]
listen = "127.0.0.1:0"
[exrp]
listen = "127.0.0.1:${!exrp_port}"
state_dir = "$WORK/exrp$i"
instance = "exrp$i"
retry_max = "10s"
scan_interval = "5s"
takeover_after = "20s"
claim_timeout = "60s"
[exrp.transient_storage]
type = "WebDAV"
url = "http://127.0.0.1:$PORT_LB_DAV/recordings"
username = "mcp"
password = "drill-pass"
[exrp.genesys_cloud]
api_url = "http://127.0.0.1:$PORT_CLOUD"
login_url = "http://127.0.0.1:$PORT_CLOUD"
client_id = "drill"
client_secret = "drill-secret"
EOF
done
cat >"$WORK/lb.toml" <<EOF
shutdown_grace = "5s"
[admin]
listen = "127.0.0.1:0"
[lb.pools.dav]
listen = "127.0.0.1:$PORT_LB_DAV"
hash = "\$request_uri consistent"
request_buffering = false
servers = ["127.0.0.1:$PORT_FE1", "127.0.0.1:$PORT_FE2"]
[lb.pools.excp]
listen = "127.0.0.1:$PORT_LB_EXCP"
servers = ["127.0.0.1:$PORT_EXCP1", "127.0.0.1:$PORT_EXCP2"]
[lb.pools.exrp]
listen = "127.0.0.1:$PORT_LB_EXRP"
servers = ["127.0.0.1:$PORT_EXRP1", "127.0.0.1:$PORT_EXRP2"]
EOF
for f in fe1 fe2 excp1 excp2 exrp1 exrp2 lb; do "$BIN" check-config --config "$WORK/$f.toml" >/dev/null; done

mkfifo "$WORK/cloud.in"
exec 9<>"$WORK/cloud.in"
STDIN="$WORK/cloud.in" start_tracked cloud "$FAKECLOUD" --port "$PORT_CLOUD" --client-id drill --secret drill-secret
for i in 1 2; do
    start_tracked "fe$i" "$BIN" --role webdav --config "$WORK/fe$i.toml"
    start_tracked "excp$i" "$BIN" --role excp --config "$WORK/excp$i.toml"
    start_tracked "exrp$i" "$BIN" --role exrp --config "$WORK/exrp$i.toml"
done
start_tracked lb "$BIN" --role lb --config "$WORK/lb.toml"
admin() { grep -o "admin=[^ ]*" "$WORK/$1.ready" | cut -d= -f2; }
metric() { # process name-with-labels -> value (sum), 0 when absent
    curl -s --max-time 5 "http://$(admin "$1")/metrics" | awk -v m="$2" 'index($0, m) == 1 {s += $NF} END {print s + 0}'
}
log "all processes READY: $CALLS calls x $PER_CALL recordings, $CONCURRENCY at once"

# ---------------------------------------------------------------- the run and the kills
# Garage node 1 is the first node of the front end and the excp that survive: they go on to
# the next node.
KILL_ORDER=(garage1 fe1 excp1 exrp1)
declare -A KILL_SHARE=([garage1]=15 [fe1]=30 [excp1]=45 [exrp1]=60)
T0=$(date +%s)
elapsed() { echo $(($(date +%s) - T0)); }
"$BIN" simulate --calls "$CALLS" --concurrency "$CONCURRENCY" --recordings-per-call "$PER_CALL" \
    --webdav "http://127.0.0.1:$PORT_LB_DAV/recordings" --user mcp --password drill-pass \
    --excp "http://127.0.0.1:$PORT_LB_EXCP" --retry-for 120 --timeout "$TIMEOUT" \
    --report "$WORK/simulate.json" >"$WORK/simulate.out" 2>"$WORK/simulate.log" &
SIM_PID=$!

uploads() { curl -s --max-time 5 "http://127.0.0.1:$PORT_CLOUD/_fake/counts" | jq -r '.uploads // 0' 2>/dev/null || echo 0; }
last_log=0
while kill -0 "$SIM_PID" 2>/dev/null; do
    if (($(elapsed) > TIMEOUT)); then
        log "global timeout (${TIMEOUT} s): stopping"
        kill "$SIM_PID" 2>/dev/null || true
        break
    fi
    done_objects=$(uploads)
    # PUTs the lb answered 201 (a file created), and recordings uploaded (audio + sidecar).
    stored=$(metric lb 'lb_requests_total{pool="dav",status="201"}')
    ((stored <= RECORDINGS)) || stored=$RECORDINGS
    progress=$((stored + done_objects / 2))
    for victim in "${KILL_ORDER[@]}"; do
        [[ -z "${KILLED_AT[$victim]:-}" && $progress -ge $((STEPS * KILL_SHARE[$victim] / 100)) ]] || continue
        case $victim in
            excp1) TAKEN_BEFORE=$(metric excp2 excp_calls_taken_over_total) ;;
            exrp1) EXRP_TAKEN_BEFORE=$(metric exrp2 exrp_takeovers_total) ;;
        esac
        kill -9 "${PID[$victim]}"
        wait "${PID[$victim]}" 2>/dev/null || true
        unset "PID[$victim]"
        KILL_MS[$victim]=$(now_ms)
        KILL_UPLOADS[$victim]=$done_objects
        KILLED_AT[$victim]="$(elapsed) s: ~$stored/$RECORDINGS stored, $done_objects/$EXPECTED_OBJECTS cloud objects"
        log "SIGKILL $victim (not restarted) at ${KILLED_AT[$victim]}"
    done
    # Recovery: the next recording at the cloud after each kill, and the survivors' takeovers.
    for victim in "${!KILL_MS[@]}"; do
        if [[ -z "${RESUMED[$victim]:-}" ]] && ((done_objects > KILL_UPLOADS[$victim])); then
            RESUMED[$victim]="$(($(now_ms) - KILL_MS[$victim])) ms"
        fi
    done
    if [[ -n "${KILL_MS[excp1]:-}" && -z "${TAKEN[excp1]:-}" ]] && (($(metric excp2 excp_calls_taken_over_total) > TAKEN_BEFORE)); then
        TAKEN[excp1]="$(($(now_ms) - KILL_MS[excp1])) ms ($(metric excp2 excp_calls_taken_over_total) calls)"
    fi
    if [[ -n "${KILL_MS[exrp1]:-}" && -z "${TAKEN[exrp1]:-}" ]] && (($(metric exrp2 exrp_takeovers_total) > EXRP_TAKEN_BEFORE)); then
        TAKEN[exrp1]="$(($(now_ms) - KILL_MS[exrp1])) ms"
    fi
    if (($(elapsed) - last_log >= 15)); then
        last_log=$(elapsed)
        log "progress: ~$stored/$RECORDINGS stored, $done_objects/$EXPECTED_OBJECTS cloud objects"
    fi
    sleep 0.25
done
wait "$SIM_PID" && SIM_RC=0 || SIM_RC=$?
SIM_PID=""
log "simulate exited $SIM_RC: $(cat "$WORK/simulate.out")"
# Let the surviving exrp settle so a late duplicate would show in the report.
for _ in $(seq 1 120); do
    q=$(curl -s --max-time 5 "http://127.0.0.1:$PORT_EXRP2/health" | jq -c '.queue' 2>/dev/null || true)
    [[ $(jq -r '(.pending // 1) + (.working // 1)' <<<"${q:-null}" 2>/dev/null) == 0 ]] && break
    sleep 0.5
done
curl -s --max-time 30 "http://127.0.0.1:$PORT_CLOUD/_fake/report" >"$WORK/cloud.json"
curl -s --max-time 5 "http://127.0.0.1:$PORT_CLOUD/_fake/counts" >"$WORK/cloud-counts.json"
[[ -s "$WORK/simulate.json" ]] || echo '{"recordings":{},"failed_calls":[],"missing":[],"simulated":'"$RECORDINGS"',"started_at_ms":0}' >"$WORK/simulate.json"
SUMMARY=$(cloud_summary "$WORK/simulate.json" "$WORK/cloud.json")

REPORT=$(
    echo "# Failure drill $(date '+%Y-%m-%d %H:%M')"
    echo
    echo "\`bench/drill.sh\` (CALLS=$CALLS, CONCURRENCY=$CONCURRENCY, PER_CALL=$PER_CALL) on $(nproc) cores, $(uname -sr),"
    echo "exec-allinone commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), Garage $("$GARAGE" --version 2>/dev/null | awk '{print $2; exit}');"
    echo "3 Garage nodes (replication 3), 2 webdav front ends on the bucket, 2 excp ([excp.s3]), 2 exrp, 1 lb;"
    echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); the run and the settling took $(elapsed) s."
    echo
    summary_table
    echo
    echo "| SIGKILLed (not restarted) | at | next recording at the cloud after | work taken over after |"
    echo "|---|---|---:|---:|"
    for victim in "${KILL_ORDER[@]}"; do
        echo "| $victim | ${KILLED_AT[$victim]:-not killed} | ${RESUMED[$victim]:-–} | ${TAKEN[$victim]:-–} |"
    done
    echo
    echo "Also: $(get re_puts) re-PUTs of an object already uploaded (a resumed upload, same presigned URL),"
    echo "$(get sidecars_missing) recordings without their metadata sidecar, $(get left_in_webdav) recordings simulate saw still in WebDAV;"
    echo "$(jq -r '.retried_requests // 0' "$WORK/simulate.json") requests simulate retried; simulate exit status $SIM_RC;"
    echo "fake cloud counts: $(cat "$WORK/cloud-counts.json")."
)
verdict "${#KILLED_AT[@]}" "${#KILL_ORDER[@]}"
