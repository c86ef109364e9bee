//! The store's tenant write lock: in-process first (cheap, and it keeps one process from
//! spending a database connection per waiting writer), then the backend's lock across
//! processes (decision 51).

use std::collections::HashSet;

use std::sync::{Condvar, Mutex, PoisonError};

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

/// A held tenant lock ([`super::Store::lock_tenant`]); released when dropped, the other
/// processes' lock first.
pub struct TenantGuard<'a> {
    // Fields drop in order: the backend's lock, then the in-process one.
    _remote: Option<Box<dyn HeldLock + 'a>>,
    _local: LocalGuard<'a>,
}

impl<'a> TenantGuard<'a> {
    pub(super) fn new(remote: Option<Box<dyn HeldLock + 'a>>, local: LocalGuard<'a>) -> Self {
        TenantGuard {
            _remote: remote,
            _local: local,
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
