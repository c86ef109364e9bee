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

use super::{tkey, Backend, Space, Store, StoreError};
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
            tx.put(Space::System, cursor_key.as_bytes(), &cursor)
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

#[cfg(test)]
mod tests {
    use super::super::{Batch, TenantRecord};
    use super::*;

    fn tenant(slug: &str) -> TenantRecord {
        TenantRecord {
            slug: slug.into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            created_by: "operator".into(),
            mode: "invite_only".into(),
        }
    }

    fn put(store: &Store, tenant: &str, space: Space, key: &str, value: &[u8]) {
        let mut batch = Batch::new(tenant);
        batch.put_raw(space, &[key], value);
        store.apply(&batch).unwrap();
    }

    /// The control plane's reads on both backends: a snapshot is one tenant's, at its head;
    /// keys are read only at the head they are asked for.
    #[test]
    fn snapshots_and_key_reads_are_one_tenants_state_at_one_sequence_number() {
        let sled_dir = tempfile::tempdir().unwrap();
        let pg_dir = tempfile::tempdir().unwrap();
        let stores = [
            Store::open(sled_dir.path()).unwrap(),
            Store::open_postgres(
                &super::super::pg_cluster::database_url(),
                pg_dir.path(),
                &Default::default(),
            )
            .unwrap(),
        ];
        for store in stores {
            store.create_tenant(&tenant("acme")).unwrap();
            store.create_tenant(&tenant("acme-two")).unwrap();
            put(&store, "acme", Space::Teams, "t1", b"one");
            put(&store, "acme", Space::Passwords, "u1", b"secret");
            put(&store, "acme-two", Space::Teams, "t9", b"other");
            let head = store.change_log_head("acme").unwrap();
            assert_eq!(head, 3);
            let (seq, records) = store
                .snapshot_tenant("acme", &[Space::Tenants, Space::Teams], 1)
                .unwrap()
                .unwrap();
            assert_eq!(seq, head);
            let keys: Vec<_> = records.iter().map(|(s, k, _)| (*s, k.clone())).collect();
            assert_eq!(
                keys,
                vec![
                    (Space::Tenants, b"acme".to_vec()),
                    (Space::Teams, b"acme\0t1".to_vec())
                ],
                "only acme (not acme-two), only the spaces asked for"
            );
            let asked = vec![(Space::Teams, b"acme\0t1".to_vec())];
            let read = store.read_keys_at("acme", head, &asked).unwrap().unwrap();
            assert_eq!(read[0].2.as_deref(), Some(&b"one"[..]));
            assert!(store
                .read_keys_at("acme", head - 1, &asked)
                .unwrap()
                .is_none());
        }
    }

    /// An edge's writes: records and cursor together; a snapshot replaces what was there.
    #[test]
    fn an_edge_applies_records_with_its_cursor_and_a_snapshot_replaces_the_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let cursor = |seq| ReplicaCursor {
            epoch: "e1".into(),
            seq,
        };
        let rec = |k: &str, v: Option<&[u8]>| {
            (Space::Teams, k.as_bytes().to_vec(), v.map(<[u8]>::to_vec))
        };
        store
            .apply_replica(
                "acme",
                &cursor(5),
                Some(&[Space::Teams]),
                &[rec("acme\0a", Some(b"1")), rec("acme\0b", Some(b"2"))],
            )
            .unwrap();
        store
            .apply_replica(
                "acme",
                &cursor(7),
                None,
                &[rec("acme\0b", None), rec("acme\0c", Some(b"3"))],
            )
            .unwrap();
        let teams = |store: &Store| -> Vec<Vec<u8>> {
            store
                .kv
                .scan(Space::Teams, b"acme\0")
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(
            teams(&store),
            vec![b"acme\0a".to_vec(), b"acme\0c".to_vec()]
        );
        assert_eq!(
            store.replica_cursors().unwrap(),
            vec![("acme".into(), cursor(7))]
        );
        // Reopened (as after a crash): records and cursor agree.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.replica_cursors().unwrap()[0].1.seq, 7);
        store
            .apply_replica(
                "acme",
                &cursor(9),
                Some(&[Space::Teams]),
                &[rec("acme\0z", Some(b"9"))],
            )
            .unwrap();
        assert_eq!(
            teams(&store),
            vec![b"acme\0z".to_vec()],
            "a snapshot replaces"
        );
        assert!(store.replica_synced_at().unwrap().is_none());
        store.set_replica_synced_at(1_800_000_000).unwrap();
        assert_eq!(store.replica_synced_at().unwrap(), Some(1_800_000_000));
    }
}
