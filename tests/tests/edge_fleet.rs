//! The edge fleet (issue 15): one control plane (`gatehouse serve` on sled) and real
//! `gatehouse edge` processes on loopback, each with a data directory of its own, fed by
//! the control plane's change log over one stream per edge. Every wait polls with a
//! deadline.

use gatehouse_tests::jwt::{jwk, sign, Jwks};
use gatehouse_tests::{pg, Process, OPERATOR_TOKEN};
use jsonwebtoken::Algorithm;
use reqwest::Method;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const OP: Option<&str> = Some(OPERATOR_TOKEN);
const ISSUER: &str = "https://idp.test/corp";
/// Markers that must never leave the control plane.
const CLIENT_SECRET: &str = "client-secret-marker-4f1d9c";
const PASSWORD: &str = "correct horse battery";
const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const DEADLINE: Duration = Duration::from_secs(60);

/// The tests of this file run one at a time: each runs four or five processes on a
/// 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Processes started by a test; all killed when it ends (fields drop in order: the
/// edges, the control plane and the others, each killed by its handle, then their data).
struct Fleet {
    edges: Vec<Option<Process>>,
    cp: Option<Process>,
    /// Other processes (a second replica).
    others: Vec<Process>,
    dir: tempfile::TempDir,
    cp_port: u16,
    cp_env: Vec<(&'static str, String)>,
    /// Where edges connect (default: the control plane).
    upstream: Option<String>,
    client: reqwest::Client,
}

impl Fleet {
    /// A control plane on sled with `env` added to the operator token.
    fn start(env: &[(&'static str, &str)]) -> Fleet {
        let mut cp_env = vec![
            ("GATEHOUSE_OPERATOR_TOKEN", OPERATOR_TOKEN.to_owned()),
            ("GATEHOUSE_ALLOW_PRIVATE_URLS", "true".to_owned()),
        ];
        cp_env.extend(env.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let mut fleet = Fleet {
            dir: tempfile::tempdir().unwrap(),
            cp: None,
            cp_port: 0,
            cp_env,
            edges: Vec::new(),
            upstream: None,
            others: Vec::new(),
            client: reqwest::Client::new(),
        };
        fleet.start_cp();
        fleet
    }

    fn cp_data(&self) -> PathBuf {
        self.dir.path().join("cp")
    }

    /// Starts the control plane (again, on the same port and data).
    fn start_cp(&mut self) {
        let data = self.cp_data();
        let listen = format!("127.0.0.1:{}", self.cp_port);
        let env: Vec<(&str, &str)> = self.cp_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let process = Process::start_args(
            &[
                "serve",
                "--listen",
                &listen,
                "--data",
                data.to_str().unwrap(),
            ],
            &env,
            &self.dir.path().join("cp.log"),
        )
        .expect("the control plane starts");
        self.cp_port = process.base.rsplit(':').next().unwrap().parse().unwrap();
        self.cp = Some(process);
    }

    /// SIGTERM to the control plane; it must stop although edges are streaming.
    fn stop_cp(&mut self) {
        let process = self.cp.take().expect("the control plane runs");
        let status = process.terminate();
        assert!(
            status.success(),
            "the control plane stopped cleanly: {status}"
        );
    }

    fn cp(&self) -> &str {
        &self.cp.as_ref().expect("the control plane runs").base
    }

    fn edge_data(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("edge{i}"))
    }

    /// Starts edge `i` (a new one, or again on its data directory) with credential `token`.
    fn start_edge(&mut self, i: usize, token: &str, env: &[(&'static str, &str)]) {
        let data = self.edge_data(i);
        let upstream = self
            .upstream
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{}", self.cp_port));
        let mut all = vec![
            ("GATEHOUSE_EDGE_TOKEN", token),
            ("GATEHOUSE_ALLOW_PRIVATE_URLS", "true"),
        ];
        all.extend_from_slice(env);
        let process = Process::start_args(
            &[
                "edge",
                "--upstream",
                &upstream,
                "--data",
                data.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ],
            &all,
            &self.dir.path().join(format!("edge{i}.log")),
        )
        .expect("the edge starts");
        if self.edges.len() <= i {
            self.edges.resize_with(i + 1, || None);
        }
        self.edges[i] = Some(process);
    }

    fn edge(&self, i: usize) -> &str {
        &self.edges[i].as_ref().expect("the edge runs").base
    }

    fn kill9_edge(&mut self, i: usize) {
        self.edges[i].take().expect("the edge runs").kill9();
    }

    async fn call(
        &self,
        base: &str,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{base}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// An operator call on the control plane that must succeed.
    async fn op(&self, method: Method, path: &str, body: Value) -> Value {
        let body = (!body.is_null()).then_some(body);
        let (status, answer) = self.call(self.cp(), method, path, OP, body.as_ref()).await;
        assert!((200..300).contains(&status), "{path}: {status} {answer}");
        answer
    }

    /// [`Fleet::op`], then the string `field` of its answer.
    async fn op_field(&self, method: Method, path: &str, body: Value, field: &str) -> String {
        let answer = self.op(method, path, body).await;
        answer[field]
            .as_str()
            .unwrap_or_else(|| panic!("{path}: no {field} in {answer}"))
            .to_owned()
    }

    async fn resolve(&self, base: &str, tenant: &str, token: &str) -> (u16, Value) {
        self.call(
            base,
            Method::POST,
            &format!("/v1/{tenant}/resolve"),
            Some(token),
            None,
        )
        .await
    }

    /// Polls edge `i` until `check` accepts its answer for `token`; the time it took.
    async fn until_edge(
        &self,
        i: usize,
        tenant: &str,
        token: &str,
        what: &str,
        check: impl Fn(u16, &Value) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let (status, body) = self.resolve(self.edge(i), tenant, token).await;
            if check(status, &body) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < DEADLINE,
                "edge {i}: {what} never happened; last answer {status} {body}\n{}",
                self.edges[i].as_ref().unwrap().stderr()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Polls every running edge until `check` holds; the slowest edge's time.
    async fn until_all(
        &self,
        tenant: &str,
        token: &str,
        what: &str,
        check: impl Fn(u16, &Value) -> bool + Copy,
    ) -> Duration {
        let mut slowest = Duration::ZERO;
        for i in 0..self.edges.len() {
            if self.edges[i].is_some() {
                slowest = slowest.max(self.until_edge(i, tenant, token, what, check).await);
            }
        }
        slowest
    }

    /// A Prometheus counter or gauge of edge `i` (0 when absent).
    async fn metric(&self, i: usize, name: &str) -> f64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.edge(i)))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| {
                let (key, value) = line.split_once(' ')?;
                (key == name).then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0.0)
    }

    /// Issues an edge credential (for `tenants`, or all with `None`); its token.
    async fn credential(&self, name: &str, tenants: Option<&[&str]>) -> String {
        let mut body = json!({ "name": name });
        if let Some(tenants) = tenants {
            body["tenants"] = json!(tenants);
        }
        let issued = self.op(Method::POST, "/api/v1/edges", body).await;
        issued["token"].as_str().unwrap().to_owned()
    }
}

fn allowed(status: u16, body: &Value) -> bool {
    status == 200 && body["decision"] == "allow"
}

fn refused(reason: &'static str) -> impl Fn(u16, &Value) -> bool + Copy {
    move |status, body| status != 200 && body["reason"] == reason
}

/// Tenant `slug` in SCIM mode with connection `idp` (its client secret is the marker), the
/// corp IdP on `jwks`; returns the SCIM token.
async fn scim_tenant(f: &Fleet, slug: &str, jwks: &str) -> String {
    f.op(
        Method::POST,
        "/api/v1/tenants",
        json!({ "slug": slug, "admin_email": format!("admin@{slug}.io") }),
    )
    .await;
    f.op(
        Method::POST,
        &format!("/api/v1/tenants/{slug}/identity-providers"),
        json!({
            "name": "corp", "issuer": ISSUER, "jwks_uri": jwks, "audiences": ["api"],
            "algorithms": ["RS256"], "user_claim": "email", "team_claim": "groups"
        }),
    )
    .await;
    f.op(
        Method::POST,
        &format!("/api/v1/tenants/{slug}/sso"),
        json!({
            "id": "idp", "issuer": "https://idp.example.com", "client_id": "gatehouse",
            "client_secret": CLIENT_SECRET, "jwks_uri": "https://203.0.113.10/jwks"
        }),
    )
    .await;
    let token = f
        .op_field(
            Method::POST,
            &format!("/api/v1/tenants/{slug}/sso/idp/scim-token"),
            json!({}),
            "token",
        )
        .await;
    f.op(
        Method::PUT,
        &format!("/api/v1/tenants/{slug}/provisioning"),
        json!({ "mode": "scim" }),
    )
    .await;
    token
}

/// A user pushed by SCIM, active; its id.
async fn scim_user(f: &Fleet, slug: &str, scim: &str, email: &str) -> String {
    let (status, body) = scim_call(
        f,
        slug,
        scim,
        Method::POST,
        "Users",
        &json!({
            "schemas": [USER], "userName": email, "externalId": format!("ext-{email}"),
            "active": true, "emails": [{ "value": email, "primary": true }]
        }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

async fn scim_call(
    f: &Fleet,
    slug: &str,
    scim: &str,
    method: Method,
    path: &str,
    body: &Value,
) -> (u16, Value) {
    let response = f
        .client
        .request(method, format!("{}/scim/v2/{slug}/idp/{path}", f.cp()))
        .bearer_auth(scim)
        .header("content-type", "application/scim+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn scim_deactivate(f: &Fleet, slug: &str, scim: &str, user: &str) {
    let (status, body) = scim_call(
        f,
        slug,
        scim,
        Method::PATCH,
        &format!("Users/{user}"),
        &json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{ "op": "replace", "path": "active", "value": false }]
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// A personal access token of `user`: (token id, secret).
async fn pat(f: &Fleet, slug: &str, user: &str) -> (String, String) {
    let body = f
        .op(
            Method::POST,
            &format!("/api/v1/tenants/{slug}/users/{user}/tokens"),
            json!({ "name": "edge-test" }),
        )
        .await;
    (
        body["id"].as_str().unwrap().to_owned(),
        body["secret"].as_str().unwrap().to_owned(),
    )
}

fn jwt(email: &str, groups: &[&str]) -> String {
    sign(
        "rsa-a",
        Algorithm::RS256,
        &json!({
            "iss": ISSUER, "aud": "api", "iat": now(), "exp": now() + 600,
            "email": email, "groups": groups
        }),
    )
}

/// Every file under `dir`, read whole.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Where in `dir` `needle` is written, if anywhere.
fn found_in(dir: &Path, needle: &str) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|(_, bytes)| contains(bytes, needle.as_bytes()))
        .map(|(path, _)| path)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_reach_every_edge_and_secrets_never_leave_the_control_plane() {
    let _serial = SERIAL.lock().await;
    let jwks = Jwks::serve(vec![jwk("rsa-a")], 300).await;
    let mut f = Fleet::start(&[]);
    let scim = scim_tenant(&f, "acme", &jwks.url).await;
    let ann = scim_user(&f, "acme", &scim, "ann@acme.io").await;
    let bob = scim_user(&f, "acme", &scim, "bob@acme.io").await;
    scim_user(&f, "acme", &scim, "carl@acme.io").await;
    let (_, ann_pat) = pat(&f, "acme", &ann).await;
    let (bob_pat_id, bob_pat) = pat(&f, "acme", &bob).await;
    let va = f
        .op_field(
            Method::POST,
            "/api/v1/tenants/acme/virtual-accounts",
            json!({ "name": "deployer" }),
            "id",
        )
        .await;
    let va_token = f
        .op_field(
            Method::POST,
            &format!("/api/v1/tenants/acme/virtual-accounts/{va}/tokens"),
            json!({ "name": "ci" }),
            "secret",
        )
        .await;
    let ops = f
        .op_field(
            Method::POST,
            "/api/v1/tenants/acme/teams",
            json!({ "name": "ops" }),
            "id",
        )
        .await;
    // A password user with a session: a password hash, an outbox message, a used link and
    // a session signing key now exist on the control plane.
    f.op(
        Method::POST,
        "/api/v1/tenants/acme/users",
        json!({ "email": "pat@acme.io", "send_password_email": true }),
    )
    .await;
    let outbox = f
        .op(Method::GET, "/api/v1/tenants/acme/outbox", Value::Null)
        .await;
    let mail = outbox["messages"].as_array().unwrap().last().unwrap()["body"]
        .as_str()
        .unwrap()
        .to_owned();
    let link = mail
        .split("token=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a link in the message")
        .to_owned();
    let (status, body) = f
        .call(
            f.cp(),
            Method::POST,
            "/v1/acme/password",
            None,
            Some(&json!({ "token": link, "password": PASSWORD, "confirm": PASSWORD })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let response = f
        .client
        .post(format!("{}/v1/acme/password-login", f.cp()))
        .header("accept", "application/json")
        .json(&json!({ "email": "pat@acme.io", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let login: Value = response.json().await.unwrap();
    let session = login["session_token"].as_str().unwrap().to_owned();

    let token = f.credential("fleet", None).await;
    for i in 0..3 {
        f.start_edge(i, &token, &[]);
    }
    f.until_all("acme", &ann_pat, "ann's PAT allowed", allowed)
        .await;
    f.until_all("acme", &session, "a session verified", allowed)
        .await;
    f.until_all("acme", &va_token, "the VA token allowed", allowed)
        .await;
    for i in 0..3 {
        assert_eq!(f.metric(i, "gatehouse_edge_snapshots_total").await, 1.0);
    }
    // Only the edge routes: no admin API, SCIM, SSO or password routes.
    for path in [
        "/api/v1/tenants",
        "/scim/v2/acme/idp/Users",
        "/v1/acme/password-login",
        "/v1/acme/login",
        "/v1/edge/stream",
    ] {
        let (status, _) = f.call(f.edge(0), Method::GET, path, OP, None).await;
        assert_eq!(status, 404, "{path} on an edge");
    }
    let (status, ready) = f.call(f.edge(0), Method::GET, "/readyz", None, None).await;
    assert_eq!(
        (status, &ready["status"]),
        (200, &json!("ready")),
        "{ready}"
    );

    // A user deactivated through SCIM is refused by every edge.
    let acked = Instant::now();
    scim_deactivate(&f, "acme", &scim, &ann).await;
    let took = f
        .until_all("acme", &ann_pat, "ann refused", refused("deactivated"))
        .await;
    eprintln!(
        "deactivation reached 3 edges {:?} after the SCIM answer (slowest edge {took:?})",
        acked.elapsed()
    );
    // A PAT revoked.
    f.until_all("acme", &bob_pat, "bob's PAT allowed", allowed)
        .await;
    f.op(
        Method::DELETE,
        &format!("/api/v1/tenants/acme/users/{bob}/tokens/{bob_pat_id}"),
        Value::Null,
    )
    .await;
    f.until_all("acme", &bob_pat, "bob's PAT refused", refused("revoked"))
        .await;
    // A VA disabled.
    f.op(
        Method::PATCH,
        &format!("/api/v1/tenants/acme/virtual-accounts/{va}"),
        json!({ "enabled": false }),
    )
    .await;
    f.until_all("acme", &va_token, "the VA refused", refused("disabled"))
        .await;
    // A team mapping changed.
    let carl = jwt("carl@acme.io", &["g-ops"]);
    f.until_all("acme", &carl, "carl allowed without ops", |s, b| {
        allowed(s, b) && !b["teams"].as_array().unwrap().contains(&json!("ops"))
    })
    .await;
    f.op(
        Method::PATCH,
        &format!("/api/v1/tenants/acme/teams/{ops}"),
        json!({ "mappings": [{ "idp": "corp", "value": "g-ops" }] }),
    )
    .await;
    f.until_all("acme", &carl, "carl in ops through the mapping", |s, b| {
        allowed(s, b) && b["teams"].as_array().unwrap().contains(&json!("ops"))
    })
    .await;
    // A policy activated: nested-claims refusing users whose token gives no team.
    let bob_jwt = jwt("bob@acme.io", &[]);
    f.until_all(
        "acme",
        &bob_jwt,
        "bob allowed by the default policy",
        allowed,
    )
    .await;
    use base64::Engine;
    f.op(
        Method::POST,
        "/api/v1/tenants/acme/policy/versions",
        json!({
            "component_base64": base64::engine::general_purpose::STANDARD
                .encode(gatehouse_tests::fixtures::NESTED_CLAIMS),
            "settings": { "require_team": true },
            "activate": true,
        }),
    )
    .await;
    f.until_all(
        "acme",
        &bob_jwt,
        "the new policy refusing bob",
        refused("no_team"),
    )
    .await;
    f.until_all("acme", &carl, "the new policy allowing carl", allowed)
        .await;

    // What never leaves the control plane: the markers are on its disk (so the search can
    // find them) and on no edge's.
    let cp_data = f.cp_data();
    let argon = "$argon2id$";
    let signing = "\"private_pkcs8\":\"M"; // PKCS#8 DER in base64 starts with "M"
    for needle in [CLIENT_SECRET, argon, signing] {
        assert!(
            !found_in(&cp_data, needle).is_empty(),
            "{needle} is on the control plane's disk"
        );
    }
    let edge_dirs: Vec<PathBuf> = (0..3).map(|i| f.edge_data(i)).collect();
    for i in 0..3 {
        f.kill9_edge(i);
    }
    for dir in &edge_dirs {
        assert!(
            !found_in(dir, "ann@acme.io").is_empty(),
            "the edge holds users"
        );
        for needle in [CLIENT_SECRET, argon, signing, mail.as_str(), &link] {
            assert!(
                found_in(dir, needle).is_empty(),
                "{needle:?} reached {}: {:?}",
                dir.display(),
                found_in(dir, needle)
            );
        }
        let db = sled::open(dir.join("sled")).expect("the edge's sled opens");
        for space in [
            "passwords",
            "sso_configs",
            "outbox",
            "outbox_pending",
            "audit",
            "links",
            "sso_pending",
            "sso_subjects",
            "scim_index",
            "scim_pending",
            "change_log",
        ] {
            let tree = db.open_tree(space).unwrap();
            assert_eq!(tree.len(), 0, "{space} is empty on an edge");
        }
        assert!(db.open_tree("users").unwrap().len() >= 4);
        for record in db.open_tree("session_keys").unwrap().iter() {
            let (_, value) = record.unwrap();
            let key: Value = serde_json::from_slice(&value).unwrap();
            assert_eq!(key["private_pkcs8"], "", "only the verification half");
            assert!(!key["public"].as_str().unwrap().is_empty());
        }
        assert!(!db.open_tree("session_keys").unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn edges_answer_from_local_state_and_resume_from_their_cursors() {
    let _serial = SERIAL.lock().await;
    let jwks = Jwks::serve(vec![jwk("rsa-a")], 300).await;
    let mut f = Fleet::start(&[]);
    let scim = scim_tenant(&f, "acme", &jwks.url).await;
    let ann = scim_user(&f, "acme", &scim, "ann@acme.io").await;
    let bob = scim_user(&f, "acme", &scim, "bob@acme.io").await;
    let (_, ann_pat) = pat(&f, "acme", &ann).await;
    let (_, bob_pat) = pat(&f, "acme", &bob).await;
    let token = f.credential("fleet", None).await;
    for i in 0..3 {
        f.start_edge(i, &token, &[]);
    }
    f.until_all("acme", &ann_pat, "ann allowed", allowed).await;

    // The control plane stopped (SIGTERM, with three streams open): edges keep answering.
    f.stop_cp();
    for i in 0..3 {
        let start = Instant::now();
        loop {
            let (_, ready) = f.call(f.edge(i), Method::GET, "/readyz", None, None).await;
            if ready["connected"] == false {
                break;
            }
            assert!(start.elapsed() < DEADLINE, "edge {i} noticed: {ready}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (status, body) = f.resolve(f.edge(i), "acme", &ann_pat).await;
        assert!(allowed(status, &body), "edge {i}: {status} {body}");
        let (status, ready) = f.call(f.edge(i), Method::GET, "/readyz", None, None).await;
        assert_eq!(status, 200, "still within the staleness bound: {ready}");
    }
    // An edge killed and restarted with the control plane down answers from its store.
    f.kill9_edge(0);
    f.start_edge(0, &token, &[]);
    let (status, body) = f.resolve(f.edge(0), "acme", &ann_pat).await;
    assert!(allowed(status, &body), "restarted edge: {status} {body}");
    assert_eq!(f.metric(0, "gatehouse_edge_snapshots_total").await, 0.0);

    // The control plane back: edges resume from their cursors, no snapshot.
    f.start_cp();
    let acked = Instant::now();
    scim_deactivate(&f, "acme", &scim, &bob).await;
    f.until_all("acme", &bob_pat, "bob refused", refused("deactivated"))
        .await;
    eprintln!(
        "after a restart of the control plane: {:?}",
        acked.elapsed()
    );
    assert_eq!(f.metric(0, "gatehouse_edge_snapshots_total").await, 0.0);
    for i in 1..3 {
        assert_eq!(f.metric(i, "gatehouse_edge_snapshots_total").await, 1.0);
        assert!(f.metric(i, "gatehouse_edge_stream_connects_total").await >= 2.0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_edge_refuses_and_a_cursor_out_of_retention_takes_a_snapshot() {
    let _serial = SERIAL.lock().await;
    let jwks = Jwks::serve(vec![jwk("rsa-a")], 300).await;
    let mut f = Fleet::start(&[("GATEHOUSE_STORE_CHANGE_LOG_RETENTION", "3")]);
    let scim = scim_tenant(&f, "acme", &jwks.url).await;
    let ann = scim_user(&f, "acme", &scim, "ann@acme.io").await;
    let (_, ann_pat) = pat(&f, "acme", &ann).await;
    let token = f.credential("fleet", None).await;
    f.start_edge(0, &token, &[("GATEHOUSE_EDGE_MAX_STALENESS_SECS", "2")]);
    f.until_edge(0, "acme", &ann_pat, "ann allowed", allowed)
        .await;

    // The control plane down past the bound: refused with `stale` (fail closed).
    f.stop_cp();
    f.until_edge(0, "acme", &ann_pat, "a stale refusal", refused("stale"))
        .await;
    let (status, ready) = f.call(f.edge(0), Method::GET, "/readyz", None, None).await;
    assert_eq!(
        (status, &ready["status"]),
        (503, &json!("stale")),
        "{ready}"
    );
    assert!(f.metric(0, "gatehouse_edge_staleness_seconds").await > 2.0);
    // Counted (and logged) like every other decision.
    let stale = r#"gatehouse_edge_decisions_total{result="deny",reason="stale"}"#;
    assert!(f.metric(0, stale).await >= 1.0);

    // The edge away while more changes than the log keeps are made.
    f.start_cp();
    f.kill9_edge(0);
    for i in 0..6 {
        scim_user(&f, "acme", &scim, &format!("u{i}@acme.io")).await;
    }
    scim_deactivate(&f, "acme", &scim, &ann).await;
    // A restart prunes at once (then every minute).
    f.stop_cp();
    f.start_cp();
    f.start_edge(0, &token, &[("GATEHOUSE_EDGE_MAX_STALENESS_SECS", "2")]);
    f.until_edge(0, "acme", &ann_pat, "ann refused", refused("deactivated"))
        .await;
    assert_eq!(f.metric(0, "gatehouse_edge_snapshots_total").await, 1.0);
    let (status, ready) = f.call(f.edge(0), Method::GET, "/readyz", None, None).await;
    assert_eq!(
        (status, &ready["status"]),
        (200, &json!("ready")),
        "{ready}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edge_scoped_to_a_tenant_never_receives_another() {
    let _serial = SERIAL.lock().await;
    let jwks = Jwks::serve(vec![jwk("rsa-a")], 300).await;
    let mut f = Fleet::start(&[]);
    let acme = scim_tenant(&f, "acme", &jwks.url).await;
    let globex = scim_tenant(&f, "globex", &jwks.url).await;
    let ann = scim_user(&f, "acme", &acme, "ann@acme.io").await;
    let gus = scim_user(&f, "globex", &globex, "gus-marker@globex.io").await;
    let (_, ann_pat) = pat(&f, "acme", &ann).await;
    let (_, gus_pat) = pat(&f, "globex", &gus).await;
    let scoped = f.credential("acme-only", Some(&["acme"])).await;
    let all = f.credential("all", None).await;
    f.start_edge(0, &scoped, &[]);
    f.until_edge(0, "acme", &ann_pat, "ann allowed", allowed)
        .await;
    let (status, body) = f.resolve(f.edge(0), "globex", &gus_pat).await;
    assert_eq!(status, 401, "{body}");
    // A globex change while the edge streams.
    scim_user(&f, "globex", &globex, "gia-marker@globex.io").await;

    // On the wire: the scoped stream until two `synced` lines, against the full one.
    async fn wire(f: &Fleet, token: &str) -> String {
        let mut response = f
            .client
            .post(format!("{}/v1/edge/stream", f.cp()))
            .bearer_auth(token)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let mut text = String::new();
        while text.matches("{\"t\":\"synced\"}").count() < 2 {
            let chunk = tokio::time::timeout(DEADLINE, response.chunk())
                .await
                .expect("a line")
                .unwrap()
                .expect("the stream goes on");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text
    }
    let scoped_wire = wire(&f, &scoped).await;
    let full_wire = wire(&f, &all).await;
    assert!(full_wire.contains("\"tenant\":\"globex\""));
    assert!(scoped_wire.contains("\"tenant\":\"acme\""));
    assert!(!scoped_wire.contains("globex"), "{scoped_wire}");
    // A credential that is not an edge's, or revoked, is refused.
    let (status, _) = f
        .call(
            f.cp(),
            Method::POST,
            "/v1/edge/stream",
            OP,
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, 401);
    let listed = f.op(Method::GET, "/api/v1/edges", Value::Null).await;
    let id = listed["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "all")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!listed.to_string().contains("gae_"), "no secret listed");
    f.op(Method::DELETE, &format!("/api/v1/edges/{id}"), Value::Null)
        .await;
    let (status, _) = f
        .call(
            f.cp(),
            Method::POST,
            "/v1/edge/stream",
            Some(&all),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, 401);

    // On disk.
    let dir = f.edge_data(0);
    f.kill9_edge(0);
    assert!(!found_in(&dir, "ann@acme.io").is_empty());
    for needle in ["globex", "gus-marker", "gia-marker"] {
        assert!(found_in(&dir, needle).is_empty(), "{needle} on the edge");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgresql_edges_follow_a_replica_that_takes_no_writes() {
    let _serial = SERIAL.lock().await;
    let url = pg::database_url();
    let mut f = Fleet::start(&[("GATEHOUSE_DATABASE_URL", &url)]);
    // Replica B on the same database: the edges' upstream; every write goes to A.
    let b = Process::start_args(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            f.dir.path().join("cp-b").to_str().unwrap(),
        ],
        &[
            ("GATEHOUSE_OPERATOR_TOKEN", OPERATOR_TOKEN),
            ("GATEHOUSE_DATABASE_URL", &url),
        ],
        &f.dir.path().join("cp-b.log"),
    )
    .expect("replica B starts");
    f.upstream = Some(b.base.clone());
    f.others.push(b);
    let jwks = Jwks::serve(vec![jwk("rsa-a")], 300).await;
    let scim = scim_tenant(&f, "acme", &jwks.url).await;
    let ann = scim_user(&f, "acme", &scim, "ann@acme.io").await;
    let bob = scim_user(&f, "acme", &scim, "bob@acme.io").await;
    let (_, ann_pat) = pat(&f, "acme", &ann).await;
    let (bob_pat_id, bob_pat) = pat(&f, "acme", &bob).await;
    let token = f.credential("fleet", None).await;
    for i in 0..3 {
        f.start_edge(i, &token, &[]);
    }
    f.until_all("acme", &ann_pat, "ann allowed", allowed).await;
    f.until_all("acme", &bob_pat, "bob allowed", allowed).await;
    let acked = Instant::now();
    scim_deactivate(&f, "acme", &scim, &ann).await;
    f.until_all("acme", &ann_pat, "ann refused", refused("deactivated"))
        .await;
    eprintln!(
        "deactivation on A reached 3 edges of B in {:?}",
        acked.elapsed()
    );
    f.op(
        Method::DELETE,
        &format!("/api/v1/tenants/acme/users/{bob}/tokens/{bob_pat_id}"),
        Value::Null,
    )
    .await;
    f.until_all("acme", &bob_pat, "bob's PAT refused", refused("revoked"))
        .await;
    for i in 0..3 {
        let snapshots = f.metric(i, "gatehouse_edge_snapshots_total").await;
        assert_eq!(snapshots, 1.0, "edge {i} took one snapshot, then batches");
    }
}
