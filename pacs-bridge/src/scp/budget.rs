//! One memory budget for the datasets all associations are receiving at once. Each association
//! may hold up to `max_instance_bytes` of one dataset; sixteen of them at 1 GiB each would be
//! more than the appliance has. A dataset's bytes are charged as they arrive and released when
//! its instance is stored or refused; a charge that does not fit waits a while for others to
//! be released, and an association that still does not fit reads the rest of its dataset
//! without keeping it and answers A700 (out of resources), as for an instance too large.

use prometheus_client::metrics::gauge::Gauge;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The bytes of in-flight datasets, across associations.
pub struct MemoryBudget {
    limit: usize,
    used: Mutex<usize>,
    released: Condvar,
    /// `radiant_scp_inflight_dataset_bytes`.
    gauge: Gauge,
}

impl MemoryBudget {
    pub fn new(limit: usize, gauge: Gauge) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit,
            used: Mutex::new(0),
            released: Condvar::new(),
            gauge,
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// An empty charge against this budget.
    pub fn charge(self: &Arc<Self>) -> Charge {
        Charge {
            budget: self.clone(),
            bytes: 0,
        }
    }

    fn take(&self, bytes: usize, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if used.saturating_add(bytes) <= self.limit {
                *used += bytes;
                self.gauge.set(*used as i64);
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            used = self
                .released
                .wait_timeout(used, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn give_back(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        *used = used.saturating_sub(bytes);
        self.gauge.set(*used as i64);
        self.released.notify_all();
    }
}

/// What one dataset holds of the budget; released when dropped.
pub struct Charge {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl Charge {
    /// Take `bytes` more, waiting up to `wait` for room; `false` when there is none.
    pub fn grow(&mut self, bytes: usize, wait: Duration) -> bool {
        let taken = self.budget.take(bytes, wait);
        if taken {
            self.bytes += bytes;
        }
        taken
    }

    /// Give everything back now (the dataset was dropped).
    pub fn release(&mut self) {
        self.budget.give_back(std::mem::take(&mut self.bytes));
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_that_does_not_fit_waits_for_a_release_then_fits() {
        let budget = MemoryBudget::new(100, Gauge::default());
        let mut first = budget.charge();
        assert!(first.grow(80, Duration::ZERO));
        let mut second = budget.charge();
        assert!(!second.grow(30, Duration::from_millis(20)));
        let waiter = std::thread::spawn({
            let budget = budget.clone();
            move || {
                let mut third = budget.charge();
                third.grow(30, Duration::from_secs(30))
            }
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(first);
        assert!(waiter.join().unwrap());
        // The waiter's charge was dropped with its thread: everything is back.
        assert!(second.grow(100, Duration::ZERO));
        assert_eq!(budget.gauge.get(), 100);
        second.release();
        assert_eq!(budget.gauge.get(), 0);
    }
}
