//! The store's tenant write lock: in-process first (cheap, and it keeps one process from
//! spending a database connection per waiting writer), then the backend's lock across
//! processes (decision 51).
//!
//! While a thread holds a tenant's lock, the durable writes it makes commit without
//! waiting for their flush; [`TenantGuard::release`] lets the locks go first and then runs
//! one flush that covers them all, before the caller acknowledges anything. So the next
//! writer of the tenant commits while this one's flush runs, and concurrent writers share
//! flushes through the backend's group commit instead of queueing one flush each behind
//! the lock (decision 62).

use std::any::Any;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use super::overlay::RoundGuard;
use super::{Backend, StoreError};

thread_local! {
    /// The tenant guards this thread holds, innermost last: the backend they belong to
    /// (its address) and whether a write under them still owes a flush.
    static HELD: RefCell<Vec<(usize, bool)>> = const { RefCell::new(Vec::new()) };
}

/// The identity of a backend, for [`HELD`].
pub(super) fn backend_id(backend: &dyn Backend) -> usize {
    backend as *const dyn Backend as *const () as usize
}

/// Called after a commit on `backend`: `true` when this thread holds one of its tenant
/// guards, whose innermost then owes the flush (the caller skips it); `false`: flush now.
pub(super) fn defer_flush(backend: usize) -> bool {
    let depth = held_depth(backend);
    if depth == 0 {
        return false;
    }
    owe_flush_at(backend, depth);
    true
}

/// Marks the `depth`-th tenant guard of `backend` this thread holds (1: the outermost) as
/// owing a flush, for a commit made on its behalf under guards nested inside it.
pub(super) fn owe_flush_at(backend: usize, depth: usize) {
    HELD.with(|held| {
        if let Some((_, owed)) = held
            .borrow_mut()
            .iter_mut()
            .filter(|(id, _)| *id == backend)
            .nth(depth.saturating_sub(1))
        {
            *owed = true;
        }
    });
}

/// How many tenant guards of `backend` this thread holds.
pub(super) fn held_depth(backend: usize) -> usize {
    HELD.with(|held| {
        held.borrow()
            .iter()
            .filter(|(id, _)| *id == backend)
            .count()
    })
}

/// A lock a backend holds until this value drops.
pub trait HeldLock {}
impl<T> HeldLock for T {}

/// The slugs locked in this process.
#[derive(Default)]
pub(super) struct LocalLocks {
    held: Mutex<HashSet<String>>,
    released: Condvar,
}

impl LocalLocks {
    pub(super) fn lock(&self, slug: &str) -> LocalGuard<'_> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        while held.contains(slug) {
            held = self
                .released
                .wait(held)
                .unwrap_or_else(PoisonError::into_inner);
        }
        held.insert(slug.to_owned());
        LocalGuard {
            locks: self,
            slug: slug.to_owned(),
        }
    }
}

pub(super) struct LocalGuard<'a> {
    locks: &'a LocalLocks,
    slug: String,
}

impl Drop for LocalGuard<'_> {
    fn drop(&mut self) {
        let mut held = self
            .locks
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        held.remove(&self.slug);
        drop(held);
        self.locks.released.notify_all();
    }
}

/// A tenant write queued for the thread that leads the tenant's current round
/// ([`super::Store::write_locked`], decision 79): its job, and how it stands. Its caller
/// waits on a thread ([`Waiter::wait`]) or in a task ([`Waiter::wait_async`],
/// [`super::Store::write_queued`], decision 85).
pub(super) struct Waiter {
    job: Mutex<Option<Job>>,
    turn: Mutex<Turn>,
    changed: Condvar,
    /// Wakes an async caller; keeps one wake-up when no task waits yet, so none is lost.
    changed_async: tokio::sync::Notify,
}

/// A write's body with its borrows erased; see [`super::Store::write_locked`] for why
/// that is sound.
pub(super) type Job = Box<dyn FnOnce() + Send + 'static>;

/// A panic caught in a job, resumed on the thread that queued it.
type Panic = Box<dyn Any + Send + 'static>;

enum Turn {
    Queued,
    /// Lead the next round.
    Lead,
    /// The job ran (or never will: the lock could not be taken), with the outcome of
    /// the flush that covers it, or how it panicked.
    Done(Result<(), super::StoreError>, Option<Panic>),
}

/// What [`Waiter::wait`] returns.
pub(super) enum Next {
    Lead,
    Done(Result<(), super::StoreError>, Option<Panic>),
}

impl Waiter {
    pub(super) fn new(job: Job) -> Arc<Waiter> {
        Arc::new(Waiter {
            job: Mutex::new(Some(job)),
            turn: Mutex::new(Turn::Queued),
            changed: Condvar::new(),
            changed_async: tokio::sync::Notify::new(),
        })
    }

    /// Takes the turn if it is no longer `Queued` (a leader's own write is next set
    /// `Done`, so a taken turn is queued again).
    fn take_turn(turn: &mut Turn) -> Option<Next> {
        match std::mem::replace(turn, Turn::Queued) {
            Turn::Queued => None,
            Turn::Lead => Some(Next::Lead),
            Turn::Done(durable, panic) => Some(Next::Done(durable, panic)),
        }
    }

    /// Blocks until this write leads a round or is done.
    pub(super) fn wait(&self) -> Next {
        let mut turn = self.turn.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(next) = Self::take_turn(&mut turn) {
                return next;
            }
            turn = self
                .changed
                .wait(turn)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// [`Waiter::wait`] for a task: no thread sleeps meanwhile.
    pub(super) async fn wait_async(&self) -> Next {
        loop {
            let next =
                Self::take_turn(&mut self.turn.lock().unwrap_or_else(PoisonError::into_inner));
            if let Some(next) = next {
                return next;
            }
            // A `set` since the look above left its wake-up here.
            self.changed_async.notified().await;
        }
    }

    fn set(&self, next: Turn) {
        *self.turn.lock().unwrap_or_else(PoisonError::into_inner) = next;
        self.changed.notify_one();
        self.changed_async.notify_one();
    }

    fn take_job(&self) -> Option<Job> {
        self.job
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Runs the job on this thread; a panic is kept for the job's own thread.
    fn run(&self) -> Option<Panic> {
        let job = self.take_job()?;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).err()
    }
}

/// Per slug whose round has a leader: the writes queued for it.
#[derive(Default)]
pub(super) struct Rounds {
    queues: Mutex<HashMap<String, VecDeque<Arc<Waiter>>>>,
}

/// At most this many writes share a round (and its flush); the rest wait for the next.
const ROUND: usize = 64;

impl Rounds {
    fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Arc<Waiter>>>> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `waiter` behind the slug's leader; `true`: there is none, `waiter` leads.
    pub(super) fn join(&self, slug: &str, waiter: &Arc<Waiter>) -> bool {
        let mut queues = self.queues();
        match queues.get_mut(slug) {
            Some(queue) => {
                queue.push_back(waiter.clone());
                false
            }
            None => {
                queues.insert(slug.to_owned(), VecDeque::new());
                true
            }
        }
    }

    /// How many writes wait for the slug's leader.
    #[cfg(test)]
    pub(super) fn queued(&self, slug: &str) -> usize {
        self.queues().get(slug).map_or(0, VecDeque::len)
    }

    /// Whether a round of the slug has a leader.
    #[cfg(test)]
    pub(super) fn led(&self, slug: &str) -> bool {
        self.queues().contains_key(slug)
    }

    fn next(&self, slug: &str) -> Option<Arc<Waiter>> {
        self.queues().get_mut(slug)?.pop_front()
    }

    /// Ends a round: the first queued write leads the next one, or the slug has no
    /// leader any more. `start` gets that write ([`NextLead`]): it may start its lead on
    /// another thread at once, or drop it, and the write's own caller is told to lead.
    fn hand_off(&self, slug: &str, start: &dyn Fn(NextLead)) {
        let mut queues = self.queues();
        match queues.get_mut(slug).and_then(VecDeque::pop_front) {
            Some(next) => start(NextLead(Some(next))),
            None => {
                queues.remove(slug);
            }
        }
    }

    /// Leads one round for `slug`, `first` (the caller's write) first: takes the
    /// tenant's lock with `lock` (which opens the round's overlay), runs `first` and then
    /// each write queued meanwhile (up to [`ROUND`]), their writes staged; hands the lead
    /// to the next queued write; releases the round, which commits what it staged in one
    /// transaction, lets the lock go and runs one flush covering the whole round; only
    /// then reports every write of the round done, with that outcome.
    pub(super) fn lead<'a>(
        &self,
        slug: &str,
        first: Arc<Waiter>,
        lock: impl FnOnce() -> Result<RoundGuard<'a>, super::StoreError>,
        start: &dyn Fn(NextLead),
    ) {
        // Whatever happens below, a panic in the lock or the flush included, every write
        // of the round ends `Done` and the slug gets its next leader (or none).
        let mut end = RoundEnd {
            rounds: self,
            slug,
            handed_off: false,
            round: vec![(first, None, 0)],
            outcome: RoundOutcome::stopped(),
        };
        match lock() {
            Ok(guard) => {
                // Each write's mark: how many batches the round had staged when it ended.
                end.round[0].1 = end.round[0].0.run();
                end.round[0].2 = guard.staged_batches();
                // The writes queued meanwhile; then, if the previous round's flush still
                // runs (which this round's commit would wait for anyway), the writes
                // queued while it finishes too.
                let drain = |round: &mut Vec<_>| {
                    while round.len() < ROUND {
                        let Some(waiter) = self.next(slug) else { break };
                        let panic = waiter.run();
                        round.push((waiter, panic, guard.staged_batches()));
                    }
                };
                drain(&mut end.round);
                let waiting = std::time::Instant::now();
                if end.round.len() < ROUND && guard.await_flushes() {
                    metrics::histogram!("gatehouse_store_round_flush_wait_seconds")
                        .record(waiting.elapsed());
                    drain(&mut end.round);
                }
                // Writes per round = the second counter / the first (BENCHMARKS.md).
                metrics::counter!("gatehouse_store_rounds_total").increment(1);
                metrics::counter!("gatehouse_store_round_writes_total")
                    .increment(end.round.len() as u64);
                // The next leader takes the lock as soon as this round lets it go (after
                // its commit), and runs while this round's flush does.
                self.hand_off(slug, start);
                end.handed_off = true;
                end.outcome = guard.release();
            }
            // Only `first` learns it (its job is dropped unrun); the queued writes try
            // again under the next lead.
            Err(e) => {
                end.outcome = RoundOutcome {
                    commit: Err(e.clone()),
                    committed_batches: 0,
                    flush: Err(e),
                }
            }
        }
    }
}

/// The write that leads the next round, handed to a thread that will lead it
/// ([`Rounds::lead`]'s `start`): take it with [`NextLead::take`]. Dropped untaken (the
/// thread never ran), its caller is told to lead, so the write is never stranded.
pub(super) struct NextLead(Option<Arc<Waiter>>);

impl NextLead {
    pub(super) fn take(mut self) -> Arc<Waiter> {
        self.0.take().expect("a next lead is taken once")
    }
}

impl Drop for NextLead {
    fn drop(&mut self) {
        if let Some(waiter) = self.0.take() {
            waiter.set(Turn::Lead);
        }
    }
}

/// How a round ended ([`RoundGuard::release`]).
pub(super) struct RoundOutcome {
    /// The outcome of its last commit.
    pub(super) commit: Result<(), StoreError>,
    /// How many of its staged batches were committed (by earlier commits, when the last
    /// one failed).
    pub(super) committed_batches: u64,
    /// The outcome of the flush that covers what was committed.
    pub(super) flush: Result<(), StoreError>,
}

impl RoundOutcome {
    /// A round that stopped before its flush: nothing it did is known durable.
    fn stopped() -> RoundOutcome {
        let stopped = Err(StoreError::Io(
            "the write's round stopped before its flush".to_owned(),
        ));
        RoundOutcome {
            commit: stopped.clone(),
            committed_batches: 0,
            flush: stopped,
        }
    }

    /// The outcome of a write whose batches were all staged once the round had staged
    /// `mark`: durable when they were committed and the flush succeeded.
    fn of(&self, mark: u64) -> Result<(), StoreError> {
        if mark <= self.committed_batches {
            self.flush.clone()
        } else {
            self.commit.clone().and(self.flush.clone())
        }
    }
}

/// The end of a round, also when its leader panics: hands the lead on if that has not
/// happened, then reports every write of the round done with its outcome, each job
/// consumed (run, or dropped unrun) before its caller hears of it.
struct RoundEnd<'r> {
    rounds: &'r Rounds,
    slug: &'r str,
    handed_off: bool,
    /// Each write, how its job panicked, and its mark ([`RoundOutcome::of`]).
    round: Vec<(Arc<Waiter>, Option<Panic>, u64)>,
    outcome: RoundOutcome,
}

impl Drop for RoundEnd<'_> {
    fn drop(&mut self) {
        if !self.handed_off {
            self.rounds.hand_off(self.slug, &drop);
        }
        for (waiter, panic, mark) in self.round.drain(..) {
            drop(waiter.take_job());
            waiter.set(Turn::Done(self.outcome.of(mark), panic));
        }
    }
}

/// Whether this thread holds a tenant guard of `backend` (a write nested in another).
pub(super) fn holds_any(backend: usize) -> bool {
    HELD.with(|held| held.borrow().iter().any(|(id, _)| *id == backend))
}

/// A held tenant lock ([`super::Store::lock_tenant`]). [`TenantGuard::release`] lets it
/// go and makes the writes made under it durable; dropped without that (an early
/// return), it does the same and a failing flush is only logged, which is safe because
/// such a caller answers with an error, never an acknowledgement.
pub struct TenantGuard<'a> {
    backend: &'a dyn Backend,
    remote: Option<Box<dyn HeldLock + 'a>>,
    local: Option<LocalGuard<'a>>,
}

impl<'a> TenantGuard<'a> {
    pub(super) fn new(
        backend: &'a dyn Backend,
        remote: Option<Box<dyn HeldLock + 'a>>,
        local: LocalGuard<'a>,
    ) -> Self {
        HELD.with(|held| held.borrow_mut().push((backend_id(backend), false)));
        TenantGuard {
            backend,
            remote,
            local: Some(local),
        }
    }

    /// Releases the lock (the other processes' lock first), then, when a write was made
    /// under it, returns once a flush that started after those writes has finished.
    /// Acknowledge the writes only after this returns `Ok`.
    pub fn release(mut self) -> Result<(), StoreError> {
        self.settle()
    }

    fn settle(&mut self) -> Result<(), StoreError> {
        let Some(local) = self.local.take() else {
            return Ok(());
        };
        drop(self.remote.take());
        drop(local);
        let id = backend_id(self.backend);
        let owed = HELD.with(|held| {
            let mut held = held.borrow_mut();
            let at = held.iter().rposition(|(held_id, _)| *held_id == id);
            at.is_some_and(|at| held.remove(at).1)
        });
        if owed {
            self.backend.flush()
        } else {
            Ok(())
        }
    }
}

impl Drop for TenantGuard<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.settle() {
            tracing::error!(error = %e, "flushing the writes of a failed request");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_next_lead_no_thread_took_makes_its_caller_lead() {
        let waiter = Waiter::new(Box::new(|| {}));
        // A thread that will lead took it: the caller is not told to lead.
        let taken = NextLead(Some(waiter.clone())).take();
        assert!(Arc::ptr_eq(&taken, &waiter));
        assert!(Waiter::take_turn(&mut waiter.turn.lock().unwrap()).is_none());
        // Dropped untaken (the thread never ran): the caller leads, the write is not lost.
        drop(NextLead(Some(waiter.clone())));
        assert!(matches!(waiter.wait(), Next::Lead));
    }

    #[test]
    fn one_holder_per_slug_and_slugs_are_independent() {
        let locks = Arc::new(LocalLocks::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (locks, inside) = (locks.clone(), inside.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let _guard = locks.lock("acme");
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        let _other = locks.lock("other");
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
    }
}
