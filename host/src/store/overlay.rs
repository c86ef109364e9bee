//! One transaction per round (decision 80): the backend as the [`super::Store`] sees it.
//!
//! While a thread leads a round of a tenant's writes (decision 79), the round's durable
//! writes are not committed one by one. Each transaction body runs once against the
//! round's overlay: its reads see the round's earlier writes over the backend, its writes
//! are staged. The round then ends with one backend transaction that
//! - re-reads every key a body read from the backend, and writes nothing unless each still
//!   holds what the body saw (a writer outside the tenant's lock changed it: every write of
//!   the round fails, with an error worth retrying);
//! - writes the staged values;
//! - appends each staged batch's change-log entry, in the order they were staged, with the
//!   sequence numbers read in that same transaction.
//!
//! The flush after it covers the whole round, as before; nothing is acknowledged before
//! both. So a round of many writes pays one transaction's fixed price (sled rolls its log
//! buffer twice per transaction, whatever its size) instead of one per write.
//!
//! Reads on the leader's thread, inside transactions or not, see the overlay; other
//! threads see the backend, which holds none of the round's writes until it commits. Two
//! things cannot be staged, and first commit what the round staged so far, so that writes
//! still reach the backend in the order they were made: a backend transaction run
//! directly ([`Backend::transact`]), and a durable write under a tenant lock taken inside
//! the round (a nested write, which may be another tenant's). A round that stages many
//! keys also commits early, every [`STAGED_KEYS`], to keep one transaction's size bounded.

use super::change_log::{self, TouchedByTenant};
use super::tenant_lock::{self, HeldLock, RoundOutcome, TenantGuard};
use super::{Backend, Pairs, Space, StoreError, TxBody, TxFail, Txn};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

/// A key of a space.
type Key = (Space, Vec<u8>);

/// A value as the round has it: `None` when removed (or, read, absent).
type Value = Option<Vec<u8>>;

/// A round commits what it staged once it holds this many keys, and goes on staging.
const STAGED_KEYS: usize = 4096;

/// What one round staged.
#[derive(Default)]
struct Staged {
    /// Every key written, with its latest value.
    writes: BTreeMap<Key, Value>,
    /// Each staged batch's keys, per tenant, in order: their change-log entries.
    logs: Vec<TouchedByTenant>,
    /// Every key a body read from the backend (not from `writes`), with what it read.
    reads: BTreeMap<Key, Value>,
    /// The backend's [`Backend::stamp`] when this staging began, before any of those
    /// reads. The commit re-reads `reads` unless its transaction has the same stamp: no
    /// other transaction committed since, so they still hold (decision 81).
    stamp: Option<u64>,
}

/// A round open on this thread.
struct Open {
    /// The [`Overlaid`] it belongs to (its address).
    backend: usize,
    /// How many tenant guards of that backend this thread held when it opened: more means
    /// a nested lock is held, under which writes are not staged.
    depth: usize,
    staged: Staged,
    /// Batches staged in the round so far, and how many of them are committed.
    staged_batches: u64,
    committed_batches: u64,
    /// An early commit failed: the round's writes so far are lost, so every later one
    /// fails too, and so does the round.
    failed: Option<StoreError>,
}

thread_local! {
    /// The rounds this thread leads, innermost last (one per store, at most).
    static OPEN: RefCell<Vec<Open>> = const { RefCell::new(Vec::new()) };
}

/// The store's backend: the real one, seen through the round this thread leads, if any.
pub(super) struct Overlaid {
    inner: Arc<dyn Backend>,
}

impl Overlaid {
    pub(super) fn new(inner: Arc<dyn Backend>) -> Overlaid {
        Overlaid { inner }
    }

    fn id(&self) -> usize {
        tenant_lock::backend_id(self)
    }

    /// Runs `f` on this thread's open round of this backend; `None` when there is none.
    fn with_open<R>(&self, f: impl FnOnce(&mut Open) -> R) -> Option<R> {
        let id = self.id();
        OPEN.with(|open| {
            open.borrow_mut()
                .iter_mut()
                .rev()
                .find(|o| o.backend == id)
                .map(f)
        })
    }

    /// The staged value of `key`: `Some(value)` when the open round wrote it.
    fn staged(&self, space: Space, key: &[u8]) -> Option<Value> {
        self.with_open(|o| o.staged.writes.get(&(space, key.to_vec())).cloned())
            .flatten()
    }

    /// Whether this thread's open round wrote anything in `space`.
    fn wrote_in(&self, space: Space) -> bool {
        self.with_open(|o| {
            o.staged
                .writes
                .range((space, Vec::new())..)
                .next()
                .is_some_and(|((s, _), _)| *s == space)
        })
        .unwrap_or(false)
    }

    /// The staged entries of `space` a scan of `prefix` after `after` would visit, in
    /// key order.
    fn staged_range(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
    ) -> Vec<(Vec<u8>, Value)> {
        let start = match super::scan_start(prefix, after) {
            Bound::Excluded(key) => Bound::Excluded((space, key)),
            Bound::Included(key) => Bound::Included((space, key)),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.with_open(|o| {
            o.staged
                .writes
                .range((start, Bound::Unbounded))
                .take_while(|((s, key), _)| *s == space && key.starts_with(prefix))
                .map(|((_, key), value)| (key.clone(), value.clone()))
                .collect()
        })
        .unwrap_or_default()
    }

    /// Opens a round on this thread, under `guard` (the tenant's lock, just taken).
    pub(super) fn open_round<'a>(&'a self, guard: TenantGuard<'a>) -> RoundGuard<'a> {
        let open = Open {
            backend: self.id(),
            depth: tenant_lock::held_depth(self.id()),
            staged: Staged {
                stamp: self.inner.stamp(),
                ..Staged::default()
            },
            staged_batches: 0,
            committed_batches: 0,
            failed: None,
        };
        OPEN.with(|rounds| rounds.borrow_mut().push(open));
        RoundGuard {
            kv: self,
            guard: Some(guard),
        }
    }

    /// Stages `body` (a batch, with its change-log entry) in this thread's open round.
    /// `None`: no round is open here, or a nested lock is held (what the round staged
    /// is committed first): commit `body` directly.
    pub(super) fn stage(&self, body: &TxBody<'_>) -> Option<Result<(), StoreError>> {
        let (depth, failed) = self.with_open(|o| (o.depth, o.failed.clone()))?;
        if let Some(e) = failed {
            return Some(Err(e));
        }
        if tenant_lock::held_depth(self.id()) != depth {
            return match self.commit_staged() {
                Ok(()) => None,
                Err(e) => Some(Err(e)),
            };
        }
        let staging = Staging {
            kv: self,
            pending: RefCell::default(),
            reads: RefCell::default(),
        };
        let outcome = change_log::touched_by(&staging, body);
        let (pending, reads) = (staging.pending.into_inner(), staging.reads.into_inner());
        // An aborted body writes nothing, so what it read needs no check at commit.
        let touched = match outcome {
            Ok(touched) => touched,
            Err(TxFail::Abort(e)) => return Some(Err(e)),
            Err(TxFail::Backend(fail)) => return Some(Err(fail.into_store_error())),
        };
        let full = self
            .with_open(|o| {
                keep_reads(&mut o.staged, reads);
                o.staged.writes.extend(pending);
                if !touched.is_empty() {
                    o.staged.logs.push(touched);
                }
                o.staged_batches += 1;
                o.staged.writes.len() >= STAGED_KEYS
            })
            .unwrap_or(false);
        if full {
            if let Err(e) = self.commit_staged() {
                return Some(Err(e));
            }
        }
        Some(Ok(()))
    }

    /// Commits what this thread's open round staged so far (nothing when no round is
    /// open); once a commit of the round failed, nothing more is written and this fails.
    fn commit_staged(&self) -> Result<(), StoreError> {
        let Some(taken) = self.with_open(|o| match &o.failed {
            Some(e) => Err(e.clone()),
            None => Ok((std::mem::take(&mut o.staged), o.staged_batches, o.depth)),
        }) else {
            return Ok(());
        };
        let (staged, batches, depth) = taken?;
        let committed = self.commit(&staged, depth);
        self.with_open(|o| match &committed {
            Ok(()) => {
                o.committed_batches = batches;
                // What the round stages next is read after this commit.
                o.staged.stamp = self.inner.stamp();
            }
            Err(e) => o.failed = Some(e.clone()),
        });
        committed
    }

    /// Commits `staged` in one backend transaction: its reads checked, its writes made,
    /// its change-log entries appended. The flush that makes it durable is owed by the
    /// round's own guard (the `depth`-th), also when a nested guard is held.
    fn commit(&self, staged: &Staged, depth: usize) -> Result<(), StoreError> {
        if staged.writes.is_empty() {
            return Ok(());
        }
        self.inner.transact(&|tx| {
            if staged.stamp.is_none() || tx.stamp() != staged.stamp {
                check_reads(tx, &staged.reads)?;
            }
            for ((space, key), value) in &staged.writes {
                match value {
                    Some(value) => tx.put(*space, key, value)?,
                    None => tx.remove(*space, key)?,
                }
            }
            for touched in &staged.logs {
                change_log::append(tx, touched)?;
            }
            Ok(())
        })?;
        tenant_lock::owe_flush_at(self.id(), depth);
        Ok(())
    }
}

/// Fails (writing nothing) unless every key in `reads` still holds what was read.
fn check_reads(tx: &dyn Txn, reads: &BTreeMap<Key, Value>) -> Result<(), TxFail> {
    let mut by_space: BTreeMap<Space, (Vec<Vec<u8>>, Vec<Value>)> = BTreeMap::new();
    for ((space, key), value) in reads {
        let (keys, values) = by_space.entry(*space).or_default();
        keys.push(key.clone());
        values.push(value.clone());
    }
    for (space, (keys, seen)) in &by_space {
        if tx.get_many(*space, keys)? != *seen {
            return Err(TxFail::Abort(StoreError::Unavailable(
                "data these writes depend on was changed by another writer meanwhile; nothing was written, try again"
                    .to_owned(),
            )));
        }
    }
    Ok(())
}

/// Keeps the first value read of each key (the one the round's answers rest on).
fn keep_reads(staged: &mut Staged, reads: BTreeMap<Key, Value>) {
    for (key, value) in reads {
        staged.reads.entry(key).or_insert(value);
    }
}

/// A round this thread leads, open until [`RoundGuard::release`] commits it; dropped
/// without that (its leader panicked), what it staged is dropped too, never written.
pub(super) struct RoundGuard<'a> {
    kv: &'a Overlaid,
    guard: Option<TenantGuard<'a>>,
}

impl RoundGuard<'_> {
    /// Waits for the flushes running now (the previous round's); `true` when it did.
    pub(super) fn await_flushes(&self) -> bool {
        self.kv.inner.await_flushes()
    }

    /// How many batches the round has staged so far (a write's mark).
    pub(super) fn staged_batches(&self) -> u64 {
        self.kv.with_open(|o| o.staged_batches).unwrap_or(0)
    }

    /// Closes the round: takes it off this thread's list.
    fn close(&self) -> Option<Open> {
        let id = self.kv.id();
        OPEN.with(|open| {
            let mut open = open.borrow_mut();
            let at = open.iter().rposition(|o| o.backend == id)?;
            Some(open.remove(at))
        })
    }

    /// Commits what the round staged (under the tenant's lock), then releases the lock,
    /// which runs the flush that makes the round durable. Acknowledge a write of the
    /// round only once its batches are committed and the flush succeeded
    /// ([`RoundOutcome`]).
    pub(super) fn release(mut self) -> RoundOutcome {
        let (commit, committed_batches) = match self.close() {
            Some(Open {
                failed: Some(e),
                committed_batches,
                ..
            }) => (Err(e), committed_batches),
            Some(open) => {
                let started = std::time::Instant::now();
                let commit = self.kv.commit(&open.staged, open.depth);
                metrics::histogram!("gatehouse_store_round_commit_seconds")
                    .record(started.elapsed());
                match commit {
                    Ok(()) => (Ok(()), open.staged_batches),
                    Err(e) => (Err(e), open.committed_batches),
                }
            }
            None => (Ok(()), 0),
        };
        let started = std::time::Instant::now();
        let flush = self.guard.take().map_or(Ok(()), TenantGuard::release);
        metrics::histogram!("gatehouse_store_round_flush_seconds").record(started.elapsed());
        RoundOutcome {
            commit,
            committed_batches,
            flush,
        }
    }
}

impl Drop for RoundGuard<'_> {
    fn drop(&mut self) {
        self.close();
    }
}

/// A transaction body's view in an open round: its own writes, then the round's, then
/// the backend (each key read there noted, to be checked at commit).
struct Staging<'a> {
    kv: &'a Overlaid,
    pending: RefCell<BTreeMap<Key, Value>>,
    reads: RefCell<BTreeMap<Key, Value>>,
}

impl Txn for Staging<'_> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, TxFail> {
        Ok(self.get_many(space, &[key.to_vec()])?.pop().flatten())
    }

    fn get_many(&self, space: Space, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, TxFail> {
        let values: Vec<Option<Value>> = {
            let pending = self.pending.borrow();
            keys.iter()
                .map(|key| {
                    pending
                        .get(&(space, key.clone()))
                        .cloned()
                        .or_else(|| self.kv.staged(space, key))
                })
                .collect()
        };
        Ok(super::fill_missing(keys, values, |missing| {
            let read = self.kv.inner.get_many(space, &missing)?;
            let mut reads = self.reads.borrow_mut();
            for (key, found) in missing.into_iter().zip(&read) {
                reads.entry((space, key)).or_insert_with(|| found.clone());
            }
            Ok::<_, StoreError>(read)
        })?)
    }

    fn put(&self, space: Space, key: &[u8], value: &[u8]) -> Result<(), TxFail> {
        self.pending
            .borrow_mut()
            .insert((space, key.to_vec()), Some(value.to_vec()));
        Ok(())
    }

    fn remove(&self, space: Space, key: &[u8]) -> Result<(), TxFail> {
        self.pending
            .borrow_mut()
            .insert((space, key.to_vec()), None);
        Ok(())
    }
}

impl Backend for Overlaid {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.staged(space, key) {
            Some(value) => Ok(value),
            None => self.inner.get(space, key),
        }
    }

    fn get_many(&self, space: Space, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if !self.wrote_in(space) {
            return self.inner.get_many(space, keys);
        }
        // The staged values, and the others read at once.
        let staged = keys.iter().map(|key| self.staged(space, key)).collect();
        super::fill_missing(keys, staged, |missing| self.inner.get_many(space, &missing))
    }

    fn scan_each(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let staged = self.staged_range(space, prefix, after);
        if staged.is_empty() {
            return self.inner.scan_each(space, prefix, after, visit);
        }
        // The backend's entries and the staged ones, merged in key order; a staged value
        // replaces the stored one, a staged removal hides it.
        let mut next = 0;
        let mut going = true;
        self.inner
            .scan_each(space, prefix, after, &mut |key, value| {
                while let Some((staged_key, staged_value)) = staged.get(next) {
                    if staged_key.as_slice() > key {
                        break;
                    }
                    next += 1;
                    let replaces = staged_key.as_slice() == key;
                    if let Some(staged_value) = staged_value {
                        going = visit(staged_key, staged_value);
                        if !going {
                            return false;
                        }
                    }
                    if replaces {
                        return true;
                    }
                }
                going = visit(key, value);
                going
            })?;
        if going {
            for (key, value) in &staged[next..] {
                if let Some(value) = value {
                    if !visit(key, value) {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn scan(&self, space: Space, prefix: &[u8]) -> Result<Pairs, StoreError> {
        if !self.wrote_in(space) {
            return self.inner.scan(space, prefix);
        }
        super::collect_pairs(|visit| self.scan_each(space, prefix, None, visit))
    }

    fn scan_many(&self, space: Space, prefixes: &[Vec<u8>]) -> Result<Vec<Pairs>, StoreError> {
        if !self.wrote_in(space) {
            return self.inner.scan_many(space, prefixes);
        }
        prefixes
            .iter()
            .map(|prefix| self.scan(space, prefix))
            .collect()
    }

    fn transact(&self, body: &TxBody<'_>) -> Result<(), StoreError> {
        // The body reads through the backend's own transaction: what the round staged
        // goes in first.
        self.commit_staged()?;
        self.inner.transact(body)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }

    fn await_flushes(&self) -> bool {
        self.inner.await_flushes()
    }

    fn shared(&self) -> bool {
        self.inner.shared()
    }

    fn lock_tenant(&self, slug: &str) -> Result<Option<Box<dyn HeldLock + '_>>, StoreError> {
        self.inner.lock_tenant(slug)
    }
}
