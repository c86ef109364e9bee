#!/usr/bin/env bash
# The edge over HTTP, measured with an outside load generator (wrk): `bash bench/edge-http.sh`.
#
# Starts the release binary (decision log on, the default, written to a file) on a free
# loopback port, sets up tenant `acme` (an admin with a PAT, an RS256 identity provider whose
# key set is served on loopback), then runs wrk (1 thread, 16 connections, DURATION-second
# rounds) in ROUNDS passes, each pass alternating every target with `/healthz`:
#   healthz         GET  /healthz
#   resolve-pat     POST /v1/acme/resolve, one PAT
#   resolve-jwt     POST /v1/acme/resolve, one RS256 JWT, repeated (the verified-result cache)
#   resolve-unique  POST /v1/acme/resolve, a new RS256 JWT every request (from a file)
#   forward-auth    GET  /v1/acme/forward-auth, the repeated JWT
# and prints each target's median throughput and its ratio to the median `/healthz`, the raw
# RS256 verification rate of the same unique tokens (jsonwebtoken alone, one thread), and p99
# latency at about half the measured rate of resolve-pat, resolve-jwt and forward-auth (wrk
# has no fixed-rate mode: PACED_DELAY_MS per connection between requests, with connections
# enough for half the rate; the achieved rate is printed beside).
#
# Settings (environment): ROUNDS (3), DURATION (4), CONNECTIONS (16), TOKENS_PER_ROUND
# (distinct tokens per unique round: DURATION × 15,000; past that they repeat, and the
# summary says how many requests shared how many tokens), PACED_DELAY_MS (10), and any GATEHOUSE_* for the server (for
# example GATEHOUSE_EDGE_DECISION_LOG=false). Installs wrk with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-4}
CONNECTIONS=${CONNECTIONS:-16}
PACED_DELAY_MS=${PACED_DELAY_MS:-10}
PER_ROUND=${TOKENS_PER_ROUND:-$((DURATION * 15000))}
ISSUER="https://idp.bench/corp"
EMAIL="admin@acme.io"
OPERATOR="bench-operator-token-000"

if ! command -v wrk >/dev/null 2>&1; then
    apt-get install -y --no-install-recommends wrk >/dev/null \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends wrk >/dev/null; }
fi
cargo build --release -q -p gatehouse --bin gatehouse --example edge_tokens

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Unique tokens: signed once, kept for the day they are valid (a re-run reuses them).
cache=target/bench-edge
mkdir -p "$cache/jwks"
count=$((PER_ROUND * ROUNDS))
tokens="$cache/tokens-$count.txt"
if [ ! -s "$tokens" ] || [ -n "$(find "$tokens" -mmin +720)" ]; then
    echo "signing $count RS256 tokens..." >&2
    target/release/examples/edge_tokens "$count" "$ISSUER" "$EMAIL" "$tokens.tmp" "$cache/jwks/keys.json" \
        >/dev/null
    mv "$tokens.tmp" "$tokens"
fi
raw=$(target/release/examples/edge_tokens 20000 "$ISSUER" "$EMAIL" "$work/raw.txt" "$cache/jwks/keys.json" \
    | awk '/^raw_rs256_verify_per_second/ { print $2 }')

# The key set, over HTTP on loopback.
python3 -u -m http.server 0 --bind 127.0.0.1 --directory "$cache/jwks" >"$work/jwks.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "port" "$work/jwks.out" 2>/dev/null && break; sleep 0.05; done
jwks_port=$(sed -n 's/.* port \([0-9]*\) .*/\1/p' "$work/jwks.out" | head -1)

GATEHOUSE_OPERATOR_TOKEN=$OPERATOR GATEHOUSE_ALLOW_PRIVATE_URLS=true \
    target/release/gatehouse serve --listen 127.0.0.1:0 --data "$work/db" \
    >"$work/server.out" 2>"$work/server.log" &
pids+=($!)
for _ in $(seq 600); do grep -q "^listening on" "$work/server.out" 2>/dev/null && break; sleep 0.05; done
base=$(sed -n 's/^listening on //p' "$work/server.out")
[ -n "$base" ] || { cat "$work/server.log" >&2; exit 1; }

api() { # METHOD PATH [JSON]
    curl -sS --fail-with-body -X "$1" "$base$2" -H "authorization: Bearer $OPERATOR" \
        -H 'content-type: application/json' ${3:+-d "$3"}
}
pat=$(api POST /api/v1/tenants "{\"slug\":\"acme\",\"admin_email\":\"$EMAIL\"}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["admin_token"])')
api POST /api/v1/tenants/acme/identity-providers "{\"name\":\"corp\",\"issuer\":\"$ISSUER\",
    \"jwks_uri\":\"http://127.0.0.1:$jwks_port/keys.json\",\"audiences\":[\"api\"],
    \"algorithms\":[\"RS256\"],\"user_claim\":\"email\",\"team_claim\":\"groups\"}" >/dev/null
target/release/examples/edge_tokens 1 "$ISSUER" "$EMAIL" "$work/one.txt" "$work/keys.json" >/dev/null
jwt=$(head -1 "$work/one.txt")
for token in "$pat" "$jwt"; do
    curl -sS --fail-with-body -X POST "$base/v1/acme/resolve" -H "authorization: Bearer $token" \
        | grep -q '"decision":"allow"'
done

script=bench/wrk/edge.lua
results="$work/results"
run() { # NAME ROUND wrk-args...
    local name=$1 round=$2 out
    shift 2
    out=$(wrk --latency -t1 "$@" 2>&1)
    if grep -qE "Non-2xx|\.lua:" <<<"$out"; then
        echo "$name: refusals in the answers, or the script failed:" >&2
        echo "$out" >&2
        exit 1
    fi
    local rps p99
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
    echo "$name $round $rps $p99" >>"$results"
    echo "$name"$'\t'"round $round"$'\t'"$rps/s"$'\t'"p99 $p99" >&2
}
load=(-c"$CONNECTIONS" -d"${DURATION}s")
for round in $(seq "$ROUNDS"); do
    run healthz "$round" "${load[@]}" "$base/healthz"
    METHOD=POST run resolve-pat "$round" "${load[@]}" -s $script -H "authorization: Bearer $pat" \
        "$base/v1/acme/resolve"
    run healthz "$round" "${load[@]}" "$base/healthz"
    METHOD=POST run resolve-jwt "$round" "${load[@]}" -s $script -H "authorization: Bearer $jwt" \
        "$base/v1/acme/resolve"
    run healthz "$round" "${load[@]}" "$base/healthz"
    METHOD=POST TOKENS=$tokens OFFSET=$(((round - 1) * PER_ROUND)) run resolve-unique "$round" \
        "${load[@]}" -s $script "$base/v1/acme/resolve"
    run healthz "$round" "${load[@]}" "$base/healthz"
    run forward-auth "$round" "${load[@]}" -H "authorization: Bearer $jwt" "$base/v1/acme/forward-auth"
done

median() { # NAME -> median requests/s of its rounds
    awk -v n="$1" '$1 == n { print $3 }' "$results" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
# Paced rounds at about half each target's median rate.
for target in resolve-pat resolve-jwt forward-auth; do
    rate=$(median "$target")
    conns=$(awk -v r="$rate" -v d="$PACED_DELAY_MS" 'BEGIN { c = int(r / 2 * d / 1000 + 0.5); print (c < 1 ? 1 : c) }')
    case $target in
        resolve-pat) args=(-s $script -H "authorization: Bearer $pat" "$base/v1/acme/resolve"); method=POST ;;
        resolve-jwt) args=(-s $script -H "authorization: Bearer $jwt" "$base/v1/acme/resolve"); method=POST ;;
        forward-auth) args=(-s $script -H "authorization: Bearer $jwt" "$base/v1/acme/forward-auth"); method=GET ;;
    esac
    METHOD=$method DELAY_MS=$PACED_DELAY_MS run "$target-paced" 1 -c"$conns" -d"${DURATION}s" "${args[@]}"
done

health=$(median healthz)
unique_sent=$(awk '$1 == "resolve-unique" { s += $3 } END { printf "%d", s * '"$DURATION"' }' "$results")
decision_log=${GATEHOUSE_EDGE_DECISION_LOG:-true}
echo
echo "wrk -t1 -c$CONNECTIONS, ${DURATION} s rounds × $ROUNDS, alternating with /healthz; decision log: $decision_log; $(nproc) cores"
echo
echo "| target | median throughput | vs /healthz | p99 at full load | p99 at ~half rate (achieved) |"
echo "|---|---|---|---|---|"
for target in healthz resolve-pat resolve-jwt resolve-unique forward-auth; do
    rate=$(median "$target")
    p99=$(awk -v n="$target" '$1 == n { print $4 }' "$results" | tail -1)
    paced=$(awk -v n="$target-paced" '$1 == n { printf "%s (%d/s)", $4, $3 }' "$results")
    ratio=$(awk -v r="$rate" -v h="$health" 'BEGIN { printf "%.0f %%", r / h * 100 }')
    echo "| $target | $(printf '%.0f' "$rate")/s | $ratio | $p99 | ${paced:-} |"
done
echo
echo "raw RS256 verification of the same tokens (jsonwebtoken, 1 thread): $raw/s;" \
    "resolve-unique is $(awk -v r="$(median resolve-unique)" -v w="$raw" 'BEGIN { printf "%.0f %%", r / w * 100 }') of it" \
    "($unique_sent requests over $((PER_ROUND * ROUNDS)) distinct tokens)"
