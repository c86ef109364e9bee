#!/usr/bin/env bash
# SCIM creates over HTTP with an outside load generator: `bash bench/scim-http.sh`.
#
# Starts two release servers on loopback (embedded sled), one with group commit (the
# default, `store.group_commit`) and one without (GATEHOUSE_STORE_GROUP_COMMIT=false), each
# with tenant `acme` in SCIM mode and a SCIM connection, then runs wrk (1 thread, CONNECTIONS
# connections, DURATION-second rounds, ROUNDS passes alternating between the two servers):
# every request creates a new user. Prints each server's median creates/s and the ratio, the
# server's CPU time per create (from /proc, user + system), and what one fsync costs on the
# data directory's disk (whether flushes or CPU bound the rate).
# The SCIM rate limit is raised for the run (it would otherwise be what is measured).
#
# With group commit off, each create takes the tenant's lock, commits and flushes on its
# own; on, a tenant's concurrent creates go in rounds, one transaction and one flush each
# (decisions 79 and 80). Also prints each server's mean writes per round and where a
# round's time goes (its commit, its flush, the wait for the previous flush; from /metrics).
# With BASELINE_BIN (another build of gatehouse, e.g. the previous commit's), the second
# server is that binary with its defaults instead, and the ratio is this build's / its.
#
# With BIN, the first server is that binary instead of this tree's release build (which is
# then not built).
# Settings (environment): ROUNDS (3), DURATION (4), CONNECTIONS (8), BASELINE_BIN, BIN. Installs wrk with
# apt-get when missing. Durability under this load is tested by
# tests/tests/serve.rs::every_acknowledged_scim_create_survives_kill_9_under_load.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-4}
CONNECTIONS=${CONNECTIONS:-8}
OPERATOR="bench-operator-token-000"

if ! command -v wrk >/dev/null 2>&1; then
    apt-get install -y --no-install-recommends wrk >/dev/null \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends wrk >/dev/null; }
fi
BIN=${BIN:-}
if [ -z "$BIN" ]; then
    cargo build --release -q -p gatehouse --bin gatehouse
    BIN=target/release/gatehouse
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

start() { # NAME GROUP_COMMIT [BINARY] -> sets base_NAME and token_NAME
    # An empty GROUP_COMMIT leaves the setting out: a baseline runs with its own defaults
    # (a build from before the setting existed refuses it).
    local name=$1
    env GATEHOUSE_OPERATOR_TOKEN=$OPERATOR ${2:+GATEHOUSE_STORE_GROUP_COMMIT=$2} \
        GATEHOUSE_SCIM_RATE_PER_SECOND=1000000 GATEHOUSE_SCIM_BURST=1000000 \
        "${3:-$BIN}" serve --listen 127.0.0.1:0 --data "$work/$name" \
        >"$work/$name.out" 2>"$work/$name.log" &
    pids+=($!)
    printf -v "pid_$name" '%s' "$!"
    for _ in $(seq 600); do grep -q "^listening on" "$work/$name.out" 2>/dev/null && break; sleep 0.05; done
    local base
    base=$(sed -n 's/^listening on //p' "$work/$name.out")
    [ -n "$base" ] || { cat "$work/$name.log" >&2; exit 1; }
    api() {
        curl -sS --fail-with-body -X "$1" "$base$2" -H "authorization: Bearer $OPERATOR" \
            -H 'content-type: application/json' -d "$3"
    }
    api POST /api/v1/tenants '{"slug":"acme"}' >/dev/null
    api PUT /api/v1/tenants/acme/provisioning '{"mode":"scim"}' >/dev/null
    api POST /api/v1/tenants/acme/sso '{"id":"idp","issuer":"https://idp.example.com",
        "client_id":"gatehouse","jwks_uri":"https://203.0.113.10/jwks"}' >/dev/null
    local token
    token=$(api POST /api/v1/tenants/acme/sso/idp/scim-token '{}' \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
    printf -v "base_$name" '%s' "$base"
    printf -v "token_$name" '%s' "$token"
}
start on true
if [ -n "${BASELINE_BIN:-}" ]; then
    start off "" "$BASELINE_BIN"
    label_on="this build" label_off="baseline $BASELINE_BIN"
else
    start off false
    label_on="group commit on" label_off="group commit off"
fi

# utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat; the
# command name in field 2 has no spaces here).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

results="$work/results"
for round in $(seq "$ROUNDS"); do
    for name in on off; do
        base_var="base_$name" token_var="token_$name" pid_var="pid_$name"
        cpu_before=$(cpu_ticks "${!pid_var}")
        out=$(SCIM_TOKEN=${!token_var} PREFIX="r$round" wrk --latency -t1 -c"$CONNECTIONS" \
            -d"${DURATION}s" -s bench/wrk/scim-create.lua "${!base_var}/scim/v2/acme/idp/Users" 2>&1)
        if grep -qE "Non-2xx|\.lua:" <<<"$out"; then echo "$out" >&2; exit 1; fi
        cpu_after=$(cpu_ticks "${!pid_var}")
        rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
        p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
        creates=$(awk '/requests in/ { print $1 }' <<<"$out")
        # The server's CPU time (user + system) per create, in microseconds.
        cpu=$(awk -v t=$((cpu_after - cpu_before)) -v hz="$(getconf CLK_TCK)" -v n="$creates" \
            'BEGIN { printf "%.0f", t / hz * 1e6 / n }')
        echo "$name $round $rps $p99 $cpu" >>"$results"
        label_var="label_$name"
        echo "${!label_var}"$'\t'"round $round"$'\t'"$rps/s"$'\t'"p99 $p99"$'\t'"server CPU ${cpu} µs/create" >&2
    done
done

median() {
    awk -v n="$1" '$1 == n { print $3 }' "$results" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
median_cpu() {
    awk -v n="$1" '$1 == n { print $5 }' "$results" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
on=$(median on)
off=$(median off)
echo
echo "SCIM POST /Users over HTTP, wrk -t1 -c$CONNECTIONS, ${DURATION} s rounds × $ROUNDS, alternating; $(nproc) cores"
echo
echo "| server | median creates/s | p99 (last round) |"
echo "|---|---|---|"
echo "| $label_on | $(printf '%.0f' "$on")/s | $(awk '$1 == "on" { p = $4 } END { print p }' "$results") |"
echo "| $label_off | $(printf '%.0f' "$off")/s | $(awk '$1 == "off" { p = $4 } END { print p }' "$results") |"
echo
echo "$label_on / $label_off: $(awk -v a="$on" -v b="$off" 'BEGIN { printf "%.1f×", a / b }')"
echo "server CPU per create (median): $label_on $(median_cpu on) µs, $label_off $(median_cpu off) µs"
# Writes per round: the store's two round counters (a server without rounds has none).
per_round() {
    curl -sS "$1/metrics" | awk '$1 == "gatehouse_store_rounds_total" { r = $2 }
        $1 == "gatehouse_store_round_writes_total" { w = $2 }
        END { if (r > 0) printf "%.1f", w / r; else print "none" }'
}
echo "mean writes per round (all rounds): $label_on $(per_round "$base_on"), $label_off $(per_round "$base_off")"
# Where a round's time goes (the store's round histograms; a server without them has none):
# its sled commit, its flush, and the wait for the previous round's flush (in the rounds
# that waited).
phases() {
    curl -sS "$1/metrics" | awk '
        $1 == "gatehouse_store_round_commit_seconds_sum" { cs = $2 }
        $1 == "gatehouse_store_round_commit_seconds_count" { cn = $2 }
        $1 == "gatehouse_store_round_flush_seconds_sum" { fs = $2 }
        $1 == "gatehouse_store_round_flush_seconds_count" { fn = $2 }
        $1 == "gatehouse_store_round_flush_wait_seconds_sum" { ws = $2 }
        $1 == "gatehouse_store_round_flush_wait_seconds_count" { wn = $2 }
        $1 == "gatehouse_store_rounds_total" { r = $2 }
        END {
            if (cn > 0 && fn > 0 && r > 0)
                printf "commit %.0f µs, flush %.0f µs, waited for the previous flush in %.0f %% of rounds (%.0f µs)",
                    cs / cn * 1e6, fs / fn * 1e6, wn / r * 100, (wn > 0 ? ws / wn * 1e6 : 0)
            else print "none"
        }'
}
echo "mean round (all rounds): $label_on: $(phases "$base_on"); $label_off: $(phases "$base_off")"
# What one flush costs on the data directory's disk: a 4 KiB write + fsync, 200 times.
echo "fsync of a 4 KiB write on the data directory's disk: $(python3 - "$work" <<'PY'
import os, sys, time
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT)
times = []
for _ in range(200):
    os.write(fd, b"x" * 4096)
    t = time.perf_counter()
    os.fsync(fd)
    times.append(time.perf_counter() - t)
os.close(fd)
os.unlink(path)
times.sort()
print(f"p50 {times[100] * 1000:.2f} ms, p99 {times[197] * 1000:.2f} ms")
PY
)"
