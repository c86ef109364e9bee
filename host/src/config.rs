//! Configuration: defaults, then a TOML file, then `GATEHOUSE_*` environment variables,
//! then command-line flags. Unknown keys are refused with the key named; secrets may come
//! from a file (`operator_token_file`, `GATEHOUSE_OPERATOR_TOKEN_FILE`; `smtp.url_file`,
//! `GATEHOUSE_SMTP_URL_FILE`; `database_url_file`, `GATEHOUSE_DATABASE_URL_FILE`).

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything `gatehouse serve` can be told.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Directory of the embedded store (with a database URL: only the local artifact
    /// cache).
    pub data: PathBuf,
    /// PostgreSQL instead of the embedded store: `postgres://user:pass@host1,host2/db?
    /// target_session_attrs=read-write`. Every replica given the same URL is equal.
    pub database_url: Option<String>,
    /// File holding the database URL (it carries a password).
    pub database_url_file: Option<PathBuf>,
    /// `gatehouse edge`: the control plane's base URL (`https://gatehouse.example.com`).
    pub upstream: Option<String>,
    /// `gatehouse edge`: the edge credential (`gae_…`, issued by the operator).
    pub edge_token: Option<String>,
    /// `gatehouse edge`: file holding the edge credential.
    pub edge_token_file: Option<PathBuf>,
    /// The operator token; when absent one is generated on first start and printed once.
    pub operator_token: Option<String>,
    /// File holding the operator token.
    pub operator_token_file: Option<PathBuf>,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    /// Log lines queued for the log writer thread before new lines are dropped (and
    /// counted in `gatehouse_log_dropped_lines_total`): a request never waits for stderr.
    pub log_queue_lines: usize,
    /// Allow JWKS and discovery URLs on loopback and private networks, and plain http
    /// (tests, internal identity providers).
    pub allow_private_urls: bool,
    /// The base URL people reach this server at (`https://id.example.com`): links in
    /// emails are built on it when a message is queued. Without it a link is a path.
    pub public_url: Option<String>,
    pub policy: PolicyConfig,
    pub edge: EdgeConfig,
    pub smtp: SmtpConfig,
    pub scim: ScimConfig,
    pub session: SessionConfig,
    pub password: PasswordConfig,
    pub sso: SsoLoginConfig,
    pub store: StoreConfig,
}

/// The embedded store.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// A tenant's concurrent writes go in rounds, one transaction and one flush each, and
    /// concurrent flushes are shared; each write is still acknowledged only once durable
    /// (decisions 60, 79, 80). `false`: each write takes the tenant's lock, commits and
    /// flushes on its own.
    pub group_commit: bool,
    /// Most database connections one replica opens for data (PostgreSQL only; tenant
    /// locks use as many again at most).
    pub max_connections: usize,
    /// Entries of each tenant's change log kept (decision 53); older ones are pruned.
    pub change_log_retention: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            group_commit: true,
            max_connections: 16,
            change_log_retention: 100_000,
        }
    }
}

/// The edge token evaluator: answer headers, caches, key fetching.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// Prefix of the identity headers of `forward-auth` answers (`X-Gatehouse-Id`, ...).
    pub header_prefix: String,
    /// Ask the proxy to drop `Authorization` before the request goes upstream
    /// (`x-envoy-auth-headers-to-remove`; nginx and Traefik are configured instead, see
    /// docs/edge.md).
    pub strip_authorization: bool,
    /// One log line per decision (target `gatehouse::decision`).
    pub decision_log: bool,
    /// Entries in the verified-result cache.
    pub cache_entries: usize,
    /// Longest a verified result is reused, in seconds (never past the token's `exp`).
    pub cache_ttl_secs: u64,
    /// Key-set lifetime when the provider sends no `max-age`, in seconds.
    pub jwks_default_ttl_secs: u64,
    /// `max-age` is clamped to `[jwks_min_ttl_secs, jwks_max_ttl_secs]`.
    pub jwks_min_ttl_secs: u64,
    pub jwks_max_ttl_secs: u64,
    /// At most one refetch per key location in this time for unknown `kid`s, in ms.
    pub jwks_refetch_cooldown_ms: u64,
    /// How long an expired key set keeps serving while its provider is down, in seconds.
    pub jwks_max_stale_secs: u64,
    /// Timeout of one key or discovery fetch, in ms.
    pub jwks_fetch_timeout_ms: u64,
    /// `gatehouse edge`: past this many seconds without hearing from the control plane,
    /// every decision is refused with reason `stale` (fail closed).
    pub max_staleness_secs: u64,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            header_prefix: "X-Gatehouse-".into(),
            strip_authorization: false,
            decision_log: true,
            cache_entries: 100_000,
            cache_ttl_secs: 300,
            jwks_default_ttl_secs: 600,
            jwks_min_ttl_secs: 60,
            jwks_max_ttl_secs: 86_400,
            jwks_refetch_cooldown_ms: 30_000,
            jwks_max_stale_secs: 3_600,
            jwks_fetch_timeout_ms: 5_000,
            max_staleness_secs: 600,
        }
    }
}

impl EdgeConfig {
    /// The evaluator settings this configuration describes.
    pub fn settings(&self, allow_private_urls: bool) -> crate::edge::EdgeSettings {
        crate::edge::EdgeSettings {
            jwks: crate::jwt::jwks::JwksSettings {
                default_ttl: Duration::from_secs(self.jwks_default_ttl_secs),
                min_ttl: Duration::from_secs(self.jwks_min_ttl_secs),
                max_ttl: Duration::from_secs(self.jwks_max_ttl_secs.max(self.jwks_min_ttl_secs)),
                refetch_cooldown: Duration::from_millis(self.jwks_refetch_cooldown_ms),
                max_stale: Duration::from_secs(self.jwks_max_stale_secs),
                fetch_timeout: Duration::from_millis(self.jwks_fetch_timeout_ms),
                allow_private: allow_private_urls,
                ..Default::default()
            },
            cache_entries: self.cache_entries,
            cache_ttl: Duration::from_secs(self.cache_ttl_secs),
            decision_log: self.decision_log,
            header_prefix: self.header_prefix.clone(),
            strip_authorization: self.strip_authorization,
        }
    }
}

/// The SCIM service provider's limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScimConfig {
    /// Sustained requests per second per SCIM connection (token bucket).
    pub rate_per_second: u32,
    /// Requests a connection may make in a burst above the sustained rate.
    pub burst: u32,
    /// Largest request body, in KiB (413 above it).
    pub max_body_kib: u32,
    /// Most resources one list page returns (`count` is capped to it).
    pub max_results: usize,
    /// How long a membership for a not-yet-known member waits for that user, in hours.
    pub pending_ttl_hours: u64,
}

impl Default for ScimConfig {
    fn default() -> Self {
        ScimConfig {
            rate_per_second: 200,
            burst: 400,
            max_body_kib: 2048,
            max_results: 1000,
            pending_ttl_hours: 24,
        }
    }
}

/// Gatehouse session tokens (issued by SSO and password logins).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// How long a session token is valid, in seconds.
    pub ttl_secs: u64,
    /// A tenant's signing key signs for this long, in seconds; then a new one is made. The
    /// old one verifies until the last token it signed has expired, then it is dropped.
    pub rotate_after_secs: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            ttl_secs: 3600,
            rotate_after_secs: 24 * 3600,
        }
    }
}

/// Password login: length rule and attempt limits (see docs/password.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordConfig {
    /// Shortest accepted password, in characters.
    pub min_length: usize,
    /// Failed logins allowed per email (per tenant) in a window; then 429.
    pub attempts_per_user: u32,
    /// Failed logins allowed per client address (all tenants) in a window; then 429.
    pub attempts_per_address: u32,
    /// The window, in seconds: each bucket refills completely over this time.
    pub window_secs: u64,
    /// Reverse proxies (addresses or CIDR blocks) whose `X-Forwarded-For` is believed: when
    /// the TCP peer is one of them, the per-address limit counts the right-most forwarded
    /// address that is not. Empty (the default): the TCP peer is the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for PasswordConfig {
    fn default() -> Self {
        PasswordConfig {
            min_length: 12,
            attempts_per_user: 5,
            attempts_per_address: 50,
            window_secs: 900,
            trusted_proxies: Vec::new(),
        }
    }
}

/// SSO logins in progress.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SsoLoginConfig {
    /// Unexpired pending logins one tenant may hold; `/login` answers 429 above it.
    pub max_pending_logins: usize,
    /// How long a started login may take to come back, in seconds.
    pub pending_login_ttl_secs: u64,
}

impl Default for SsoLoginConfig {
    fn default() -> Self {
        SsoLoginConfig {
            max_pending_logins: 10_000,
            pending_login_ttl_secs: 600,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Limits of the policy sandbox.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Linear memory one evaluation may use, in MiB.
    pub memory_limit_mib: u32,
    /// Deadline of one policy call, in milliseconds.
    pub timeout_ms: u64,
    /// Largest component accepted, in KiB.
    pub max_component_kib: u32,
    /// Evaluations that may run at the same moment.
    pub concurrent_instances: u32,
    /// Failed decisions (traps, timeouts, out-of-memory, malformed answers) of a newly
    /// active stored version, within `auto_rollback_window_secs` of its activation, that
    /// roll the tenant back to its previous version on their own; 0 turns this off.
    pub auto_rollback_failures: u32,
    /// The window after an activation in which failures count, in seconds.
    pub auto_rollback_window_secs: u64,
    /// Scheduling niceness of shadow workers (0-19, Linux; elsewhere ignored): 0 gives shadow evaluations the
    /// same share of the CPU as live answers; higher values let answers go first on busy
    /// cores, at the price of comparisons dropped while the worker cannot keep up.
    pub shadow_nice: u8,
}

/// The outbox relay: where queued emails are sent. Without `url` (or `url_file`) no relay
/// runs and messages stay in the outbox, readable by the operator.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// A lettre SMTP URL: `smtp://host:port` (plain), `smtp://host?tls=required`
    /// (STARTTLS), `smtps://user:password@host` (TLS from the start); the path, if any,
    /// is the EHLO name.
    pub url: Option<String>,
    /// File holding the URL (so credentials need not sit in the config or environment).
    pub url_file: Option<PathBuf>,
    /// The `From` address (`Gatehouse <no-reply@example.com>`); required with a URL.
    pub from: Option<String>,
    /// How often the relay looks for due messages even when nothing woke it.
    pub poll_interval_ms: u64,
    /// Tries per message before the relay gives up on it (and records why).
    pub max_attempts: u32,
    /// Wait after the first failed try; doubled after each further failure, at most an hour.
    pub backoff_ms: u64,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The tokens and the database URL (it may carry a password) are shown as set or not.
        // Destructured, so a new field cannot be forgotten here.
        let Config {
            listen,
            data,
            database_url,
            database_url_file,
            upstream,
            edge_token,
            edge_token_file,
            operator_token,
            operator_token_file,
            log_format,
            log_queue_lines,
            allow_private_urls,
            public_url,
            policy,
            edge,
            smtp,
            scim,
            session,
            password,
            sso,
            store,
        } = self;
        let set = |secret: &Option<String>| secret.as_ref().map(|_| "<set>");
        f.debug_struct("Config")
            .field("listen", listen)
            .field("data", data)
            .field("database_url", &set(database_url))
            .field("database_url_file", database_url_file)
            .field("upstream", upstream)
            .field("edge_token", &set(edge_token))
            .field("edge_token_file", edge_token_file)
            .field("operator_token", &set(operator_token))
            .field("operator_token_file", operator_token_file)
            .field("log_format", log_format)
            .field("log_queue_lines", log_queue_lines)
            .field("allow_private_urls", allow_private_urls)
            .field("public_url", public_url)
            .field("policy", policy)
            .field("edge", edge)
            .field("smtp", smtp)
            .field("scim", scim)
            .field("session", session)
            .field("password", password)
            .field("sso", sso)
            .field("store", store)
            .finish()
    }
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("SmtpConfig")
            .field("url", &self.url.as_ref().map(|_| "<set>"))
            .field("url_file", &self.url_file)
            .field("from", &self.from)
            .field("poll_interval_ms", &self.poll_interval_ms)
            .field("max_attempts", &self.max_attempts)
            .field("backoff_ms", &self.backoff_ms)
            .finish()
    }
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            url: None,
            url_file: None,
            from: None,
            poll_interval_ms: 30_000,
            max_attempts: 10,
            backoff_ms: 5_000,
        }
    }
}

impl SmtpConfig {
    /// The SMTP URL, read from its file when one is named; `None` (also for an empty
    /// value): no relay.
    pub fn url(&self) -> Result<Option<String>, ConfigError> {
        let url = match (&self.url, &self.url_file) {
            (Some(url), _) => url.clone(),
            (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            (None, None) => return Ok(None),
        };
        let url = url.trim();
        Ok((!url.is_empty()).then(|| url.to_owned()))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data: PathBuf::from("gatehouse-data"),
            database_url: None,
            database_url_file: None,
            upstream: None,
            edge_token: None,
            edge_token_file: None,
            operator_token: None,
            operator_token_file: None,
            log_format: LogFormat::Text,
            log_queue_lines: crate::logging::QUEUE_LINES,
            allow_private_urls: false,
            public_url: None,
            policy: PolicyConfig::default(),
            edge: EdgeConfig::default(),
            smtp: SmtpConfig::default(),
            scim: ScimConfig::default(),
            session: SessionConfig::default(),
            password: PasswordConfig::default(),
            sso: SsoLoginConfig::default(),
            store: StoreConfig::default(),
        }
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            memory_limit_mib: 32,
            timeout_ms: 50,
            max_component_kib: 8192,
            concurrent_instances: 128,
            auto_rollback_failures: 5,
            auto_rollback_window_secs: 300,
            shadow_nice: 0,
        }
    }
}

impl PolicyConfig {
    /// The automatic-rollback rule this configuration describes (`None`: off).
    pub fn auto_rollback(&self) -> Option<crate::policy::AutoRollback> {
        (self.auto_rollback_failures > 0).then(|| crate::policy::AutoRollback {
            max_failures: self.auto_rollback_failures,
            window: Duration::from_secs(self.auto_rollback_window_secs),
        })
    }

    /// The engine limits this configuration describes.
    pub fn limits(&self) -> crate::policy::Limits {
        crate::policy::Limits {
            memory_bytes: (self.memory_limit_mib as usize) << 20,
            timeout: Duration::from_millis(self.timeout_ms),
            max_component_bytes: (self.max_component_kib as usize) << 10,
            concurrent_instances: self.concurrent_instances,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("config file {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("environment variable {key} is not a Gatehouse setting; known: {known}")]
    UnknownEnv { key: String, known: String },
    #[error("environment variable {key}: {reason}")]
    BadEnv { key: String, reason: String },
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

const ENV_KEYS: &[&str] = &[
    "GATEHOUSE_LISTEN",
    "GATEHOUSE_DATA",
    "GATEHOUSE_OPERATOR_TOKEN",
    "GATEHOUSE_OPERATOR_TOKEN_FILE",
    "GATEHOUSE_LOG_FORMAT",
    "GATEHOUSE_LOG_QUEUE_LINES",
    "GATEHOUSE_ALLOW_PRIVATE_URLS",
    "GATEHOUSE_POLICY_MEMORY_LIMIT_MIB",
    "GATEHOUSE_POLICY_TIMEOUT_MS",
    "GATEHOUSE_POLICY_MAX_COMPONENT_KIB",
    "GATEHOUSE_POLICY_CONCURRENT_INSTANCES",
    "GATEHOUSE_POLICY_SHADOW_NICE",
    "GATEHOUSE_EDGE_HEADER_PREFIX",
    "GATEHOUSE_EDGE_STRIP_AUTHORIZATION",
    "GATEHOUSE_EDGE_DECISION_LOG",
    "GATEHOUSE_EDGE_MAX_STALENESS_SECS",
    "GATEHOUSE_UPSTREAM",
    "GATEHOUSE_EDGE_TOKEN",
    "GATEHOUSE_EDGE_TOKEN_FILE",
    "GATEHOUSE_PUBLIC_URL",
    "GATEHOUSE_SMTP_URL",
    "GATEHOUSE_SMTP_URL_FILE",
    "GATEHOUSE_SMTP_FROM",
    "GATEHOUSE_SMTP_POLL_INTERVAL_MS",
    "GATEHOUSE_SMTP_MAX_ATTEMPTS",
    "GATEHOUSE_SMTP_BACKOFF_MS",
    "GATEHOUSE_SCIM_RATE_PER_SECOND",
    "GATEHOUSE_SCIM_BURST",
    "GATEHOUSE_SCIM_MAX_BODY_KIB",
    "GATEHOUSE_SCIM_MAX_RESULTS",
    "GATEHOUSE_SCIM_PENDING_TTL_HOURS",
    "GATEHOUSE_SESSION_TTL_SECS",
    "GATEHOUSE_SESSION_ROTATE_AFTER_SECS",
    "GATEHOUSE_PASSWORD_MIN_LENGTH",
    "GATEHOUSE_PASSWORD_ATTEMPTS_PER_USER",
    "GATEHOUSE_PASSWORD_ATTEMPTS_PER_ADDRESS",
    "GATEHOUSE_PASSWORD_WINDOW_SECS",
    "GATEHOUSE_PASSWORD_TRUSTED_PROXIES",
    "GATEHOUSE_SSO_MAX_PENDING_LOGINS",
    "GATEHOUSE_SSO_PENDING_LOGIN_TTL_SECS",
    "GATEHOUSE_STORE_GROUP_COMMIT",
    "GATEHOUSE_STORE_MAX_CONNECTIONS",
    "GATEHOUSE_STORE_CHANGE_LOG_RETENTION",
    "GATEHOUSE_DATABASE_URL",
    "GATEHOUSE_DATABASE_URL_FILE",
    // Read by the CLI's client commands, not by the server.
    "GATEHOUSE_URL",
    "GATEHOUSE_TOKEN",
    // Read by tracing's filter.
    "GATEHOUSE_LOG",
];

impl Config {
    /// Defaults, then `file` (if any), then `env` (`GATEHOUSE_*` pairs).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?
            }
            None => Config::default(),
        };
        for (key, value) in env {
            if !key.starts_with("GATEHOUSE_") {
                continue;
            }
            config.apply_env(&key, &value)?;
        }
        if config.policy.shadow_nice > 19 {
            return Err(ConfigError::Invalid {
                key: "policy.shadow_nice",
                reason: format!(
                    "{} is out of range: use 0 (the answers' priority) to 19 (the lowest)",
                    config.policy.shadow_nice
                ),
            });
        }
        Ok(config)
    }

    fn apply_env(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            value.parse().map_err(|e: T::Err| ConfigError::BadEnv {
                key: key.to_owned(),
                reason: e.to_string(),
            })
        }
        match key {
            "GATEHOUSE_LISTEN" => self.listen = parse(key, value)?,
            "GATEHOUSE_DATA" => self.data = PathBuf::from(value),
            "GATEHOUSE_OPERATOR_TOKEN" => self.operator_token = Some(value.to_owned()),
            "GATEHOUSE_OPERATOR_TOKEN_FILE" => {
                self.operator_token_file = Some(PathBuf::from(value))
            }
            "GATEHOUSE_LOG_QUEUE_LINES" => self.log_queue_lines = parse(key, value)?,
            "GATEHOUSE_LOG_FORMAT" => {
                self.log_format = match value {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    other => {
                        return Err(ConfigError::BadEnv {
                            key: key.to_owned(),
                            reason: format!("{other:?} is not a log format: use text or json"),
                        })
                    }
                }
            }
            "GATEHOUSE_ALLOW_PRIVATE_URLS" => self.allow_private_urls = parse(key, value)?,
            "GATEHOUSE_POLICY_MEMORY_LIMIT_MIB" => {
                self.policy.memory_limit_mib = parse(key, value)?
            }
            "GATEHOUSE_POLICY_TIMEOUT_MS" => self.policy.timeout_ms = parse(key, value)?,
            "GATEHOUSE_POLICY_AUTO_ROLLBACK_FAILURES" => {
                self.policy.auto_rollback_failures = parse(key, value)?
            }
            "GATEHOUSE_POLICY_AUTO_ROLLBACK_WINDOW_SECS" => {
                self.policy.auto_rollback_window_secs = parse(key, value)?
            }
            "GATEHOUSE_POLICY_SHADOW_NICE" => self.policy.shadow_nice = parse(key, value)?,
            "GATEHOUSE_POLICY_MAX_COMPONENT_KIB" => {
                self.policy.max_component_kib = parse(key, value)?
            }
            "GATEHOUSE_POLICY_CONCURRENT_INSTANCES" => {
                self.policy.concurrent_instances = parse(key, value)?
            }
            "GATEHOUSE_EDGE_HEADER_PREFIX" => self.edge.header_prefix = value.to_owned(),
            "GATEHOUSE_EDGE_STRIP_AUTHORIZATION" => {
                self.edge.strip_authorization = parse(key, value)?
            }
            "GATEHOUSE_EDGE_DECISION_LOG" => self.edge.decision_log = parse(key, value)?,
            "GATEHOUSE_EDGE_MAX_STALENESS_SECS" => {
                self.edge.max_staleness_secs = parse(key, value)?
            }
            "GATEHOUSE_UPSTREAM" => self.upstream = Some(value.to_owned()),
            "GATEHOUSE_EDGE_TOKEN" => self.edge_token = Some(value.to_owned()),
            "GATEHOUSE_EDGE_TOKEN_FILE" => self.edge_token_file = Some(PathBuf::from(value)),
            "GATEHOUSE_PUBLIC_URL" => self.public_url = Some(value.to_owned()),
            "GATEHOUSE_SMTP_URL" => self.smtp.url = Some(value.to_owned()),
            "GATEHOUSE_SMTP_URL_FILE" => self.smtp.url_file = Some(PathBuf::from(value)),
            "GATEHOUSE_SMTP_FROM" => self.smtp.from = Some(value.to_owned()),
            "GATEHOUSE_SMTP_POLL_INTERVAL_MS" => self.smtp.poll_interval_ms = parse(key, value)?,
            "GATEHOUSE_SMTP_MAX_ATTEMPTS" => self.smtp.max_attempts = parse(key, value)?,
            "GATEHOUSE_SMTP_BACKOFF_MS" => self.smtp.backoff_ms = parse(key, value)?,
            "GATEHOUSE_SCIM_RATE_PER_SECOND" => self.scim.rate_per_second = parse(key, value)?,
            "GATEHOUSE_SCIM_BURST" => self.scim.burst = parse(key, value)?,
            "GATEHOUSE_SCIM_MAX_BODY_KIB" => self.scim.max_body_kib = parse(key, value)?,
            "GATEHOUSE_SCIM_MAX_RESULTS" => self.scim.max_results = parse(key, value)?,
            "GATEHOUSE_SCIM_PENDING_TTL_HOURS" => self.scim.pending_ttl_hours = parse(key, value)?,
            "GATEHOUSE_SESSION_TTL_SECS" => self.session.ttl_secs = parse(key, value)?,
            "GATEHOUSE_SESSION_ROTATE_AFTER_SECS" => {
                self.session.rotate_after_secs = parse(key, value)?
            }
            "GATEHOUSE_PASSWORD_MIN_LENGTH" => self.password.min_length = parse(key, value)?,
            "GATEHOUSE_PASSWORD_ATTEMPTS_PER_USER" => {
                self.password.attempts_per_user = parse(key, value)?
            }
            "GATEHOUSE_PASSWORD_ATTEMPTS_PER_ADDRESS" => {
                self.password.attempts_per_address = parse(key, value)?
            }
            "GATEHOUSE_PASSWORD_WINDOW_SECS" => self.password.window_secs = parse(key, value)?,
            "GATEHOUSE_PASSWORD_TRUSTED_PROXIES" => {
                self.password.trusted_proxies = value
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(|v| {
                        v.parse::<ipnet::IpNet>()
                            .or_else(|_| v.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                            .map_err(|_| ConfigError::BadEnv {
                                key: key.to_owned(),
                                reason: format!("{v:?} is not an IP address or CIDR block"),
                            })
                    })
                    .collect::<Result<_, _>>()?
            }
            "GATEHOUSE_SSO_MAX_PENDING_LOGINS" => self.sso.max_pending_logins = parse(key, value)?,
            "GATEHOUSE_SSO_PENDING_LOGIN_TTL_SECS" => {
                self.sso.pending_login_ttl_secs = parse(key, value)?
            }
            "GATEHOUSE_STORE_GROUP_COMMIT" => self.store.group_commit = parse(key, value)?,
            "GATEHOUSE_STORE_MAX_CONNECTIONS" => self.store.max_connections = parse(key, value)?,
            "GATEHOUSE_STORE_CHANGE_LOG_RETENTION" => {
                self.store.change_log_retention = parse(key, value)?
            }
            "GATEHOUSE_DATABASE_URL" => self.database_url = Some(value.to_owned()),
            "GATEHOUSE_DATABASE_URL_FILE" => self.database_url_file = Some(PathBuf::from(value)),
            "GATEHOUSE_URL" | "GATEHOUSE_TOKEN" | "GATEHOUSE_LOG" => {}
            _ => {
                return Err(ConfigError::UnknownEnv {
                    key: key.to_owned(),
                    known: ENV_KEYS.join(", "),
                })
            }
        }
        Ok(())
    }

    /// `public_url` checked (http or https, a host, no query or fragment) and without a
    /// trailing slash, ready to have a path appended.
    pub fn public_url(&self) -> Result<Option<String>, ConfigError> {
        let Some(text) = self.public_url.as_deref().filter(|t| !t.trim().is_empty()) else {
            return Ok(None);
        };
        let invalid = |reason: String| ConfigError::Invalid {
            key: "public_url",
            reason,
        };
        let url = url::Url::parse(text.trim()).map_err(|e| {
            invalid(format!(
                "{text:?} is not a URL ({e}): use a base URL like https://id.example.com"
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https")
            || url.host_str().is_none()
            || url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(invalid(format!(
                "{text:?} is not a base URL: use http(s)://host[:port][/path], without query, fragment or credentials"
            )));
        }
        Ok(Some(url.as_str().trim_end_matches('/').to_owned()))
    }

    /// The database URL, read from its file when one is named; `None` (also for an empty
    /// value): the embedded store.
    pub fn database_url(&self) -> Result<Option<String>, ConfigError> {
        let url = match (&self.database_url, &self.database_url_file) {
            (Some(url), _) => url.clone(),
            (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            (None, None) => return Ok(None),
        };
        let url = url.trim();
        Ok((!url.is_empty()).then(|| url.to_owned()))
    }

    /// The configured operator token, read from its file when one is named.
    pub fn operator_token(&self) -> Result<Option<String>, ConfigError> {
        secret(&self.operator_token, &self.operator_token_file)
    }

    /// The edge credential: `edge_token` (`GATEHOUSE_EDGE_TOKEN`), else read from
    /// `edge_token_file`.
    pub fn edge_token(&self) -> Result<Option<String>, ConfigError> {
        secret(&self.edge_token, &self.edge_token_file)
    }
}

/// A secret given as a value, else read (trimmed) from a file.
fn secret(value: &Option<String>, file: &Option<PathBuf>) -> Result<Option<String>, ConfigError> {
    if let Some(value) = value {
        return Ok(Some(value.clone()));
    }
    match file {
        Some(path) => std::fs::read_to_string(path)
            .map(|t| Some(t.trim().to_owned()))
            .map_err(|e| ConfigError::Read {
                path: path.clone(),
                reason: e.to_string(),
            }),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn group_commit_is_on_unless_switched_off() {
        assert!(Config::default().store.group_commit);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gatehouse.toml");
        std::fs::write(&file, "[store]\ngroup_commit = false\n").unwrap();
        let config = Config::load(Some(&file), env(&[])).unwrap();
        assert!(!config.store.group_commit);
        let config = Config::load(None, env(&[("GATEHOUSE_STORE_GROUP_COMMIT", "false")])).unwrap();
        assert!(!config.store.group_commit);
        let bad = Config::load(None, env(&[("GATEHOUSE_STORE_GROUP_COMMIT", "maybe")]));
        assert!(
            bad.unwrap_err()
                .to_string()
                .contains("GATEHOUSE_STORE_GROUP_COMMIT"),
            "a bad value is refused with the key named"
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gatehouse.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\n[policy]\ntimeout_ms = 20\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&file),
            env(&[("GATEHOUSE_POLICY_TIMEOUT_MS", "7"), ("PATH", "/bin")]),
        )
        .unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.policy.timeout_ms, 7);
        assert_eq!(config.policy.memory_limit_mib, 32);
        assert_eq!(config.policy.shadow_nice, 0);
    }

    #[test]
    fn shadow_nice_is_a_niceness() {
        let config = Config::load(None, env(&[("GATEHOUSE_POLICY_SHADOW_NICE", "10")])).unwrap();
        assert_eq!(config.policy.shadow_nice, 10);
        let err = Config::load(None, env(&[("GATEHOUSE_POLICY_SHADOW_NICE", "20")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("policy.shadow_nice") && err.contains("0 (the answers' priority) to 19"),
            "{err}"
        );
    }

    #[test]
    fn trusted_proxies_come_from_the_file_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gatehouse.toml");
        std::fs::write(&file, "[password]\ntrusted_proxies = [\"10.0.0.0/8\"]\n").unwrap();
        let config = Config::load(Some(&file), env(&[])).unwrap();
        assert_eq!(
            config.password.trusted_proxies,
            vec!["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()]
        );
        let config = Config::load(
            None,
            env(&[("GATEHOUSE_PASSWORD_TRUSTED_PROXIES", "127.0.0.1, fd00::/8")]),
        )
        .unwrap();
        assert_eq!(
            config.password.trusted_proxies,
            vec![
                "127.0.0.1/32".parse::<ipnet::IpNet>().unwrap(),
                "fd00::/8".parse().unwrap()
            ]
        );
        let err = Config::load(
            None,
            env(&[("GATEHOUSE_PASSWORD_TRUSTED_PROXIES", "10.0.0.0/8,nginx")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("\"nginx\""), "{err}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gatehouse.toml");
        std::fs::write(&file, "[policy]\ntimeout = 20\n").unwrap();
        let err = Config::load(Some(&file), env(&[])).unwrap_err().to_string();
        assert!(err.contains("timeout"), "{err}");
        let err = Config::load(None, env(&[("GATEHOUSE_LISTN", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("GATEHOUSE_LISTN"), "{err}");
        let err = Config::load(None, env(&[("GATEHOUSE_POLICY_TIMEOUT_MS", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("GATEHOUSE_POLICY_TIMEOUT_MS"), "{err}");
    }

    #[test]
    fn smtp_settings_come_from_the_file_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gatehouse.toml");
        std::fs::write(
            &file,
            "public_url = \"https://id.example.com/\"\n[smtp]\nurl = \"smtps://u:p@mail.example.com\"\nfrom = \"Gatehouse <no-reply@example.com>\"\nmax_attempts = 3\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&file),
            env(&[
                ("GATEHOUSE_SMTP_BACKOFF_MS", "250"),
                ("GATEHOUSE_SMTP_FROM", "ops@example.com"),
            ]),
        )
        .unwrap();
        assert_eq!(
            config.smtp.url().unwrap().as_deref(),
            Some("smtps://u:p@mail.example.com")
        );
        assert_eq!(config.smtp.from.as_deref(), Some("ops@example.com"));
        assert_eq!((config.smtp.max_attempts, config.smtp.backoff_ms), (3, 250));
        assert_eq!(config.smtp.poll_interval_ms, 30_000);
        assert_eq!(
            config.public_url().unwrap().as_deref(),
            Some("https://id.example.com")
        );
        assert!(
            !format!("{config:?}").contains("u:p@"),
            "Debug hides the SMTP URL"
        );
        let with_secrets = Config {
            database_url: Some("postgres://gh:db-secret@db/gatehouse".into()),
            edge_token: Some("edge-secret".into()),
            operator_token: Some("operator-secret".into()),
            ..Config::default()
        };
        let shown = format!("{with_secrets:?}");
        for secret in ["db-secret", "edge-secret", "operator-secret"] {
            assert!(!shown.contains(secret), "Debug hides {secret}: {shown}");
        }
        assert!(shown.contains("operator_token: Some(\"<set>\")"), "{shown}");

        let config = Config::load(None, env(&[])).unwrap();
        assert_eq!(
            config.smtp.url().unwrap(),
            None,
            "no SMTP unless configured"
        );
        let url_file = dir.path().join("smtp-url");
        std::fs::write(&url_file, "smtp://mail.example.com:2525\n").unwrap();
        let config = Config::load(
            None,
            env(&[
                ("GATEHOUSE_SMTP_URL_FILE", url_file.to_str().unwrap()),
                ("GATEHOUSE_PUBLIC_URL", ""),
            ]),
        )
        .unwrap();
        assert_eq!(
            config.smtp.url().unwrap().as_deref(),
            Some("smtp://mail.example.com:2525")
        );
        assert_eq!(config.public_url().unwrap(), None, "empty is unset");
        let config = Config::load(None, env(&[("GATEHOUSE_SMTP_URL", " ")])).unwrap();
        assert_eq!(config.smtp.url().unwrap(), None, "empty is unset");
        std::fs::write(&file, "[smtp]\nhost = \"mail\"\n").unwrap();
        let err = Config::load(Some(&file), env(&[])).unwrap_err().to_string();
        assert!(err.contains("host"), "{err}");
        for bad in [
            "id.example.com",
            "ftp://x",
            "https://x/?a=1",
            "https://u:p@x",
        ] {
            let config = Config::load(None, env(&[("GATEHOUSE_PUBLIC_URL", bad)])).unwrap();
            let err = config.public_url().unwrap_err().to_string();
            assert!(err.contains("public_url"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_operator_token_can_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        let config = Config::load(
            None,
            env(&[("GATEHOUSE_OPERATOR_TOKEN_FILE", file.to_str().unwrap())]),
        )
        .unwrap();
        assert_eq!(config.operator_token().unwrap().as_deref(), Some("s3cret"));
    }

    #[test]
    fn the_database_url_comes_from_toml_env_or_a_file() {
        assert_eq!(Config::default().database_url().unwrap(), None);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gatehouse.toml");
        std::fs::write(
            &file,
            "database_url = \"postgres://a@h1,h2/db?target_session_attrs=read-write\"\n[store]\nmax_connections = 4\n",
        )
        .unwrap();
        let config = Config::load(Some(&file), env(&[])).unwrap();
        assert_eq!(
            config.database_url().unwrap().as_deref(),
            Some("postgres://a@h1,h2/db?target_session_attrs=read-write")
        );
        assert_eq!(config.store.max_connections, 4);
        let secret = dir.path().join("url");
        std::fs::write(&secret, "postgres://b@h/db\n").unwrap();
        let config = Config::load(
            None,
            env(&[
                ("GATEHOUSE_DATABASE_URL_FILE", secret.to_str().unwrap()),
                ("GATEHOUSE_STORE_CHANGE_LOG_RETENTION", "500"),
            ]),
        )
        .unwrap();
        assert_eq!(
            config.database_url().unwrap().as_deref(),
            Some("postgres://b@h/db")
        );
        assert_eq!(config.store.change_log_retention, 500);
        let config = Config::load(None, env(&[("GATEHOUSE_DATABASE_URL", " ")])).unwrap();
        assert_eq!(
            config.database_url().unwrap(),
            None,
            "empty: the embedded store"
        );
    }
}
