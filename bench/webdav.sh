#!/usr/bin/env bash
# WebDAV benchmark: Apache 2.4 mod_dav_fs vs nginx dav(+dav-ext) vs exec-allinone --role webdav.
#
#   bench/webdav.sh [--quick] [--reps N] [--servers LIST] [--fresh-fs] [--no-build] [--out FILE]
#
#   --quick          short smoke run (small counts, 1 repetition, 100 slow uploads over 3 s)
#   --reps N         repetitions per measurement (default 3; the median is reported)
#   --servers LIST   comma list of apache,nginx,exec,exec-nofsync (default: all four;
#                    "exec" is exec-allinone with fsync = true, "exec-nofsync" with fsync = false)
#   --fresh-fs       every server start gets its own new ext4 file system (a sparse 8 GiB image,
#                    mkfs.ext4, loop-mounted; needs root): small-PUT rates depend on how worn the
#                    file system's inode tables are (bench/README.md), this compares like with like
#   --no-build       do not run cargo; use $DAVLOAD / $EXEC_BIN or existing target/release files
#   --out FILE       where to write the markdown table (default bench/results/webdav-<date>.md)
#
# Environment: DAVLOAD=/path/to/davload, EXEC_BIN=/path/to/exec-allinone override the
# binaries (and skip building them); TMPDIR picks where the fresh data dirs go (keep it on a
# real disk, not tmpfs, or fsync numbers mean nothing); KEEP_WORK=1 keeps the work dir;
# APACHE_LOGLEVEL sets Apache's LogLevel (default warn).
#
# Everything runs on 127.0.0.1 only; every server gets a fresh data dir per start and all
# processes are stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/bench/lib.sh"
QUICK=0
REPS=3
SERVERS="apache,nginx,exec,exec-nofsync"
BUILD=1
OUT=""
FRESH_FS=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --reps) REPS=$2; shift ;;
        --servers) SERVERS=$2; shift ;;
        --fresh-fs) FRESH_FS=1 ;;
        *) bench_arg "$@"; shift $((SHIFT - 1)) ;;
    esac
    shift
done
IFS=, read -r -a SERVER_LIST <<<"$SERVERS"

# ---------------------------------------------------------------- parameters
if [[ $QUICK == 1 ]]; then
    [[ $REPS == 3 ]] && REPS=1
    N_PUT64_C1=200;  N_PUT64_C64=500;  N_PUT1M_C1=50; N_PUT1M_C64=100
    PF_FILES=1000;   PF_REQS=5
    HOLD_N=100;      HOLD_SECS=3
else
    N_PUT64_C1=3000; N_PUT64_C64=8000; N_PUT1M_C1=500; N_PUT1M_C64=1000
    PF_FILES=1000;   PF_REQS=30
    HOLD_N=1000;     HOLD_SECS=10
fi
BENCH_USER=bench
BENCH_PASS=bench-pw-$$

want() { [[ ",$SERVERS," == *",$1,"* ]]; }
want_exec() { want exec || want exec-nofsync; }

# ---------------------------------------------------------------- packages
need_pkgs=()
command -v jq >/dev/null || need_pkgs+=(jq)
command -v pgrep >/dev/null || need_pkgs+=(procps)
command -v htpasswd >/dev/null || need_pkgs+=(apache2-utils)
if want apache; then
    [[ -x /usr/sbin/apache2 && -f /usr/lib/apache2/modules/mod_dav_fs.so ]] || need_pkgs+=(apache2)
fi
if want nginx; then
    command -v nginx >/dev/null || need_pkgs+=(nginx)
    [[ -f /usr/lib/nginx/modules/ngx_http_dav_ext_module.so ]] || need_pkgs+=(libnginx-mod-http-dav-ext)
fi
if [[ ${#need_pkgs[@]} -gt 0 ]]; then
    log "installing ${need_pkgs[*]}"
    [[ $(id -u) == 0 ]] || die "need root to apt-get install ${need_pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
# Debian starts the packaged services on install; they listen on :80 but are not used here.

# 1000 slow uploads need >1000 fds in the client and in each server.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[[ $(ulimit -n) -ge $((2 * HOLD_N + 256)) ]] || die "ulimit -n is $(ulimit -n); need $((2 * HOLD_N + 256))"

# ---------------------------------------------------------------- build
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
DAVLOAD=${DAVLOAD:-}
EXEC_BIN=${EXEC_BIN:-}
if [[ $BUILD == 1 ]]; then
    args=()
    [[ -z $DAVLOAD ]] && args+=(--example davload)
    want_exec && [[ -z $EXEC_BIN ]] && args+=(--bin exec-allinone)
    if [[ ${#args[@]} -gt 0 ]]; then
        log "cargo build --release ${args[*]}"
        (cd "$ROOT" && cargo build --release "${args[@]}") ||
            die "cargo build failed (try --servers apache,nginx with DAVLOAD=... to bench only the references)"
    fi
fi
DAVLOAD=${DAVLOAD:-$TARGET/release/examples/davload}
EXEC_BIN=${EXEC_BIN:-$TARGET/release/exec-allinone}
[[ -x $DAVLOAD ]] || die "no davload at $DAVLOAD"
if want_exec; then [[ -x $EXEC_BIN ]] || die "no exec-allinone at $EXEC_BIN"; fi

# ---------------------------------------------------------------- work dir, cleanup
WORK=$(mktemp -d "${TMPDIR:-/tmp}/webdav-bench.XXXXXX")
chmod 755 "$WORK"
RAW=$WORK/raw.tsv          # server  rep  metric  value
: >"$RAW"
SERVER_PID=""
SAMPLER_PID=""
cleanup() {
    local rc=$?
    [[ -n ${DL_PID:-} ]] && kill "$DL_PID" 2>/dev/null || true
    [[ -n ${SAMPLER_PID:-} ]] && kill "$SAMPLER_PID" 2>/dev/null || true
    stop_server || true
    unmount_dir
    [[ -n ${KEEP_WORK:-} ]] || rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

RUN_AS=""
if [[ $(id -u) == 0 ]]; then RUN_AS=www-data; id "$RUN_AS" >/dev/null 2>&1 || RUN_AS=nobody; fi
RUN_GROUP=$( [[ -n $RUN_AS ]] && id -gn "$RUN_AS" || true )

htpasswd -cbm "$WORK/htpasswd" "$BENCH_USER" "$BENCH_PASS" 2>/dev/null
chmod 644 "$WORK/htpasswd"

# Listen ports below the ephemeral range: a port the client or a server is using for an
# outgoing connection (or that sits in TIME_WAIT) cannot be bound, and davload makes many.

# Fresh data dir for one server start: $SDIR/{data/recordings,run}
MOUNTED=""
new_dir() {
    SDIR=$(mktemp -d "$WORK/$1.XXXX")
    if [[ $FRESH_FS == 1 ]]; then
        truncate -s 8G "$SDIR.img"
        mkfs.ext4 -q -F "$SDIR.img"
        mount -o loop "$SDIR.img" "$SDIR"
        MOUNTED=$SDIR
    fi
    chmod 755 "$SDIR"
    mkdir -p "$SDIR/data/recordings" "$SDIR/run"
    [[ -n $RUN_AS ]] && chown -R "$RUN_AS:$RUN_GROUP" "$SDIR/data" "$SDIR/run"
    return 0
}

start_apache() {
    new_dir apache
    local port m=/usr/lib/apache2/modules
    port=$(free_port)
    cat >"$SDIR/apache2.conf" <<EOF
ServerRoot $SDIR/run
ServerName 127.0.0.1
Listen 127.0.0.1:$port
PidFile $SDIR/run/httpd.pid
ErrorLog $SDIR/run/error.log
LogLevel ${APACHE_LOGLEVEL:-warn}
${RUN_AS:+User $RUN_AS}
${RUN_AS:+Group $RUN_GROUP}
LoadModule mpm_event_module $m/mod_mpm_event.so
LoadModule authn_core_module $m/mod_authn_core.so
LoadModule authn_file_module $m/mod_authn_file.so
LoadModule authz_core_module $m/mod_authz_core.so
LoadModule authz_user_module $m/mod_authz_user.so
LoadModule auth_basic_module $m/mod_auth_basic.so
LoadModule alias_module $m/mod_alias.so
LoadModule dav_module $m/mod_dav.so
LoadModule dav_fs_module $m/mod_dav_fs.so
# Debian's defaults (Timeout, KeepAlive*), except the MPM sizing: 64 threads per child so
# that one child can serve all 64 benchmark connections (with 25, a child whose workers are
# all busy closes its idle keep-alive connections, which makes clients race and fail
# requests), and MaxRequestWorkers raised so that $HOLD_N slow uploads run at once
# (Debian's 150 would queue the rest: mpm_event holds a thread for each request body).
Timeout 300
KeepAlive On
MaxKeepAliveRequests 100
KeepAliveTimeout 5
StartServers 2
ThreadLimit 64
ThreadsPerChild 64
MinSpareThreads 25
MaxSpareThreads 256
ServerLimit $(( (HOLD_N + 63) / 64 + 1 ))
MaxRequestWorkers $(( ((HOLD_N + 63) / 64 + 1) * 64 ))
MaxConnectionsPerChild 0
DavLockDB $SDIR/run/DavLock
Alias /recordings $SDIR/data/recordings
<Directory $SDIR/data/recordings>
    DAV On
    AuthType Basic
    AuthName "recordings"
    AuthUserFile $WORK/htpasswd
    Require valid-user
    LimitRequestBody 0
</Directory>
EOF
    apache2 -f "$SDIR/apache2.conf" -DFOREGROUND >"$SDIR/stdout" 2>&1 &
    SERVER_PID=$!
    wait_port "$port" "$SERVER_PID" || { cat "$SDIR/stdout" "$SDIR/run/error.log" >&2 2>/dev/null; die "apache did not start"; }
    SERVER_URL="http://127.0.0.1:$port/recordings/bench"
}

start_nginx() {
    new_dir nginx
    local port
    port=$(free_port)
    mkdir -p "$SDIR/data/tmp"   # body temp on the same file system as the files
    [[ -n $RUN_AS ]] && chown "$RUN_AS:$RUN_GROUP" "$SDIR/data/tmp"
    cat >"$SDIR/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_http_dav_ext_module.so;
daemon off;
master_process on;
worker_processes auto;
worker_rlimit_nofile 65536;
${RUN_AS:+user $RUN_AS $RUN_GROUP;}
pid $SDIR/run/nginx.pid;
error_log $SDIR/run/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    client_body_temp_path $SDIR/data/tmp/body;
    proxy_temp_path $SDIR/run/proxy;
    fastcgi_temp_path $SDIR/run/fastcgi;
    uwsgi_temp_path $SDIR/run/uwsgi;
    scgi_temp_path $SDIR/run/scgi;
    server {
        listen 127.0.0.1:$port;
        server_name localhost;
        location /recordings/ {
            root $SDIR/data;
            dav_methods PUT DELETE MKCOL COPY MOVE;
            dav_ext_methods PROPFIND OPTIONS;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
            client_max_body_size 0;
            auth_basic "recordings";
            auth_basic_user_file $WORK/htpasswd;
        }
    }
}
EOF
    nginx -e "$SDIR/run/error.log" -p "$SDIR/run" -c "$SDIR/nginx.conf" >"$SDIR/stdout" 2>&1 &
    SERVER_PID=$!
    wait_port "$port" "$SERVER_PID" || { cat "$SDIR/stdout" "$SDIR/run/error.log" >&2 2>/dev/null; die "nginx did not start"; }
    SERVER_URL="http://127.0.0.1:$port/recordings/bench"
}

start_exec() { # fsync true|false
    new_dir "exec-fsync-$1"
    cat >"$SDIR/exec.toml" <<EOF
[admin]
listen = "127.0.0.1:0"
[webdav]
listen = "127.0.0.1:0"
prefix = "/recordings"
root = "$SDIR/data/recordings"
htpasswd = "$WORK/htpasswd"
fsync = $1
EOF
    "$EXEC_BIN" --role webdav --config "$SDIR/exec.toml" >"$SDIR/stdout" 2>"$SDIR/stderr" &
    SERVER_PID=$!
    local addr=""
    for _ in $(seq 300); do
        addr=$(sed -n 's/^READY .*webdav=\([^ ]*\).*/\1/p' "$SDIR/stdout" | head -n1)
        [[ -n $addr ]] && break
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.05
    done
    [[ -n $addr ]] || { cat "$SDIR/stdout" "$SDIR/stderr" >&2; die "exec-allinone printed no READY line"; }
    SERVER_URL="http://$addr/recordings/bench"
}

# The fresh file system of the last server start, if any: unmounted and its image removed.
unmount_dir() {
    [[ -n $MOUNTED ]] || return 0
    umount "$MOUNTED" 2>/dev/null || umount -l "$MOUNTED" 2>/dev/null || true
    rm -f "$MOUNTED.img"
    MOUNTED=""
}

start_server() {
    case "$1" in
        apache) start_apache ;;
        nginx) start_nginx ;;
        exec) start_exec true ;;
        exec-nofsync) start_exec false ;;
        *) die "unknown server $1" ;;
    esac
}

stop_server() {
    [[ -n ${SERVER_PID:-} ]] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    unmount_dir
}


record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RAW"; }

# dl MODE-ARGS...: runs davload against $URL and leaves its JSON line in $DL_OUT; records
# errors, retries and status codes; never fails the script. davload runs in the background
# and is waited for, so that a signal stops the benchmark at once (see cleanup).
DL_PID=""
DL_OUT=""
dl() {
    local rc=0
    "$DAVLOAD" --url "$URL" --user "$BENCH_USER" --password "$BENCH_PASS" "$@" >"$WORK/dl.out" 2>"$WORK/dl.err" &
    DL_PID=$!
    wait "$DL_PID" || rc=$?
    DL_PID=""
    DL_OUT=$(head -n1 "$WORK/dl.out")
    if [[ $rc != 0 || -z $DL_OUT ]]; then
        log "  davload $* -> exit $rc: $(head -c 600 "$WORK/dl.err")"
    fi
    [[ -n $DL_OUT ]] || DL_OUT='{"errors":1,"retries":0,"requests_per_s":null,"mb_per_s":null,"p50_ms":null,"p99_ms":null,"statuses":{}}'
    record "$S" "$REP" errors "$(jq -r '.errors' <<<"$DL_OUT")"
    record "$S" "$REP" retries "$(jq -r '.retries // 0' <<<"$DL_OUT")"
    jq -r --arg s "$S" --arg m "$1" '.statuses | to_entries[] | "\($s)\t\($m)\t\(.key)\t\(.value)"' <<<"$DL_OUT" >>"$WORK/statuses.tsv"
}
# run one measured davload and record fields: metric-prefix field... -- davload args
measure() {
    local name=$1; shift
    local fields=()
    while [[ $1 != -- ]]; do fields+=("$1"); shift; done
    shift
    local out f
    sync   # flush the previous phase's dirty pages so they do not land in this one
    dl "$@"
    out=$DL_OUT
    # A run with any failed request gives no figures (NA), only its error count.
    local bad
    bad=$(jq -r '.errors != 0' <<<"$out")
    for f in "${fields[@]}"; do
        if [[ $bad == true ]]; then record "$S" "$REP" "$name.$f" NA
        else record "$S" "$REP" "$name.$f" "$(jq -r ".$f // \"NA\"" <<<"$out")"; fi
    done
    log "  $name: $(jq -r '"\(.requests_per_s) req/s \(.mb_per_s) MB/s p50 \(.p50_ms) ms p99 \(.p99_ms) ms errors \(.errors) retries \(.retries)"' <<<"$out")"
}

bench_throughput() {
    start_server "$S"
    log "$S rep $REP: $SERVER_URL"
    local K=64KiB M=1MiB
    URL=$SERVER_URL/a/ measure put64_c1 requests_per_s mb_per_s p50_ms p99_ms -- put --size $K --count $N_PUT64_C1 --concurrency 1
    URL=$SERVER_URL/b/ measure put64_c64 requests_per_s mb_per_s p50_ms p99_ms -- put --size $K --count $N_PUT64_C64 --concurrency 64
    URL=$SERVER_URL/b/ measure get64_c64 requests_per_s mb_per_s p50_ms p99_ms -- get --size $K --count $N_PUT64_C64 --concurrency 64
    URL=$SERVER_URL/c/ measure put1m_c1 requests_per_s mb_per_s p50_ms p99_ms -- put --size $M --count $N_PUT1M_C1 --concurrency 1
    URL=$SERVER_URL/d/ measure put1m_c64 requests_per_s mb_per_s p50_ms p99_ms -- put --size $M --count $N_PUT1M_C64 --concurrency 64
    URL=$SERVER_URL/d/ measure get1m_c64 requests_per_s mb_per_s p50_ms p99_ms -- get --size $M --count $N_PUT1M_C64 --concurrency 64
    URL=$SERVER_URL/b/ measure delete_c64 requests_per_s p50_ms p99_ms -- delete --count $N_PUT64_C64 --concurrency 64
    URL=$SERVER_URL/pf/ dl put --size 4KiB --count $PF_FILES --concurrency 16
    URL=$SERVER_URL/pf/ measure propfind requests_per_s p50_ms p99_ms -- propfind --count $PF_FILES --requests $PF_REQS --concurrency 1
    stop_server
    rm -rf "$SDIR"
}

bench_hold() {
    start_server "$S"
    sleep 0.5
    local idle
    idle=$(sample_tree "$SERVER_PID")
    record "$S" "$REP" idle_rss_kib "$(cut -d' ' -f1 <<<"$idle")"
    record "$S" "$REP" idle_threads "$(cut -d' ' -f3 <<<"$idle")"
    local samples=$WORK/samples.$S.$REP
    : >"$samples"
    ( while :; do sample_tree "$SERVER_PID" >>"$samples"; sleep 0.1; done ) &
    SAMPLER_PID=$!
    URL=$SERVER_URL/hold/ measure hold requests_per_s p50_ms p99_ms -- hold --size 1MiB --count $HOLD_N --duration $HOLD_SECS
    sample_tree "$SERVER_PID" >>"$samples"
    kill "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=""
    read -r rss hwm thr procs < <(awk '{ if ($1>r) r=$1; if ($2>h) h=$2; if ($3>t) t=$3; if ($4>n) n=$4 } END { print r+0, h+0, t+0, n+0 }' "$samples")
    record "$S" "$REP" peak_rss_kib "$rss"
    record "$S" "$REP" hwm_kib "$hwm"
    record "$S" "$REP" peak_threads "$thr"
    record "$S" "$REP" peak_procs "$procs"
    log "  hold: idle $idle -> peak rss ${rss} KiB, VmHWM sum ${hwm} KiB, threads $thr, processes $procs"
    stop_server
    rm -rf "$SDIR"
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
LOAD_WARN=""
if awk -v l="${LOAD_START%% *}" -v n="$(nproc)" 'BEGIN { exit !(l > 0.5 * n) }'; then
    LOAD_WARN="Warning: the machine was busy when the benchmark started (load $LOAD_START); figures may be noisy."
    log "$LOAD_WARN"
fi
log "servers: ${SERVER_LIST[*]}; repetitions: $REPS; work dir $WORK"
for REP in $(seq "$REPS"); do
    for S in "${SERVER_LIST[@]}"; do
        bench_throughput
        bench_hold
    done
done

label() {
    case "$1" in
        apache) echo "Apache mod_dav" ;; nginx) echo "nginx dav" ;;
        exec) echo "exec-allinone fsync" ;; exec-nofsync) echo "exec-allinone no-fsync" ;;
    esac
}
ROWS=(
    "PUT 64 KiB, c=1: req/s|put64_c1.requests_per_s|1|higher"
    "PUT 64 KiB, c=1: p50 ms|put64_c1.p50_ms|1|lower"
    "PUT 64 KiB, c=64: req/s|put64_c64.requests_per_s|1|higher"
    "PUT 64 KiB, c=64: p99 ms|put64_c64.p99_ms|1|lower"
    "PUT 1 MiB, c=1: MB/s|put1m_c1.mb_per_s|1|higher"
    "PUT 1 MiB, c=64: MB/s|put1m_c64.mb_per_s|1|higher"
    "PUT 1 MiB, c=64: p99 ms|put1m_c64.p99_ms|1|lower"
    "GET 64 KiB, c=64: req/s|get64_c64.requests_per_s|1|higher"
    "GET 1 MiB, c=64: MB/s|get1m_c64.mb_per_s|1|higher"
    "PROPFIND depth 1, $PF_FILES files: p50 ms|propfind.p50_ms|1|lower"
    "DELETE 64 KiB files, c=64: req/s|delete_c64.requests_per_s|1|higher"
    "idle RSS MiB|idle_rss_kib|1024|lower"
    "peak RSS MiB, $HOLD_N slow 1 MiB PUTs|peak_rss_kib|1024|lower"
    "sum of VmHWM MiB, same|hwm_kib|1024|lower"
    "idle threads|idle_threads|1|lower"
    "peak threads, $HOLD_N slow PUTs|peak_threads|1|lower"
    "slow PUTs: p50 s (ideal ${HOLD_SECS})|hold.p50_ms|1000|lower"
)
REF=()
want apache && REF+=(apache)
want nginx && REF+=(nginx)
EXECS=()
want exec && EXECS+=(exec)
want exec-nofsync && EXECS+=(exec-nofsync)

{
    echo "# WebDAV benchmark $(date '+%Y-%m-%d %H:%M')"
    echo
    vers="$(nproc) cores, Linux $(uname -r)"
    want apache && vers+=", $(apache2 -v 2>/dev/null | sed -n 's/^Server version: //p')"
    want nginx && vers+=", $(nginx -v 2>&1 | sed 's/^nginx version: //')"
    want_exec && vers+=", $(timeout 5 "$EXEC_BIN" --version 2>/dev/null | head -n1 || true)"
    echo "$vers; load average at start: $LOAD_START."
    [[ -n $LOAD_WARN ]] && echo "**$LOAD_WARN**"
    [[ $FRESH_FS == 1 ]] && echo "Each server start had its own new ext4 file system (8 GiB sparse image, loop-mounted, \`--fresh-fs\`)."
    echo "Median of $REPS run(s)$([[ $QUICK == 1 ]] && echo " (**--quick** smoke run: small counts, not comparable)"). c = concurrency; MB = 10^6 bytes;"
    echo "ratios are exec-allinone / reference (for 'higher' rows >1 is better, for 'lower' rows <1 is better)."
    echo
    hdr="| figure | better |"; sep="|---|---|"
    for s in "${SERVER_LIST[@]}"; do hdr+=" $(label "$s") |"; sep+="---:|"; done
    for e in "${EXECS[@]}"; do for r in "${REF[@]}"; do
        hdr+=" $([[ $e == exec ]] && echo fsync || echo no-fsync)/$([[ $r == apache ]] && echo Apache || echo nginx) |"; sep+="---:|"
    done; done
    echo "$hdr"; echo "$sep"
    for row in "${ROWS[@]}"; do
        IFS='|' read -r title metric scale better <<<"$row"
        line="| $title | $better |"
        declare -A med=()
        for s in "${SERVER_LIST[@]}"; do
            med[$s]=$(median "$s" "$metric")
            line+=" $(fmt "${med[$s]}" "$scale") |"
        done
        for e in "${EXECS[@]}"; do for r in "${REF[@]}"; do
            line+=" $(ratio "${med[$e]}" "${med[$r]}") |"
        done; done
        unset med
        echo "$line"
    done
    line="| request errors (all runs) | 0 |"
    for s in "${SERVER_LIST[@]}"; do line+=" $(total "$s" errors) |"; done
    for e in "${EXECS[@]}"; do for r in "${REF[@]}"; do line+=" |"; done; done
    echo "$line"
    line="| keep-alive retries (all runs) | lower |"
    for s in "${SERVER_LIST[@]}"; do line+=" $(total "$s" retries) |"; done
    for e in "${EXECS[@]}"; do for r in "${REF[@]}"; do line+=" |"; done; done
    echo "$line"
    echo
    echo "Counts per run: PUT 64 KiB $N_PUT64_C1 (c=1) / $N_PUT64_C64 (c=64); PUT 1 MiB $N_PUT1M_C1 (c=1) / $N_PUT1M_C64 (c=64);"
    echo "GET and DELETE re-use the c=64 files; PROPFIND $PF_REQS requests at c=1; $HOLD_N uploads of 1 MiB each sent over ${HOLD_SECS} s."
    echo "Apache: mpm_event, 64 threads per child, MaxRequestWorkers raised to fit $HOLD_N uploads; nginx: worker_processes auto."
    echo "Errors are requests that failed a check (status, body, entry count) or the connection; keep-alive retries are"
    echo "requests davload re-sent because the server closed a pooled keep-alive connection under them (not errors)."
    echo
    echo "HTTP status codes returned (all runs, per server and davload mode):"
    echo
    echo "| server | mode | statuses |"
    echo "|---|---|---|"
    if [[ -s $WORK/statuses.tsv ]]; then
        awk -F'\t' '{ n[$1 "\t" $2 "\t" $3] += $4 } END { for (k in n) print k "\t" n[k] }' "$WORK/statuses.tsv" | sort |
            awk -F'\t' '{ k = $1 " | " $2; v[k] = v[k] (v[k] == "" ? "" : ", ") $3 " x" $4; if (!(k in seen)) { seen[k] = 1; order[++m] = k } }
                        END { for (i = 1; i <= m; i++) print "| " order[i] " | " v[order[i]] " |" }'
    fi
} >"$WORK/report.md"

cat "$WORK/report.md"
if [[ -z $OUT ]]; then
    mkdir -p "$ROOT/bench/results"
    OUT=$ROOT/bench/results/webdav-$(date +%Y-%m-%d)$( [[ $QUICK == 1 ]] && echo -quick || true ).md
fi
cp "$WORK/report.md" "$OUT"
log "written $OUT"
