//! Configuration: defaults, then a TOML file, then `GATEHOUSE_*` environment variables,
//! then command-line flags. Unknown keys are refused with the key named; secrets may come
//! from a file (`operator_token_file`, `GATEHOUSE_OPERATOR_TOKEN_FILE`).

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything `gatehouse serve` can be told.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Directory of the embedded store.
    pub data: PathBuf,
    /// The operator token; when absent one is generated on first start and printed once.
    pub operator_token: Option<String>,
    /// File holding the operator token.
    pub operator_token_file: Option<PathBuf>,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    /// Allow JWKS and discovery URLs on loopback and private networks, and plain http
    /// (tests, internal identity providers).
    pub allow_private_urls: bool,
    pub policy: PolicyConfig,
    pub scim: ScimConfig,
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data: PathBuf::from("gatehouse-data"),
            operator_token: None,
            operator_token_file: None,
            log_format: LogFormat::Text,
            allow_private_urls: false,
            policy: PolicyConfig::default(),
            scim: ScimConfig::default(),
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
        }
    }
}

impl PolicyConfig {
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
}

const ENV_KEYS: &[&str] = &[
    "GATEHOUSE_LISTEN",
    "GATEHOUSE_DATA",
    "GATEHOUSE_OPERATOR_TOKEN",
    "GATEHOUSE_OPERATOR_TOKEN_FILE",
    "GATEHOUSE_LOG_FORMAT",
    "GATEHOUSE_ALLOW_PRIVATE_URLS",
    "GATEHOUSE_POLICY_MEMORY_LIMIT_MIB",
    "GATEHOUSE_POLICY_TIMEOUT_MS",
    "GATEHOUSE_POLICY_MAX_COMPONENT_KIB",
    "GATEHOUSE_POLICY_CONCURRENT_INSTANCES",
    "GATEHOUSE_SCIM_RATE_PER_SECOND",
    "GATEHOUSE_SCIM_BURST",
    "GATEHOUSE_SCIM_MAX_BODY_KIB",
    "GATEHOUSE_SCIM_MAX_RESULTS",
    "GATEHOUSE_SCIM_PENDING_TTL_HOURS",
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
            "GATEHOUSE_POLICY_MAX_COMPONENT_KIB" => {
                self.policy.max_component_kib = parse(key, value)?
            }
            "GATEHOUSE_POLICY_CONCURRENT_INSTANCES" => {
                self.policy.concurrent_instances = parse(key, value)?
            }
            "GATEHOUSE_SCIM_RATE_PER_SECOND" => self.scim.rate_per_second = parse(key, value)?,
            "GATEHOUSE_SCIM_BURST" => self.scim.burst = parse(key, value)?,
            "GATEHOUSE_SCIM_MAX_BODY_KIB" => self.scim.max_body_kib = parse(key, value)?,
            "GATEHOUSE_SCIM_MAX_RESULTS" => self.scim.max_results = parse(key, value)?,
            "GATEHOUSE_SCIM_PENDING_TTL_HOURS" => self.scim.pending_ttl_hours = parse(key, value)?,
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

    /// The configured operator token, read from its file when one is named.
    pub fn operator_token(&self) -> Result<Option<String>, ConfigError> {
        if let Some(token) = &self.operator_token {
            return Ok(Some(token.clone()));
        }
        match &self.operator_token_file {
            Some(path) => std::fs::read_to_string(path)
                .map(|t| Some(t.trim().to_owned()))
                .map_err(|e| ConfigError::Read {
                    path: path.clone(),
                    reason: e.to_string(),
                }),
            None => Ok(None),
        }
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
}
