//! [`Backend`] on an embedded sled database: one tree per [`Space`].

use super::{Backend, BackendFail, Space, StoreError, TxBody, TxFail, Txn};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};
use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// A conflict or I/O failure inside a sled transaction; sled retries or reports it.
pub struct SledFail(UnabortableTransactionError);

/// The embedded store.
pub struct SledBackend {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    /// `None`: every caller runs its own `db.flush()` (`store.group_commit = false`).
    group: Option<FlushCombiner>,
    /// Transactions begun and ended (the [`Backend::stamp`]): a transaction's body
    /// counts `begun` under sled's exclusive transaction lock, and `ended` counts it once
    /// its writes are applied. Equal, nothing is being applied; `begun` unchanged, nothing
    /// was committed since.
    begun: AtomicU64,
    ended: AtomicU64,
}

/// How long [`SledBackend::open`] waits for a directory lock held by a handle that is going away.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

impl SledBackend {
    /// Opens (or creates) the database in `dir`; with `group_commit`, concurrent
    /// writers share one flush (see [`FlushCombiner`]).
    ///
    /// sled releases the directory's lock when its last internal handle drops, which its
    /// flusher thread may do a moment after the owner dropped the database; a store
    /// reopened in the same process right after closing it waits for that (up to
    /// [`LOCK_WAIT`]). Another live process holding the directory is refused after the wait.
    pub fn open(dir: &Path, group_commit: bool) -> Result<SledBackend, StoreError> {
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match sled::Config::new()
                .path(dir)
                .mode(sled::Mode::HighThroughput)
                .open()
            {
                Ok(db) => break db,
                // sled reports the held lock as an `Other` error naming it.
                Err(sled::Error::Io(e))
                    if is_held_lock(&e) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => {
                    return Err(StoreError::Io(format!(
                        "cannot open the store in {}: {e}",
                        dir.display()
                    )))
                }
            }
        };
        let trees = Space::ALL
            .iter()
            .map(|s| db.open_tree(s.name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io)?;
        Ok(SledBackend {
            db,
            trees,
            group: group_commit.then(FlushCombiner::default),
            begun: AtomicU64::new(0),
            ended: AtomicU64::new(0),
        })
    }

    fn tree(&self, space: Space) -> &sled::Tree {
        &self.trees[space_index(space)]
    }
}

/// The directory's lock is held (by this process's previous handle, going away, or by
/// another process).
fn is_held_lock(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
        || e.to_string().starts_with("could not acquire lock on")
}

fn space_index(space: Space) -> usize {
    Space::ALL
        .iter()
        .position(|s| *s == space)
        .expect("every space is in Space::ALL")
}

struct SledTxn<'a> {
    trees: &'a [TransactionalTree],
    /// `begun` as this transaction began (see [`SledBackend::stamp`]).
    stamp: u64,
}

impl Txn for SledTxn<'_> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, TxFail> {
        self.trees[space_index(space)]
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| TxFail::Backend(BackendFail::Sled(SledFail(e))))
    }
    // `put` and `delete` (vendor/sled/PATCHES.md): sled's `insert` and `remove` would
    // read each key's old value through the tree, to return it.
    fn put(&self, space: Space, key: &[u8], value: &[u8]) -> Result<(), TxFail> {
        self.trees[space_index(space)].put(key, value);
        Ok(())
    }
    fn remove(&self, space: Space, key: &[u8]) -> Result<(), TxFail> {
        self.trees[space_index(space)].delete(key);
        Ok(())
    }
    fn stamp(&self) -> Option<u64> {
        Some(self.stamp)
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
        let start = super::scan_start(prefix, after);
        for entry in self
            .tree(space)
            .range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded))
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
        // Runs of the body (sled may run it again), each counted in `begun` and, once
        // sled returns (or the body panics), in `ended`. sled holds its exclusive
        // transaction lock while the body runs and while the writes are applied, so a
        // stamp taken by the body is `begun` with no other transaction in progress.
        struct Ended<'a>(&'a AtomicU64, Cell<u64>);
        impl Drop for Ended<'_> {
            fn drop(&mut self) {
                self.0.fetch_add(self.1.get(), Ordering::SeqCst);
            }
        }
        let runs = Ended(&self.ended, Cell::new(0));
        let result: Result<(), TransactionError<StoreError>> =
            self.trees.as_slice().transaction(|trees| {
                runs.1.set(runs.1.get() + 1);
                let stamp = self.begun.fetch_add(1, Ordering::SeqCst);
                body(&SledTxn { trees, stamp }).map_err(|fail| match fail {
                    TxFail::Abort(e) => ConflictableTransactionError::Abort(e),
                    TxFail::Backend(BackendFail::Sled(SledFail(e))) => e.into(),
                    TxFail::Backend(other) => {
                        ConflictableTransactionError::Abort(other.into_store_error())
                    }
                })
            });
        drop(runs);
        result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => io(e),
        })
    }

    fn stamp(&self) -> Option<u64> {
        // `ended` first: when `begun` then equals it, every transaction begun by then had
        // applied its writes before this call read `begun`.
        let ended = self.ended.load(Ordering::SeqCst);
        let begun = self.begun.load(Ordering::SeqCst);
        (begun == ended).then_some(begun)
    }

    fn await_flushes(&self) -> bool {
        self.group
            .as_ref()
            .is_some_and(FlushCombiner::await_running)
    }

    fn flush(&self) -> Result<(), StoreError> {
        let flush = || self.db.flush().map(drop).map_err(|e| e.to_string());
        match &self.group {
            Some(group) => group.flush(flush),
            None => flush(),
        }
        .map_err(StoreError::Io)
    }
}

/// Group commit: callers whose transactions have committed share one flush.
///
/// Flushes are numbered (generations). A caller arriving while flush `n` runs cannot use
/// it (it may have started before the caller's commit), so it needs generation `n + 1`
/// or later: `target = started + 1`, read under the lock after the caller's commit. The
/// first caller to find no flush running becomes the leader: it starts the next
/// generation, flushes without holding the lock, records the outcome and wakes the
/// others. A follower returns once `finished >= target`, with the outcome of the latest
/// finished flush, which started after its commit; otherwise it waits, or leads the next
/// flush. So no caller is acknowledged by a flush that started before its commit, and
/// every caller that arrives during one flush is covered by the next one (decision 60).
#[derive(Default)]
pub(super) struct FlushCombiner {
    state: Mutex<FlushState>,
    finished: Condvar,
}

struct FlushState {
    /// Generation of the latest flush started.
    started: u64,
    /// Generation of the latest flush finished (`started` when none runs).
    finished: u64,
    /// Outcome of flush `finished`.
    outcome: Result<(), String>,
}

impl Default for FlushState {
    fn default() -> Self {
        FlushState {
            started: 0,
            finished: 0,
            outcome: Ok(()),
        }
    }
}

impl FlushCombiner {
    fn lock(&self) -> MutexGuard<'_, FlushState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns once the run of `flush` in progress (if any) has finished; `true` when one
    /// was.
    pub(super) fn await_running(&self) -> bool {
        let mut state = self.lock();
        let running = state.started;
        if state.finished >= running {
            return false;
        }
        while state.finished < running {
            state = self
                .finished
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        true
    }

    /// Returns once a run of `flush` that started after this call began has finished,
    /// with that run's outcome; runs `flush` itself when no run is in progress.
    pub(super) fn flush(&self, flush: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
        let mut state = self.lock();
        let target = state.started + 1;
        loop {
            if state.finished >= target {
                return state.outcome.clone();
            }
            if state.started == state.finished {
                // No flush runs: lead generation `target` (`started` was `target - 1`).
                state.started = target;
                drop(state);
                let mut lead = Lead {
                    combiner: self,
                    generation: target,
                    outcome: Err("the flush panicked".to_owned()),
                };
                lead.outcome = flush();
                return lead.outcome.clone();
            }
            state = self
                .finished
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The running flush; records its outcome and wakes the waiters when dropped (also when
/// the flush panics, so followers never wait for a flush that will not finish).
struct Lead<'a> {
    combiner: &'a FlushCombiner,
    generation: u64,
    outcome: Result<(), String>,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        let mut state = self.combiner.lock();
        state.finished = self.generation;
        state.outcome = std::mem::replace(&mut self.outcome, Ok(()));
        drop(state);
        self.combiner.finished.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// A fake disk: `committed` counts commits; a flush makes durable what was committed
    /// when it started, and takes a while, like an fsync.
    #[derive(Default)]
    struct Disk {
        committed: AtomicU64,
        durable: AtomicU64,
        flushes: AtomicU64,
    }

    impl Disk {
        fn flush(&self) -> Result<(), String> {
            let covers = self.committed.load(Ordering::SeqCst);
            self.flushes.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(2));
            self.durable.fetch_max(covers, Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn every_acknowledged_write_is_covered_by_a_flush_that_started_after_it() {
        let disk = Arc::new(Disk::default());
        let combiner = Arc::new(FlushCombiner::default());
        let (threads, writes) = (8, 40);
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (disk, combiner) = (disk.clone(), combiner.clone());
                std::thread::spawn(move || {
                    for _ in 0..writes {
                        // Commit number `mine` (1-based), then wait for durability.
                        let mine = disk.committed.fetch_add(1, Ordering::SeqCst) + 1;
                        combiner.flush(|| disk.flush()).unwrap();
                        let durable = disk.durable.load(Ordering::SeqCst);
                        assert!(
                            durable >= mine,
                            "write {mine} acknowledged with only {durable} durable"
                        );
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        let calls = threads * writes;
        let flushes = disk.flushes.load(Ordering::SeqCst);
        assert!(
            flushes < calls / 2,
            "{calls} concurrent callers share flushes, but {flushes} ran"
        );
    }

    #[test]
    fn awaiting_the_running_flush_returns_once_it_has_finished() {
        let combiner = Arc::new(FlushCombiner::default());
        assert!(!combiner.await_running(), "no flush runs: no wait");
        // A gate the flush waits at, opened a moment after the wait below begins (a wait
        // that returned at once would find the flush unfinished).
        let gate = Arc::new(std::sync::Mutex::new(()));
        let (locked, gate_locked) = std::sync::mpsc::channel();
        let opener = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                let _closed = gate.lock().unwrap();
                locked.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            })
        };
        gate_locked.recv().unwrap();
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flusher = {
            let (combiner, finished) = (combiner.clone(), finished.clone());
            std::thread::spawn(move || {
                combiner
                    .flush(|| {
                        drop(gate.lock().unwrap());
                        finished.store(true, Ordering::SeqCst);
                        Ok(())
                    })
                    .unwrap();
            })
        };
        while combiner.lock().started == 0 {
            std::thread::yield_now();
        }
        combiner.await_running();
        assert!(
            finished.load(Ordering::SeqCst),
            "returned before the flush finished"
        );
        flusher.join().unwrap();
        opener.join().unwrap();
    }

    #[test]
    fn a_failed_flush_fails_its_callers_and_the_next_one_is_tried_again() {
        let combiner = FlushCombiner::default();
        assert_eq!(
            combiner.flush(|| Err("disk full".to_owned())),
            Err("disk full".to_owned())
        );
        let mut ran = false;
        assert_eq!(
            combiner.flush(|| {
                ran = true;
                Ok(())
            }),
            Ok(())
        );
        assert!(ran, "a caller after a failure gets a flush of its own");
    }

    #[test]
    fn a_panicking_flush_does_not_leave_followers_waiting() {
        let combiner = Arc::new(FlushCombiner::default());
        let leader = {
            let combiner = combiner.clone();
            std::thread::spawn(move || {
                let _ = combiner.flush(|| panic!("the disk went away"));
            })
        };
        assert!(leader.join().is_err());
        assert_eq!(combiner.flush(|| Ok(())), Ok(()));
    }

    #[test]
    fn the_stamp_changes_with_each_commit_and_is_none_while_one_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SledBackend::open(dir.path(), true).unwrap();
        let put = |key: u8| {
            backend
                .transact(&|tx| tx.put(Space::System, &[key], b"v"))
                .unwrap()
        };
        let before = backend.stamp().expect("nothing is being committed");
        assert_eq!(backend.stamp(), Some(before), "no commit: the same stamp");
        // A transaction begun with no commit since sees the same stamp.
        let seen = Cell::new(None);
        backend
            .transact(&|tx| {
                seen.set(tx.stamp());
                Ok(())
            })
            .unwrap();
        assert_eq!(seen.get(), Some(before));
        put(1);
        let after = backend.stamp().unwrap();
        assert_ne!(after, before, "a commit changes the stamp");
        // While a transaction runs (here: its body), another thread gets no stamp.
        let during = std::sync::Mutex::new(Some(0));
        backend
            .transact(&|tx| {
                std::thread::scope(|s| {
                    *during.lock().unwrap() = s.spawn(|| backend.stamp()).join().unwrap()
                });
                tx.put(Space::System, &[2], b"v")
            })
            .unwrap();
        assert_eq!(*during.lock().unwrap(), None);
        // An aborted transaction also ends: the stamp comes back (changed).
        let aborted =
            backend.transact(&|_| Err(TxFail::Abort(StoreError::Unavailable("no".into()))));
        assert!(aborted.is_err());
        assert!(backend.stamp().is_some_and(|s| s != after));
        // So does one whose body panics (stamps would otherwise never be given again).
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            backend.transact(&|_| panic!("the body fails"))
        }));
        assert!(panicked.is_err());
        assert!(backend.stamp().is_some(), "a stamp after a panicking body");
    }

    #[test]
    fn writes_are_durable_with_group_commit_on_and_off() {
        for group_commit in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            {
                let backend = SledBackend::open(dir.path(), group_commit).unwrap();
                let backend = Arc::new(backend);
                let writers: Vec<_> = (0..4u8)
                    .map(|i| {
                        let backend = backend.clone();
                        std::thread::spawn(move || {
                            backend
                                .transact(&|tx| tx.put(Space::System, &[i], b"v"))
                                .unwrap();
                            backend.flush().unwrap();
                        })
                    })
                    .collect();
                for writer in writers {
                    writer.join().unwrap();
                }
            }
            let backend = SledBackend::open(dir.path(), true).unwrap();
            for i in 0..4u8 {
                assert_eq!(
                    backend.get(Space::System, &[i]).unwrap().as_deref(),
                    Some(&b"v"[..]),
                    "group_commit = {group_commit}"
                );
            }
        }
    }
}
