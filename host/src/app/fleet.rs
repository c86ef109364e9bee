//! The edge fleet, control-plane side (decisions 70–72): edge credentials, what may leave
//! the control plane, and the frames of an edge's stream.
//!
//! An edge holds a local sled [`crate::store::Store`] with the control plane's key layout,
//! restricted to [`EDGE_SPACES`], and runs the same evaluator and policy registry on it.
//! It keeps one long-lived stream (`POST /v1/edge/stream`, chunked NDJSON, one [`Frame`]
//! a line) from any replica: a tenant the edge has no cursor for (or whose cursor fell out
//! of the log's retention, or is from another epoch) gets a `snapshot` frame, then
//! `batch` frames follow its change log. Entries hold keys, so a batch's values are read
//! when it is streamed, between two reads of the tenant's head: they are the tenant's
//! state exactly at the batch's last sequence number, so an edge applying it (in one
//! transaction, with its cursor) never holds half a batch, and since every key changed
//! after the cursor is read again, the edge converges on the control plane's state.

use super::{App, AppError};
use crate::store::{RawRecord, Space};
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// The spaces an edge receives: what the directory and the policy registry read. An
/// allow-list: a space added later stays on the control plane until it is named here.
/// Never: password hashes, SSO configurations (client and SCIM secrets), the outbox, the
/// audit log, set-password links, pending SSO logins, the indexes the edge rebuilds
/// itself. Session keys are sent without their private half ([`edge_value`]).
pub const EDGE_SPACES: [Space; 14] = [
    Space::Tenants,
    Space::PolicyState,
    Space::PolicyVersions,
    Space::PolicyBlobs,
    Space::Users,
    Space::UserSides,
    Space::UserTeams,
    Space::Teams,
    Space::Tokens,
    Space::VirtualAccounts,
    Space::IdentityProviders,
    Space::ScimUsers,
    Space::SessionKeys,
    Space::RevokedSessions,
];

/// The value of a record as an edge may hold it: `None` for a space that never leaves
/// the control plane; session keys lose their private (signing) half.
pub fn edge_value(space: Space, value: &[u8]) -> Option<Vec<u8>> {
    if !EDGE_SPACES.contains(&space) {
        return None;
    }
    if space != Space::SessionKeys {
        return Some(value.to_vec());
    }
    let mut record: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(value).ok()?;
    record.insert(
        "private_pkcs8".into(),
        serde_json::Value::String(String::new()),
    );
    serde_json::to_vec(&record).ok()
}

/// One record on the wire: space name, key (hex), value (base64; absent: removed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireRecord {
    pub s: String,
    pub k: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<String>,
}

impl WireRecord {
    fn from_raw((space, key, value): &RawRecord) -> Option<WireRecord> {
        let v = match value {
            Some(value) => {
                Some(base64::engine::general_purpose::STANDARD.encode(edge_value(*space, value)?))
            }
            None if EDGE_SPACES.contains(space) => None,
            None => return None,
        };
        Some(WireRecord {
            s: space.name().to_owned(),
            k: hex::encode(key),
            v,
        })
    }

    /// The record as the edge stores it, if it is one an edge may hold.
    pub fn to_raw(&self, tenant: &str) -> Option<RawRecord> {
        let space = Space::from_name(&self.s).filter(|s| EDGE_SPACES.contains(s))?;
        let key = hex::decode(&self.k).ok()?;
        // A record of another tenant is never written, whatever the wire says.
        let owner = if space == Space::Tenants {
            key.as_slice() == tenant.as_bytes()
        } else {
            key.len() > tenant.len() && key.starts_with(tenant.as_bytes()) && key[tenant.len()] == 0
        };
        if !owner {
            return None;
        }
        let value = match &self.v {
            Some(v) => Some(base64::engine::general_purpose::STANDARD.decode(v).ok()?),
            None => None,
        };
        Some((space, key, value))
    }
}

/// One line of an edge's stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Frame {
    /// First line: the control plane's log epoch.
    Hello { epoch: String },
    /// Everything of `tenant` the edge holds, as of `seq`: replaces what it had.
    Snapshot {
        tenant: String,
        seq: u64,
        records: Vec<WireRecord>,
    },
    /// What changed in `tenant` after `from` up to `seq` (its values as of `seq`).
    Batch {
        tenant: String,
        from: u64,
        seq: u64,
        records: Vec<WireRecord>,
    },
    /// Every tenant in scope is up to date as of this line (sent at least every second).
    Synced,
}

/// What an edge asks the stream for: the epoch its cursors belong to and, per tenant, the
/// last sequence number it applied.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamRequest {
    #[serde(default)]
    pub epoch: String,
    #[serde(default)]
    pub cursors: HashMap<String, u64>,
}

/// An edge credential as listed (its secret is shown once, when issued).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EdgeCredential {
    pub id: String,
    pub name: String,
    /// The tenants the edge receives; absent: all of them (those created later too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Vec<String>>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

impl EdgeCredential {
    /// The edge may receive `tenant`.
    pub fn allows(&self, tenant: &str) -> bool {
        self.tenants
            .as_ref()
            .is_none_or(|list| list.iter().any(|t| t == tenant))
    }
}

/// An issued credential, with its secret (shown once).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IssuedEdgeCredential {
    #[serde(flatten)]
    pub credential: EdgeCredential,
    /// `gae_…`: give it to the edge as `GATEHOUSE_EDGE_TOKEN` or `edge_token_file`.
    pub token: String,
}

/// Stored in `System` under [`CREDENTIAL`] + SHA-256 of the secret (hex).
#[derive(Serialize, Deserialize)]
struct StoredCredential {
    #[serde(flatten)]
    credential: EdgeCredential,
}

const CREDENTIAL: &str = "edge-credential:";

/// Prefix of edge credentials' secrets.
pub const EDGE_TOKEN_PREFIX: &str = "gae_";

/// How often the stream reads the log's heads.
const POLL: Duration = Duration::from_millis(20);

/// Log entries read per tenant and round.
const PAGE: usize = 256;

/// Past this many keys behind, a snapshot is cheaper than a batch.
const MAX_BATCH_KEYS: usize = 50_000;

impl App {
    /// Issues an edge credential (operator only) for every tenant (`tenants: None`) or the
    /// listed ones, which must exist.
    pub fn issue_edge_credential(
        &self,
        name: &str,
        tenants: Option<Vec<String>>,
    ) -> Result<IssuedEdgeCredential, AppError> {
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid_name {
            return Err(AppError::BadRequest(format!(
                "edge name {name:?} is not valid: 1 to 64 letters, digits, '-', '_' or '.'"
            )));
        }
        if let Some(list) = &tenants {
            if list.is_empty() {
                return Err(AppError::BadRequest(
                    "tenants is empty: leave it out for every tenant, or name at least one".into(),
                ));
            }
            for tenant in list {
                if self.store.tenant(tenant)?.is_none() {
                    return Err(AppError::BadRequest(format!("no tenant {tenant:?}")));
                }
            }
        }
        let token = super::new_secret(EDGE_TOKEN_PREFIX);
        let credential = EdgeCredential {
            id: format!("edge_{}", hex::encode(rand::random::<[u8; 8]>())),
            name: name.to_owned(),
            tenants,
            created_at: super::now_rfc3339(),
            revoked_at: None,
        };
        self.put_edge_credential(
            &hex::encode(crate::policy::sha256(token.as_bytes())),
            &credential,
        )?;
        tracing::info!(edge = %credential.id, name, "edge credential issued");
        Ok(IssuedEdgeCredential { credential, token })
    }

    fn put_edge_credential(&self, sha: &str, credential: &EdgeCredential) -> Result<(), AppError> {
        let stored = StoredCredential {
            credential: credential.clone(),
        };
        let value = serde_json::to_vec(&stored).map_err(|e| AppError::Internal(e.to_string()))?;
        Ok(self
            .store
            .system_put(&format!("{CREDENTIAL}{sha}"), &value)?)
    }

    fn stored_edge_credentials(&self) -> Result<Vec<(String, EdgeCredential)>, AppError> {
        let mut list = Vec::new();
        for (name, value) in self.store.system_scan(CREDENTIAL)? {
            let stored: StoredCredential = serde_json::from_slice(&value)
                .map_err(|e| AppError::Internal(format!("edge credential {name}: {e}")))?;
            list.push((name[CREDENTIAL.len()..].to_owned(), stored.credential));
        }
        list.sort_by(|a, b| a.1.created_at.cmp(&b.1.created_at));
        Ok(list)
    }

    /// Every edge credential, oldest first (revoked ones too, with `revoked_at`).
    pub fn edge_credentials(&self) -> Result<Vec<EdgeCredential>, AppError> {
        Ok(self
            .stored_edge_credentials()?
            .into_iter()
            .map(|(_, c)| c)
            .collect())
    }

    /// Revokes an edge credential: its stream ends within a second and it is refused from
    /// then on. Revoking twice is not an error.
    pub fn revoke_edge_credential(&self, id: &str) -> Result<EdgeCredential, AppError> {
        let (sha, mut credential) = self
            .stored_edge_credentials()?
            .into_iter()
            .find(|(_, c)| c.id == id)
            .ok_or_else(|| AppError::NotFound(format!("edge credential {id}")))?;
        if credential.revoked_at.is_none() {
            credential.revoked_at = Some(super::now_rfc3339());
            self.put_edge_credential(&sha, &credential)?;
            tracing::info!(edge = %credential.id, "edge credential revoked");
        }
        Ok(credential)
    }

    /// The live credential whose secret is `bearer`.
    pub fn authenticate_edge(&self, bearer: Option<&str>) -> Result<EdgeCredential, AppError> {
        let bearer = bearer
            .filter(|b| b.starts_with(EDGE_TOKEN_PREFIX))
            .ok_or(AppError::Unauthorized)?;
        let sha = hex::encode(crate::policy::sha256(bearer.as_bytes()));
        let value = self
            .store
            .system_get(&format!("{CREDENTIAL}{sha}"))?
            .ok_or(AppError::Unauthorized)?;
        let stored: StoredCredential =
            serde_json::from_slice(&value).map_err(|e| AppError::Internal(e.to_string()))?;
        if stored.credential.revoked_at.is_some() {
            return Err(AppError::Unauthorized);
        }
        Ok(stored.credential)
    }

    /// Serves one edge's stream until `send` returns false (the edge went away), the
    /// credential is revoked or the store fails. Blocking: run it on its own thread.
    pub fn stream_to_edge(
        &self,
        bearer: &str,
        request: StreamRequest,
        send: &mut dyn FnMut(&Frame) -> bool,
    ) -> Result<(), AppError> {
        let credential = self.authenticate_edge(Some(bearer))?;
        let epoch = self.store.change_log_epoch()?;
        let mut cursors = if request.epoch == epoch {
            request.cursors
        } else {
            HashMap::new()
        };
        if !send(&Frame::Hello { epoch }) {
            return Ok(());
        }
        let mut last_synced: Option<Instant> = None;
        let mut last_check = Instant::now();
        loop {
            if self
                .edge_streams_stop
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                return Ok(());
            }
            if last_check.elapsed() >= Duration::from_secs(1) {
                last_check = Instant::now();
                if self.authenticate_edge(Some(bearer)).is_err() {
                    tracing::info!(edge = %credential.id, "edge credential revoked: stream ends");
                    return Ok(());
                }
            }
            let mut sent = false;
            let mut behind = false;
            for (tenant, head) in self.store.change_log_heads()? {
                if !credential.allows(&tenant) {
                    continue;
                }
                let cursor = cursors.get(&tenant).copied();
                if cursor == Some(head) {
                    continue;
                }
                let frame = match cursor.filter(|&c| c < head) {
                    Some(from) => match self.batch_frame(&tenant, from)? {
                        Batch::Frame(frame) => Some(frame),
                        Batch::Busy => {
                            behind = true;
                            continue;
                        }
                        Batch::Gap => None,
                    },
                    None => None,
                };
                let frame = match frame {
                    Some(frame) => frame,
                    None => self.snapshot_frame(&tenant)?,
                };
                let seq = match &frame {
                    Frame::Snapshot { seq, .. } | Frame::Batch { seq, .. } => *seq,
                    _ => head,
                };
                cursors.insert(tenant, seq);
                behind |= seq < head;
                sent = true;
                if !send(&frame) {
                    return Ok(());
                }
            }
            let due = last_synced.is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
            if !behind && (sent || due) {
                last_synced = Some(Instant::now());
                if !send(&Frame::Synced) {
                    return Ok(());
                }
            }
            if !behind {
                std::thread::sleep(POLL);
            }
        }
    }

    /// Everything of `tenant` an edge holds, as of one sequence number. Under a steady
    /// stream of writes the unlocked tries may all see the head move; then the tenant's
    /// write lock is taken for the last ones.
    pub fn snapshot_frame(&self, tenant: &str) -> Result<Frame, AppError> {
        let snapshot = match self.store.snapshot_tenant(tenant, &EDGE_SPACES, 4)? {
            Some(snapshot) => snapshot,
            None => {
                let _guard = self.store.lock_tenant(tenant)?;
                self.store
                    .snapshot_tenant(tenant, &EDGE_SPACES, 16)?
                    .ok_or_else(|| {
                        AppError::Unavailable(format!(
                            "tenant {tenant} changes too fast for a consistent snapshot"
                        ))
                    })?
            }
        };
        let (seq, records) = snapshot;
        metrics::counter!("gatehouse_fleet_snapshots_served_total").increment(1);
        Ok(Frame::Snapshot {
            tenant: tenant.to_owned(),
            seq,
            records: records.iter().filter_map(WireRecord::from_raw).collect(),
        })
    }

    /// What changed in `tenant` after `from`, with the values as of the last entry read.
    fn batch_frame(&self, tenant: &str, from: u64) -> Result<Batch, AppError> {
        let mut keys: BTreeSet<(Space, Vec<u8>)> = BTreeSet::new();
        let mut to = from;
        for _ in 0..8 {
            loop {
                let page = self.store.changes_since(tenant, to, PAGE)?;
                if page.gap {
                    return Ok(Batch::Gap);
                }
                for entry in &page.entries {
                    for change in &entry.changes {
                        let space = Space::from_name(&change.space);
                        if let (Some(space), Ok(key)) = (space, hex::decode(&change.key)) {
                            if EDGE_SPACES.contains(&space) {
                                keys.insert((space, key));
                            }
                        }
                    }
                    to = entry.seq;
                }
                if keys.len() > MAX_BATCH_KEYS {
                    return Ok(Batch::Gap);
                }
                if page.entries.len() < PAGE || to >= page.head {
                    break;
                }
            }
            let keys: Vec<_> = keys.iter().cloned().collect();
            if let Some(records) = self.store.read_keys_at(tenant, to, &keys)? {
                return Ok(Batch::Frame(Frame::Batch {
                    tenant: tenant.to_owned(),
                    from,
                    seq: to,
                    records: records.iter().filter_map(WireRecord::from_raw).collect(),
                }));
            }
        }
        Ok(Batch::Busy)
    }
}

enum Batch {
    Frame(Frame),
    /// Entries after the cursor are gone (or too many): a snapshot instead.
    Gap,
    /// The tenant kept changing while its values were read: next round.
    Busy,
}
