//! Typed, tenant-scoped records and atomic batches of changes to them.
//!
//! A key is the tenant slug, then each key part, separated by 0 bytes; key parts are ids,
//! lowercased names and hashes, none of which can contain a 0 byte.

use super::side::{self, Bucket};
use super::{decode, encode, tkey, Backend, Space, Store, StoreError, TxFail};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A record kind: the space it lives in and, when that space has a side table
/// ([`Space::side`]), the part of the record kept there.
pub trait Record: Serialize + DeserializeOwned {
    const SPACE: Space;

    /// The part of this record kept in its space's side table (at most 255 bytes).
    fn side(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Puts back the part read from the side table.
    fn set_side(&mut self, _part: &[u8]) -> Result<(), String> {
        Ok(())
    }
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
    /// Sets (or with `None` removes) entry `name` in the side table `space`'s bucket `key`.
    Side(Space, Vec<u8>, String, Option<Vec<u8>>),
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

    /// Writes a record (with its side part, if its space has a side table).
    pub fn put<T: Record>(&mut self, parts: &[&str], value: &T) -> &mut Self {
        self.ops
            .push(Op::Put(T::SPACE, key(&self.tenant, parts), encode(value)));
        if T::SPACE.side().is_some() {
            self.put_side::<T>(parts, value.side());
        }
        self
    }

    /// Writes only the side part of a record (see [`Record::side`]); the record itself is
    /// left as it is.
    pub fn put_side<T: Record>(&mut self, parts: &[&str], part: Vec<u8>) -> &mut Self {
        let space = T::SPACE
            .side()
            .expect("put_side on a space without a side table");
        let name = side::entry_name(parts);
        side::check(space, &name, &part);
        self.ops.push(Op::Side(
            space,
            side::bucket_key(&self.tenant, &name),
            name,
            Some(part),
        ));
        self
    }

    /// Writes an index entry (raw value, often empty).
    pub fn put_raw(&mut self, space: Space, parts: &[&str], value: &[u8]) -> &mut Self {
        self.ops
            .push(Op::Put(space, key(&self.tenant, parts), value.to_vec()));
        self
    }

    /// Removes a record (with its side part) or an index entry.
    pub fn remove(&mut self, space: Space, parts: &[&str]) -> &mut Self {
        self.ops.push(Op::Remove(space, key(&self.tenant, parts)));
        if let Some(side) = space.side() {
            let name = side::entry_name(parts);
            self.ops.push(Op::Side(
                side,
                side::bucket_key(&self.tenant, &name),
                name,
                None,
            ));
        }
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
        let Some(mut record) = self
            .kv
            .get(T::SPACE, &key)?
            .map(|v| decode::<T>(&key, &v))
            .transpose()?
        else {
            return Ok(None);
        };
        if let Some(side) = T::SPACE.side() {
            let name = side::entry_name(parts);
            if let Some(part) = self.sides(side, tenant, &[name.as_str()])?.pop().flatten() {
                put_back(&key, &mut record, &part)?;
            }
        }
        Ok(Some(record))
    }

    /// The records keyed `prefix` + each of `ids`, in order (`None` where there is none),
    /// read at once: one round trip on a database, not one per id.
    pub fn get_many<T: Record>(
        &self,
        tenant: &str,
        prefix: &[&str],
        ids: &[&str],
    ) -> Result<Vec<Option<T>>, StoreError> {
        let keyed = |id: &str| -> Vec<String> {
            prefix
                .iter()
                .map(|p| (*p).to_owned())
                .chain([id.to_owned()])
                .collect()
        };
        let keys: Vec<Vec<u8>> = ids
            .iter()
            .map(|id| {
                let parts = keyed(id);
                key(
                    tenant,
                    &parts.iter().map(String::as_str).collect::<Vec<_>>(),
                )
            })
            .collect();
        let mut records = self
            .kv
            .get_many(T::SPACE, &keys)?
            .into_iter()
            .zip(&keys)
            .map(|(value, key)| value.map(|v| decode::<T>(key, &v)).transpose())
            .collect::<Result<Vec<Option<T>>, StoreError>>()?;
        if let Some(side) = T::SPACE.side() {
            let found: Vec<usize> = (0..ids.len()).filter(|&i| records[i].is_some()).collect();
            let names: Vec<String> = found.iter().map(|&i| keyed(ids[i]).join("/")).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let parts = self.sides(side, tenant, &names)?;
            for (i, part) in found.into_iter().zip(parts) {
                if let (Some(record), Some(part)) = (records[i].as_mut(), part) {
                    put_back(&keys[i], record, &part)?;
                }
            }
        }
        Ok(records)
    }

    /// The side parts of the records named `names` (each a record's key parts joined by
    /// `/`) in side table `space`, in order; `None` where a record has none. Each bucket
    /// is read once.
    pub fn sides(
        &self,
        space: Space,
        tenant: &str,
        names: &[&str],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let keys: Vec<Vec<u8>> = names
            .iter()
            .map(|name| side::bucket_key(tenant, name))
            .collect();
        let distinct: Vec<Vec<u8>> = keys
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let buckets: HashMap<Vec<u8>, Option<Vec<u8>>> = distinct
            .iter()
            .cloned()
            .zip(self.kv.get_many(space, &distinct)?)
            .collect();
        names
            .iter()
            .zip(&keys)
            .map(
                |(name, key)| match buckets.get(key).and_then(Option::as_ref) {
                    Some(bytes) => Ok(Bucket::find(key, bytes, name)?.map(<[u8]>::to_vec)),
                    None => Ok(None),
                },
            )
            .collect()
    }

    /// Every side part of the tenant in side table `space`, by record name.
    fn all_sides(
        &self,
        space: Space,
        tenant: &str,
    ) -> Result<HashMap<String, Vec<u8>>, StoreError> {
        let mut all = HashMap::new();
        for (key, bytes) in self.kv.scan(space, &tkey(tenant, &[]))? {
            all.extend(Bucket::decode(&key, &bytes)?.0);
        }
        Ok(all)
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
        let mut all = Vec::new();
        self.each(tenant, prefix, &mut |record| all.push(record))?;
        Ok(all)
    }

    /// Every record under `prefix` (key parts), in key order, handed to `visit` as it is
    /// read: nothing is collected on the way (an edge builds a directory of 100,000 users
    /// without first copying 100,000 raw pairs). On PostgreSQL `visit` runs while the scan
    /// holds a pooled connection: it must not read the store itself.
    pub fn each<T: Record>(
        &self,
        tenant: &str,
        prefix: &[&str],
        visit: &mut dyn FnMut(T),
    ) -> Result<(), StoreError> {
        let sides = match T::SPACE.side() {
            Some(side) => Some(self.all_sides(side, tenant)?),
            None => None,
        };
        let names_from = tenant.len() + 1;
        let read = |k: &[u8], v: &[u8]| -> Result<T, StoreError> {
            let mut record = decode::<T>(k, v)?;
            if let Some(sides) = &sides {
                let name = side_name(k, names_from);
                if let Some(part) = sides.get(&name) {
                    put_back(k, &mut record, part)?;
                }
            }
            Ok(record)
        };
        let mut failure = None;
        self.kv.scan_each(
            T::SPACE,
            &scan_prefix(tenant, prefix),
            None,
            &mut |k, v| match read(k, v) {
                Ok(record) => {
                    visit(record);
                    true
                }
                Err(e) => {
                    failure = Some(e);
                    false
                }
            },
        )?;
        failure.map_or(Ok(()), Err)
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
        let side = T::SPACE.side();
        let names_from = tenant.len() + 1;
        // Side parts are put back before `keep` looks at a record (it may filter on them).
        let read = |k: &[u8], v: &[u8]| -> Result<T, StoreError> {
            let mut record = decode::<T>(k, v)?;
            if let Some(side) = side {
                let name = side_name(k, names_from);
                if let Some(part) = self.sides(side, tenant, &[&name])?.pop().flatten() {
                    put_back(k, &mut record, &part)?;
                }
            }
            Ok(record)
        };
        self.kv.scan_each(
            T::SPACE,
            &scan,
            after.as_deref(),
            &mut |k, v| match read(k, v) {
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
            .map(|(k, _)| index_entry(&prefix, &k))
            .collect()
    }

    /// [`Store::index`] of `prefix` + each of `ids`, in order, read at once (e.g. the teams
    /// of each of a thousand users in one round trip).
    pub fn index_many(
        &self,
        space: Space,
        tenant: &str,
        prefix: &[&str],
        ids: &[&str],
    ) -> Result<Vec<Vec<String>>, StoreError> {
        let prefixes: Vec<Vec<u8>> = ids
            .iter()
            .map(|id| {
                let parts: Vec<&str> = prefix.iter().copied().chain([*id]).collect();
                scan_prefix(tenant, &parts)
            })
            .collect();
        self.kv
            .scan_many(space, &prefixes)?
            .into_iter()
            .zip(&prefixes)
            .map(|(pairs, prefix)| {
                pairs
                    .into_iter()
                    .map(|(k, _)| index_entry(prefix, &k))
                    .collect()
            })
            .collect()
    }

    /// Applies `batch` atomically (all or nothing, checks included) and durably.
    pub fn apply(&self, batch: &Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.transact_durably(&|tx| {
            // The checks' keys are read at once per space (one round trip on a database),
            // then judged in batch order, so the first failing check is the one reported.
            let mut checked: BTreeMap<Space, Vec<Vec<u8>>> = BTreeMap::new();
            for op in &batch.ops {
                if let Op::Absent(space, key, _) | Op::Present(space, key, _) = op {
                    checked.entry(*space).or_default().push(key.clone());
                }
            }
            let mut present: HashMap<(Space, &[u8]), bool> = HashMap::new();
            for (space, keys) in &checked {
                for (key, value) in keys.iter().zip(tx.get_many(*space, keys)?) {
                    present.insert((*space, key.as_slice()), value.is_some());
                }
            }
            for op in &batch.ops {
                match op {
                    Op::Absent(space, key, conflict) => {
                        if present[&(*space, key.as_slice())] {
                            return Err(TxFail::Abort(StoreError::Conflict(conflict.clone())));
                        }
                    }
                    Op::Present(space, key, what) => {
                        if !present[&(*space, key.as_slice())] {
                            return Err(TxFail::Abort(StoreError::NotFound(what.clone())));
                        }
                    }
                    Op::Put(..) | Op::Remove(..) | Op::Side(..) => {}
                }
            }
            let mut buckets: BTreeMap<(Space, &[u8]), Vec<SideChange<'_>>> = BTreeMap::new();
            for op in &batch.ops {
                match op {
                    Op::Put(space, key, value) => tx.put(*space, key, value)?,
                    Op::Remove(space, key) => tx.remove(*space, key)?,
                    // In batch order, so the last write of an entry wins.
                    Op::Side(space, key, name, part) => buckets
                        .entry((*space, key.as_slice()))
                        .or_default()
                        .push((name.as_str(), part)),
                    Op::Absent(..) | Op::Present(..) => {}
                }
            }
            // The buckets a batch rewrites, read at once per side table.
            let mut stored: HashMap<(Space, &[u8]), Option<Vec<u8>>> = HashMap::new();
            let mut by_space: BTreeMap<Space, Vec<&[u8]>> = BTreeMap::new();
            for (space, key) in buckets.keys() {
                by_space.entry(*space).or_default().push(key);
            }
            for (space, keys) in by_space {
                let owned: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
                for (key, value) in keys.into_iter().zip(tx.get_many(space, &owned)?) {
                    stored.insert((space, key), value);
                }
            }
            for ((space, key), changes) in buckets {
                let mut bucket = match stored.remove(&(space, key)).flatten() {
                    Some(bytes) => Bucket::decode(key, &bytes).map_err(TxFail::Abort)?,
                    None => Bucket::default(),
                };
                for (name, part) in changes {
                    match part {
                        Some(part) => bucket.0.insert(name.to_owned(), part.clone()),
                        None => bucket.0.remove(name),
                    };
                }
                if bucket.0.is_empty() {
                    tx.remove(space, key)?;
                } else {
                    tx.put(space, key, &bucket.encode())?;
                }
            }
            Ok(())
        })
    }
}

/// The last key part of index entry `key` under `prefix`.
fn index_entry(prefix: &[u8], key: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(key[prefix.len()..].to_vec()).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).replace('\0', "/"),
        reason: e.to_string(),
    })
}

/// A change to one side entry: its name, and its new part (`None`: removed).
type SideChange<'a> = (&'a str, &'a Option<Vec<u8>>);

/// Puts a side part back into the record read from `key`.
fn put_back<T: Record>(key: &[u8], record: &mut T, part: &[u8]) -> Result<(), StoreError> {
    record.set_side(part).map_err(|reason| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).replace('\0', "/"),
        reason,
    })
}

/// The name a record keyed `key` has in its space's side table: its key parts after the
/// tenant (which ends at `names_from`), joined by `/`.
fn side_name(key: &[u8], names_from: usize) -> String {
    String::from_utf8_lossy(&key[names_from..]).replace('\0', "/")
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
