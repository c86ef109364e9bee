//! Identity providers' key sets: fetched, cached, refreshed before they expire, refetched
//! at most once per cool-down for an unknown `kid`, served stale for a bounded time when
//! the provider is down, then failed closed.
//!
//! One [`Source`] per key location (a JWKS URI, or a discovery document naming one). A
//! fetch is single-flight: concurrent requests that need one wait for the same fetch. A
//! request only waits for a fetch when nothing usable is cached or a `kid` is unknown; a
//! set nearing its expiry is refreshed in the background while the old one keeps serving.

use super::JwtError;
use crate::netguard;
use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Timings and limits of key fetching.
#[derive(Debug, Clone, PartialEq)]
pub struct JwksSettings {
    /// Lifetime of a key set when the server sends no usable `max-age`.
    pub default_ttl: Duration,
    /// `max-age` is clamped to this range.
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// After a fetch (or a failed attempt), no refetch for an unknown `kid` before this.
    pub refetch_cooldown: Duration,
    /// How long past its expiry a set is still used while the provider cannot be reached.
    pub max_stale: Duration,
    pub fetch_timeout: Duration,
    pub max_bytes: usize,
    /// Allow http and private addresses (tests, internal IdPs).
    pub allow_private: bool,
}

impl Default for JwksSettings {
    fn default() -> Self {
        JwksSettings {
            default_ttl: Duration::from_secs(600),
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(24 * 3600),
            refetch_cooldown: Duration::from_secs(30),
            max_stale: Duration::from_secs(3600),
            fetch_timeout: Duration::from_secs(5),
            max_bytes: 512 * 1024,
            allow_private: false,
        }
    }
}

/// Where an identity provider's keys are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyLocation {
    Jwks(String),
    Discovery(String),
}

/// One verification key, bound to exactly one algorithm.
pub struct Key {
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub key: DecodingKey,
    /// Identifies the key material, so a cached result is dropped when its key goes.
    pub fingerprint: [u8; 32],
}

/// A fetched key set.
pub struct KeySet {
    keys: Vec<Arc<Key>>,
    by_kid: HashMap<String, Arc<Key>>,
    /// Three quarters into its lifetime: from then on it is refreshed in the background.
    refresh_at: Instant,
    fresh_until: Instant,
}

impl KeySet {
    /// The key for `kid`, or the only key for `alg` when the token names no `kid`.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Arc<Key>> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            None => {
                let mut matching = self.keys.iter().filter(|k| k.alg == alg);
                match (matching.next(), matching.next()) {
                    (Some(key), None) => Some(key),
                    _ => None,
                }
            }
        }
    }

    /// Whether a key with this fingerprint is still in the set.
    pub fn holds(&self, fingerprint: &[u8; 32]) -> bool {
        self.keys.iter().any(|k| &k.fingerprint == fingerprint)
    }
}

/// The cached state of one key location.
pub struct Source {
    location: KeyLocation,
    current: ArcSwapOption<KeySet>,
    /// When the current set was fetched (for staleness) and when a fetch was last tried.
    timing: Mutex<Timing>,
    /// Single flight: one fetch at a time per location.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Timing {
    last_attempt: Option<Instant>,
    attempts: u64,
    last_error: Option<String>,
    refreshing: bool,
}

/// Every key location the tenants use.
pub struct JwksCache {
    settings: JwksSettings,
    client: reqwest::Client,
    sources: RwLock<HashMap<KeyLocation, Arc<Source>>>,
    discovery: RwLock<HashMap<String, Arc<DiscoveryEntry>>>,
}

/// One cached OpenID discovery document.
#[derive(Default)]
struct DiscoveryEntry {
    /// The document and until when it is fresh.
    current: Mutex<Option<(Arc<serde_json::Value>, Instant)>>,
    /// When the last fetch failed, and why: requests that waited for it share the answer.
    failed: Mutex<Option<(Instant, String)>>,
    /// Single flight: one fetch at a time per URL.
    fetching: tokio::sync::Mutex<()>,
}

impl DiscoveryEntry {
    fn fresh(&self, now: Instant) -> Option<Arc<serde_json::Value>> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current
            .as_ref()
            .filter(|(_, until)| now < *until)
            .map(|(doc, _)| doc.clone())
    }
}

impl JwksCache {
    pub fn new(settings: JwksSettings) -> Result<Self, String> {
        let allow_private = settings.allow_private;
        let client = reqwest::Client::builder()
            .timeout(settings.fetch_timeout)
            .connect_timeout(settings.fetch_timeout)
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver { allow_private }))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                // Follow only to the same origin, at most 3 times: a key set never moves
                // to somewhere else.
                let same_origin = attempt
                    .previous()
                    .first()
                    .is_some_and(|first| first.origin() == attempt.url().origin());
                if attempt.previous().len() > 3 || !same_origin {
                    attempt.stop()
                } else {
                    attempt.follow()
                }
            }))
            .user_agent(concat!("gatehouse/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(JwksCache {
            settings,
            client,
            sources: RwLock::default(),
            discovery: RwLock::default(),
        })
    }

    pub fn settings(&self) -> &JwksSettings {
        &self.settings
    }

    /// The source for a location, created on first use.
    pub fn source(&self, location: &KeyLocation) -> Arc<Source> {
        if let Some(source) = self
            .sources
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(location)
        {
            return source.clone();
        }
        let mut sources = self.sources.write().unwrap_or_else(|p| p.into_inner());
        sources
            .entry(location.clone())
            .or_insert_with(|| {
                Arc::new(Source {
                    location: location.clone(),
                    current: ArcSwapOption::empty(),
                    timing: Mutex::default(),
                    fetching: tokio::sync::Mutex::new(()),
                })
            })
            .clone()
    }

    /// The key that verifies a token with `kid` and `alg` from `location`.
    pub async fn key(
        self: &Arc<Self>,
        location: &KeyLocation,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<(Arc<Source>, Arc<Key>), JwtError> {
        let source = self.source(location);
        let now = Instant::now();
        let mut set = source.current.load_full();
        let usable = |set: &Option<Arc<KeySet>>| {
            set.as_ref()
                .filter(|s| now < s.fresh_until + self.settings.max_stale)
                .cloned()
        };
        match usable(&set) {
            None => {
                // Nothing usable: this request has to wait for keys (cold start, or stale
                // past the bound). Respect the cool-down after failures, a provider whose
                // keys were never fetched included: a flood of tokens for it costs one
                // fetch per cool-down, not one (or one timeout) per request.
                if !self.may_fetch(&source, now) {
                    metrics::counter!("gatehouse_jwks_refetch_suppressed_total").increment(1);
                    return Err(JwtError::KeysUnavailable);
                }
                self.refresh(&source, now).await;
                set = usable(&source.current.load_full());
                if set.is_none() {
                    return Err(JwtError::KeysUnavailable);
                }
            }
            Some(current) => {
                // Past its expiry, or close to it: refresh in the background; the current
                // set keeps serving meanwhile (and, if the provider is down, until
                // `max_stale`).
                if now >= current.refresh_at && self.may_fetch(&source, now) {
                    self.refresh_in_background(&source);
                }
            }
        }
        let found = set.as_ref().and_then(|s| s.find(kid, alg).cloned());
        if let Some(key) = found {
            return Ok((source, key));
        }
        // Unknown kid: one refetch per cool-down, shared by every request that wants it.
        if kid.is_some() && self.may_fetch(&source, now) {
            self.refresh(&source, now).await;
            if let Some(key) =
                usable(&source.current.load_full()).and_then(|s| s.find(kid, alg).cloned())
            {
                return Ok((source, key));
            }
        } else if kid.is_some() {
            metrics::counter!("gatehouse_jwks_refetch_suppressed_total").increment(1);
        }
        Err(JwtError::UnknownKid)
    }

    fn may_fetch(&self, source: &Source, now: Instant) -> bool {
        let timing = source.timing.lock().unwrap_or_else(|p| p.into_inner());
        timing
            .last_attempt
            .is_none_or(|at| now.saturating_duration_since(at) >= self.settings.refetch_cooldown)
    }

    fn refresh_in_background(self: &Arc<Self>, source: &Arc<Source>) {
        {
            let mut timing = source.timing.lock().unwrap_or_else(|p| p.into_inner());
            if timing.refreshing {
                return;
            }
            timing.refreshing = true;
        }
        let (cache, source) = (self.clone(), source.clone());
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                cache.refresh(&source, Instant::now()).await;
                source
                    .timing
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .refreshing = false;
            });
        }
    }

    /// Fetches the set once for everyone waiting: a request that finds a fetch in flight
    /// waits for it and does not fetch again.
    async fn refresh(&self, source: &Source, asked_at: Instant) {
        let _flight = source.fetching.lock().await;
        {
            let timing = source.timing.lock().unwrap_or_else(|p| p.into_inner());
            if timing.last_attempt.is_some_and(|at| at >= asked_at) {
                return; // someone fetched while we waited
            }
        }
        let started = Instant::now();
        let result = self.fetch(&source.location).await;
        let mut timing = source.timing.lock().unwrap_or_else(|p| p.into_inner());
        timing.last_attempt = Some(Instant::now());
        timing.attempts += 1;
        match result {
            Ok(set) => {
                metrics::counter!("gatehouse_jwks_fetches_total", "result" => "ok").increment(1);
                timing.last_error = None;
                source.current.store(Some(Arc::new(set)));
            }
            Err(error) => {
                metrics::counter!("gatehouse_jwks_fetches_total", "result" => "error").increment(1);
                tracing::warn!(location = ?source.location, %error, elapsed_ms = started.elapsed().as_millis() as u64, "key set fetch failed");
                timing.last_error = Some(error);
            }
        }
    }

    async fn fetch(&self, location: &KeyLocation) -> Result<KeySet, String> {
        let jwks_uri = match location {
            KeyLocation::Jwks(uri) => uri.clone(),
            KeyLocation::Discovery(url) => {
                let doc = self.discovery(url).await?;
                let uri = doc
                    .get("jwks_uri")
                    .and_then(|v| v.as_str())
                    .ok_or("discovery document has no jwks_uri")?;
                uri.to_owned()
            }
        };
        let (body, max_age) = self.get(&jwks_uri).await?;
        let ttl = max_age
            .unwrap_or(self.settings.default_ttl)
            .clamp(self.settings.min_ttl, self.settings.max_ttl);
        let keys = parse_key_set(&body)?;
        let by_kid = keys
            .iter()
            .filter_map(|k| k.kid.clone().map(|kid| (kid, k.clone())))
            .collect();
        let now = Instant::now();
        Ok(KeySet {
            keys,
            by_kid,
            refresh_at: now + ttl * 3 / 4,
            fresh_until: now + ttl,
        })
    }

    /// GETs a URL the guard allows, with a size cap; returns the body and `max-age`.
    async fn get(&self, url: &str) -> Result<(Vec<u8>, Option<Duration>), String> {
        netguard::check_fetch_url(url, self.settings.allow_private)?;
        let mut response = self
            .client
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: status {}", response.status()));
        }
        let max_age = response
            .headers()
            .get_all("cache-control")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(|d| {
                d.trim()
                    .strip_prefix("max-age=")
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .map(Duration::from_secs);
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?
        {
            if body.len() + chunk.len() > self.settings.max_bytes {
                return Err(format!(
                    "GET {url}: larger than {} bytes",
                    self.settings.max_bytes
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, max_age))
    }

    /// The OpenID discovery document at `url`, fetched through the same address guard,
    /// timeouts and size cap as key sets and cached per URL for its `max-age` (clamped like
    /// key sets; `default_ttl` without one). Single-flight: concurrent requests for an
    /// uncached document wait for one fetch and share its result, success or failure.
    pub async fn discovery(&self, url: &str) -> Result<Arc<serde_json::Value>, String> {
        let entry = self.discovery_entry(url);
        if let Some(doc) = entry.fresh(Instant::now()) {
            return Ok(doc);
        }
        let asked_at = Instant::now();
        let _flight = entry.fetching.lock().await;
        if let Some(doc) = entry.fresh(Instant::now()) {
            return Ok(doc); // someone fetched while we waited
        }
        if let Some((at, error)) = entry
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            if *at >= asked_at {
                return Err(error.clone()); // someone failed while we waited
            }
        }
        let result = async {
            let (body, max_age) = self.get(url).await?;
            let doc: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| format!("GET {url}: discovery document is not JSON: {e}"))?;
            if !doc.is_object() {
                return Err(format!(
                    "GET {url}: discovery document is not a JSON object"
                ));
            }
            Ok((doc, max_age))
        }
        .await;
        match result {
            Ok((doc, max_age)) => {
                metrics::counter!("gatehouse_discovery_fetches_total", "result" => "ok")
                    .increment(1);
                let ttl = max_age
                    .unwrap_or(self.settings.default_ttl)
                    .clamp(self.settings.min_ttl, self.settings.max_ttl);
                let doc = Arc::new(doc);
                *entry.current.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((doc.clone(), Instant::now() + ttl));
                *entry.failed.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Ok(doc)
            }
            Err(error) => {
                metrics::counter!("gatehouse_discovery_fetches_total", "result" => "error")
                    .increment(1);
                *entry.failed.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    fn discovery_entry(&self, url: &str) -> Arc<DiscoveryEntry> {
        if let Some(entry) = self
            .discovery
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(url)
        {
            return entry.clone();
        }
        self.discovery
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(url.to_owned())
            .or_default()
            .clone()
    }

    /// POSTs a form (an OAuth 2.0 token request) through the same guard, timeouts and size
    /// cap, with HTTP Basic client authentication when `basic` is given; returns the status
    /// and the JSON body (`null` when it is not JSON). Errors name the URL, never the form.
    pub async fn post_form(
        &self,
        url: &str,
        basic: Option<(&str, &str)>,
        form: &[(&str, &str)],
    ) -> Result<(u16, serde_json::Value), String> {
        netguard::check_fetch_url(url, self.settings.allow_private)?;
        let mut request = self
            .client
            .post(url)
            .header("accept", "application/json")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(form)
                    .finish(),
            );
        if let Some((user, password)) = basic {
            // RFC 6749 §2.3.1: both parts form-encoded before Basic.
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            request = request.basic_auth(enc(user), Some(enc(password)));
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| format!("POST {url}: {}", error_chain(&e)))?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("POST {url}: {}", error_chain(&e)))?
        {
            if body.len() + chunk.len() > self.settings.max_bytes {
                return Err(format!(
                    "POST {url}: larger than {} bytes",
                    self.settings.max_bytes
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        ))
    }

    /// The last fetch error of a location, for diagnostics.
    pub fn last_error(&self, location: &KeyLocation) -> Option<String> {
        let source = self.source(location);
        let timing = source.timing.lock().unwrap_or_else(|p| p.into_inner());
        timing.last_error.clone()
    }
}

impl Source {
    /// Whether the key with this fingerprint is still served (present and not stale past
    /// the bound): a cached result made with a key that left the set is not used again.
    pub fn still_holds(&self, fingerprint: &[u8; 32], max_stale: Duration) -> bool {
        let now = Instant::now();
        self.current
            .load()
            .as_ref()
            .is_some_and(|set| now < set.fresh_until + max_stale && set.holds(fingerprint))
    }
}

/// Parses a JWKS leniently per key (a key of an unknown type, or for encryption, is
/// skipped, not fatal) and strictly per algorithm: symmetric keys are never used, and
/// each key is bound to one algorithm — its `alg`, or the one its type implies (RSA
/// without `alg`: RS256; EC by curve; OKP: EdDSA).
pub fn parse_key_set(body: &[u8]) -> Result<Vec<Arc<Key>>, String> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(|e| format!("not a JWK set: {e}"))?;
    let mut keys = Vec::new();
    for value in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value.clone()) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let implied = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => Some(Algorithm::ES256),
                EllipticCurve::P384 => Some(Algorithm::ES384),
                _ => None,
            },
            AlgorithmParameters::OctetKeyPair(okp) => {
                (okp.curve == EllipticCurve::Ed25519).then_some(Algorithm::EdDSA)
            }
            // Symmetric keys (`oct`) and anything unknown are never used.
            _ => None,
        };
        let Some(implied) = implied else { continue };
        let alg = match jwk.common.key_algorithm {
            None => implied,
            Some(named) => match key_algorithm(named) {
                Some(alg) if same_family(alg, implied) => alg,
                _ => continue,
            },
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let material = serde_json::json!({
            "kid": jwk.common.key_id,
            "alg": format!("{alg:?}"),
            "key": value.get("n").or(value.get("x")),
            "y": value.get("y"),
            "e": value.get("e"),
        });
        keys.push(Arc::new(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
            fingerprint: crate::policy::sha256(material.to_string().as_bytes()),
        }));
    }
    Ok(keys)
}

fn key_algorithm(named: KeyAlgorithm) -> Option<Algorithm> {
    Some(match named {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

fn same_family(a: Algorithm, b: Algorithm) -> bool {
    use Algorithm::*;
    let family = |alg| match alg {
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => 0,
        ES256 | ES384 => 1,
        EdDSA => 2,
        _ => 3,
    };
    family(a) == family(b) && family(a) != 3 && (family(a) != 1 || a == b)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Resolves names and refuses private addresses (unless allowed), so a public name that
/// resolves to an internal address cannot be used to reach it.
struct GuardedResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow_private || !netguard::is_private(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} has no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}
