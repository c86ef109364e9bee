#!/usr/bin/env bash
# Replicas on PostgreSQL, in one run: `bash bench/replicas.sh`.
#
# Starts its own PostgreSQL cluster (Debian's server binaries, initdb into a temp directory,
# a free loopback port, fsync on; as root it runs as `postgres`, like tests/pg.rs) and
# release servers on loopback, then measures:
#   1. SCIM creates/s over HTTP with wrk (1 thread, CONNECTIONS connections, DURATION-second
#      rounds, ROUNDS passes alternating) on PostgreSQL and on embedded sled;
#   2. the 1,000-member group PATCH on PostgreSQL: PATCH_TRIALS times, add 1,000 members to a
#      group in one PATCH (timed), then remove them again (not timed): p50/p99;
#   3. change propagation between two replicas on one database: a SCIM create acknowledged
#      by replica A, then B polled (keep-alive, no pause) until it lists the user:
#      PROPAGATION_SAMPLES samples, p50/p99.
# Prints a Markdown table for BENCHMARKS.md. The SCIM rate limit is raised for the run.
#
# Settings (environment): ROUNDS (3), DURATION (4), CONNECTIONS (8), PATCH_TRIALS (10),
# PROPAGATION_SAMPLES (200), BIN (the server binary; default this tree's release build,
# e.g. another commit's build to compare). Installs wrk with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-4}
CONNECTIONS=${CONNECTIONS:-8}
PATCH_TRIALS=${PATCH_TRIALS:-10}
PROPAGATION_SAMPLES=${PROPAGATION_SAMPLES:-200}
OPERATOR="bench-operator-token-000"

if ! command -v wrk >/dev/null 2>&1; then
    apt-get install -y --no-install-recommends wrk >/dev/null \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends wrk >/dev/null; }
fi
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
[ -x "$pgbin/initdb" ] || { echo "PostgreSQL server binaries missing (apt-get install postgresql)" >&2; exit 1; }
cargo build --release -q -p gatehouse --bin gatehouse

work=$(mktemp -d)
chmod 755 "$work"
as_pg=()
if [ "$(id -u)" = 0 ]; then as_pg=(runuser -u postgres --); fi
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    "${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/pg/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# --- the cluster
mkdir -p "$work/pg"
[ ${#as_pg[@]} -eq 0 ] || chown postgres: "$work/pg"
"${as_pg[@]}" "$pgbin/initdb" -D "$work/pg/data" -A trust -U postgres -E UTF8 --locale=C \
    --no-instructions >/dev/null
pgport=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/pg/data" -l "$work/pg/log" -w -o \
    "-p $pgport -k $work/pg -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
psql_() { "$pgbin/psql" -X -q -h 127.0.0.1 -p "$pgport" -U postgres -d postgres -c "$1"; }
psql_ "CREATE DATABASE single" >/dev/null
psql_ "CREATE DATABASE pair" >/dev/null

start() { # NAME DATABASE_URL(or empty) -> sets base_NAME
    local name=$1
    GATEHOUSE_OPERATOR_TOKEN=$OPERATOR GATEHOUSE_DATABASE_URL=$2 \
        GATEHOUSE_SCIM_RATE_PER_SECOND=1000000 GATEHOUSE_SCIM_BURST=1000000 \
        "${BIN:-target/release/gatehouse}" serve --listen 127.0.0.1:0 --data "$work/$name" \
        >"$work/$name.out" 2>"$work/$name.log" &
    pids+=($!)
    for _ in $(seq 600); do grep -q "^listening on" "$work/$name.out" 2>/dev/null && break; sleep 0.05; done
    local base
    base=$(sed -n 's/^listening on //p' "$work/$name.out")
    [ -n "$base" ] || { cat "$work/$name.log" >&2; exit 1; }
    printf -v "base_$name" '%s' "$base"
}
api() { # BASE METHOD PATH BODY
    curl -sS --fail-with-body -X "$2" "$1$3" -H "authorization: Bearer $OPERATOR" \
        -H 'content-type: application/json' -d "$4"
}
scim_tenant() { # BASE -> prints the SCIM token
    api "$1" POST /api/v1/tenants '{"slug":"acme"}' >/dev/null
    api "$1" PUT /api/v1/tenants/acme/provisioning '{"mode":"scim"}' >/dev/null
    api "$1" POST /api/v1/tenants/acme/sso '{"id":"idp","issuer":"https://idp.example.com",
        "client_id":"gatehouse","jwks_uri":"https://203.0.113.10/jwks"}' >/dev/null
    api "$1" POST /api/v1/tenants/acme/sso/idp/scim-token '{}' \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
}
pg_url() { echo "postgres://postgres@127.0.0.1:$pgport/$1"; }

start pg "$(pg_url single)"
start sled ""
start a "$(pg_url pair)"
start b "$(pg_url pair)"
token_pg=$(scim_tenant "$base_pg")
token_sled=$(scim_tenant "$base_sled")
token_pair=$(scim_tenant "$base_a")

# --- 1. creates/s
results="$work/results"
for round in $(seq "$ROUNDS"); do
    for name in pg sled; do
        base_var="base_$name" token_var="token_$name"
        out=$(SCIM_TOKEN=${!token_var} PREFIX="r$round" wrk --latency -t1 -c"$CONNECTIONS" \
            -d"${DURATION}s" -s bench/wrk/scim-create.lua "${!base_var}/scim/v2/acme/idp/Users" 2>&1)
        if grep -qE "Non-2xx|\.lua:" <<<"$out"; then echo "$out" >&2; exit 1; fi
        rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
        p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
        echo "$name $round $rps $p99" >>"$results"
        echo "$name"$'\t'"round $round"$'\t'"$rps/s"$'\t'"p99 $p99" >&2
    done
done
median() {
    awk -v n="$1" '$1 == n { print $3 }' "$results" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# --- 2 and 3: timed with keep-alive connections from Python
measured=$(BASE_PG=$base_pg TOKEN_PG=$token_pg BASE_A=$base_a BASE_B=$base_b TOKEN_PAIR=$token_pair \
    PATCH_TRIALS=$PATCH_TRIALS SAMPLES=$PROPAGATION_SAMPLES python3 - <<'EOF'
import http.client, json, os, sys, time, urllib.parse

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"

def conn(base):
    u = urllib.parse.urlparse(base)
    return http.client.HTTPConnection(u.hostname, u.port)

def call(c, token, method, path, body=None):
    headers = {"authorization": "Bearer " + token, "content-type": "application/scim+json"}
    c.request(method, "/scim/v2/acme/idp" + path, json.dumps(body) if body else None, headers)
    r = c.getresponse()
    data = r.read()
    if r.status >= 300:
        raise SystemExit(f"{method} {path}: {r.status} {data[:300]!r}")
    return json.loads(data) if data else None

def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]

# 2. the 1,000-member PATCH on PostgreSQL
c, token = conn(os.environ["BASE_PG"]), os.environ["TOKEN_PG"]
ids = [call(c, token, "POST", "/Users", {"schemas": [USER], "userName": f"m{i}@acme.io",
        "externalId": f"m{i}", "active": True})["id"] for i in range(1000)]
group = call(c, token, "POST", "/Groups", {"schemas": [GROUP], "displayName": "Big"})["id"]
add = {"schemas": [PATCH], "Operations": [{"op": "add", "path": "members",
       "value": [{"value": i} for i in ids]}]}
remove = {"schemas": [PATCH], "Operations": [{"op": "remove", "path": f'members[value eq "{i}"]'}
          for i in ids]}
patch = []
for _ in range(int(os.environ["PATCH_TRIALS"])):
    t = time.perf_counter()
    call(c, token, "PATCH", f"/Groups/{group}", add)
    patch.append(time.perf_counter() - t)
    call(c, token, "PATCH", f"/Groups/{group}", remove)

# 3. propagation A -> B
a, b, token = conn(os.environ["BASE_A"]), conn(os.environ["BASE_B"]), os.environ["TOKEN_PAIR"]
lags = []
for i in range(int(os.environ["SAMPLES"])):
    ext = f"p{i}"
    call(a, token, "POST", "/Users", {"schemas": [USER], "userName": f"{ext}@acme.io",
         "externalId": ext, "active": True})
    t = time.perf_counter()
    path = "/Users?filter=" + urllib.parse.quote(f'externalId eq "{ext}"')
    while call(b, token, "GET", path)["totalResults"] != 1:
        if time.perf_counter() - t > 10:
            raise SystemExit(f"user {ext} never appeared on B")
    lags.append(time.perf_counter() - t)

ms = lambda s: f"{s * 1000:.1f} ms"
print("PATCH samples: " + ", ".join(ms(s) for s in patch), file=sys.stderr)
print(f"patch {len(patch)} {ms(pct(patch, 50))} {ms(pct(patch, 99))} {ms(max(patch))}")
print(f"propagation {len(lags)} {ms(pct(lags, 50))} {ms(pct(lags, 99))} {ms(max(lags))}")
EOF
)
read -r _ patch_n patch_p50 patch_p50u patch_p99 patch_p99u patch_max patch_maxu <<<"$(grep '^patch' <<<"$measured")"
read -r _ prop_n prop_p50 prop_p50u prop_p99 prop_p99u prop_max prop_maxu <<<"$(grep '^propagation' <<<"$measured")"

pg=$(median pg)
sled=$(median sled)
echo
echo "Replicas on PostgreSQL $("$pgbin/postgres" --version | awk '{ print $3 }') (fsync on), release build, $(nproc) cores"
echo
echo "| measurement | n | p50 | p99 / rate | target |"
echo "|---|---|---|---|---|"
echo "| SCIM create over HTTP, wrk -c$CONNECTIONS, PostgreSQL (median of $ROUNDS × ${DURATION} s) | | | $(printf '%.0f' "$pg")/s (p99 $(awk '$1 == "pg" { p = $4 } END { print p }' "$results")) | |"
echo "| SCIM create over HTTP, wrk -c$CONNECTIONS, sled (median of $ROUNDS × ${DURATION} s) | | | $(printf '%.0f' "$sled")/s (p99 $(awk '$1 == "sled" { p = $4 } END { print p }' "$results")) | |"
echo "| PATCH add 1,000 members to a group, PostgreSQL (HTTP) | $patch_n | $patch_p50 $patch_p50u | p99 $patch_p99 $patch_p99u (max $patch_max $patch_maxu) | ≤ 200 ms |"
echo "| SCIM create on A → listed by B (two replicas, one database) | $prop_n | $prop_p50 $prop_p50u | p99 $prop_p99 $prop_p99u (max $prop_max $prop_maxu) | ≤ 100 ms |"
echo
echo "PostgreSQL / sled creates: $(awk -v a="$pg" -v b="$sled" 'BEGIN { printf "%.2f×", a / b }')"
