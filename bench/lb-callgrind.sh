#!/usr/bin/env bash
# Instructions per proxied request of `--role lb`, counted by callgrind (steady on a busy
# machine, where seconds are not): the lb under valgrind in front of an nginx `return 200`
# backend, postload at concurrency 8 for a few seconds, then the process's whole instruction
# count divided by the requests its /metrics counted. With --before REF, the same for that
# revision built beside this tree, and the ratio.
#
#   bench/lb-callgrind.sh [--before REF] [--seconds S] [--keepalive] [--after-set 'key = value'] [--no-build]
#
# --after-set adds a line to the pool table of this tree's lb only (a key the revision before
# may not know), e.g. --after-set 'trace_requests = 0'.
#
# Loopback only; needs valgrind and nginx. Prints one markdown table.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/bench/lib.sh"
BEFORE=""
SECONDS_LOAD=5
KEEPALIVE=false
AFTER_SET=""
BUILD=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --before) BEFORE=$2; shift ;;
        --seconds) SECONDS_LOAD=$2; shift ;;
        --keepalive) KEEPALIVE=true ;;
        --after-set) AFTER_SET+="$2"$'\n'; shift ;;
        *) bench_arg "$@"; shift $((SHIFT - 1)) ;;
    esac
    shift
done
command -v valgrind >/dev/null || { log "valgrind is needed (apt-get install valgrind)"; exit 1; }
[[ -x /usr/sbin/nginx ]] || { log "nginx is needed (apt-get install nginx)"; exit 1; }
work_dir lb-callgrind

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ $BUILD == 1 ]]; then
    log "building (release)"
    (cd "$ROOT" && cargo build --release --quiet --bin exec-allinone --example postload)
fi
POSTLOAD=$TARGET/release/examples/postload
declare -A BIN=([after]=$TARGET/release/exec-allinone)
if [[ -n $BEFORE ]]; then
    log "building $BEFORE (release)"
    git -C "$ROOT" worktree add --detach "$WORK/before-src" "$BEFORE" >/dev/null 2>&1
    (cd "$WORK/before-src" && CARGO_TARGET_DIR=$WORK/before-target cargo build --release --quiet --bin exec-allinone)
    BIN[before]=$WORK/before-target/release/exec-allinone
    trap 'git -C "$ROOT" worktree remove --force "$WORK/before-src" >/dev/null 2>&1; cleanup' EXIT
fi

# The backend: nginx answering every request itself.
mkdir -p "$WORK/nginx"
BACKEND_PORT=$(free_port)
cat >"$WORK/nginx/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/body;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$BACKEND_PORT; location / { return 200 '{"status":{"code":0,"message":"OK"}}'; } }
}
CONF
/usr/sbin/nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
PIDS+=($!)
wait_port "$BACKEND_PORT" "${PIDS[-1]}"

measure() { # label binary -> "instructions requests"
    local dir=$WORK/$1
    mkdir -p "$dir"
    cat >"$dir/lb.toml" <<CONF
[admin]
listen = "127.0.0.1:0"

[lb]
workers = 1

[lb.pools.excp]
listen = "127.0.0.1:0"
servers = ["127.0.0.1:$BACKEND_PORT"]
keepalive = $KEEPALIVE
CONF
    [[ $1 == after ]] && printf '%s' "$AFTER_SET" >>"$dir/lb.toml"
    RUST_LOG=info valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
        "$2" --role lb --config "$dir/lb.toml" >"$dir/stdout" 2>"$dir/stderr" &
    local pid=$!
    local ready=""
    for _ in $(seq 600); do
        ready=$(grep -m1 '^READY' "$dir/stdout" 2>/dev/null || true)
        [[ -n $ready ]] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    [[ -n $ready ]] || { cat "$dir/stderr" >&2; log "$1: no READY line under valgrind"; exit 1; }
    local pool admin
    pool=$(grep -o 'lb\.excp=[^ ]*' <<<"$ready" | cut -d= -f2)
    admin=$(grep -o 'admin=[^ ]*' <<<"$ready" | cut -d= -f2)
    "$POSTLOAD" --url "http://$pool/api/v1/recording" --concurrency 8 --duration "$SECONDS_LOAD" --warmup 1 \
        >"$dir/postload.json"
    local requests
    requests=$(curl -s "http://$admin/metrics" | awk '/^lb_requests_total\{/ {n += $2} END {print n + 0}')
    kill -TERM "$pid"
    wait "$pid" || true
    local ir
    ir=$(callgrind_annotate "$dir/callgrind.out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !n++ {gsub(",", "", $1); print $1}')
    echo "$ir $requests"
}

printf '| binary | instructions | requests | instructions per request |\n|---|---|---|---|\n'
declare -A PER
for label in before after; do
    [[ -n ${BIN[$label]:-} ]] || continue
    log "$label: the lb under callgrind, postload c=8 for ${SECONDS_LOAD}s (keepalive=$KEEPALIVE)"
    read -r ir requests < <(measure "$label" "${BIN[$label]}")
    PER[$label]=$(awk -v i="$ir" -v r="$requests" 'BEGIN {printf "%.0f", (r > 0) ? i / r : 0}')
    printf '| %s | %s | %s | %s |\n' "$label" "$ir" "$requests" "${PER[$label]}"
done
if [[ -n ${PER[before]:-} ]]; then
    awk -v a="${PER[after]}" -v b="${PER[before]}" 'BEGIN {printf "\nafter / before: %.3f\n", (b > 0) ? a / b : 0}'
fi
