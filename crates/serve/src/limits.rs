//! Bounded work per request: an admission gate for uncached computations
//! (load shedding instead of an unbounded queue) and single-flight for
//! identical concurrent misses.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore};

/// Limits on uncached work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkLimits {
    /// Uncached recommendations computed at once (default: the CPU count).
    pub max_concurrent: usize,
    /// Requests that may wait for a computation slot; beyond them a request
    /// is shed at once with 503 and `Retry-After` (default: 4 × the slots).
    pub max_waiting: usize,
    /// `Retry-After` of a shed request, in seconds.
    pub retry_after_secs: u64,
}

impl Default for WorkLimits {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            max_concurrent: cpus,
            max_waiting: 4 * cpus,
            retry_after_secs: 1,
        }
    }
}

/// Too much uncached work in flight: the request is shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overloaded;

/// Admits uncached computations up to the limits.
#[derive(Debug)]
pub struct Admission {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    limits: WorkLimits,
    shed: AtomicU64,
    admitted: AtomicU64,
}

/// Decrements the waiting count when a waiter leaves (admitted, or dropped at
/// its deadline).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    /// An admission gate with these limits.
    pub fn new(limits: WorkLimits) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limits.max_concurrent.max(1))),
            waiting: AtomicUsize::new(0),
            limits,
            shed: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
        }
    }

    /// The limits.
    pub fn limits(&self) -> WorkLimits {
        self.limits
    }

    /// Requests shed so far.
    pub fn shed_count(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    /// Computations admitted so far.
    pub fn admitted_count(&self) -> u64 {
        self.admitted.load(Ordering::Relaxed)
    }

    /// Computations running now.
    pub fn running(&self) -> usize {
        self.limits.max_concurrent.max(1) - self.permits.available_permits()
    }

    /// A slot for one computation: at once if one is free, after a wait if
    /// fewer than `max_waiting` requests are waiting, else [`Overloaded`].
    /// The wait is bounded by the caller's deadline (dropping the future
    /// leaves the queue).
    pub async fn admit(&self) -> Result<OwnedSemaphorePermit, Overloaded> {
        let permit = self.wait_for_slot().await?;
        self.admitted.fetch_add(1, Ordering::Relaxed);
        Ok(permit)
    }

    async fn wait_for_slot(&self) -> Result<OwnedSemaphorePermit, Overloaded> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.limits.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.shed.fetch_add(1, Ordering::Relaxed);
            return Err(Overloaded);
        }
        let _waiting = Waiting(&self.waiting);
        self.permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Overloaded)
    }
}

/// Computes each key once among concurrent callers: the first caller runs
/// the computation, the others await its result. (If the first caller is
/// dropped, a waiting one takes over.)
pub struct SingleFlight<T> {
    flights: Mutex<HashMap<String, Arc<OnceCell<T>>>>,
    joined: AtomicU64,
}

impl<T> std::fmt::Debug for SingleFlight<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleFlight")
            .field("joined", &self.joined.load(Ordering::Relaxed))
            .finish()
    }
}

impl<T> Default for SingleFlight<T> {
    fn default() -> Self {
        Self {
            flights: Mutex::new(HashMap::new()),
            joined: AtomicU64::new(0),
        }
    }
}

impl<T: Clone> SingleFlight<T> {
    /// Callers that got another caller's result so far.
    pub fn joined_count(&self) -> u64 {
        self.joined.load(Ordering::Relaxed)
    }

    /// The result of `compute` for `key`, computed once among concurrent callers.
    pub async fn run<F, Fut>(&self, key: &str, compute: F) -> T
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let cell = {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            match flights.get(key) {
                Some(cell) => {
                    self.joined.fetch_add(1, Ordering::Relaxed);
                    cell.clone()
                }
                None => {
                    let cell = Arc::new(OnceCell::new());
                    flights.insert(key.to_string(), cell.clone());
                    cell
                }
            }
        };
        /// Removes the flight when its first caller finishes or is dropped.
        struct Land<'a, T> {
            flights: &'a Mutex<HashMap<String, Arc<OnceCell<T>>>>,
            key: &'a str,
            cell: &'a Arc<OnceCell<T>>,
        }
        impl<T> Drop for Land<'_, T> {
            fn drop(&mut self) {
                let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
                if flights
                    .get(self.key)
                    .is_some_and(|c| Arc::ptr_eq(c, self.cell) && c.initialized())
                {
                    flights.remove(self.key);
                }
            }
        }
        let land = Land {
            flights: &self.flights,
            key,
            cell: &cell,
        };
        let value = cell.get_or_init(compute).await.clone();
        drop(land);
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admission_sheds_beyond_slots_and_waiters() {
        let a = Arc::new(Admission::new(WorkLimits {
            max_concurrent: 1,
            max_waiting: 1,
            retry_after_secs: 1,
        }));
        let first = a.admit().await;
        assert!(first.is_ok());
        let waiter = {
            let a = a.clone();
            tokio::spawn(async move { a.admit().await.is_ok() })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(a.admit().await.err(), Some(Overloaded), "a third is shed");
        assert_eq!(a.shed_count(), 1);
        drop(first);
        assert!(waiter.await.unwrap_or(false), "the waiter gets the slot");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn identical_concurrent_calls_compute_once() {
        let flight = Arc::new(SingleFlight::<u32>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (flight, runs) = (flight.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                flight
                    .run("k", || async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        7
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.ok(), Some(7));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(flight.joined_count(), 7);
        // Landed: the next call computes again.
        assert_eq!(flight.run("k", || async { 8 }).await, 8);
    }
}
