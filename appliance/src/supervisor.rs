//! The daemon's long-lived threads and what happens when one dies. Every thread runs under a
//! child of the daemon's one shutdown signal ([`radiant_core::Cancel`]): the daemon stops them
//! one by one, in order, by raising each child, and raising the root reaches all of them at
//! once. A panic caught at the thread's edge, or an error the thread's body returns, is logged
//! at error with the thread's name, makes `/health/ready` answer 503 with that name, and raises
//! the root signal, so the daemon stops and exits non-zero (systemd then restarts it): a
//! long-lived thread never ends silently while the rest of the daemon looks ready. Work that
//! may fail on one input (a job, a case) catches its own failures before they reach this edge.

use crate::readiness::Readiness;
use radiant_core::{panic_message, Cancel};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

/// Starts threads and keeps the record of those that panicked or failed.
#[derive(Clone)]
pub struct Supervisor {
    shutdown: Cancel,
    readiness: Arc<Readiness>,
    failed: Arc<Mutex<Vec<String>>>,
}

/// A running thread and its own stop signal.
pub struct Supervised {
    name: &'static str,
    stop: Cancel,
    handle: JoinHandle<()>,
}

impl Supervisor {
    pub fn new(shutdown: Cancel, readiness: Arc<Readiness>) -> Supervisor {
        Supervisor {
            shutdown,
            readiness,
            failed: Arc::default(),
        }
    }

    /// The root signal: raised by a panic, and by the daemon when everything is stopped.
    pub fn shutdown(&self) -> &Cancel {
        &self.shutdown
    }

    /// A new stop signal for one thread: a child of the root. Make it before the thread when
    /// something else must watch it too (a [`radiant_core::Doorbell`] the thread waits on),
    /// then start the thread with [`Supervisor::spawn_under`].
    pub fn stop_signal(&self) -> Cancel {
        self.shutdown.child()
    }

    /// Run `body` on a thread named `name` with its own stop signal (a child of the root). An
    /// error it returns stops the daemon like a panic does.
    pub fn spawn(
        &self,
        name: &'static str,
        body: impl FnOnce(&Cancel) -> anyhow::Result<()> + Send + 'static,
    ) -> std::io::Result<Supervised> {
        self.spawn_under(name, self.stop_signal(), body)
    }

    /// [`Supervisor::spawn`] with a stop signal made by [`Supervisor::stop_signal`].
    pub fn spawn_under(
        &self,
        name: &'static str,
        stop: Cancel,
        body: impl FnOnce(&Cancel) -> anyhow::Result<()> + Send + 'static,
    ) -> std::io::Result<Supervised> {
        let thread_stop = stop.clone();
        let supervisor = self.clone();
        let handle =
            std::thread::Builder::new()
                .name(name.into())
                .spawn(
                    move || match catch_unwind(AssertUnwindSafe(|| body(&thread_stop))) {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => supervisor.record_failure(name, &format!("{e:#}")),
                        Err(payload) => {
                            supervisor.record_panic(name, &panic_message(payload.as_ref()))
                        }
                    },
                )?;
        Ok(Supervised { name, stop, handle })
    }

    /// Record a panic of thread `name`: log it, fail readiness, stop the daemon.
    pub fn record_panic(&self, name: &str, message: &str) {
        tracing::error!(thread = name, panic = %message, "thread panicked; the appliance stops");
        self.fail(name, message, "panicked");
    }

    /// Record that thread `name` ended with an error: log it, fail readiness, stop the daemon.
    pub fn record_failure(&self, name: &str, error: &str) {
        tracing::error!(thread = name, error = %error, "thread failed; the appliance stops");
        self.fail(name, error, "failed");
    }

    fn fail(&self, name: &str, message: &str, how: &str) {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(format!("{name}: {message}"));
        self.readiness.fail(format!("thread {name} {how}"));
        self.shutdown.cancel();
    }

    /// Raise the thread's stop signal and wait for it to end.
    pub fn stop(&self, thread: Supervised) {
        thread.stop.cancel();
        self.join(thread);
    }

    /// Wait for the thread to end by itself (one that ends when its input closes).
    pub fn join(&self, thread: Supervised) {
        if let Err(payload) = thread.handle.join() {
            // Only a panic outside `catch_unwind` (in the panic handler itself) gets here.
            self.record_panic(thread.name, &panic_message(payload.as_ref()));
        }
    }

    /// The threads that panicked or failed, with their messages; empty when none did.
    pub fn failed(&self) -> Vec<String> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_thread_is_recorded_fails_readiness_and_raises_the_shutdown() {
        let readiness = Arc::new(Readiness::default());
        let supervisor = Supervisor::new(Cancel::new(), readiness.clone());
        let quiet = supervisor
            .spawn("quiet", |stop: &Cancel| {
                stop.wait();
                Ok(())
            })
            .unwrap();
        let doomed = supervisor
            .spawn("doomed", |_: &Cancel| panic!("index out of bounds"))
            .unwrap();
        supervisor.join(doomed);
        assert!(supervisor.shutdown().is_cancelled());
        // The root reached the other thread: it ends without being stopped one by one.
        supervisor.join(quiet);
        assert_eq!(
            supervisor.failed(),
            vec!["doomed: index out of bounds".to_string()]
        );
        assert_eq!(
            readiness.failure().as_deref(),
            Some("thread doomed panicked")
        );
    }

    #[test]
    fn a_thread_that_returns_an_error_fails_readiness_and_raises_the_shutdown() {
        let readiness = Arc::new(Readiness::default());
        let supervisor = Supervisor::new(Cancel::new(), readiness.clone());
        let worker = supervisor
            .spawn("worker", |_: &Cancel| {
                Err(anyhow::anyhow!("cannot open results.sqlite"))
            })
            .unwrap();
        supervisor.join(worker);
        assert!(supervisor.shutdown().is_cancelled());
        assert_eq!(
            supervisor.failed(),
            vec!["worker: cannot open results.sqlite".to_string()]
        );
        assert_eq!(readiness.failure().as_deref(), Some("thread worker failed"));
    }

    #[test]
    fn stopping_a_thread_raises_its_own_signal_and_not_the_others() {
        let supervisor = Supervisor::new(Cancel::new(), Arc::new(Readiness::default()));
        let a = supervisor
            .spawn("a", |stop: &Cancel| {
                stop.wait();
                Ok(())
            })
            .unwrap();
        let b = supervisor
            .spawn("b", |stop: &Cancel| {
                stop.wait();
                Ok(())
            })
            .unwrap();
        supervisor.stop(a);
        assert!(!supervisor.shutdown().is_cancelled());
        supervisor.stop(b);
        assert!(supervisor.failed().is_empty());
    }

    #[test]
    fn a_thread_waiting_on_a_doorbell_of_its_own_stop_signal_ends_at_once_when_stopped() {
        let supervisor = Supervisor::new(Cancel::new(), Arc::new(Readiness::default()));
        let stop = supervisor.stop_signal();
        let mut bell = radiant_core::Doorbell::new(&stop);
        let waiter = supervisor
            .spawn_under("waiter", stop, move |stop| {
                while !stop.is_cancelled() {
                    bell.wait(std::time::Duration::from_secs(60));
                }
                Ok(())
            })
            .unwrap();
        let t = std::time::Instant::now();
        supervisor.stop(waiter);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            t.elapsed()
        );
    }
}
