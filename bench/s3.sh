#!/usr/bin/env bash
# Cost of the store on a bucket: the webdav role on Garage against Garage's own S3 rate for the
# same objects (the engine's limit) and against the webdav role on local disk, in one run.
#
#   bench/s3.sh [--reps N] [--quick] [--no-build] [--out FILE]
#
#   --reps N     repetitions, targets interleaved (default 3; medians are reported)
#   --quick      small counts, one repetition (a smoke run; figures are not for comparing)
#   --no-build   use the existing target/release files
#   --out FILE   write the report there too (default bench/results/s3-<date>.md)
#
# Starts a 3-node Garage cluster (replication factor 3) on loopback ports 24400-24408, our
# webdav role on its bucket ([webdav.s3], key prefix "recordings", all three nodes given) and our
# webdav role on a local directory (fsync on, as deployed), each on a port of its own. Then
# examples/davload (which checks every answer, GETs byte for byte) runs against each:
#
#   garage   S3 straight to node 0 (davload --s3-key: SigV4, unsigned payload, as our client)
#   s3role   WebDAV to the role on the bucket (Basic auth), which writes through to Garage
#   disk     WebDAV to the role on local disk
#
# What: PUT 64 KiB at c=1 and c=64, GET of the c=64 files at c=64, PUT 1 MiB at c=16, DELETE of
# the 64 KiB files at c=64; req/s and p99 per target, medians over the reps, and the ratios
# s3role/garage (what the role costs on top of the engine) and s3role/disk (what the bucket
# costs against one disk). Client, engine and servers share this machine's cores.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/bench/lib.sh"
BUILD=1
OUT=""
REPS=3
QUICK=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reps) REPS=$2; shift ;;
        --quick) QUICK=1; REPS=1 ;;
        *) bench_arg "$@"; shift $((SHIFT - 1)) ;;
    esac
    shift
done
N1=200 N64=2000 NBIG=200
[[ $QUICK == 1 ]] && { N1=20; N64=200; NBIG=20; }
OUT=${OUT:-$ROOT/bench/results/s3-$(date +%F).md}
need_garage
command -v jq >/dev/null || die "jq is needed (apt-get install jq)"
for port in $(seq 24400 24408); do port_busy "$port" && die "port $port is in use"; done
if [[ $BUILD == 1 ]]; then
    log "building (release)"
    (cd "$ROOT" && cargo build --release --quiet --bin exec-allinone --example davload)
fi
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release/exec-allinone
DAVLOAD=$TARGET/release/examples/davload

work_dir s3bench
RAW=$WORK/raw.tsv
: >"$RAW"
start_garage 24400 bench
log "garage: 3 nodes, bucket bench"
start_store
DISK=$STORE
cat >"$WORK/s3role.toml" <<EOF
[admin]
listen = "127.0.0.1:0"
[webdav]
listen = "127.0.0.1:0"
htpasswd = "$WORK/store/htpasswd"
[webdav.s3]
endpoint = ["${GARAGE_ENDPOINTS[0]}", "${GARAGE_ENDPOINTS[1]}", "${GARAGE_ENDPOINTS[2]}"]
region = "garage"
bucket = "bench"
key_prefix = "recordings"
access_key_id = "$GARAGE_KEY_ID"
secret_access_key = "$GARAGE_KEY_SECRET"
EOF
start s3role "$BIN" --role webdav --config "$WORK/s3role.toml"
S3ROLE="http://$(addr s3role webdav)/recordings"

# davload_on TARGET REP MODE ARGS...: one run against TARGET, its figures into $RAW.
davload_on() {
    local target=$1 rep=$2 what=$3
    shift 3
    local url auth=()
    case $target in
        garage) url="${GARAGE_ENDPOINTS[0]}/bench/direct/"
                auth=(--s3-key "$GARAGE_KEY_ID" --s3-secret "$GARAGE_KEY_SECRET") ;;
        s3role) url="$S3ROLE/"; auth=(--user mcp --password secret1) ;;
        disk) url="$DISK/"; auth=(--user mcp --password secret1) ;;
    esac
    local json
    if ! json=$("$DAVLOAD" --url "$url" "${auth[@]}" "$@" 2>>"$WORK/davload.log"); then
        log "$target $what: davload reported errors (see below)"
        tail -5 "$WORK/davload.log" >&2
        printf '%s\t%s\t%s_rps\tNA\n%s\t%s\t%s_p99\tNA\n' "$target" "$rep" "$what" "$target" "$rep" "$what" >>"$RAW"
        return 0
    fi
    printf '%s\t%s\t%s_rps\t%s\n' "$target" "$rep" "$what" "$(jq -r .requests_per_s <<<"$json")" >>"$RAW"
    printf '%s\t%s\t%s_p99\t%s\n' "$target" "$rep" "$what" "$(jq -r .p99_ms <<<"$json")" >>"$RAW"
}

# Files at the top of the collection, as MCP writes them (a file in a sub-collection costs the
# S3-backed role a look at its parent first); names differ per repetition.
for rep in $(seq 1 "$REPS"); do
    for target in garage s3role disk; do
        log "rep $rep/$REPS: $target"
        davload_on "$target" "$rep" put64_c1 --name a$rep- --size 64KiB --count $N1 --concurrency 1 put
        davload_on "$target" "$rep" put64_c64 --name b$rep- --size 64KiB --count $N64 --concurrency 64 put
        davload_on "$target" "$rep" get64_c64 --name b$rep- --size 64KiB --count $N64 --concurrency 64 get
        davload_on "$target" "$rep" put1m_c16 --name c$rep- --size 1MiB --count $NBIG --concurrency 16 put
        davload_on "$target" "$rep" delete_c64 --name b$rep- --size 64KiB --count $N64 --concurrency 64 delete
    done
done

row() { # label metric
    local g s d
    g=$(median garage "$2") s=$(median s3role "$2") d=$(median disk "$2")
    echo "| $1 | $(fmt "$g") | $(fmt "$s") | $(fmt "$d") | $(ratio "$s" "$g") | $(ratio "$s" "$d") |"
}
REPORT=$(
    echo "# The store on a bucket: cost, $(date '+%Y-%m-%d %H:%M')"
    echo
    echo "\`bench/s3.sh\` (reps $REPS, medians) on $(nproc) cores, $(uname -sr), exec-allinone commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'),"
    echo "Garage $("$GARAGE" --version 2>/dev/null | awk '{print $2; exit}') (3 nodes on this machine, replication 3, sqlite metadata), disk store on $(df -T "$WORK" | awk 'NR==2 {print $2}');"
    echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg). Counts: $N1 PUTs at c=1, $N64 at c=64 (then GET and DELETE of those), $NBIG 1 MiB PUTs."
    echo
    echo "| req/s (higher is better) | garage (S3) | s3role | disk | s3role / garage | s3role / disk |"
    echo "|---|---:|---:|---:|---:|---:|"
    row "PUT 64 KiB, c=1" put64_c1_rps
    row "PUT 64 KiB, c=64" put64_c64_rps
    row "GET 64 KiB, c=64" get64_c64_rps
    row "PUT 1 MiB, c=16" put1m_c16_rps
    row "DELETE, c=64" delete_c64_rps
    echo
    echo "| p99 ms (lower is better) | garage (S3) | s3role | disk | s3role / garage | s3role / disk |"
    echo "|---|---:|---:|---:|---:|---:|"
    row "PUT 64 KiB, c=1" put64_c1_p99
    row "PUT 64 KiB, c=64" put64_c64_p99
    row "GET 64 KiB, c=64" get64_c64_p99
    row "PUT 1 MiB, c=16" put1m_c16_p99
    row "DELETE, c=64" delete_c64_p99
    echo
    echo "A WebDAV PUT on the bucket is one S3 PUT plus a HEAD of the parent collection when the file"
    echo "is not at the top; a DELETE is a HEAD (S3 does not say whether the key was there) and a DELETE;"
    echo "a GET is a HEAD and the GET (a ranged one after a seek, of the same version). A new file costs one
listing before its PUT (dav-server looks it up first)."
)
echo "$REPORT"
mkdir -p "$(dirname "$OUT")"
echo "$REPORT" >"$OUT"
log "report written to $OUT"
