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

use std::cell::RefCell;
use std::collections::HashSet;

use std::sync::{Condvar, Mutex, PoisonError};

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
/// guards, which then owes the flush (the caller skips it); `false`: flush now.
pub(super) fn defer_flush(backend: usize) -> bool {
    HELD.with(|held| {
        let mut held = held.borrow_mut();
        match held.iter_mut().rev().find(|(id, _)| *id == backend) {
            Some((_, owed)) => {
                *owed = true;
                true
            }
            None => false,
        }
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
