//! The per-tenant change log (decision 53), the same on every backend.
//!
//! [`super::Store::transact_durably`] runs each body through [`logged`]: a [`Txn`] that
//! notes every key put or removed, then, in the same transaction, for each tenant touched,
//! reads the tenant's head (`LogHeads`), writes head + 1 back and stores the entry at
//! `ChangeLog[tenant \0 seq]`. Two batches of one tenant both read and write its head, so
//! the backend's isolation (sled's conflict detection, PostgreSQL's SERIALIZABLE) orders
//! them: sequence numbers are gap-free and in commit order. Never a serial column: those
//! are assigned at insert and commit out of order, so a reader could skip one.
//!
//! An entry holds keys, not values (a policy upload's component bytes would otherwise be
//! in the log twice); a reader reads the current values, which is what a replica or an
//! edge refreshing its view needs. The epoch (a random id in `System`, made once per
//! database) names the log's lineage: a reader whose epoch differs starts over.

use super::{tkey, Backend, Space, Store, StoreError, TxBody, TxFail, Txn};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::BTreeMap;

const EPOCH: &str = "change-log-epoch";

/// One key a batch put or removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The space's stable name ([`Space::name`]).
    pub space: String,
    /// The key, hex-encoded (keys hold 0 bytes).
    pub key: String,
    /// Removed rather than put.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
}

/// One committed batch of one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEntry {
    pub seq: u64,
    pub changes: Vec<Change>,
}

/// Entries of one tenant after a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangePage {
    /// The log's lineage; a cursor from another epoch means nothing here.
    pub epoch: String,
    /// The tenant's latest sequence number (0: nothing logged yet).
    pub head: u64,
    /// Entries after the cursor, oldest first, at most the limit asked for.
    pub entries: Vec<ChangeEntry>,
    /// Entries after the cursor were pruned already: the reader must reload the tenant
    /// in full, then follow from `head`.
    pub gap: bool,
}

/// The tenant a key belongs to; `None` for process-wide keys and the log itself.
fn tenant_of(space: Space, key: &[u8]) -> Option<&[u8]> {
    match space {
        Space::System | Space::LogHeads | Space::ChangeLog => None,
        Space::Tenants => Some(key),
        _ => key.iter().position(|&b| b == 0).map(|i| &key[..i]),
    }
}

/// The keys one tenant's batch touched: (space, key) → removed.
pub(super) type Touched = BTreeMap<(Space, Vec<u8>), bool>;

struct Recording<'a> {
    inner: &'a dyn Txn,
    /// Per tenant: (space, key) → removed.
    touched: RefCell<TouchedByTenant>,
}

impl Recording<'_> {
    fn note(&self, space: Space, key: &[u8], removed: bool) {
        if let Some(tenant) = tenant_of(space, key) {
            self.touched
                .borrow_mut()
                .entry(tenant.to_vec())
                .or_default()
                .insert((space, key.to_vec()), removed);
        }
    }
}

impl Txn for Recording<'_> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, TxFail> {
        self.inner.get(space, key)
    }
    fn get_many(&self, space: Space, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, TxFail> {
        self.inner.get_many(space, keys)
    }
    fn put(&self, space: Space, key: &[u8], value: &[u8]) -> Result<(), TxFail> {
        self.inner.put(space, key, value)?;
        self.note(space, key, false);
        Ok(())
    }
    fn remove(&self, space: Space, key: &[u8]) -> Result<(), TxFail> {
        self.inner.remove(space, key)?;
        self.note(space, key, true);
        Ok(())
    }
}

fn head_of(bytes: Option<Vec<u8>>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// Per tenant, the keys one batch touched.
pub(super) type TouchedByTenant = BTreeMap<Vec<u8>, Touched>;

/// Runs `body` on `tx`, then appends each touched tenant's log entry in the same
/// transaction.
pub(super) fn logged(tx: &dyn Txn, body: &TxBody<'_>) -> Result<(), TxFail> {
    let touched = touched_by(tx, body)?;
    append(tx, &touched)
}

/// Runs `body` on `tx` and returns the keys it put or removed, per tenant.
pub(super) fn touched_by(tx: &dyn Txn, body: &TxBody<'_>) -> Result<TouchedByTenant, TxFail> {
    let recording = Recording {
        inner: tx,
        touched: RefCell::default(),
    };
    body(&recording)?;
    Ok(recording.touched.into_inner())
}

/// Appends, on `tx`, one log entry per tenant of `touched`: the tenant's next sequence
/// number (its head, read in `tx`, + 1).
pub(super) fn append(tx: &dyn Txn, touched: &TouchedByTenant) -> Result<(), TxFail> {
    for (tenant, keys) in touched {
        let seq = head_of(tx.get(Space::LogHeads, tenant)?) + 1;
        let entry = ChangeEntry {
            seq,
            changes: keys
                .iter()
                .map(|((space, key), removed)| Change {
                    space: space.name().to_owned(),
                    key: hex::encode(key),
                    removed: *removed,
                })
                .collect(),
        };
        tx.put(Space::LogHeads, tenant, &seq.to_be_bytes())?;
        tx.put(
            Space::ChangeLog,
            &entry_key(tenant, seq),
            &super::encode(&entry),
        )?;
    }
    Ok(())
}

fn entry_key(tenant: &[u8], seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(tenant.len() + 9);
    key.extend_from_slice(tenant);
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn seq_of(key: &[u8]) -> u64 {
    key.len()
        .checked_sub(8)
        .and_then(|i| <[u8; 8]>::try_from(&key[i..]).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

impl Store {
    /// The change log's epoch, made on first use (one per database or data directory).
    pub fn change_log_epoch(&self) -> Result<String, StoreError> {
        if let Some(epoch) = self.kv.get(Space::System, EPOCH.as_bytes())? {
            return Ok(String::from_utf8_lossy(&epoch).into_owned());
        }
        let fresh = hex::encode(rand::random::<[u8; 16]>());
        // Two replicas starting together: the transaction keeps the first one's.
        self.kv.transact(&|tx| {
            if tx.get(Space::System, EPOCH.as_bytes())?.is_none() {
                tx.put(Space::System, EPOCH.as_bytes(), fresh.as_bytes())?;
            }
            Ok(())
        })?;
        self.kv.flush()?;
        let epoch = self.kv.get(Space::System, EPOCH.as_bytes())?;
        Ok(String::from_utf8_lossy(&epoch.unwrap_or_default()).into_owned())
    }

    /// Every tenant's change-log head, by slug: one scan, for a replica polling for the
    /// other replicas' writes.
    pub fn change_log_heads(&self) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(self
            .kv
            .scan(Space::LogHeads, b"")?
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), head_of(Some(v))))
            .collect())
    }

    /// Tenant `tenant`'s log entries after sequence number `since` (0: from the start),
    /// at most `limit` of them.
    pub fn changes_since(
        &self,
        tenant: &str,
        since: u64,
        limit: usize,
    ) -> Result<ChangePage, StoreError> {
        let epoch = self.change_log_epoch()?;
        let head = head_of(self.kv.get(Space::LogHeads, tenant.as_bytes())?);
        let prefix = tkey(tenant, &[]);
        let after = entry_key(tenant.as_bytes(), since);
        let mut entries = Vec::new();
        let mut first = None;
        if since < head && limit > 0 {
            self.kv
                .scan_each(Space::ChangeLog, &prefix, Some(&after), &mut |k, v| {
                    first.get_or_insert(seq_of(k));
                    entries.push((k.to_vec(), v.to_vec()));
                    entries.len() < limit
                })?;
        }
        let gap = since < head && first.is_none_or(|first| first > since + 1);
        let entries = entries
            .iter()
            .map(|(k, v)| super::decode(k, v))
            .collect::<Result<Vec<ChangeEntry>, _>>()?;
        Ok(ChangePage {
            epoch,
            head,
            entries,
            gap,
        })
    }

    /// Removes, per tenant, the log entries more than `keep` behind its head; returns how
    /// many were removed. Runs in small transactions, so writers are not held up.
    pub fn prune_change_log(&self, keep: u64) -> Result<usize, StoreError> {
        let mut removed = 0;
        for (tenant, head) in self.change_log_heads()? {
            let Some(cutoff) = head.checked_sub(keep) else {
                continue;
            };
            loop {
                let mut doomed = Vec::new();
                self.kv
                    .scan_each(Space::ChangeLog, &tkey(&tenant, &[]), None, &mut |k, _| {
                        if seq_of(k) > cutoff {
                            return false;
                        }
                        doomed.push(k.to_vec());
                        doomed.len() < 500
                    })?;
                if doomed.is_empty() {
                    break;
                }
                self.kv.transact(&|tx| {
                    for key in &doomed {
                        tx.remove(Space::ChangeLog, key)?;
                    }
                    Ok(())
                })?;
                removed += doomed.len();
            }
        }
        if removed > 0 {
            self.kv.flush()?;
        }
        Ok(removed)
    }
}
