#!/usr/bin/env bash
# The edge fleet (issue 15), measured end to end with the release binary:
# `bash bench/edge-fleet.sh`.
#
# Starts one control plane (`gatehouse serve`, sled) and EDGES edges (`gatehouse edge`, each
# with its own data directory) on loopback, then measures, in one run:
#   1. a deactivation reaching every edge: DEACTIVATIONS users, each with a PAT; for each, the
#      time from the admin API's answer (POST …/users/{id}/deactivate) to the last edge
#      refusing that PAT (one polling thread per edge); p50 / p99 / max (target p99 ≤ 250 ms);
#   2. an edge's `/v1/acme/resolve` (a PAT) throughput against its own `/healthz`, wrk -t1
#      -cCONNECTIONS, DURATION-second rounds alternating, ROUNDS passes (bench/wrk/edge.lua);
#   3. a tenant of BIG_USERS users (pushed by SCIM, 8 clients): its snapshot's size and the
#      time to receive it on the stream, and a new edge scoped to it from start to its first
#      allowed answer (snapshot fetched and applied);
#   4. that edge killed (-9) and restarted with the control plane stopped: from spawn to its
#      first allowed answer from local state (target ≤ 2 s).
# Settings (environment): EDGES (10), DEACTIVATIONS (50), BIG_USERS (100000), ROUNDS (3),
# DURATION (4), CONNECTIONS (16); GATEHOUSE_BIN runs that binary instead of building the release
# one (a smoke run of the script on a debug build). Installs wrk with apt-get when missing. On a shared machine
# the figures are noisy: quote ratios from one run.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null 2>&1; then
    apt-get install -y --no-install-recommends wrk >/dev/null \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends wrk >/dev/null; }
fi
if [ -z "${GATEHOUSE_BIN:-}" ]; then
    cargo build --release -q -p gatehouse --bin gatehouse
fi
export GATEHOUSE_BIN=${GATEHOUSE_BIN:-target/release/gatehouse}

exec python3 -u - <<'PY'
import http.client, json, os, re, signal, statistics, subprocess, sys, tempfile, threading, time

BIN = os.path.abspath(os.environ["GATEHOUSE_BIN"])
EDGES = int(os.environ.get("EDGES", 10))
DEACTIVATIONS = int(os.environ.get("DEACTIVATIONS", 50))
BIG_USERS = int(os.environ.get("BIG_USERS", 100000))
ROUNDS = int(os.environ.get("ROUNDS", 3))
DURATION = int(os.environ.get("DURATION", 4))
CONNECTIONS = int(os.environ.get("CONNECTIONS", 16))
OPERATOR = "bench-operator-token-000"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
work = tempfile.mkdtemp(prefix="edge-fleet-")
procs = []


def clean_env(extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
    env.update(extra)
    return env


def start(args, extra, name):
    log = open(f"{work}/{name}.log", "a")
    p = subprocess.Popen([BIN] + args, stdout=subprocess.PIPE, stderr=log, env=clean_env(extra))
    line = p.stdout.readline().decode()
    if not line.startswith("listening on "):
        sys.exit(f"{name} did not start: {open(f'{work}/{name}.log').read()}")
    threading.Thread(target=lambda: p.stdout.read(), daemon=True).start()
    procs.append(p)
    return p, line.strip().removeprefix("listening on ")


class Client:
    """One keep-alive connection per base and thread."""

    def __init__(self):
        self.local = threading.local()

    def call(self, base, method, path, token=None, body=None, ctype="application/json"):
        conns = self.local.__dict__.setdefault("conns", {})
        host = base.removeprefix("http://")
        for attempt in range(2):
            conn = conns.get(host) or http.client.HTTPConnection(host, timeout=60)
            conns[host] = conn
            headers = {"content-type": ctype}
            if token:
                headers["authorization"] = f"Bearer {token}"
            try:
                conn.request(method, path, body=json.dumps(body) if body is not None else None,
                             headers=headers)
                r = conn.getresponse()
                data = r.read()
                try:
                    return r.status, json.loads(data) if data else None
                except ValueError:
                    return r.status, data.decode(errors="replace")
            except (http.client.HTTPException, OSError):
                conn.close()
                conns.pop(host, None)
                if attempt:
                    raise
        raise RuntimeError("unreachable")


http_ = Client()


def op(base, method, path, body=None):
    status, answer = http_.call(base, method, path, OPERATOR, body)
    if not 200 <= status < 300:
        sys.exit(f"{method} {path}: {status} {answer}")
    return answer


def scim_tenant(cp, slug):
    op(cp, "POST", "/api/v1/tenants", {"slug": slug, "admin_email": f"admin@{slug}.io"})
    op(cp, "POST", f"/api/v1/tenants/{slug}/sso", {"id": "idp", "issuer": "https://idp.example.com",
       "client_id": "gatehouse", "jwks_uri": "https://203.0.113.10/jwks"})
    token = op(cp, "POST", f"/api/v1/tenants/{slug}/sso/idp/scim-token", {})["token"]
    op(cp, "PUT", f"/api/v1/tenants/{slug}/provisioning", {"mode": "scim"})
    return token


def scim_user(cp, slug, scim, email):
    status, body = http_.call(cp, "POST", f"/scim/v2/{slug}/idp/Users", scim, {
        "schemas": [USER], "userName": email, "externalId": f"ext-{email}", "active": True,
        "emails": [{"value": email, "primary": True}]}, "application/scim+json")
    if status != 201:
        sys.exit(f"SCIM create {email}: {status} {body}")
    return body["id"]


def pat(cp, slug, user):
    return op(cp, "POST", f"/api/v1/tenants/{slug}/users/{user}/tokens", {"name": "bench"})["secret"]


def resolve(base, slug, token):
    status, body = http_.call(base, "POST", f"/v1/{slug}/resolve", token)
    return status, body


def until_allowed(base, slug, token, deadline=600):
    start = time.perf_counter()
    while True:
        try:
            status, body = resolve(base, slug, token)
            if status == 200:
                return time.perf_counter() - start
        except OSError:
            pass
        if time.perf_counter() - start > deadline:
            sys.exit(f"{base} never allowed the token: {status} {body}")
        time.sleep(0.001)


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


try:
    cp_proc, cp = start(["serve", "--listen", "127.0.0.1:0", "--data", f"{work}/cp"],
                        {"GATEHOUSE_OPERATOR_TOKEN": OPERATOR, "GATEHOUSE_EDGE_DECISION_LOG": "false",
                         # The push of BIG_USERS is not what is measured: no SCIM rate limit.
                         "GATEHOUSE_SCIM_RATE_PER_SECOND": "1000000", "GATEHOUSE_SCIM_BURST": "1000000"},
                        "cp")
    scim = scim_tenant(cp, "acme")
    users = [scim_user(cp, "acme", scim, f"u{i}@acme.io") for i in range(DEACTIVATIONS + 1)]
    pats = [pat(cp, "acme", u) for u in users]
    fleet_token = op(cp, "POST", "/api/v1/edges", {"name": "fleet"})["token"]
    edges = []
    for i in range(EDGES):
        # The decision log stays on (the default), as in issue 17's target for `serve`.
        _, base = start(["edge", "--upstream", cp, "--data", f"{work}/edge{i}", "--listen", "127.0.0.1:0"],
                        {"GATEHOUSE_EDGE_TOKEN": fleet_token}, f"edge{i}")
        edges.append(base)
    for base in edges:
        for token in pats:
            until_allowed(base, "acme", token)

    # 1. Deactivation → every edge.
    latencies = []
    for user, token in zip(users[1:], pats[1:]):
        refused_at = [None] * EDGES
        go = threading.Event()

        def poll(i):
            go.wait()
            while True:
                status, body = resolve(edges[i], "acme", token)
                if status != 200:
                    refused_at[i] = time.perf_counter()
                    return

        threads = [threading.Thread(target=poll, args=(i,)) for i in range(EDGES)]
        for t in threads:
            t.start()
        op(cp, "POST", f"/api/v1/tenants/acme/users/{user}/deactivate", {})
        acked = time.perf_counter()
        go.set()
        for t in threads:
            t.join()
        latencies.append((max(refused_at) - acked) * 1000)
    print(f"deactivation → {EDGES} edges, {len(latencies)} users: p50 {pct(latencies, 50):.1f} ms, "
          f"p99 {pct(latencies, 99):.1f} ms, max {max(latencies):.1f} ms", file=sys.stderr)

    # 2. An edge's /resolve against its own /healthz.
    edge0 = edges[0]
    results = {"healthz": [], "resolve-pat": []}

    def wrk(name, *args, env=None):
        out = subprocess.run(["wrk", "--latency", "-t1", f"-c{CONNECTIONS}", f"-d{DURATION}s", *args],
                             capture_output=True, text=True, env={**os.environ, **(env or {})}).stdout
        if "Non-2xx" in out or ".lua:" in out:
            sys.exit(f"{name}: refusals or a script error:\n{out}")
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        results[name].append(rps)
        print(f"{name}\t{rps:.0f}/s", file=sys.stderr)

    for _ in range(ROUNDS):
        wrk("healthz", f"{edge0}/healthz")
        wrk("resolve-pat", "-s", "bench/wrk/edge.lua", "-H", f"authorization: Bearer {pats[0]}",
            f"{edge0}/v1/acme/resolve", env={"METHOD": "POST"})
    health, res = statistics.median(results["healthz"]), statistics.median(results["resolve-pat"])

    # 3. A big tenant: snapshot size and time; a new edge scoped to it.
    big = scim_tenant(cp, "big")
    created = [None] * BIG_USERS
    started = time.perf_counter()

    failures = []

    def pusher(k):
        # sys.exit in a thread ends only that thread: keep the reason and stop the run below.
        try:
            for i in range(k, BIG_USERS, 8):
                created[i] = scim_user(cp, "big", big, f"b{i}@big.io")
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=pusher, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    push_secs = time.perf_counter() - started
    if failures:
        sys.exit(f"pushing the big tenant failed: {failures[0]}")
    big_pat = pat(cp, "big", created[-1])
    big_token = op(cp, "POST", "/api/v1/edges", {"name": "big", "tenants": ["big"]})["token"]
    conn = http.client.HTTPConnection(cp.removeprefix("http://"), timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/edge/stream", body="{}", headers={
        "authorization": f"Bearer {big_token}", "content-type": "application/json"})
    stream = conn.getresponse()
    stream.readline()  # hello
    snapshot_line = stream.readline()
    snapshot_secs = time.perf_counter() - t0
    conn.close()
    snapshot = json.loads(snapshot_line)
    # The built-in policy's compiled artifact, as a warm edge has it: the figure below is
    # the snapshot, not the first-start compile of the default policy.
    import shutil
    shutil.copytree(f"{work}/edge0/artifacts", f"{work}/big-edge/artifacts")
    t0 = time.perf_counter()
    big_proc, big_edge = start(["edge", "--upstream", cp, "--data", f"{work}/big-edge", "--listen", "127.0.0.1:0"],
                               {"GATEHOUSE_EDGE_TOKEN": big_token, "GATEHOUSE_EDGE_DECISION_LOG": "false"}, "big-edge")
    until_allowed(big_edge, "big", big_pat)
    first_sync_secs = time.perf_counter() - t0
    du = subprocess.run(["du", "-sk", f"{work}/big-edge"], capture_output=True, text=True).stdout.split()[0]

    # 4. Restart with the control plane down.
    cp_proc.send_signal(signal.SIGTERM)
    cp_proc.wait(timeout=60)
    big_proc.kill()
    big_proc.wait()
    t0 = time.perf_counter()
    _, big_edge = start(["edge", "--upstream", cp, "--data", f"{work}/big-edge", "--listen", "127.0.0.1:0"],
                        {"GATEHOUSE_EDGE_TOKEN": big_token, "GATEHOUSE_EDGE_DECISION_LOG": "false"}, "big-edge")
    until_allowed(big_edge, "big", big_pat, deadline=60)
    restart_secs = time.perf_counter() - t0

    print()
    print(f"{os.cpu_count()} cores (shared: figures are noisy); {BIN}; decision log on for the fleet's edges, off for the big tenant's")
    print()
    print("| measurement | figure | target |")
    print("|---|---|---|")
    print(f"| deactivation (admin API answer → last of {EDGES} edges refusing), {len(latencies)} users | "
          f"p50 {pct(latencies, 50):.1f} ms, p99 {pct(latencies, 99):.1f} ms, max {max(latencies):.1f} ms | p99 ≤ 250 ms |")
    print(f"| edge `/healthz`, wrk -t1 -c{CONNECTIONS}, median of {ROUNDS} × {DURATION} s | {health:.0f}/s | reference |")
    print(f"| edge `/v1/acme/resolve` (a PAT), same | {res:.0f}/s ({res / health * 100:.0f} % of /healthz) | as serve |")
    print(f"| {BIG_USERS:,} users pushed by SCIM (8 clients) | {push_secs:.0f} s ({BIG_USERS / push_secs:.0f}/s) | |")
    print(f"| snapshot of that tenant on the stream | {len(snapshot_line) / 1e6:.1f} MB, {len(snapshot['records']):,} records, "
          f"{snapshot_secs:.2f} s to receive | |")
    print(f"| a new edge scoped to it: start → first allowed answer | {first_sync_secs:.2f} s (data dir {int(du) / 1024:.0f} MiB) | |")
    print(f"| that edge `kill -9`, control plane down, restart → first allowed answer from local state | "
          f"{restart_secs:.2f} s | ≤ 2 s |")
finally:
    for p in procs:
        if p.poll() is None:
            p.kill()
    if os.environ.get("KEEP_WORK"):
        print(f"logs and data kept in {work}", file=sys.stderr)
    else:
        subprocess.run(["rm", "-rf", work])
PY
