#!/usr/bin/env bash
# Reverse-proxy benchmark: exec-allinone --role lb vs nginx upstream round robin, same backends.
#
#   bench/lb.sh [--quick] [--reps N] [--duration S] [--warmup S] [--conc LIST] [--servers LIST]
#               [--no-access-log] [--no-build] [--out FILE]
#
#   --quick          smoke run (~1 min: 2 s per point, 1 repetition); figures are not comparable
#   --reps N         repetitions per measurement (default 3; the median is reported)
#   --duration S     measured seconds per point (default 10)
#   --warmup S       seconds of load before each measurement (default 2)
#   --conc LIST      comma list of concurrencies (default 1,64,256)
#   --servers LIST   comma list of direct,nginx,exec,nginx-ka,exec-ka,exec-ka32 (default: all).
#                    "direct" = the backends without a proxy; nginx/exec = each proxy in its
#                    default upstream mode (HTTP/1.0, a new upstream connection per request);
#                    nginx-ka/exec-ka = both with upstream keep-alive (HTTP/1.1, pooled; nginx
#                    `keepalive 32` per worker, exec-allinone keepalive_connections = 32 x
#                    workers, the same total); exec-ka32 = exec-allinone with its default
#                    keepalive_connections = 32 for the whole process.
#   --no-access-log  no access log on either proxy (default: both write one line per request
#                    to a file, as in production)
#   --no-build       do not run cargo; use $POSTLOAD / $EXEC_BIN or existing target/release files
#   --out FILE       where to write the markdown report (default bench/results/lb-<date>.md)
#
# Environment: POSTLOAD=/path/to/postload, EXEC_BIN=/path/to/exec-allinone override the
# binaries (and skip building them); PIN_CLIENT, PIN_PROXY, PIN_BACKENDS = CPU lists for
# `taskset -c` (default: nothing pinned, see bench/README.md); KEEP_WORK=1 keeps the work dir.
#
# Everything runs on 127.0.0.1 only; each proxy start gets a fresh dir, the two backends run
# for the whole benchmark, and all processes are stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/bench/lib.sh"
QUICK=0
REPS=3
DURATION=10
WARMUP=2
CONCS="1,64,256"
SERVERS="direct,nginx,exec,nginx-ka,exec-ka,exec-ka32"
ACCESS_LOG=1
BUILD=1
OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --reps) REPS=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --warmup) WARMUP=$2; shift ;;
        --conc) CONCS=$2; shift ;;
        --servers) SERVERS=$2; shift ;;
        --no-access-log) ACCESS_LOG=0 ;;
        *) bench_arg "$@"; shift $((SHIFT - 1)) ;;
    esac
    shift
done
if [[ $QUICK == 1 ]]; then
    [[ $REPS == 3 ]] && REPS=1
    [[ $DURATION == 10 ]] && DURATION=2
    [[ $WARMUP == 2 ]] && WARMUP=0.5
fi
IFS=, read -r -a SERVER_LIST <<<"$SERVERS"
IFS=, read -r -a CONC_LIST <<<"$CONCS"
PIN_CLIENT=${PIN_CLIENT:-}
PIN_PROXY=${PIN_PROXY:-}
PIN_BACKENDS=${PIN_BACKENDS:-}
NCPU=$(nproc)
# The largest concurrency is the one whose RSS and threads are sampled.
MAXC=$(printf '%s\n' "${CONC_LIST[@]}" | sort -n | tail -n1)
BACKEND_BODY='{"status":{"code":0,"message":"OK"}}'

want() { [[ ",$SERVERS," == *",$1,"* ]]; }
want_exec() { want exec || want exec-ka || want exec-ka32; }
for s in "${SERVER_LIST[@]}"; do
    case "$s" in direct|nginx|exec|nginx-ka|exec-ka|exec-ka32) ;; *) die "unknown server $s" ;; esac
done

# ---------------------------------------------------------------- packages
need_pkgs=()
command -v jq >/dev/null || need_pkgs+=(jq)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v pgrep >/dev/null || need_pkgs+=(procps)
command -v taskset >/dev/null || need_pkgs+=(util-linux)
command -v nginx >/dev/null || need_pkgs+=(nginx)   # the backends are nginx too
if [[ ${#need_pkgs[@]} -gt 0 ]]; then
    log "installing ${need_pkgs[*]}"
    [[ $(id -u) == 0 ]] || die "need root to apt-get install ${need_pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
NGINX=$(command -v nginx)

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[[ $(ulimit -n) -ge $((4 * MAXC + 256)) ]] || die "ulimit -n is $(ulimit -n); need $((4 * MAXC + 256))"

# ---------------------------------------------------------------- build
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
POSTLOAD=${POSTLOAD:-}
EXEC_BIN=${EXEC_BIN:-}
if [[ $BUILD == 1 ]]; then
    args=()
    [[ -z $POSTLOAD ]] && args+=(--example postload)
    want_exec && [[ -z $EXEC_BIN ]] && args+=(--bin exec-allinone)
    if [[ ${#args[@]} -gt 0 ]]; then
        log "cargo build --release ${args[*]}"
        (cd "$ROOT" && cargo build --release "${args[@]}") || die "cargo build failed"
    fi
fi
POSTLOAD=${POSTLOAD:-$TARGET/release/examples/postload}
EXEC_BIN=${EXEC_BIN:-$TARGET/release/exec-allinone}
[[ -x $POSTLOAD ]] || die "no postload at $POSTLOAD"
if want_exec; then [[ -x $EXEC_BIN ]] || die "no exec-allinone at $EXEC_BIN"; fi

# ---------------------------------------------------------------- work dir, cleanup
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lb-bench.XXXXXX")
chmod 755 "$WORK"
RAW=$WORK/raw.tsv          # server  rep  metric  value
export NSTAT_HISTORY=$WORK/nstat.history
: >"$RAW"
: >"$WORK/statuses.tsv"    # server  conc  status  count
: >"$WORK/serverlog.txt"   # warnings and errors the proxies logged
PROXY_PID=""
BACKEND_PIDS=()
SAMPLER_PID=""
PL_PID=""
cleanup() {
    local rc=$?
    [[ -n ${PL_PID:-} ]] && kill "$PL_PID" 2>/dev/null || true
    [[ -n ${SAMPLER_PID:-} ]] && kill "$SAMPLER_PID" 2>/dev/null || true
    stop_proxy || true
    local p
    for p in "${BACKEND_PIDS[@]}"; do stop_pid "$p" || true; done
    [[ -n ${KEEP_WORK:-} ]] || rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

pin() { # cpus command... : runs command (exec'd, same PID) under taskset when cpus is set
    local cpus=$1; shift
    if [[ -n $cpus ]]; then exec taskset -c "$cpus" "$@"; else exec "$@"; fi
}

# Listening ports come from below the ephemeral range: the proxies without upstream keep-alive
# open (and leave in TIME_WAIT) tens of thousands of connections from that range.
stop_pid() {
    kill -TERM "$1" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# nginx's temp paths and pid file inside dir $1 (it never buffers a 1 KiB body to disk).
nginx_paths() {
    cat <<EOF
pid $1/nginx.pid;
error_log $1/error.log warn;
EOF
}
nginx_http_paths() {
    cat <<EOF
    client_body_temp_path $1/body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
EOF
}

# ---------------------------------------------------------------- backends
# Two nginx instances, one worker each, answering every request with a fixed JSON body
# (`return` discards the request body and keeps the connection alive). stub_status gives the
# number of accepted connections, i.e. how many upstream connections a proxy opened.
BACKEND_PORTS=()
start_backend() {
    local dir port
    dir=$(mktemp -d "$WORK/backend.XXXX")
    chmod 755 "$dir"
    port=$(free_port)
    cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
$(nginx_paths "$dir")
events { worker_connections 8192; }
http {
    access_log off;
$(nginx_http_paths "$dir")
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$port backlog=4096;
        default_type application/json;
        location = /nginx_status { stub_status; }
        location / { return 200 '$BACKEND_BODY'; }
    }
}
EOF
    (pin "$PIN_BACKENDS" "$NGINX" -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf") >"$dir/stdout" 2>&1 &
    local pid=$!
    wait_port "$port" "$pid" || { cat "$dir/stdout" "$dir/error.log" >&2 2>/dev/null; die "backend nginx did not start"; }
    BACKEND_PIDS+=("$pid")
    BACKEND_PORTS+=("$port")
}
backend_accepts() { # sum of accepted connections over the backends (minus our own status requests)
    local p n t=0
    for p in "${BACKEND_PORTS[@]}"; do
        n=$(curl -s --max-time 5 "http://127.0.0.1:$p/nginx_status" | awk 'NR==3 {print $1}')
        t=$((t + ${n:-0}))
    done
    echo "$t"
}

# ---------------------------------------------------------------- proxies
start_nginx() { # keepalive 0|1
    SDIR=$(mktemp -d "$WORK/nginx.XXXX")
    chmod 755 "$SDIR"
    local port ka_up="" ka_loc="" alog="access_log off;"
    port=$(free_port)
    if [[ $1 == 1 ]]; then
        ka_up="keepalive 32;"
        ka_loc='proxy_http_version 1.1; proxy_set_header Connection "";'
    fi
    [[ $ACCESS_LOG == 1 ]] && alog="access_log $SDIR/access.log combined;"
    cat >"$SDIR/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes $NCPU;
$(nginx_paths "$SDIR")
events { worker_connections 8192; }
http {
    $alog
$(nginx_http_paths "$SDIR")
    upstream excp {
        server 127.0.0.1:${BACKEND_PORTS[0]} max_fails=0;
        server 127.0.0.1:${BACKEND_PORTS[1]} max_fails=0;
        $ka_up
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            proxy_pass http://excp/;
            proxy_next_upstream_tries 3;
            $ka_loc
        }
    }
}
EOF
    (pin "$PIN_PROXY" "$NGINX" -e "$SDIR/error.log" -p "$SDIR" -c "$SDIR/nginx.conf") >"$SDIR/stdout" 2>&1 &
    PROXY_PID=$!
    wait_port "$port" "$PROXY_PID" || { cat "$SDIR/stdout" "$SDIR/error.log" >&2 2>/dev/null; die "nginx did not start"; }
    PROXY_URL="http://127.0.0.1:$port/recordings"
}

start_exec() { # keepalive 0|1, idle connections kept (keep-alive only)
    SDIR=$(mktemp -d "$WORK/exec.XXXX")
    chmod 755 "$SDIR"
    cat >"$SDIR/exec.toml" <<EOF
[admin]
listen = "127.0.0.1:0"

[lb.pools.excp]
listen = "127.0.0.1:0"
servers = ["127.0.0.1:${BACKEND_PORTS[0]}", "127.0.0.1:${BACKEND_PORTS[1]}"]
next_upstream_tries = 3
keepalive = $([[ $1 == 1 ]] && echo true || echo false)
$([[ $1 == 1 ]] && echo "keepalive_connections = $2")
EOF
    # The access log is the `access` tracing target (one line per request at info).
    local filter=info
    [[ $ACCESS_LOG == 1 ]] || filter=info,access=off
    (export RUST_LOG=$filter; pin "$PIN_PROXY" "$EXEC_BIN" --role lb --config "$SDIR/exec.toml") \
        >"$SDIR/stdout" 2>"$SDIR/stderr" &
    PROXY_PID=$!
    local addr=""
    for _ in $(seq 300); do
        addr=$(sed -n 's/^READY .*lb\.excp=\([^ ]*\).*/\1/p' "$SDIR/stdout" | head -n1)
        [[ -n $addr ]] && break
        kill -0 "$PROXY_PID" 2>/dev/null || break
        sleep 0.05
    done
    [[ -n $addr ]] || { cat "$SDIR/stdout" "$SDIR/stderr" >&2; die "exec-allinone printed no READY line"; }
    PROXY_URL="http://$addr/recordings"
}

start_proxy() {
    PROXY_PID=""
    SDIR=""
    case "$1" in
        direct) ;;
        nginx) start_nginx 0 ;;
        nginx-ka) start_nginx 1 ;;
        exec) start_exec 0 ;;
        # nginx keeps `keepalive 32` idle connections per worker; exec-allinone's limit is
        # for the whole process, so the same total is 32 x workers (its default is 32).
        exec-ka) start_exec 1 $((32 * NCPU)) ;;
        exec-ka32) start_exec 1 32 ;;
    esac
}

# Keeps what the proxy logged above info (and a count of it) for the report, then drops its dir.
stop_proxy() {
    [[ -n ${PROXY_PID:-} ]] || return 0
    stop_pid "$PROXY_PID"
    PROXY_PID=""
    if [[ -n ${SDIR:-} && -d $SDIR ]]; then
        local f=""
        [[ -f $SDIR/stderr ]] && f=$SDIR/stderr
        [[ -f $SDIR/error.log ]] && f=$SDIR/error.log
        if [[ -n $f ]]; then
            local n
            n=$(grep -cE ' (WARN|ERROR) |\[(warn|error|crit|alert|emerg)\]' "$f" || true)
            if [[ $n -gt 0 ]]; then
                {
                    echo "== ${S:-?} rep ${REP:-?}: $n warning/error lines in $(basename "$f"), first 5:"
                    grep -E ' (WARN|ERROR) |\[(warn|error|crit|alert|emerg)\]' "$f" | head -n5
                } >>"$WORK/serverlog.txt"
            fi
            record "${S:-?}" "${REP:-?}" log_warnings "$n"
        fi
        [[ -n ${KEEP_WORK:-} ]] || rm -rf "$SDIR"
    fi
}

# CPU time (utime + stime, in clock ticks of 10 ms) summed over the process trees of the PIDs.
cpu_ticks() {
    local p q t=0 s
    for p in "$@"; do
        for q in $(tree_pids "$p"); do
            s=$(sed 's/^.*) //' "/proc/$q/stat" 2>/dev/null | awk '{print $12 + $13}') || continue
            t=$((t + ${s:-0}))
        done
    done
    echo "$t"
}

record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RAW"; }

# One measurement point: postload at concurrency $1 against $URLS; records its figures and
# the CPU the proxy and the backends used per request. postload runs in the background and is
# waited for, so that a signal stops the benchmark at once (see cleanup).
measure() {
    local c=$1 rc=0 out
    local args=()
    for u in "${URLS[@]}"; do args+=(--url "$u"); done
    local pcpu0=0 bcpu0 acc0
    [[ -n $PROXY_PID ]] && pcpu0=$(cpu_ticks "$PROXY_PID")
    bcpu0=$(cpu_ticks "${BACKEND_PIDS[@]}")
    acc0=$(backend_accepts)
    nstat -n >/dev/null 2>&1 || true
    local samples=$WORK/samples.$S.$REP
    if [[ $c == "$MAXC" && -n $PROXY_PID ]]; then
        : >"$samples"
        ( while :; do sample_tree "$PROXY_PID" >>"$samples"; sleep 0.1; done ) &
        SAMPLER_PID=$!
    fi
    (pin "$PIN_CLIENT" "$POSTLOAD" "${args[@]}" --concurrency "$c" --duration "$DURATION" --warmup "$WARMUP") \
        >"$WORK/pl.out" 2>"$WORK/pl.err" &
    PL_PID=$!
    wait "$PL_PID" || rc=$?
    PL_PID=""
    if [[ -n $SAMPLER_PID ]]; then
        sample_tree "$PROXY_PID" >>"$samples"
        kill "$SAMPLER_PID" 2>/dev/null || true
        wait "$SAMPLER_PID" 2>/dev/null || true
        SAMPLER_PID=""
        local rss hwm thr procs
        read -r rss hwm thr procs < <(awk '{ if ($1>r) r=$1; if ($2>h) h=$2; if ($3>t) t=$3; if ($4>n) n=$4 } END { print r+0, h+0, t+0, n+0 }' "$samples")
        record "$S" "$REP" peak_rss_kib "$rss"
        record "$S" "$REP" peak_threads "$thr"
        record "$S" "$REP" peak_procs "$procs"
    fi
    local pcpu1=0 bcpu1 acc1
    [[ -n $PROXY_PID ]] && pcpu1=$(cpu_ticks "$PROXY_PID")
    bcpu1=$(cpu_ticks "${BACKEND_PIDS[@]}")
    acc1=$(backend_accepts)
    # System-wide TCP counters (other work on the machine counts too): accept queue overflows
    # and SYN retransmissions show up as ~1 s latency outliers.
    local ns ovf syn
    ns=$(nstat 2>/dev/null || true)
    ovf=$(awk '$1 == "TcpExtListenOverflows" {print $2}' <<<"$ns"); syn=$(awk '$1 == "TcpExtTCPSynRetrans" {print $2}' <<<"$ns")
    record "$S" "$REP" "c$c.listen_overflows" "${ovf:-0}"
    record "$S" "$REP" "c$c.syn_retrans" "${syn:-0}"
    record "$S" "$REP" "c$c.load1" "$(cut -d' ' -f1 /proc/loadavg)"
    out=$(head -n1 "$WORK/pl.out")
    if [[ $rc != 0 || -z $out ]]; then
        log "  postload c=$c -> exit $rc: $(head -c 800 "$WORK/pl.err")"
        {
            echo "== $S rep $REP c=$c: postload exit $rc:"
            head -n 8 "$WORK/pl.err"
        } >>"$WORK/serverlog.txt"
    fi
    [[ -n $out ]] || out='{"errors":1,"requests":0,"all_requests":0,"reconnects":0,"statuses":{}}'
    local m=c$c
    local errs all
    errs=$(jq -r '.errors' <<<"$out")
    all=$(jq -r '.all_requests' <<<"$out")
    record "$S" "$REP" "$m.errors" "$errs"
    record "$S" "$REP" "$m.reconnects" "$(jq -r '.reconnects' <<<"$out")"
    record "$S" "$REP" "$m.client_cpu_pct" "$(jq -r '.client_cpu_pct // "NA"' <<<"$out")"
    jq -r --arg s "$S" --arg c "$c" '.statuses | to_entries[] | "\($s)\t\($c)\t\(.key)\t\(.value)"' <<<"$out" >>"$WORK/statuses.tsv"
    # A run with any failed request gives no figures (NA), only its error count.
    local f
    for f in req_per_s p50_us p90_us p99_us p999_us max_us; do
        if [[ $errs != 0 ]]; then record "$S" "$REP" "$m.$f" NA
        else record "$S" "$REP" "$m.$f" "$(jq -r ".$f // \"NA\"" <<<"$out")"; fi
    done
    # CPU per request over the whole postload run (warm-up included): ticks are 10 ms.
    if [[ $all -gt 0 ]]; then
        [[ -n $PROXY_PID ]] && record "$S" "$REP" "$m.proxy_cpu_us" "$(awk -v t=$((pcpu1 - pcpu0)) -v n="$all" 'BEGIN { printf "%.2f", t * 10000 / n }')"
        record "$S" "$REP" "$m.backend_cpu_us" "$(awk -v t=$((bcpu1 - bcpu0)) -v n="$all" 'BEGIN { printf "%.2f", t * 10000 / n }')"
        record "$S" "$REP" "$m.upstream_conns_per_req" "$(awk -v a=$((acc1 - acc0 - ${#BACKEND_PORTS[@]})) -v n="$all" 'BEGIN { if (a < 0) a = 0; printf "%.3f", a / n }')"
    fi
    log "  c=$c: $(jq -r '"\(.req_per_s) req/s p50 \(.p50_us) µs p99 \(.p99_us) µs p99.9 \(.p999_us) µs errors \(.errors) reconnects \(.reconnects) client CPU \(.client_cpu_pct)%"' <<<"$out")"
}

# ---------------------------------------------------------------- run
start_backend
start_backend
log "backends: 127.0.0.1:${BACKEND_PORTS[0]} 127.0.0.1:${BACKEND_PORTS[1]} (nginx, 1 worker each)"
for p in "${BACKEND_PORTS[@]}"; do
    got=$(curl -s --max-time 5 -X POST -H 'Content-Type: application/json' --data-binary @<("$POSTLOAD" --url http://x/ --print-body | tr -d '\n') "http://127.0.0.1:$p/recordings")
    [[ $got == "$BACKEND_BODY" ]] || die "backend $p answered $got"
done

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
LOAD_WARN=""
if awk -v l="${LOAD_START%% *}" -v n="$NCPU" 'BEGIN { exit !(l > 0.5 * n) }'; then
    LOAD_WARN="Warning: the machine was busy when the benchmark started (load $LOAD_START); figures may be noisy."
    log "$LOAD_WARN"
fi
log "servers: ${SERVER_LIST[*]}; concurrency: ${CONC_LIST[*]}; ${DURATION} s (+${WARMUP} s warm-up) per point; repetitions: $REPS; work dir $WORK"
BUSY_REPS=0
for REP in $(seq "$REPS"); do
    # Alternate the order so no server always runs first or last.
    order=("${SERVER_LIST[@]}")
    if (( REP % 2 == 0 )); then
        order=(); for ((i = ${#SERVER_LIST[@]} - 1; i >= 0; i--)); do order+=("${SERVER_LIST[i]}"); done
    fi
    for S in "${order[@]}"; do
        start_proxy "$S"
        if [[ $S == direct ]]; then
            URLS=("http://127.0.0.1:${BACKEND_PORTS[0]}/recordings" "http://127.0.0.1:${BACKEND_PORTS[1]}/recordings")
        else
            URLS=("$PROXY_URL")
        fi
        log "$S rep $REP: ${URLS[*]}"
        sleep 0.3
        [[ -n $PROXY_PID ]] && { idle=$(sample_tree "$PROXY_PID"); record "$S" "$REP" idle_rss_kib "${idle%% *}"; }
        for c in "${CONC_LIST[@]}"; do
            measure "$c"
        done
        stop_proxy
    done
    l=$(cut -d' ' -f1 /proc/loadavg)
    awk -v l="$l" -v n="$NCPU" 'BEGIN { exit !(l > n + 1.5) }' && BUSY_REPS=$((BUSY_REPS + 1))
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

maxof() { awk -F'\t' -v s="$1" -v m="$2" '$1==s && $3==m && $4 ~ /^[0-9.]+$/ { if (n == 0 || $4+0 > x) x = $4+0; n++ } END { print (n ? x : "NA") }' "$RAW"; }
spread() { # server metric -> (max - min) / median in %, over reps
    awk -F'\t' -v s="$1" -v m="$2" '$1==s && $3==m && $4 ~ /^[0-9.]+$/ {print $4}' "$RAW" | sort -g |
        awk '{a[NR]=$1} END { if (NR < 2) { print "–"; exit }
                              med = (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2
                              if (med == 0) print "–"; else printf "%.0f%%", 100 * (a[NR]-a[1]) / med }'
}
diff_us() { # a - b, signed
    [[ $1 == NA || $2 == NA ]] && { echo NA; return; }
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.0f", a - b }'
}
PAIRS=()
want nginx && want exec && PAIRS+=("nginx exec default (HTTP/1.0 upstream, a new upstream connection per request)")
want nginx-ka && want exec-ka && PAIRS+=("nginx-ka exec-ka keep-alive (HTTP/1.1 upstream, pooled; idle connections: 32 per nginx worker, $((32 * NCPU)) for exec-allinone)")
want nginx-ka && want exec-ka32 && PAIRS+=("nginx-ka exec-ka32 keep-alive, exec-allinone's default keepalive_connections = 32 (nginx as above)")

{
    echo "# Reverse proxy benchmark $(date '+%Y-%m-%d %H:%M')"
    echo
    vers="$NCPU cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)), Linux $(uname -r), $("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
    want_exec && vers+=", $(timeout 5 "$EXEC_BIN" --version 2>/dev/null | head -n1 || true) (commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
    echo "$vers; load average at start: $LOAD_START, at end: $LOAD_END."
    [[ -n $LOAD_WARN ]] && echo "**$LOAD_WARN**"
    [[ $BUSY_REPS -gt 0 ]] && echo "**Load average above $((NCPU + 1)).5 at the end of $BUSY_REPS of $REPS repetitions: other work shared the cores.**"
    echo
    echo "Median of $REPS run(s) of ${DURATION} s each after ${WARMUP} s of warm-up, servers interleaved$([[ $QUICK == 1 ]] && echo " (**--quick** smoke run, not comparable)")."
    echo "Load: postload (one thread), c = persistent HTTP/1.1 keep-alive connections, each sending 1 KiB JSON POSTs back to back."
    echo "Backends: 2 nginx (1 worker each) answering 200 with a 36-byte JSON body, the same two for every server."
    echo "Proxies: nginx worker_processes $NCPU, exec-allinone's default lb.workers ($NCPU worker threads, one runtime each); round robin over both"
    echo "backends, max_fails=0, next_upstream_tries 3. Access log $([[ $ACCESS_LOG == 1 ]] && echo "**on** for both proxies (one line per request to a file): the figures include logging" || echo "off for both proxies")."
    echo "CPU pinning: client ${PIN_CLIENT:-none}, proxies ${PIN_PROXY:-none}, backends ${PIN_BACKENDS:-none}: client, proxy and backends share the $NCPU cores."
    echo "Latencies in µs, client side, from sending the request to the last body byte. Ratios are exec-allinone / nginx:"
    echo "for req/s >1 is better, for p99 and CPU <1 is better."
    echo
    for pair in "${PAIRS[@]}"; do
        read -r N E mode <<<"$pair"
        echo "## $N vs $E: upstream $mode"
        echo
        echo "| c | req/s nginx | req/s exec | **req/s exec/nginx** | p50 nginx | p50 exec | p99 nginx | p99 exec | **p99 exec/nginx** | p99.9 nginx | p99.9 exec |"
        echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        for c in "${CONC_LIST[@]}"; do
            rn=$(median "$N" "c$c.req_per_s"); re=$(median "$E" "c$c.req_per_s")
            pn=$(median "$N" "c$c.p50_us"); pe=$(median "$E" "c$c.p50_us")
            qn=$(median "$N" "c$c.p99_us"); qe=$(median "$E" "c$c.p99_us")
            tn=$(median "$N" "c$c.p999_us"); te=$(median "$E" "c$c.p999_us")
            echo "| $c | $(fmt "$rn") | $(fmt "$re") | $(ratio "$re" "$rn") | $(fmt "$pn") | $(fmt "$pe") | $(fmt "$qn") | $(fmt "$qe") | $(ratio "$qe" "$qn") | $(fmt "$tn") | $(fmt "$te") |"
        done
        echo
        echo "| c | added p50 nginx | added p50 exec | added p99 nginx | added p99 exec | proxy CPU µs/req nginx | proxy CPU µs/req exec | **CPU exec/nginx** | backend CPU µs/req nginx | backend CPU µs/req exec | upstream conns/req nginx | upstream conns/req exec |"
        echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        for c in "${CONC_LIST[@]}"; do
            dp=$(median direct "c$c.p50_us"); dq=$(median direct "c$c.p99_us")
            pn=$(median "$N" "c$c.p50_us"); pe=$(median "$E" "c$c.p50_us")
            qn=$(median "$N" "c$c.p99_us"); qe=$(median "$E" "c$c.p99_us")
            cn=$(median "$N" "c$c.proxy_cpu_us"); ce=$(median "$E" "c$c.proxy_cpu_us")
            bn=$(median "$N" "c$c.backend_cpu_us"); be=$(median "$E" "c$c.backend_cpu_us")
            un=$(median "$N" "c$c.upstream_conns_per_req"); ue=$(median "$E" "c$c.upstream_conns_per_req")
            echo "| $c | $(diff_us "$pn" "$dp") | $(diff_us "$pe" "$dp") | $(diff_us "$qn" "$dq") | $(diff_us "$qe" "$dq") | $(fmt "$cn") | $(fmt "$ce") | $(ratio "$ce" "$cn") | $(fmt "$bn") | $(fmt "$be") | $un | $ue |"
        done
        echo
    done
    if want direct; then
        echo "## Backends directly (no proxy; the connections split over both)"
        echo
        echo "| c | req/s | p50 | p99 | p99.9 | backend CPU µs/req | client CPU % |"
        echo "|---:|---:|---:|---:|---:|---:|---:|"
        for c in "${CONC_LIST[@]}"; do
            echo "| $c | $(fmt "$(median direct "c$c.req_per_s")") | $(fmt "$(median direct "c$c.p50_us")") | $(fmt "$(median direct "c$c.p99_us")") | $(fmt "$(median direct "c$c.p999_us")") | $(fmt "$(median direct "c$c.backend_cpu_us")") | $(fmt "$(median direct "c$c.client_cpu_pct")") |"
        done
        echo
    fi
    echo "## Memory and threads of each proxy, errors"
    echo
    echo "| server | idle RSS MiB | peak RSS MiB (c=$MAXC) | peak threads (c=$MAXC) | processes | errors (all runs) | client reconnects | proxy warnings logged |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for s in "${SERVER_LIST[@]}"; do
        errs=0; recs=0
        for c in "${CONC_LIST[@]}"; do
            errs=$((errs + $(total "$s" "c$c.errors"))); recs=$((recs + $(total "$s" "c$c.reconnects")))
        done
        echo "| $s | $(fmt "$(median "$s" idle_rss_kib)" 1024) | $(fmt "$(median "$s" peak_rss_kib)" 1024) | $(fmt "$(median "$s" peak_threads)") | $(fmt "$(median "$s" peak_procs)") | $errs | $recs | $(total "$s" log_warnings) |"
    done
    echo
    echo "## Run conditions per server and c: spread of req/s over the repetitions ((max - min) / median), client CPU"
    echo "(max, % of one core), 1-min load average (max), TCP accept-queue overflows and SYN retransmissions (all runs, system-wide)"
    echo
    echo "| server | c | req/s spread | client CPU % | load | listen overflows | SYN retransmits |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for s in "${SERVER_LIST[@]}"; do
        for c in "${CONC_LIST[@]}"; do
            echo "| $s | $c | $(spread "$s" "c$c.req_per_s") | $(maxof "$s" "c$c.client_cpu_pct") | $(maxof "$s" "c$c.load1") | $(total "$s" "c$c.listen_overflows") | $(total "$s" "c$c.syn_retrans") |"
        done
    done
    echo
    echo "\"added\" = the proxy's median latency minus the direct run's at the same c (at c>1 it includes queueing: the load"
    echo "is closed-loop, so a slower proxy also queues more). Proxy and backend CPU: utime+stime of the process trees over"
    echo "the whole run (warm-up included) divided by all requests, 10 ms tick resolution; upstream conns/req: connections the"
    echo "backends accepted per request (stub_status). RSS and threads: /proc/PID/status summed over the proxy's process tree"
    echo "every 0.1 s during the c=$MAXC run (nginx: master + workers), largest sum kept. A run with any error reports NA for its"
    echo "figures. Client reconnects: nginx closes a client connection after keepalive_requests (1000) with"
    echo "\`Connection: close\` and postload opens a new one (not an error)."
    echo
    echo "HTTP status codes returned (all runs, warm-up included):"
    echo
    echo "| server | c | statuses |"
    echo "|---|---:|---|"
    if [[ -s $WORK/statuses.tsv ]]; then
        awk -F'\t' '{ n[$1 "\t" $2 "\t" $3] += $4 } END { for (k in n) print k "\t" n[k] }' "$WORK/statuses.tsv" | sort -t$'\t' -k1,1 -k2,2n |
            awk -F'\t' '{ k = $1 " | " $2; v[k] = v[k] (v[k] == "" ? "" : ", ") $3 " x" $4; if (!(k in seen)) { seen[k] = 1; order[++m] = k } }
                        END { for (i = 1; i <= m; i++) print "| " order[i] " | " v[order[i]] " |" }'
    fi
    if [[ -s $WORK/serverlog.txt ]]; then
        echo
        echo "Warnings and errors logged by the proxies or the client:"
        echo
        echo '```'
        cut -c1-400 "$WORK/serverlog.txt" | head -n 60
        echo '```'
    fi
} >"$WORK/report.md"

cat "$WORK/report.md"
if [[ -z $OUT ]]; then
    mkdir -p "$ROOT/bench/results"
    OUT=$ROOT/bench/results/lb-$(date +%Y-%m-%d)$( [[ $QUICK == 1 ]] && echo -quick || true ).md
fi
cp "$WORK/report.md" "$OUT"
cp "$RAW" "${OUT%.md}.raw.tsv" 2>/dev/null || true
log "written $OUT"
