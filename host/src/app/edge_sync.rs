//! The edge fleet, edge side (decisions 70–72): `gatehouse edge` keeps a local replica of
//! the tenants its credential allows in its own sled store, follows the control plane's
//! stream ([`super::fleet`]) and evaluates tokens with the same [`App`] code as `serve`.
//!
//! Each frame is applied to the local store in one transaction with the tenant's cursor,
//! then the tenant is refreshed as a following replica refreshes it
//! ([`App::refresh_tenant`]) and its directory rebuilt before the next frame, so an answer
//! sees the state before a batch or after it, never half of it. A restarted edge answers
//! from its store at once; the stream resumes from the stored cursors. How stale the
//! replica is counts from the last `synced` line; past `edge.max_staleness_secs` every
//! decision is a `stale` refusal (fail closed).

use super::fleet::{Frame, StreamRequest, EDGE_SPACES};
use super::{App, AppError};
use crate::store::{RawRecord, ReplicaCursor, Space};
use futures_util::FutureExt;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// First wait before reconnecting; doubled up to [`MAX_BACKOFF`], with jitter.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The control plane sends a line at least every second; this long without one ends the
/// connection.
const SILENCE: Duration = Duration::from_secs(5);

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// How up to date an edge is.
pub struct Freshness {
    /// Unix milliseconds of the last moment the replica was known current; 0: never.
    synced_at_ms: AtomicI64,
    /// When it was last written to the store (Unix ms).
    persisted_ms: AtomicI64,
    connected: AtomicBool,
    max_staleness: Duration,
}

impl Freshness {
    fn new(synced_at_secs: Option<i64>, max_staleness: Duration) -> Freshness {
        let ms = synced_at_secs.map_or(0, |s| s.saturating_mul(1000));
        Freshness {
            synced_at_ms: AtomicI64::new(ms),
            persisted_ms: AtomicI64::new(ms),
            connected: AtomicBool::new(false),
            max_staleness,
        }
    }

    /// How long since the replica was last known current; `None`: never synced.
    pub fn staleness(&self) -> Option<Duration> {
        let at = self.synced_at_ms.load(Ordering::Relaxed);
        (at > 0).then(|| Duration::from_millis(now_ms().saturating_sub(at).max(0) as u64))
    }

    /// Too stale to answer from (or never synced).
    pub fn is_stale(&self) -> bool {
        self.staleness().is_none_or(|s| s > self.max_staleness)
    }

    /// The stream to the control plane is up.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn max_staleness(&self) -> Duration {
        self.max_staleness
    }

    /// Sets the metrics gauges (rendered by `/metrics`).
    pub fn export_metrics(&self) {
        let staleness = self.staleness().map_or(f64::INFINITY, |s| s.as_secs_f64());
        metrics::gauge!("gatehouse_edge_staleness_seconds").set(staleness);
        metrics::gauge!("gatehouse_edge_connected").set(if self.connected() { 1.0 } else { 0.0 });
    }
}

/// What one connection has seen.
struct Session {
    epoch: Option<String>,
    cursors: HashMap<String, u64>,
    /// Tenants changed by frames applied since the edge last caught up with the stream.
    changed: HashSet<String>,
}

impl App {
    /// Opens an edge: the local sled store under `config.data`, the default policy and
    /// every replicated tenant's policy from it. No operator token (an edge has no admin
    /// API) and no automatic rollback (an edge never writes a policy change).
    pub fn open_edge(config: &crate::config::Config) -> Result<App, AppError> {
        let store = crate::store::Store::open_with(&config.data, &config.store)?;
        let freshness = Freshness::new(
            store.replica_synced_at()?,
            Duration::from_secs(config.edge.max_staleness_secs),
        );
        // Matches no bearer: there is no operator on an edge.
        let operator = crate::policy::sha256(&rand::random::<[u8; 32]>());
        App::assemble(config, store, operator, Some(Arc::new(freshness)))
    }

    /// The edge's freshness (`None` on `serve`).
    pub fn freshness(&self) -> Option<&Freshness> {
        self.freshness.as_deref()
    }

    fn apply_frame(&self, session: &mut Session, frame: Frame) -> Result<(), String> {
        let e = |e: AppError| e.to_string();
        match frame {
            Frame::Hello { epoch } => {
                if session.epoch.as_deref().is_some_and(|known| known != epoch) {
                    tracing::warn!(
                        epoch,
                        "the control plane's log epoch changed: taking snapshots"
                    );
                }
                session.epoch = Some(epoch);
            }
            Frame::Snapshot {
                tenant,
                seq,
                records,
            } => {
                let epoch = session.epoch.clone().ok_or("a snapshot before hello")?;
                crate::model::TenantId::parse(&tenant)
                    .map_err(|_| format!("the stream named a bad tenant {tenant:?}"))?;
                let raw: Vec<RawRecord> =
                    records.iter().filter_map(|r| r.to_raw(&tenant)).collect();
                self.store
                    .apply_replica(
                        &tenant,
                        &ReplicaCursor { epoch, seq },
                        Some(&EDGE_SPACES),
                        &raw,
                    )
                    .map_err(|e| e.to_string())?;
                session.cursors.insert(tenant.clone(), seq);
                metrics::counter!("gatehouse_edge_snapshots_total").increment(1);
                tracing::info!(tenant, seq, records = raw.len(), "snapshot applied");
                self.refresh_tenant(&tenant, &|_| true, None).map_err(e)?;
                // A tenant just taken whole is built ahead of its first request.
                self.edge.want(&tenant);
                session.changed.insert(tenant);
            }
            Frame::Batch {
                tenant,
                from,
                seq,
                records,
            } => {
                let epoch = session.epoch.clone().ok_or("a batch before hello")?;
                if session.cursors.get(&tenant) != Some(&from) {
                    return Err(format!(
                        "a batch of {tenant} from {from} does not follow the cursor"
                    ));
                }
                let raw: Vec<RawRecord> =
                    records.iter().filter_map(|r| r.to_raw(&tenant)).collect();
                self.store
                    .apply_replica(&tenant, &ReplicaCursor { epoch, seq }, None, &raw)
                    .map_err(|e| e.to_string())?;
                session.cursors.insert(tenant.clone(), seq);
                metrics::counter!("gatehouse_edge_batches_total").increment(1);
                if !raw.is_empty() {
                    let spaces: HashSet<Space> = raw.iter().map(|(s, _, _)| *s).collect();
                    self.refresh_tenant(&tenant, &|s| spaces.contains(&s), None)
                        .map_err(e)?;
                    session.changed.insert(tenant);
                }
            }
            Frame::Synced => {
                let freshness = self.freshness.as_ref().ok_or("not an edge")?;
                let now = now_ms();
                freshness.synced_at_ms.store(now, Ordering::Relaxed);
                if now - freshness.persisted_ms.load(Ordering::Relaxed) >= 1000 {
                    freshness.persisted_ms.store(now, Ordering::Relaxed);
                    self.store
                        .set_replica_synced_at(now / 1000)
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// Rebuilds the directories of the tenants changed since the edge last caught up that
    /// requests use, so the next request finds them built (a request would otherwise
    /// build it: a directory is rebuilt on demand whenever its generation moved).
    fn warm_changed(&self, session: &mut Session) {
        for tenant in session.changed.drain() {
            self.edge.warm(&self.store, &tenant);
        }
    }
}

/// Follows the control plane at `upstream` for as long as the process runs: connects,
/// applies frames, and reconnects with exponential backoff and jitter.
pub async fn follow_upstream(app: Arc<App>, upstream: String, token: String) {
    let client = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client: not following the control plane");
            return;
        }
    };
    let url = format!("{}/v1/edge/stream", upstream.trim_end_matches('/'));
    let mut backoff = MIN_BACKOFF;
    let mut failing = false;
    loop {
        let started = Instant::now();
        let outcome = session(&app, &client, &url, &token).await;
        if let Some(f) = app.freshness() {
            f.connected.store(false, Ordering::Relaxed);
        }
        match outcome {
            Ok(()) => tracing::info!("the control plane closed the stream; reconnecting"),
            Err(e) if !failing => {
                tracing::warn!(error = %e, "edge stream failed; reconnecting with backoff")
            }
            Err(e) => tracing::debug!(error = %e, "edge stream failed again"),
        }
        failing = true;
        if started.elapsed() > Duration::from_secs(10) {
            backoff = MIN_BACKOFF;
        }
        let jitter = rand::random_range(0..=backoff.as_millis() as u64 / 2);
        tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn session(
    app: &Arc<App>,
    client: &reqwest::Client,
    url: &str,
    token: &str,
) -> Result<(), String> {
    let store = app.store.clone();
    let cursors = tokio::task::spawn_blocking(move || store.replica_cursors())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let epoch = cursors
        .first()
        .map(|(_, c)| c.epoch.clone())
        .unwrap_or_default();
    let cursors: HashMap<String, u64> = cursors
        .into_iter()
        .filter(|(_, c)| c.epoch == epoch)
        .map(|(t, c)| (t, c.seq))
        .collect();
    let request = StreamRequest {
        epoch: epoch.clone(),
        cursors: cursors.clone(),
    };
    let mut response = client
        .post(url)
        .bearer_auth(token)
        .json(&request)
        .send()
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(format!("{url} answered {status}: {body}"));
    }
    metrics::counter!("gatehouse_edge_stream_connects_total").increment(1);
    if let Some(f) = app.freshness() {
        f.connected.store(true, Ordering::Relaxed);
    }
    tracing::info!(url, tenants = cursors.len(), "following the control plane");
    let mut session = Session {
        epoch: (!epoch.is_empty()).then_some(epoch),
        cursors,
        changed: HashSet::new(),
    };
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        // Directories are rebuilt ahead of requests only once no further frame is waiting:
        // a burst of batches (a big SCIM push) costs one rebuild per tenant, not one per
        // batch, each of which reads the whole tenant.
        let next = match response.chunk().now_or_never() {
            Some(next) => next,
            None => {
                if !session.changed.is_empty() {
                    tokio::task::block_in_place(|| app.warm_changed(&mut session));
                }
                tokio::time::timeout(SILENCE, response.chunk())
                    .await
                    .map_err(|_| {
                        format!("no line from the control plane in {}s", SILENCE.as_secs())
                    })?
            }
        };
        let chunk = next.map_err(|e| format!("the stream broke: {e}"))?;
        let Some(chunk) = chunk else {
            return Ok(());
        };
        let mut start = buffer.len();
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer[start..].iter().position(|&b| b == b'\n') {
            let end = start + end;
            let frame: Frame = serde_json::from_slice(&buffer[..end])
                .map_err(|e| format!("a line of the stream is not a frame: {e}"))?;
            buffer.drain(..=end);
            start = 0;
            tokio::task::block_in_place(|| app.apply_frame(&mut session, frame))?;
        }
    }
}
