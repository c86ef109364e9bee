//! Raw reads for the edge stream and raw writes for an edge's local replica (decision 70).
//!
//! The control plane reads one tenant's keys as they are (`snapshot_tenant`,
//! `read_keys`), each read bracketed by the tenant's change-log head: a read is used only
//! when the head was the same before and after it, so it shows the tenant exactly as it
//! was at that sequence number (every batch of a tenant moves its head in the same
//! transaction, so no batch can have committed in between). An edge writes what it
//! received with [`Store::apply_replica`]: the records and its cursor in one transaction,
//! flushed before it returns. The edge's own store has no change log: it is a copy, not
//! a source.

use super::{tkey, Space, Store, StoreError};
use serde::{Deserialize, Serialize};

/// Where an edge stands for one tenant: the control plane's log epoch and the last
/// sequence number applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaCursor {
    pub epoch: String,
    pub seq: u64,
}

/// One key of a replicated tenant: its space, the key, and the value (`None`: removed).
pub type RawRecord = (Space, Vec<u8>, Option<Vec<u8>>);

const CURSOR: &str = "edge-cursor:";
const SYNCED_AT: &str = "edge-synced-at";

impl Space {
    /// The space of a stable name ([`Space::name`]).
    pub fn from_name(name: &str) -> Option<Space> {
        Space::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl Store {
    /// Tenant `tenant`'s change-log head (0: nothing logged).
    pub fn change_log_head(&self, tenant: &str) -> Result<u64, StoreError> {
        Ok(self
            .kv
            .get(Space::LogHeads, tenant.as_bytes())?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    /// Every record of `tenant` in `spaces` (its `Tenants` record included when listed), as
    /// of one sequence number, which is returned with them; `None` when the tenant was
    /// written to during every one of `tries` attempts.
    pub fn snapshot_tenant(
        &self,
        tenant: &str,
        spaces: &[Space],
        tries: usize,
    ) -> Result<Option<(u64, Vec<RawRecord>)>, StoreError> {
        for _ in 0..tries {
            let before = self.change_log_head(tenant)?;
            let mut records = Vec::new();
            for &space in spaces {
                if space == Space::Tenants {
                    if let Some(v) = self.kv.get(Space::Tenants, tenant.as_bytes())? {
                        records.push((space, tenant.as_bytes().to_vec(), Some(v)));
                    }
                    continue;
                }
                self.kv
                    .scan_each(space, &tkey(tenant, &[]), None, &mut |k, v| {
                        records.push((space, k.to_vec(), Some(v.to_vec())));
                        true
                    })?;
            }
            if self.change_log_head(tenant)? == before {
                return Ok(Some((before, records)));
            }
        }
        Ok(None)
    }

    /// The current values of `keys` of `tenant`, if the tenant's head is `head` both before
    /// and after they are read (so they are its state at `head`); `None` otherwise.
    pub fn read_keys_at(
        &self,
        tenant: &str,
        head: u64,
        keys: &[(Space, Vec<u8>)],
    ) -> Result<Option<Vec<RawRecord>>, StoreError> {
        if self.change_log_head(tenant)? != head {
            return Ok(None);
        }
        let mut records = Vec::with_capacity(keys.len());
        for (space, key) in keys {
            records.push((*space, key.clone(), self.kv.get(*space, key)?));
        }
        if self.change_log_head(tenant)? != head {
            return Ok(None);
        }
        Ok(Some(records))
    }

    /// An edge's cursors, by tenant.
    pub fn replica_cursors(&self) -> Result<Vec<(String, ReplicaCursor)>, StoreError> {
        self.kv
            .scan(Space::System, CURSOR.as_bytes())?
            .into_iter()
            .map(|(k, v)| {
                let tenant = String::from_utf8_lossy(&k[CURSOR.len()..]).into_owned();
                Ok((tenant, super::decode(&k, &v)?))
            })
            .collect()
    }

    /// Applies what the control plane sent for `tenant` to this edge's store, with the new
    /// cursor, in one transaction, durable when it returns. `reset`: a snapshot, so every
    /// key of the tenant in `spaces` not in `records` is removed in the same transaction.
    pub fn apply_replica(
        &self,
        tenant: &str,
        cursor: &ReplicaCursor,
        reset: Option<&[Space]>,
        records: &[RawRecord],
    ) -> Result<(), StoreError> {
        let mut doomed = Vec::new();
        if let Some(spaces) = reset {
            for &space in spaces {
                if space == Space::Tenants {
                    continue; // a snapshot always carries its tenant record
                }
                for (k, _) in self.kv.scan(space, &tkey(tenant, &[]))? {
                    doomed.push((space, k));
                }
            }
        }
        let cursor_key = format!("{CURSOR}{tenant}");
        let cursor = super::encode(cursor);
        let synced_at = time::OffsetDateTime::now_utc()
            .unix_timestamp()
            .to_be_bytes();
        self.kv.transact(&|tx| {
            for (space, key) in &doomed {
                tx.remove(*space, key)?;
            }
            for (space, key, value) in records {
                match value {
                    Some(value) => tx.put(*space, key, value)?,
                    None => tx.remove(*space, key)?,
                }
            }
            tx.put(Space::System, cursor_key.as_bytes(), &cursor)?;
            tx.put(Space::System, SYNCED_AT.as_bytes(), &synced_at)
        })?;
        self.kv.flush()
    }

    /// Records that this edge was up to date with the control plane at `unix_secs`.
    pub fn set_replica_synced_at(&self, unix_secs: i64) -> Result<(), StoreError> {
        self.kv.transact(&|tx| {
            tx.put(
                Space::System,
                SYNCED_AT.as_bytes(),
                &unix_secs.to_be_bytes(),
            )
        })?;
        self.kv.flush()
    }

    /// When this edge was last known up to date (Unix seconds), if ever.
    pub fn replica_synced_at(&self) -> Result<Option<i64>, StoreError> {
        Ok(self
            .kv
            .get(Space::System, SYNCED_AT.as_bytes())?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(i64::from_be_bytes))
    }

    /// Process-wide values whose name starts with `prefix`, by name.
    pub fn system_scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .kv
            .scan(Space::System, prefix.as_bytes())?
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
            .collect())
    }
}
