//! Typed, tenant-scoped records and atomic batches of changes to them.
//!
//! A key is the tenant slug, then each key part, separated by 0 bytes; key parts are ids,
//! lowercased names and hashes, none of which can contain a 0 byte.

use super::{decode, encode, tkey, Space, Store, StoreError, TxFail};
use serde::{de::DeserializeOwned, Serialize};

/// A record kind: the space it lives in.
pub trait Record: Serialize + DeserializeOwned {
    const SPACE: Space;
}

fn key(tenant: &str, parts: &[&str]) -> Vec<u8> {
    let parts: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
    tkey(tenant, &parts)
}

enum Op {
    Put(Space, Vec<u8>, Vec<u8>),
    Remove(Space, Vec<u8>),
    /// Abort with `Conflict(message)` if the key exists.
    Absent(Space, Vec<u8>, String),
    /// Abort with `NotFound(what)` if the key does not exist.
    Present(Space, Vec<u8>, String),
}

/// Changes to one tenant's records, applied atomically and durably by [`Store::apply`].
pub struct Batch {
    tenant: String,
    ops: Vec<Op>,
}

impl Batch {
    /// An empty batch for `tenant`.
    pub fn new(tenant: &str) -> Batch {
        Batch {
            tenant: tenant.to_owned(),
            ops: Vec::new(),
        }
    }

    /// Writes a record.
    pub fn put<T: Record>(&mut self, parts: &[&str], value: &T) -> &mut Self {
        self.ops
            .push(Op::Put(T::SPACE, key(&self.tenant, parts), encode(value)));
        self
    }

    /// Writes an index entry (raw value, often empty).
    pub fn put_raw(&mut self, space: Space, parts: &[&str], value: &[u8]) -> &mut Self {
        self.ops
            .push(Op::Put(space, key(&self.tenant, parts), value.to_vec()));
        self
    }

    /// Removes a record or an index entry.
    pub fn remove(&mut self, space: Space, parts: &[&str]) -> &mut Self {
        self.ops.push(Op::Remove(space, key(&self.tenant, parts)));
        self
    }

    /// Aborts the whole batch with a conflict if the key exists when it is applied.
    pub fn require_absent(&mut self, space: Space, parts: &[&str], conflict: String) -> &mut Self {
        self.ops
            .push(Op::Absent(space, key(&self.tenant, parts), conflict));
        self
    }

    /// Aborts the whole batch with not-found if the key is missing when it is applied.
    pub fn require_present(&mut self, space: Space, parts: &[&str], what: String) -> &mut Self {
        self.ops
            .push(Op::Present(space, key(&self.tenant, parts), what));
        self
    }

    /// Creates the tenant record itself (a conflict if the slug is taken).
    pub fn create_tenant(&mut self, record: &super::TenantRecord) -> &mut Self {
        let key = record.slug.as_bytes().to_vec();
        self.ops.push(Op::Absent(
            Space::Tenants,
            key.clone(),
            format!("tenant {} already exists", record.slug),
        ));
        self.ops.push(Op::Put(Space::Tenants, key, encode(record)));
        self
    }

    /// Rewrites the tenant record itself.
    pub fn put_tenant(&mut self, record: &super::TenantRecord) -> &mut Self {
        self.ops.push(Op::Put(
            Space::Tenants,
            record.slug.as_bytes().to_vec(),
            encode(record),
        ));
        self
    }

    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

impl Store {
    /// One record.
    pub fn get<T: Record>(&self, tenant: &str, parts: &[&str]) -> Result<Option<T>, StoreError> {
        let key = key(tenant, parts);
        self.kv
            .get(T::SPACE, &key)?
            .map(|v| decode(&key, &v))
            .transpose()
    }

    /// An index entry's raw value.
    pub fn get_raw(
        &self,
        space: Space,
        tenant: &str,
        parts: &[&str],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.kv.get(space, &key(tenant, parts))
    }

    /// Every record under `prefix` (key parts), in key order.
    pub fn list<T: Record>(&self, tenant: &str, prefix: &[&str]) -> Result<Vec<T>, StoreError> {
        self.kv
            .scan(T::SPACE, &scan_prefix(tenant, prefix))?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// Up to `limit` records under `prefix` that `keep` accepts, in key order, starting
    /// after the record keyed `after` (its last key part); and whether more may follow.
    pub fn page<T: Record>(
        &self,
        tenant: &str,
        prefix: &[&str],
        after: Option<&str>,
        limit: usize,
        keep: &mut dyn FnMut(&T) -> bool,
    ) -> Result<(Vec<T>, bool), StoreError> {
        let scan = scan_prefix(tenant, prefix);
        let after = after.map(|a| {
            let mut key = scan.clone();
            key.extend_from_slice(a.as_bytes());
            key
        });
        let (mut items, mut more, mut failure) = (Vec::new(), false, None);
        self.kv.scan_each(
            T::SPACE,
            &scan,
            after.as_deref(),
            &mut |k, v| match decode::<T>(k, v) {
                Ok(record) if keep(&record) => {
                    if items.len() == limit {
                        more = true;
                        return false;
                    }
                    items.push(record);
                    true
                }
                Ok(_) => true,
                Err(e) => {
                    failure = Some(e);
                    false
                }
            },
        )?;
        match failure {
            Some(e) => Err(e),
            None => Ok((items, more)),
        }
    }

    /// The last key part of every entry under `prefix` in an index space, in key order
    /// (e.g. the user ids of a team's members).
    pub fn index(
        &self,
        space: Space,
        tenant: &str,
        prefix: &[&str],
    ) -> Result<Vec<String>, StoreError> {
        let prefix = scan_prefix(tenant, prefix);
        self.kv
            .scan(space, &prefix)?
            .into_iter()
            .map(|(k, _)| {
                String::from_utf8(k[prefix.len()..].to_vec()).map_err(|e| StoreError::Corrupt {
                    key: String::from_utf8_lossy(&k).replace('\0', "/"),
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    /// Applies `batch` atomically (all or nothing, checks included) and durably.
    pub fn apply(&self, batch: &Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.transact_durably(&|tx| {
            for op in &batch.ops {
                match op {
                    Op::Absent(space, key, conflict) => {
                        if tx.get(*space, key)?.is_some() {
                            return Err(TxFail::Abort(StoreError::Conflict(conflict.clone())));
                        }
                    }
                    Op::Present(space, key, what) => {
                        if tx.get(*space, key)?.is_none() {
                            return Err(TxFail::Abort(StoreError::NotFound(what.clone())));
                        }
                    }
                    Op::Put(..) | Op::Remove(..) => {}
                }
            }
            for op in &batch.ops {
                match op {
                    Op::Put(space, key, value) => tx.put(*space, key, value)?,
                    Op::Remove(space, key) => tx.remove(*space, key)?,
                    Op::Absent(..) | Op::Present(..) => {}
                }
            }
            Ok(())
        })
    }
}

/// The scan prefix for `parts` under `tenant`: a trailing 0 when there are parts, so
/// `team-1` never matches `team-10`.
fn scan_prefix(tenant: &str, parts: &[&str]) -> Vec<u8> {
    let mut prefix = key(tenant, parts);
    if !parts.is_empty() {
        prefix.push(0);
    }
    prefix
}
