#!/usr/bin/env bash
# Soak: the whole recording path under load while every role is SIGKILLed once.
#
#   bench/soak.sh [--calls N] [--no-build] [--out FILE] [--keep]
#
#   --calls N      calls, all in flight at once (default 1000; env CALLS works too)
#   --no-build     use the existing target/release files
#   --out FILE     also write the report (markdown) there
#   --keep         keep the work directory (logs, configs, JSON reports); kept anyway on failure
#
# Environment: CALLS (1000), CONCURRENCY (= CALLS), PER_CALL (recordings per call, 2),
# TIMEOUT (bound in seconds from the start of simulate, 1200), SEED (kill moments; default random, printed),
# DOWNTIME (whole seconds a killed role stays down, 1), ROLES (which roles to kill: "webdav lb excp exrp").
#
# Starts examples/fakecloud (the fake Genesys Cloud) and webdav, lb (pools excp and exrp), excp
# and exrp as separate processes of the release binary, all from one generated TOML config on
# fixed loopback ports (24100 webdav, 24101 lb excp pool, 24102 lb exrp pool, 24103 excp,
# 24104 exrp, 24105 fake cloud; admin listeners on port 0), state in a fresh directory under
# $TMPDIR. Then `exec-allinone simulate` plays MCP: CALLS calls at once, PER_CALL real Ogg/Opus
# recordings each (assets/sample.opus), PUT to WebDAV, metadata and end event through the lb to
# excp, retrying while a role is down. Meanwhile each role is SIGKILLed once at a random share
# (4-89 %) of the progress, counted as two steps per recording (stored in WebDAV, seen in the
# store directory or uploaded; uploaded, seen at the fake cloud's GET /_fake/counts), so a kill
# can land in the recording burst or in the injection after it; it is restarted with the same
# config after DOWNTIME while the others go on. At the end the fake cloud's report (GET /_fake/report) is compared
# with simulate's (--report) recording by recording:
#
#   delivered   recordings whose audio the cloud stored with the right length and MD5
#   duplicated  recordings whose audio or metadata sidecar became more than one cloud object
#               (a resumed upload that re-PUTs the same presigned URL overwrites one object:
#               counted as "re-PUTs", not as a duplicate)
#   lost        recordings of completed calls that never reached the cloud
#   partial     recordings with a stored object whose length or MD5 differs from the sample
#
# and it exits 1 unless duplicated, lost and partial are 0 and every call completed. Also
# reported: recordings/s (first PUT to last upload), p50/p99/max from the end of a call to the
# first completed PUT of its recording to the cloud, and peak RSS per role (VmHWM, the largest
# over the role's processes, sampled every 0.25 s and just before the kill).
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
CONCURRENCY=${CONCURRENCY:-$CALLS}
PER_CALL=${PER_CALL:-2}
TIMEOUT=${TIMEOUT:-1200}
SEED=${SEED:-$((RANDOM * 32768 + RANDOM))}
DOWNTIME=${DOWNTIME:-1}
read -r -a KILL_ROLES <<<"${ROLES:-webdav lb excp exrp}"
RECORDINGS=$((CALLS * PER_CALL))
# Audio plus its metadata sidecar per recording.
EXPECTED_OBJECTS=$((RECORDINGS * 2))
# Progress counts two steps per recording, stored in WebDAV and uploaded to the cloud, so that
# kills land in the recording burst as well as in the injection that follows it.
STEPS=$((RECORDINGS * 2))
PORT_WEBDAV=24100 PORT_LB_EXCP=24101 PORT_LB_EXRP=24102 PORT_EXCP=24103 PORT_EXRP=24104 PORT_CLOUD=24105

# Reset when simulate starts: kill moments and the global bound count from there.
T0=$(date +%s)
elapsed() { echo $(($(date +%s) - T0)); }

command -v jq >/dev/null || { log "jq is needed (apt-get install jq)"; exit 1; }
command -v curl >/dev/null || { log "curl is needed (apt-get install curl)"; exit 1; }
for port in $PORT_WEBDAV $PORT_LB_EXCP $PORT_LB_EXRP $PORT_EXCP $PORT_EXRP $PORT_CLOUD; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        log "port $port is in use: is another soak running?"
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

WORK=$(mktemp -d "${TMPDIR:-/tmp}/soak.XXXX")
declare -A PID=() PEAK=() KILLED_AT=() BACK_AFTER=()
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

# The same config for every process; each runs the one role --role names.
mkdir -p "$WORK/recordings"
"$BIN" htpasswd -c -m "$WORK/htpasswd" mcp soak-pass 2>/dev/null
cat >"$WORK/soak.toml" <<EOF
shutdown_grace = "5s"

[admin]
listen = "127.0.0.1:0"

[webdav]
listen = "127.0.0.1:$PORT_WEBDAV"
root = "$WORK/recordings"
htpasswd = "$WORK/htpasswd"

[lb.pools.excp]
listen = "127.0.0.1:$PORT_LB_EXCP"
servers = ["127.0.0.1:$PORT_EXCP"]

[lb.pools.exrp]
listen = "127.0.0.1:$PORT_LB_EXRP"
servers = ["127.0.0.1:$PORT_EXRP"]

[excp]
listen = "127.0.0.1:$PORT_EXCP"
recording_processor_url = "http://127.0.0.1:$PORT_LB_EXRP"
state_dir = "$WORK/excp"
# Short backoff so a call held while the lb or exrp was down goes out soon after.
retry_max = "5s"

[exrp]
listen = "127.0.0.1:$PORT_EXRP"
state_dir = "$WORK/exrp"
instance = "soak-exrp"
retry_max = "10s"
scan_interval = "10s"
claim_timeout = "60s"

[exrp.transient_storage]
type = "WebDAV"
url = "http://127.0.0.1:$PORT_WEBDAV/recordings"
username = "mcp"
password = "soak-pass"

[exrp.genesys_cloud]
api_url = "http://127.0.0.1:$PORT_CLOUD"
login_url = "http://127.0.0.1:$PORT_CLOUD"
client_id = "soak"
client_secret = "soak-secret"
EOF
"$BIN" check-config --config "$WORK/soak.toml" >/dev/null

start_role() { start_tracked "$1" "$BIN" --role "$1" --config "$WORK/soak.toml"; }

# Peak RSS of a role: VmHWM of its current process, kept as the largest seen over its processes.
sample_rss() {
    local name=$1 hwm
    hwm=$(awk '/^VmHWM/ {print $2}' "/proc/${PID[$name]}/status" 2>/dev/null || true)
    [[ -n "$hwm" ]] || return 0
    if [[ -z "${PEAK[$name]:-}" || $hwm -gt ${PEAK[$name]} ]]; then PEAK[$name]=$hwm; fi
}

start_cloud --port "$PORT_CLOUD" --client-id soak --secret soak-secret
PID[cloud]=$LAST_PID
for role in webdav excp exrp lb; do start_role "$role"; done
log "all roles READY; seed $SEED; $CALLS calls x $PER_CALL recordings, $CONCURRENCY at once"

# A kill moment per role: a share of the progress steps (4-89 %), from the seed.
RANDOM=$SEED
declare -A KILL_AT=()
for role in "${KILL_ROLES[@]}"; do
    KILL_AT[$role]=$((STEPS * (4 + RANDOM % 86) / 100))
done
log "kill points (progress steps of $STEPS): $(for r in "${KILL_ROLES[@]}"; do printf '%s@%s ' "$r" "${KILL_AT[$r]}"; done)"

T0=$(date +%s)
"$BIN" simulate --calls "$CALLS" --concurrency "$CONCURRENCY" --recordings-per-call "$PER_CALL" \
    --webdav "http://127.0.0.1:$PORT_WEBDAV/recordings" --user mcp --password soak-pass \
    --excp "http://127.0.0.1:$PORT_LB_EXCP" --retry-for 120 --timeout "$TIMEOUT" \
    --report "$WORK/simulate.json" >"$WORK/simulate.out" 2>"$WORK/simulate.log" &
SIM_PID=$!

uploads() { curl -s --max-time 5 "http://127.0.0.1:$PORT_CLOUD/_fake/counts" | jq -r '.uploads // 0' 2>/dev/null || echo 0; }
# Recordings in the store directory now (what exrp has not deleted yet).
in_store() { find "$WORK/recordings" -maxdepth 1 -type f ! -name '.*' 2>/dev/null | wc -l; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
declare -A DOWN_SINCE=()
last_log=0
while kill -0 "$SIM_PID" 2>/dev/null || ((${#DOWN_SINCE[@]} > 0)); do
    if (($(elapsed) > TIMEOUT)); then
        log "global timeout (${TIMEOUT} s): stopping"
        kill "$SIM_PID" 2>/dev/null || true
        break
    fi
    for role in webdav lb excp exrp; do [[ -n "${DOWN_SINCE[$role]:-}" ]] || sample_rss "$role"; done
    done_objects=$(uploads)
    # Stored = still in the store + already uploaded (exrp deletes only after the upload):
    # an estimate from outside that only grows, as simulate's PUTs are not visible otherwise.
    uploaded=$((done_objects / 2))
    stored=$(($(in_store) + uploaded))
    ((stored <= RECORDINGS)) || stored=$RECORDINGS
    progress=$((stored + uploaded))
    for role in "${KILL_ROLES[@]}"; do
        [[ -z "${KILLED_AT[$role]:-}" && $progress -ge ${KILL_AT[$role]} ]] || continue
        sample_rss "$role"
        kill -9 "${PID[$role]}"
        wait "${PID[$role]}" 2>/dev/null || true
        DOWN_SINCE[$role]=$(now_ms)
        KILLED_AT[$role]="$(elapsed) s: ~$stored/$RECORDINGS stored, $done_objects/$EXPECTED_OBJECTS cloud objects"
        log "SIGKILL $role at ${KILLED_AT[$role]}"
        echo "---- SIGKILL at $(date +%T) ----" >>"$WORK/$role.log"
    done
    # Restarts do not hold up the other kills: several roles may be down at once.
    for role in "${!DOWN_SINCE[@]}"; do
        (($(now_ms) - DOWN_SINCE[$role] >= DOWNTIME * 1000)) || continue
        start_role "$role"
        unset "DOWN_SINCE[$role]"
        BACK_AFTER[$role]="$READY_MS ms"
        log "$role restarted (READY after $READY_MS ms)"
    done
    if (($(elapsed) - last_log >= 15)); then
        last_log=$(elapsed)
        log "progress: ~$stored/$RECORDINGS stored, $done_objects/$EXPECTED_OBJECTS cloud objects"
    fi
    sleep 0.25
done
wait "$SIM_PID" && SIM_RC=0 || SIM_RC=$?
SIM_PID=""
log "simulate exited $SIM_RC: $(cat "$WORK/simulate.out")"

# Let exrp settle (its queue empty) so a late duplicate would show in the report.
for _ in $(seq 1 120); do
    q=$(curl -s --max-time 5 "http://127.0.0.1:$PORT_EXRP/health" | jq -c '.queue' 2>/dev/null || true)
    [[ $(jq -r '(.pending // 1) + (.working // 1)' <<<"${q:-null}" 2>/dev/null) == 0 ]] && break
    sleep 0.5
done
for role in webdav lb excp exrp; do sample_rss "$role"; done
curl -s --max-time 30 "http://127.0.0.1:$PORT_CLOUD/_fake/report" >"$WORK/cloud.json"
curl -s --max-time 5 "http://127.0.0.1:$PORT_CLOUD/_fake/counts" >"$WORK/cloud-counts.json"
left=$(find "$WORK/recordings" -maxdepth 1 -type f ! -name '.*' | wc -l)

[[ -s "$WORK/simulate.json" ]] || echo '{"recordings":{},"failed_calls":[],"missing":[],"simulated":'"$RECORDINGS"',"started_at_ms":0}' >"$WORK/simulate.json"
SUMMARY=$(cloud_summary "$WORK/simulate.json" "$WORK/cloud.json")

mib() { [[ -n "${1:-}" ]] && awk -v k="$1" 'BEGIN {printf "%.1f MiB", k / 1024}' || echo "n/a"; }
REPORT=$(
    echo "# Soak $(date '+%Y-%m-%d %H:%M')"
    echo
    echo "\`bench/soak.sh\` (CALLS=$CALLS, CONCURRENCY=$CONCURRENCY, PER_CALL=$PER_CALL, SEED=$SEED, DOWNTIME=${DOWNTIME}s) on $(nproc) cores,"
    echo "$(uname -sr), exec-allinone commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), state on $(df -T "$WORK" | awk 'NR==2 {print $2}');"
    echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); simulate and the settling took $(elapsed) s."
    echo
    summary_table
    echo
    echo "| role | SIGKILL at | READY again after | peak RSS (VmHWM) |"
    echo "|---|---|---:|---:|"
    for role in webdav lb excp exrp; do
        echo "| $role | ${KILLED_AT[$role]:-not killed} | ${BACK_AFTER[$role]:-–} | $(mib "${PEAK[$role]:-}") |"
    done
    echo
    echo "Also: $(get re_puts) re-PUTs of an object already uploaded (a resumed upload, same presigned URL),"
    echo "$(get sidecars_missing) recordings without their metadata sidecar, $(get left_in_webdav) recordings simulate saw still in WebDAV,"
    echo "$left files left in the store directory; $(jq -r '.retried_requests // 0' "$WORK/simulate.json") requests simulate retried while a role was down;"
    echo "simulate exit status $SIM_RC; fake cloud counts: $(cat "$WORK/cloud-counts.json")."
)
verdict "${#KILLED_AT[@]}" "${#KILL_ROLES[@]}"
