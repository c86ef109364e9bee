//! [`Backend`] on an embedded sled database: one tree per [`Space`].

use super::{Backend, Space, StoreError, TxBody, TxFail, Txn};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};
use std::path::Path;

/// A conflict or I/O failure inside a sled transaction; sled retries or reports it.
pub struct BackendFail(UnabortableTransactionError);

/// The embedded store.
pub struct SledBackend {
    db: sled::Db,
    trees: Vec<sled::Tree>,
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

impl SledBackend {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<SledBackend, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| {
                StoreError::Io(format!("cannot open the store in {}: {e}", dir.display()))
            })?;
        let trees = Space::ALL
            .iter()
            .map(|s| db.open_tree(s.name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io)?;
        Ok(SledBackend { db, trees })
    }

    fn tree(&self, space: Space) -> &sled::Tree {
        &self.trees[space_index(space)]
    }
}

fn space_index(space: Space) -> usize {
    Space::ALL
        .iter()
        .position(|s| *s == space)
        .expect("every space is in Space::ALL")
}

struct SledTxn<'a>(&'a [TransactionalTree]);

impl Txn for SledTxn<'_> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, TxFail> {
        self.0[space_index(space)]
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| TxFail::Backend(BackendFail(e)))
    }
    fn put(&self, space: Space, key: &[u8], value: &[u8]) -> Result<(), TxFail> {
        self.0[space_index(space)]
            .insert(key, value)
            .map(drop)
            .map_err(|e| TxFail::Backend(BackendFail(e)))
    }
    fn remove(&self, space: Space, key: &[u8]) -> Result<(), TxFail> {
        self.0[space_index(space)]
            .remove(key)
            .map(drop)
            .map_err(|e| TxFail::Backend(BackendFail(e)))
    }
}

impl Backend for SledBackend {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.tree(space)
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(io)
    }

    fn scan_each(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        use std::ops::Bound;
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after.to_vec()),
            _ => Bound::Included(prefix.to_vec()),
        };
        for entry in self
            .tree(space)
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
        {
            let (key, value) = entry.map_err(io)?;
            if !key.starts_with(prefix) || !visit(&key, &value) {
                break;
            }
        }
        Ok(())
    }

    fn transact(&self, body: &TxBody<'_>) -> Result<(), StoreError> {
        use sled::Transactional;
        let result: Result<(), TransactionError<StoreError>> =
            self.trees.as_slice().transaction(|trees| {
                body(&SledTxn(trees)).map_err(|fail| match fail {
                    TxFail::Abort(e) => ConflictableTransactionError::Abort(e),
                    TxFail::Backend(BackendFail(e)) => e.into(),
                })
            });
        result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => io(e),
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(drop).map_err(io)
    }
}
