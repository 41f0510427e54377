//! One cancellation signal for the whole daemon. The daemon holds the root [`Cancel`]; every
//! thread gets a clone or a [`Cancel::child`], and long work (a fine-tune step, a batch of
//! feature extraction, an outbox round) checks [`Cancel::is_cancelled`] between steps. Threads
//! that wait for time to pass wait with [`Cancel::wait_timeout`], which returns at once when the
//! signal is raised, instead of sleeping and polling a flag.
//!
//! A child is cancelled when its parent is, and can also be cancelled alone: the learner gives
//! a fine-tune a child of the daemon's signal and cancels that child when inference needs the
//! processor, so both reasons reach the same check.
//!
//! A [`Doorbell`] is how one thread tells another that work arrived (a job queued, a result
//! ready to send): [`Doorbell::wait`] returns when the bell rings, when the cancel signal is
//! raised, or when its timeout passes (the timeout only covers work that arrives from another
//! process, such as a CLI command, which cannot ring it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Inner {
    raised: AtomicBool,
    /// Guards the wait; the flag itself is the atomic, so checks never take the lock.
    lock: Mutex<()>,
    wake: Condvar,
    children: Mutex<Vec<Weak<Inner>>>,
    bells: Mutex<Vec<Weak<Bell>>>,
    /// Keeps the parent (and so the chain up to the root) alive as long as a child lives, so
    /// that a raise at the root still finds every descendant.
    _parent: Option<Arc<Inner>>,
}

impl Inner {
    fn raise(&self) {
        if self.raised.swap(true, Ordering::SeqCst) {
            return;
        }
        {
            let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.wake.notify_all();
        }
        let children =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(PoisonError::into_inner));
        for child in children.iter().filter_map(Weak::upgrade) {
            child.raise();
        }
        let bells = std::mem::take(&mut *self.bells.lock().unwrap_or_else(PoisonError::into_inner));
        for bell in bells.iter().filter_map(Weak::upgrade) {
            bell.ring();
        }
    }
}

/// A cancellation signal: cheap to clone (all clones are the same signal), checked without a
/// lock, waited on with a condition variable.
#[derive(Clone, Default)]
pub struct Cancel {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancel")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// A signal raised when this one is, or on its own.
    pub fn child(&self) -> Cancel {
        let child = Cancel {
            inner: Arc::new(Inner {
                _parent: Some(self.inner.clone()),
                ..Inner::default()
            }),
        };
        {
            let mut children = self
                .inner
                .children
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            children.retain(|c| c.strong_count() > 0);
            children.push(Arc::downgrade(&child.inner));
        }
        // Raised before the child was registered: the child is born raised.
        if self.is_cancelled() {
            child.cancel();
        }
        child
    }

    /// Raise the signal: every clone and every child sees it, and every waiter wakes.
    pub fn cancel(&self) {
        self.inner.raise();
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.raised.load(Ordering::SeqCst)
    }

    /// Wait until the signal is raised.
    pub fn wait(&self) {
        let mut guard = self
            .inner
            .lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while !self.is_cancelled() {
            guard = self
                .inner
                .wake
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Wait up to `timeout`; returns `true` as soon as the signal is raised (at once if it
    /// already is), `false` when the time passed without it.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self
            .inner
            .lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if self.is_cancelled() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = self
                .inner
                .wake
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

#[derive(Default)]
struct Bell {
    rings: Mutex<u64>,
    wake: Condvar,
}

impl Bell {
    fn ring(&self) {
        let mut rings = self.rings.lock().unwrap_or_else(PoisonError::into_inner);
        *rings = rings.wrapping_add(1);
        self.wake.notify_all();
    }
}

/// Why [`Doorbell::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    Rung,
    Cancelled,
    TimedOut,
}

/// A wake-up for one waiting thread: rung by whoever gives it work, and by the [`Cancel`] it
/// was made for. Rings are not lost: a ring while nobody waits makes the next wait return.
#[derive(Clone)]
pub struct Doorbell {
    bell: Arc<Bell>,
    cancel: Cancel,
    seen: u64,
}

impl Doorbell {
    /// A doorbell that `cancel` also rings.
    pub fn new(cancel: &Cancel) -> Doorbell {
        let bell = Arc::new(Bell::default());
        cancel
            .inner
            .bells
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::downgrade(&bell));
        Doorbell {
            bell,
            cancel: cancel.clone(),
            seen: 0,
        }
    }

    pub fn ring(&self) {
        self.bell.ring();
    }

    /// Wait until a ring this doorbell has not seen yet, the cancel signal, or `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Wake {
        let deadline = Instant::now() + timeout;
        let mut rings = self
            .bell
            .rings
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if self.cancel.is_cancelled() {
                return Wake::Cancelled;
            }
            if *rings != self.seen {
                self.seen = *rings;
                return Wake::Rung;
            }
            let now = Instant::now();
            if now >= deadline {
                return Wake::TimedOut;
            }
            rings = self
                .bell
                .wake
                .wait_timeout(rings, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiter_wakes_when_the_signal_is_raised_not_when_its_timeout_ends() {
        let cancel = Cancel::new();
        let waiter = {
            let cancel = cancel.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                (cancel.wait_timeout(Duration::from_secs(60)), t.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        cancel.cancel();
        let (raised, waited) = waiter.join().unwrap();
        assert!(raised);
        assert!(waited < Duration::from_secs(10), "{waited:?}");
    }

    #[test]
    fn a_child_sees_its_parent_but_not_the_reverse() {
        let parent = Cancel::new();
        let a = parent.child();
        let b = parent.child();
        a.cancel();
        assert!(a.is_cancelled() && !parent.is_cancelled() && !b.is_cancelled());
        parent.cancel();
        assert!(b.is_cancelled());
        let late = parent.child();
        assert!(late.is_cancelled());
        let grandchild = Cancel::new();
        let child = grandchild.child().child();
        grandchild.cancel();
        assert!(child.is_cancelled());
    }

    #[test]
    fn an_unraised_wait_times_out() {
        assert!(!Cancel::new().wait_timeout(Duration::from_millis(10)));
    }

    #[test]
    fn a_doorbell_wakes_its_waiter_on_a_ring_on_cancel_and_keeps_an_early_ring() {
        let cancel = Cancel::new();
        let mut bell = Doorbell::new(&cancel);
        bell.ring();
        assert_eq!(bell.wait(Duration::from_secs(60)), Wake::Rung);
        assert_eq!(bell.wait(Duration::from_millis(10)), Wake::TimedOut);
        let ringer = bell.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            ringer.ring();
        });
        assert_eq!(bell.wait(Duration::from_secs(60)), Wake::Rung);
        t.join().unwrap();
        let child = cancel.child();
        let mut waiter = Doorbell::new(&child);
        let t = std::thread::spawn(move || waiter.wait(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(30));
        cancel.cancel();
        assert_eq!(t.join().unwrap(), Wake::Cancelled);
    }
}
