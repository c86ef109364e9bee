//! Shared helpers of Gatehouse's integration tests: fixture components, an in-process
//! server on a loopback port, and the real `gatehouse` binary started on port 0.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub mod openid;
pub mod pg;

/// The operator token every test server uses.
pub const OPERATOR_TOKEN: &str = "test-operator-token-0123456789";

/// Fixture components, built by `build.rs`.
pub mod fixtures {
    use std::path::PathBuf;

    /// `policies/nested-claims`, the example policy.
    pub static NESTED_CLAIMS: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/nested-claims.wasm"));
    /// `policies/department-teams`, the example policy with a department allow-list.
    pub static DEPARTMENT_TEAMS: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/department-teams.wasm"));
    /// `tests/fixtures/hostile`: misbehaves as its settings say (`{"mode": "loop"}`, ...).
    pub static HOSTILE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hostile.wasm"));

    /// The repository root.
    pub fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ is in the root")
            .to_owned()
    }

    /// A WAT component fixture of `tests/fixtures/`, assembled.
    pub fn wat(name: &str) -> Vec<u8> {
        let path = root().join("tests/fixtures").join(name);
        wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }
}

/// A Gatehouse server under test, reachable at `base`.
pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    pub data: Arc<tempfile::TempDir>,
    config: gatehouse::config::Config,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    relay: Option<gatehouse::outbox::RelayHandle>,
}

impl TestServer {
    /// Starts the router in this process on a loopback port, with a fresh store.
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Like [`TestServer::start`], after `tweak` adjusted the configuration. An `smtp`
    /// section with a URL starts the outbox relay too.
    pub async fn start_with(tweak: impl FnOnce(&mut gatehouse::config::Config)) -> TestServer {
        let data = Arc::new(tempfile::tempdir().expect("temp dir"));
        let mut config = gatehouse::config::Config {
            data: data.path().to_owned(),
            operator_token: Some(OPERATOR_TOKEN.into()),
            // GATEHOUSE_TEST_BACKEND=pg: the same suite on a fresh PostgreSQL database.
            database_url: pg::selected().then(pg::database_url),
            ..Default::default()
        };
        tweak(&mut config);
        let (app, _) = gatehouse::app::App::open(&config).expect("app opens");
        let opened = config.clone();
        let app = Arc::new(app);
        let relay = gatehouse::outbox::start(app.clone(), &config).expect("the relay starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let base = format!("http://{}", listener.local_addr().expect("local addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            gatehouse::http::serve(app, listener, shutdown)
                .await
                .expect("server runs");
        });
        TestServer {
            base,
            client: reqwest::Client::new(),
            data,
            config: opened,
            stop: Some(stop),
            task: Some(task),
            relay,
        }
    }

    /// Stops the server and waits for it (requests in flight finish first).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        if let Some(relay) = self.relay.take() {
            relay.stop().await;
        }
    }

    /// Stops the server, then opens its store again with the same configuration (the same
    /// data directory, or the same PostgreSQL database), to look at what was kept. The data
    /// directory comes back too: it is removed when the last handle to it is dropped, so
    /// keep it as long as the app.
    pub async fn stop_and_reopen(self) -> (gatehouse::app::App, Arc<tempfile::TempDir>) {
        let (config, data) = (self.config.clone(), self.data.clone());
        self.stop().await;
        let app = gatehouse::app::App::open(&config)
            .expect("the store opens again")
            .0;
        (app, data)
    }

    /// A request with the operator token.
    pub fn op(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(OPERATOR_TOKEN)
    }

    /// Creates a tenant, asserting success.
    pub async fn create_tenant(&self, slug: &str) {
        let response = self
            .op(reqwest::Method::POST, "/api/v1/tenants")
            .json(&json!({ "slug": slug }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            201,
            "creating tenant {slug}: {}",
            response.text().await.unwrap()
        );
    }

    /// Uploads a component (base64 JSON form); returns status and body.
    pub async fn upload(
        &self,
        tenant: &str,
        component: &[u8],
        settings: Value,
        activate: bool,
    ) -> (u16, Value) {
        use base64::Engine;
        let body = json!({
            "component_base64": base64::engine::general_purpose::STANDARD.encode(component),
            "settings": settings,
            "activate": activate,
        });
        self.send_json(
            reqwest::Method::POST,
            &format!("/api/v1/tenants/{tenant}/policy/versions"),
            &body,
        )
        .await
    }

    /// Sends a JSON body with the operator token; returns status and JSON body.
    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> (u16, Value) {
        let response = self
            .op(method, path)
            .json(body)
            .send()
            .await
            .expect("request sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Any request: `token` as bearer (none: no header), optional JSON body; returns status
    /// and JSON body (`null` when empty).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Creates a tenant with a first admin; returns the admin's token.
    pub async fn create_tenant_with_admin(&self, slug: &str, email: &str) -> String {
        let (status, body) = self
            .send_json(
                reqwest::Method::POST,
                "/api/v1/tenants",
                &json!({ "slug": slug, "admin_email": email }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["admin_token"]
            .as_str()
            .expect("admin token")
            .to_owned()
    }

    /// Evaluates a decision through the tenant's policy.
    pub async fn evaluate(&self, tenant: &str, request: &Value) -> (u16, Value) {
        self.send_json(
            reqwest::Method::POST,
            &format!("/api/v1/tenants/{tenant}/policy/evaluate"),
            request,
        )
        .await
    }
}

/// A login request that the default policy answers with `create` in `jit` mode.
pub fn jit_login(email: &str) -> Value {
    json!({
        "decision": "login",
        "input": { "mode": "jit", "sso_configured": true, "claims": { "email": email, "subject": "s-1" } }
    })
}

/// The path of the `gatehouse` binary, brought up to date once per test process (cargo
/// does nothing when it already is), so a test never runs a binary older than the code.
pub fn gatehouse_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // Test executables live in <target>/<profile>/deps; the binary in <target>/<profile>.
        let exe = std::env::current_exe().expect("current exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test exe is in <profile>/deps")
            .to_owned();
        let bin = profile_dir.join("gatehouse");
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--quiet", "-p", "gatehouse", "--bin", "gatehouse"])
            .current_dir(fixtures::root());
        if profile_dir
            .file_name()
            .is_some_and(|name| name == "release")
        {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building the gatehouse binary failed");
        assert!(bin.exists(), "no binary at {}", bin.display());
        bin
    })
    .clone()
}

/// The real binary, started with `gatehouse serve --listen 127.0.0.1:0 --data DIR`.
pub struct Process {
    pub child: Child,
    pub base: String,
    pub stderr_log: PathBuf,
}

impl Process {
    /// Starts the binary on `data` and waits for its `listening on` line.
    pub fn start(data: &Path) -> Result<Process> {
        Self::start_with_env(data, &[("GATEHOUSE_OPERATOR_TOKEN", OPERATOR_TOKEN)])
    }

    /// Starts the binary with exactly these `GATEHOUSE_*` variables.
    pub fn start_with_env(data: &Path, env: &[(&str, &str)]) -> Result<Process> {
        let stderr_log = data.with_extension(format!("stderr-{}.log", std::process::id()));
        let stderr = std::fs::File::create(&stderr_log)?;
        Self::start_with_stderr(data, env, stderr.into(), stderr_log)
    }

    /// Starts the binary with its stderr going to `stderr` (`stderr_log` names where
    /// [`Process::stderr`] reads it back, when that is a file).
    pub fn start_with_stderr(
        data: &Path,
        env: &[(&str, &str)],
        stderr: Stdio,
        stderr_log: PathBuf,
    ) -> Result<Process> {
        let data = data.to_str().context("the data directory is UTF-8")?;
        Self::spawn(
            &["serve", "--listen", "127.0.0.1:0", "--data", data],
            env,
            stderr,
            stderr_log,
        )
    }

    /// Starts the binary with `args` (any subcommand that prints `listening on`) and
    /// exactly these `GATEHOUSE_*` variables, stderr to the file `stderr_log`.
    pub fn start_args(args: &[&str], env: &[(&str, &str)], stderr_log: &Path) -> Result<Process> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(stderr_log)?;
        Self::spawn(args, env, stderr.into(), stderr_log.to_owned())
    }

    fn spawn(
        args: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
        stderr_log: PathBuf,
    ) -> Result<Process> {
        let mut command = Command::new(gatehouse_bin());
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (key, _) in std::env::vars() {
            if key.starts_with("GATEHOUSE_") {
                command.env_remove(key);
            }
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().context("starting gatehouse")?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut first = String::new();
            let mut reader = BufReader::new(stdout);
            let _ = reader.read_line(&mut first);
            let _ = tx.send(first);
            // Keep draining so the child never blocks on a full pipe.
            let mut rest = String::new();
            while reader.read_line(&mut rest).is_ok_and(|n| n > 0) {
                rest.clear();
            }
        });
        let first = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                bail!(
                    "gatehouse did not print its listening line: {}",
                    std::fs::read_to_string(&stderr_log)?
                );
            }
        };
        let Some(base) = first.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            bail!(
                "first stdout line was {first:?}; stderr: {}",
                std::fs::read_to_string(&stderr_log)?
            );
        };
        Ok(Process {
            child,
            base: base.to_owned(),
            stderr_log,
        })
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// `kill -9` (what dropping the handle does), then waits.
    pub fn kill9(self) {
        drop(self);
    }

    /// SIGTERM, then waits; returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().expect("child exits")
    }
}

/// A process still running when its handle goes (a test that ended early, failed, or never
/// stopped it) is killed and reaped: no test leaves a server behind.
impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Identity-provider helpers: the fixture keys of `tests/fixtures/keys`, tokens signed with
/// them, and a key set served over HTTP on loopback.
pub mod jwt {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::{json, Value};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    /// `tests/fixtures/keys`.
    pub fn keys_dir() -> std::path::PathBuf {
        crate::fixtures::root().join("tests/fixtures/keys")
    }

    /// Public JWK of a fixture key.
    pub fn jwk(name: &str) -> Value {
        let all: Value =
            serde_json::from_str(&std::fs::read_to_string(keys_dir().join("jwks.json")).unwrap())
                .unwrap();
        all[name].clone()
    }

    pub fn sign(key: &str, alg: Algorithm, claims: &Value) -> String {
        let pem = std::fs::read(keys_dir().join(format!("{key}.pem"))).unwrap();
        let encoding = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
            _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
        };
        let mut header = Header::new(alg);
        header.kid = Some(key.to_owned());
        jsonwebtoken::encode(&header, claims, &encoding).unwrap()
    }

    /// A key set served on loopback, which the test can change, count and take down.
    pub struct Jwks {
        pub url: String,
        pub keys: Arc<Mutex<Vec<Value>>>,
        pub fetches: Arc<AtomicUsize>,
        pub down: Arc<AtomicBool>,
    }

    impl Jwks {
        pub async fn serve(keys: Vec<Value>, max_age: u64) -> Jwks {
            let keys = Arc::new(Mutex::new(keys));
            let fetches = Arc::new(AtomicUsize::new(0));
            let down = Arc::new(AtomicBool::new(false));
            let (k, f, d) = (keys.clone(), fetches.clone(), down.clone());
            let app = axum::Router::new().route(
                "/jwks",
                axum::routing::get(move || {
                    let (k, f, d) = (k.clone(), f.clone(), d.clone());
                    async move {
                        f.fetch_add(1, Ordering::SeqCst);
                        if d.load(Ordering::SeqCst) {
                            return (
                                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                                [("cache-control", String::new())],
                                String::new(),
                            );
                        }
                        let body = json!({ "keys": *k.lock().unwrap() }).to_string();
                        (
                            axum::http::StatusCode::OK,
                            [("cache-control", format!("max-age={max_age}"))],
                            body,
                        )
                    }
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/jwks", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            Jwks {
                url,
                keys,
                fetches,
                down,
            }
        }

        pub fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }
    }
}
