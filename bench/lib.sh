# Helpers shared by bench scripts that start their processes in a work dir of their own.
# Sourced (`. "$ROOT/bench/lib.sh"`), not run.

# bench_arg ARGS...: the arguments every bench script takes (--no-build, --out FILE,
# -h/--help); sets SHIFT to the words it used; anything else is an error.
bench_arg() {
    case "$1" in
        --no-build) BUILD=0; SHIFT=1 ;;
        --out) OUT=$2; SHIFT=2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 1 ;;
    esac
}

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

# start_store: our webdav role (fsync on, as deployed) in $WORK/store, user mcp with
# password secret1; sets STORE to its collection's URL. Needs $BIN.
start_store() {
    mkdir -p "$WORK/store/root"
    "$BIN" htpasswd -c "$WORK/store/htpasswd" mcp secret1 2>/dev/null
    printf '[admin]\nlisten = "127.0.0.1:0"\n[webdav]\nlisten = "127.0.0.1:0"\nroot = "%s"\nhtpasswd = "%s"\n' \
        "$WORK/store/root" "$WORK/store/htpasswd" >"$WORK/store.toml"
    start store "$BIN" --role webdav --config "$WORK/store.toml"
    STORE="http://$(addr store webdav)/recordings"
}

# start_cloud ARGS...: the fake Genesys Cloud (examples/fakecloud, $FAKECLOUD) with ARGS; it
# runs until its stdin closes, so it gets a FIFO this script holds open. Sets CLOUD.
start_cloud() {
    mkfifo "$WORK/cloud.in"
    exec 9<>"$WORK/cloud.in"
    STDIN="$WORK/cloud.in" start cloud "$FAKECLOUD" "$@"
    CLOUD="http://$(addr cloud cloud)"
}

# addr NAME LISTENER: the address LISTENER=... on NAME's READY line.
addr() { grep -o "$2=[^ ]*" "$WORK/$1.ready" | cut -d= -f2; }

# Side-by-side runs (lb.sh, webdav.sh): servers on ports below the ephemeral range, their
# process trees sampled, results in $RAW as server<TAB>repetition<TAB>metric<TAB>value.

wait_port() { # port pid
    for _ in $(seq 200); do
        port_busy "$1" && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

die() { log "ERROR: $*"; exit 1; }

# A port below the ephemeral range, free now.
EPHEMERAL_LOW=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
free_port() {
    [[ $EPHEMERAL_LOW -gt 12000 ]] || die "ip_local_port_range starts at $EPHEMERAL_LOW; need room below it for listeners"
    local p
    for _ in $(seq 200); do
        p=$((10000 + RANDOM % (EPHEMERAL_LOW - 10000)))
        port_busy "$p" || { echo "$p"; return; }
    done
    die "no free port"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------- sampling
# PIDs of a process and all its descendants.
tree_pids() {
    ps -e -o pid=,ppid= | awk -v root="$1" '
        { par[$1] = $2 }
        END {
            keep[root] = 1; changed = 1
            while (changed) { changed = 0
                for (p in par) if (!(p in keep) && (par[p] in keep)) { keep[p] = 1; changed = 1 } }
            for (p in keep) print p
        }'
}

# "rss_kib hwm_kib threads nprocs" summed over a process tree.
sample_tree() {
    local files=() p
    for p in $(tree_pids "$1"); do files+=("/proc/$p/status"); done
    cat "${files[@]}" 2>/dev/null |
        awk '/^VmRSS:/{r+=$2} /^VmHWM:/{h+=$2} /^Threads:/{t+=$2; n++} END{print r+0, h+0, t+0, n+0}'
}

# ---------------------------------------------------------------- report
median() { # server metric -> median over reps, or NA
    awk -F'\t' -v s="$1" -v m="$2" '$1==s && $3==m && $4!="NA" && $4!="null" {print $4}' "$RAW" | sort -g |
        awk '{a[NR]=$1} END { if (NR==0) print "NA"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'
}

fmt() { # value scale -> rounded
    [[ $1 == NA ]] && { echo NA; return; }
    awk -v v="$1" -v d="${2:-1}" 'BEGIN { x = v / d; if (x >= 100 || x == int(x)) printf "%.0f", x; else if (x >= 10) printf "%.1f", x; else printf "%.2f", x }'
}

ratio() {
    [[ $1 == NA || $2 == NA ]] && { echo "–"; return; }
    awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "–"; else printf "%.2f", a / b }'
}

total() { awk -F'\t' -v s="$1" -v m="$2" '$1==s && $3==m && $4 ~ /^[0-9]+$/ {t+=$4} END {print t+0}' "$RAW"; }

# ---------------------------------------------------------------- recordings at the cloud
# cloud_summary SIMULATE_JSON CLOUD_JSON: simulate's --report against the fake cloud's
# /_fake/report, recording by recording, as JSON: simulated, failed_calls, delivered (audio
# stored with the sample's length and MD5), duplicated (audio or sidecar in more than one cloud
# object; a resumed upload re-PUTting one presigned URL is a re-PUT, not a duplicate), lost
# (completed, never at the cloud), partial (an object of the wrong length or MD5), re_puts,
# sidecars_missing, left_in_webdav, rec_per_s, and p50/p99/max seconds from a call's end to its
# recording's first completed PUT to the cloud. Needs $ROOT.
cloud_summary() {
    local SAMPLE_LEN SAMPLE_MD5
    SAMPLE_LEN=$(stat -c %s "$ROOT/assets/sample.opus")
    SAMPLE_MD5=$(printf '%b' "$(md5sum "$ROOT/assets/sample.opus" | cut -c1-32 | sed 's/../\\x&/g')" | base64)
    jq -n --slurpfile sim "$1" --slurpfile cloud "$2" \
        --argjson len "$SAMPLE_LEN" --arg md5 "$SAMPLE_MD5" '
        $sim[0] as $s | ($cloud[0].files // {}) as $f |
        def pct(p): if length == 0 then null else sort | .[((length * p) | ceil) - 1 | if . < 0 then 0 else . end] end;
        def audio(n): [($f[n].objects // [])[] | select(.contentType == "audio/opus")];
        ($s.recordings | keys) as $completed |
        ([$s.failed_calls[].recordings[]]) as $failed |
        [($completed + $failed)[] as $n | {name: $n, completed: ($s.recordings[$n] != null),
            objects: audio($n), sidecars: ($f[$n + ".json"].uploads // 0),
            ended: ($s.recordings[$n].ended_at_ms // null)}] as $all |
        [$all[] | select(.objects | length > 0) | .objects |= map(select(.len == $len and .md5 == $md5))
            | select(.objects | length > 0)] as $good |
        {
          simulated: $s.simulated,
          failed_calls: ($s.failed_calls | length),
          delivered: ($good | length),
          duplicated: ([$all[] | select((.objects | length) > 1 or .sidecars > 1)] | length),
          lost: ([$all[] | select(.completed and (.objects | length) == 0)] | length),
          partial: ([$all[] | select(any(.objects[]; .len != $len or .md5 != $md5))] | length),
          re_puts: ([$all[].objects[].puts - 1] | add // 0),
          sidecars_missing: ([$all[] | select(.completed and .sidecars == 0)] | length),
          left_in_webdav: ($s.missing | length),
          latency: ([$good[] | select(.ended != null) | ((.objects | map(.firstPutMs) | min) - .ended) / 1000
                     | if . < 0 then 0 else . end]),
          last_upload_ms: ([$all[].objects[].firstPutMs] | max),
          started_ms: $s.started_at_ms
        }
        | .rec_per_s = (if .last_upload_ms != null and .started_ms > 0 and .last_upload_ms > .started_ms
                        then .delivered / ((.last_upload_ms - .started_ms) / 1000) else 0 end)
        | .p50 = (.latency | pct(0.5)) | .p99 = (.latency | pct(0.99)) | .max = (.latency | max)
        | del(.latency)'
}

# Reading $SUMMARY (cloud_summary's JSON): a field, a field in seconds, the accounting table,
# and whether the run is clean (every recording of RECORDINGS delivered once, whole, and every
# call completed).
get() { jq -r ".$1" <<<"$SUMMARY"; }
secs() { jq -r "if .$1 == null then \"n/a\" else (.$1 * 100 | round / 100 | tostring) + \" s\" end" <<<"$SUMMARY"; }
summary_table() {
    echo "| recordings simulated | delivered | duplicated | lost | partial | failed calls | rec/s | end→upload p50 | p99 | max |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    echo "| $(get simulated) | $(get delivered) | $(get duplicated) | $(get lost) | $(get partial) | $(get failed_calls) | $(jq -r '.rec_per_s * 10 | round / 10' <<<"$SUMMARY") | $(secs p50) | $(secs p99) | $(secs max) |"
}
# verdict KILLS_DONE KILLS_WANTED: prints $REPORT (also into $OUT when set), then exits 0 when
# the run is clean and every kill happened (setting OK=1, which the caller's cleanup reads),
# else 1 with the work directory named.
verdict() {
    echo "$REPORT"
    [[ -n "$OUT" ]] && { echo "$REPORT" >"$OUT"; log "report written to $OUT"; }
    if summary_clean "$RECORDINGS" && [[ $1 == "$2" ]]; then
        OK=1
        log "PASS"
        exit 0
    fi
    log "FAIL (logs in $WORK)"
    exit 1
}
summary_clean() {
    [[ $(get duplicated) == 0 && $(get lost) == 0 && $(get partial) == 0 && $(get failed_calls) == 0 \
        && $(get delivered) == "$1" ]]
}

# ---------------------------------------------------------------- Garage (S3)
GARAGE=${GARAGE:-${CARGO_HOME:-$HOME/.cargo}/bin/garage}
need_garage() {
    [[ -x "$GARAGE" ]] || { log "garage is needed: cargo install garage --locked (or GARAGE=/path/to/garage)"; exit 1; }
}

# start_garage BASE_PORT BUCKET: a 3-node Garage cluster in $WORK/garage{0,1,2} on loopback
# (node n: RPC BASE+3n, S3 BASE+3n+1, admin BASE+3n+2), replication factor 3, one bucket and a
# key allowed to use it. Sets GARAGE_PIDS, GARAGE_ENDPOINTS (the S3 URLs), GARAGE_KEY_ID and
# GARAGE_KEY_SECRET, and adds the nodes to PIDS.
start_garage() {
    local base=$1 bucket=$2 n m secret key
    need_garage
    secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    GARAGE_PIDS=() GARAGE_ENDPOINTS=()
    for n in 0 1 2; do
        mkdir -p "$WORK/garage$n"
        printf '%s\n' \
            "metadata_dir = \"$WORK/garage$n/meta\"" \
            "data_dir = \"$WORK/garage$n/data\"" \
            'db_engine = "sqlite"' \
            'replication_factor = 3' \
            "rpc_bind_addr = \"127.0.0.1:$((base + 3 * n))\"" \
            "rpc_public_addr = \"127.0.0.1:$((base + 3 * n))\"" \
            "rpc_secret = \"$secret\"" \
            '[s3_api]' \
            's3_region = "garage"' \
            "api_bind_addr = \"127.0.0.1:$((base + 3 * n + 1))\"" \
            'root_domain = ".s3.garage.localhost"' \
            '[admin]' \
            "api_bind_addr = \"127.0.0.1:$((base + 3 * n + 2))\"" >"$WORK/garage$n/garage.toml"
        RUST_LOG=garage=warn "$GARAGE" -c "$WORK/garage$n/garage.toml" server >/dev/null 2>"$WORK/garage$n.log" </dev/null &
        GARAGE_PIDS[n]=$!
        PIDS+=("$!")
        GARAGE_ENDPOINTS[n]="http://127.0.0.1:$((base + 3 * n + 1))"
    done
    for n in 0 1 2; do
        for _ in $(seq 1 200); do port_busy $((base + 3 * n + 1)) && break; sleep 0.1; done
    done
    local ids=()
    for n in 0 1 2; do ids[n]=$(garage_retry "$n" node id -q | tail -1); done
    for n in 0 1 2; do
        for m in 0 1 2; do
            [[ $n == "$m" ]] || garage_retry "$n" node connect "${ids[m]}" >/dev/null
        done
    done
    for n in 0 1 2; do garage_retry 0 layout assign -z dc1 -c 1G "${ids[n]%%@*}" >/dev/null; done
    garage_retry 0 layout apply --version 1 >/dev/null
    garage_retry 0 bucket create "$bucket" >/dev/null
    key=$(garage_retry 0 key create "$bucket-key")
    GARAGE_KEY_ID=$(awk -F': *' '/Key ID:/ {print $2; exit}' <<<"$key" | tr -d ' ')
    GARAGE_KEY_SECRET=$(awk -F': *' '/Secret key:/ {print $2; exit}' <<<"$key" | tr -d ' ')
    garage_retry 0 bucket allow --read --write --owner "$bucket" --key "$bucket-key" >/dev/null
}

# garage_retry N ARGS...: `garage` on node N's config, retried while the cluster settles.
garage_retry() {
    local n=$1
    shift
    for _ in $(seq 1 100); do
        "$GARAGE" -c "$WORK/garage$n/garage.toml" "$@" 2>/dev/null && return 0
        sleep 0.3
    done
    "$GARAGE" -c "$WORK/garage$n/garage.toml" "$@"
}

# ---------------------------------------------------------------- runs that kill processes
# start_tracked NAME CMD...: runs CMD (stdout to $WORK/NAME.ready, stderr appended to
# $WORK/NAME.log, stdin from $STDIN or /dev/null) and waits up to 30 s for its READY line; its
# pid goes into the caller's associative array PID[NAME], the time it took into READY_MS.
start_tracked() {
    local name=$1 t0
    shift
    t0=$(date +%s%N)
    "$@" >"$WORK/$name.ready" 2>>"$WORK/$name.log" <"${STDIN:-/dev/null}" &
    PID[$name]=$!
    for _ in $(seq 1 300); do
        if grep -q READY "$WORK/$name.ready" 2>/dev/null; then
            READY_MS=$((($(date +%s%N) - t0) / 1000000))
            return 0
        fi
        kill -0 "${PID[$name]}" 2>/dev/null || break
        sleep 0.1
    done
    log "$name did not start:"
    tail -20 "$WORK/$name.log" >&2
    exit 1
}

# stop_all PID...: SIGTERM to each, then SIGKILL to whatever still runs after 10 s.
stop_all() {
    local p alive
    for p in "$@"; do kill "$p" 2>/dev/null || true; done
    for _ in $(seq 1 100); do
        alive=0
        for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [[ $alive == 0 ]] && break
        sleep 0.1
    done
    for p in "$@"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
