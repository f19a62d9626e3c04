#!/usr/bin/env bash
# End-to-end benchmark: `simulate` drives calls through the `--role all` sandbox as a new user
# runs it (MCP's PUTs to the store, metadata and call ends through the lb to excp, excp to exrp
# through the lb, exrp fetching, checking, delivering and deleting), and reports recordings per
# second, delivery p50/p99 and the connections exrp opened to the store and to the cloud per
# recording. With --before REF the same run is made with the binary built from REF first, so
# both sit in one report on one machine.
#
#   bench/e2e.sh [--calls N] [--concurrency C] [--runs R] [--before REF] [--no-build] [--out FILE]
#
#   --calls N        calls per run (default 2000; 2 recordings each)
#   --concurrency C  calls in flight (default 64)
#   --runs R         runs of each binary and sink, before and after alternating (default 3);
#                    the summary gives medians and the after/before ratio
#   --before REF     also build and run this git revision (in a worktree under $TMPDIR;
#                    BEFORE_TARGET=DIR keeps its target directory between runs)
#   --no-build       use the existing target/release files
#   --out FILE       markdown report (default bench/results/e2e-<date>.md)
#
# Runs: the embedded sandbox (local sink), and the sandbox's config with the fake Genesys Cloud
# (examples/fakecloud) as the sink, so the cloud's connections count too. The sandbox binds
# its fixed ports (8000, 3650, 8080, 9650, 13650, 18080): nothing else may hold them.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/bench/lib.sh"
CALLS=2000
CONC=64
RUNS=3
BEFORE=""
BUILD=1
OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --calls) CALLS=$2; shift ;;
        --concurrency) CONC=$2; shift ;;
        --runs) RUNS=$2; shift ;;
        --before) BEFORE=$2; shift ;;
        *) bench_arg "$@"; shift $((SHIFT - 1)) ;;
    esac
    shift
done
OUT=${OUT:-$ROOT/bench/results/e2e-$(date +%Y-%m-%d).md}
command -v jq >/dev/null || { log "jq is needed (apt-get install jq)"; exit 1; }
command -v curl >/dev/null || { log "curl is needed (apt-get install curl)"; exit 1; }
if [[ $BUILD == 1 ]]; then
    log "building (release)"
    (cd "$ROOT" && cargo build --release --quiet --bin exec-allinone --example fakecloud)
fi
AFTER_BIN=$ROOT/target/release/exec-allinone
FAKECLOUD=$ROOT/target/release/examples/fakecloud

work_dir e2e-bench
BEFORE_BIN=""
if [[ -n $BEFORE ]]; then
    log "building $BEFORE (release, in a worktree)"
    git -C "$ROOT" worktree add --detach -q "$WORK/before-src" "$BEFORE"
    trap 'git -C "$ROOT" worktree remove --force "$WORK/before-src" 2>/dev/null || true; cleanup' EXIT
    # BEFORE_TARGET keeps that build across runs (default: thrown away with $WORK).
    target=${BEFORE_TARGET:-$WORK/before-target}
    (cd "$WORK/before-src" && CARGO_TARGET_DIR="$target" cargo build --release --quiet --bin exec-allinone)
    BEFORE_BIN=$target/release/exec-allinone
fi

for port in 8000 3650 8080 9650 13650 18080; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        log "port $port is in use: stop what holds it (a sandbox left running?)"
        exit 1
    fi
done

start_cloud --client-id bench --secret bench-secret

metric() { # metric NAME LABELS: the value on the sandbox's admin /metrics, or "n/a"
    curl -s http://127.0.0.1:9650/metrics | awk -v m="$1$2" '$1 == m {print $2; found=1} END {if (!found) print "n/a"}'
}

# run LABEL BIN SINK(local|cloud) N: one sandbox, one simulate; appends a row to $ROWS and
# the figures to $WORK/runs.tsv.
ROWS=()
run() {
    local label=$1 bin=$2 sink=$3 dir="$WORK/$1-$3-$4"
    mkdir -p "$dir"
    # `start` runs in the current directory: the sandbox's data dir is ./exec-allinone-data.
    pushd "$dir" >/dev/null
    if [[ $sink == local ]]; then
        start "$label" "$bin" --role all
    else
        sed -e "s|{dir}|$dir/exec-allinone-data|g" "$ROOT/src/config/sandbox.toml" \
            | awk -v cloud="$CLOUD" '/^\[exrp.local_sink\]/ {print "[exrp.genesys_cloud]\napi_url = \"" cloud "\"\nlogin_url = \"" cloud "\"\nclient_id = \"bench\"\nclient_secret = \"bench-secret\""; skip=1; next} skip && /^dir/ {next} {print}' \
            >"$dir/site.toml"
        mkdir -p "$dir/exec-allinone-data/recordings"
        "$bin" htpasswd -c "$dir/exec-allinone-data/htpasswd" mcp mcp-sandbox 2>/dev/null
        start "$label" "$bin" --role all --config "$dir/site.toml"
    fi
    popd >/dev/null
    log "$label / $sink: simulate --calls $CALLS --concurrency $CONC"
    local sim_args=(simulate --calls "$CALLS" --concurrency "$CONC" --timeout 600 --report "$dir/report.json")
    local uploads_before=0
    if [[ $sink == local ]]; then
        sim_args+=(--sink-dir "$dir/exec-allinone-data/injected")
    else
        # Named explicitly, simulate does not look for the sandbox's local sink; the fake
        # cloud's count says what arrived.
        sim_args+=(--webdav http://127.0.0.1:8000/recordings --excp http://127.0.0.1:3650)
        uploads_before=$(curl -s "$CLOUD/_fake/counts" | jq -r '.uploads')
    fi
    if ! (cd "$dir" && "$AFTER_BIN" "${sim_args[@]}" >"$dir/simulate.out" 2>"$dir/simulate.err"); then
        log "$label / $sink: simulate reported a failure:"
        tail -5 "$dir/simulate.err" >&2
    fi
    local rps p50 p99 delivered store cloud
    rps=$(jq -r '.recordings_per_second | . * 10 | round / 10' "$dir/report.json")
    p50=$(jq -r '.seconds_end_to_delivered.p50 | . * 1000 | round' "$dir/report.json")
    p99=$(jq -r '.seconds_end_to_delivered.p99 | . * 1000 | round' "$dir/report.json")
    delivered=$(jq -r '.delivered' "$dir/report.json")
    if [[ $sink == cloud ]]; then
        local arrived=$(( $(curl -s "$CLOUD/_fake/counts" | jq -r '.uploads') - uploads_before ))
        # Each recording and its metadata sidecar are two objects.
        [[ $arrived == $((delivered * 2)) ]] || log "$label / $sink: $arrived objects in the fake cloud for $delivered recordings"
    fi
    store=$(metric exrp_outbound_connections_total '{to="store"}')
    cloud=$(metric exrp_outbound_connections_total '{to="cloud"}')
    per() { [[ $1 == n/a || $delivered == 0 ]] && echo "n/a" || awk -v a="$1" -v b="$delivered" 'BEGIN {printf "%.3f", a / b}'; }
    ROWS+=("| $label | $sink | $4 | $delivered / $((CALLS * 2)) | $rps | $p50 | $p99 | $(per "$store") | $(per "$cloud") |")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$sink" "$rps" "$p50" "$p99" "$(per "$store")" "$(per "$cloud")" >>"$WORK/runs.tsv"
    log "${ROWS[-1]}"
    kill "$LAST_PID"
    wait "$LAST_PID" 2>/dev/null || true
}

for n in $(seq 1 "$RUNS"); do
    for sink in local cloud; do
        [[ -n $BEFORE_BIN ]] && run before "$BEFORE_BIN" "$sink" "$n"
        run after "$AFTER_BIN" "$sink" "$n"
    done
done

# Medians per binary and sink (column 3 onwards of runs.tsv), and after/before.
median_in() { sort -g | awk '{v[NR] = $1} END {if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
col() { awk -F'\t' -v l="$1" -v s="$2" -v c="$3" '$1 == l && $2 == s {print $c}' "$WORK/runs.tsv" | median_in; }
SUMMARY=()
for sink in local cloud; do
    for label in before after; do
        [[ $label == before && -z $BEFORE_BIN ]] && continue
        SUMMARY+=("| $label | $sink | $(col "$label" "$sink" 3) | $(col "$label" "$sink" 4) | $(col "$label" "$sink" 5) | $(col "$label" "$sink" 6) | $(col "$label" "$sink" 7) |")
    done
    if [[ -n $BEFORE_BIN ]]; then
        SUMMARY+=("| after/before | $sink | $(awk -v a="$(col after "$sink" 3)" -v b="$(col before "$sink" 3)" 'BEGIN {printf "%.2f", a / b}') | $(awk -v a="$(col after "$sink" 4)" -v b="$(col before "$sink" 4)" 'BEGIN {printf "%.2f", a / b}') | $(awk -v a="$(col after "$sink" 5)" -v b="$(col before "$sink" 5)" 'BEGIN {printf "%.2f", a / b}') | | |")
    fi
done

{
    echo "# End to end: simulate through the --role all sandbox ($(date +%Y-%m-%d))"
    echo
    echo "\`bench/e2e.sh --calls $CALLS --concurrency $CONC${BEFORE:+ --before $BEFORE}\` on $(nproc) cores,"
    echo "$(uname -r); after = $(git -C "$ROOT" rev-parse --short HEAD)${BEFORE:+, before = $BEFORE}. 2 recordings per call"
    echo "(assets/sample.opus, 7,220 bytes), fsync on, $RUNS run(s) of each, alternating; p50/p99 from"
    echo "call end to the recording leaving the store. Connections per recording: opened by exrp"
    echo "(n/a: the binary has no such counter)."
    echo
    echo "Medians of the runs:"
    echo
    echo "| binary | sink | recordings/s | p50 ms | p99 ms | store conns/rec | cloud conns/rec |"
    echo "|---|---|---|---|---|---|---|"
    printf '%s\n' "${SUMMARY[@]}"
    echo
    echo "Each run:"
    echo
    echo "| binary | sink | run | delivered | recordings/s | p50 ms | p99 ms | store conns/rec | cloud conns/rec |"
    echo "|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
} | tee "$OUT"
log "written to $OUT"
