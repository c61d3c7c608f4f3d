//! Micro-batching: concurrent single searches of one shard gathered into
//! one batch, so callers that send one query at a time still get the scan
//! engine's batch throughput (issue 18).
//!
//! A caller queues its item. If no batch is running it leads: it waits up
//! to the window for company (only while other callers are in flight or
//! the last batch held several; a lone caller runs at once), takes up to `max_batch` queued
//! items, runs them with one call, and hands each caller its answer.
//! Callers that arrive while a batch runs queue for the next one, so under
//! load batches form by themselves even with a zero window, and one batch
//! at a time runs per shard (each batch already uses every core).
//!
//! The runner is called without the queue's lock held. If it panics, the
//! callers of that batch get `None` (the caller answers with an internal
//! error) and the next caller leads.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Default gathering window: measured in docs/benchmarks.md ("The scan
/// engine", micro-batching).
pub const DEFAULT_WINDOW: Duration = Duration::from_micros(100);
/// Default largest batch.
pub const DEFAULT_MAX_BATCH: usize = 256;

pub struct Batcher<T, R> {
    window: Duration,
    max_batch: usize,
    state: Mutex<State<T, R>>,
    /// Callers waiting for their answers (woken when a batch ends).
    cv: Condvar,
    /// The gathering leader alone (woken by each arrival, so arrivals do
    /// not wake every waiting caller).
    gather: Condvar,
}

struct State<T, R> {
    queue: Vec<(u64, T)>,
    done: HashMap<u64, Option<R>>,
    next: u64,
    /// Callers between queuing and taking their answer.
    in_flight: usize,
    leading: bool,
    /// The leader is waiting for company (not yet running its batch).
    gathering: bool,
    /// Items in the last batch: more than one means callers are
    /// concurrent, and the next leader waits for them to come back.
    last_batch: usize,
    /// Batches run and items they held, for status and tests.
    batches: u64,
    items: u64,
}

impl<T, R> Batcher<T, R> {
    pub fn new(window: Duration, max_batch: usize) -> Self {
        Batcher {
            window,
            max_batch: max_batch.max(1),
            state: Mutex::new(State { queue: vec![], done: HashMap::new(), next: 0, in_flight: 0, leading: false, gathering: false, last_batch: 0, batches: 0, items: 0 }),
            cv: Condvar::new(),
            gather: Condvar::new(),
        }
    }

    /// Batches run and the items they held so far.
    pub fn stats(&self) -> (u64, u64) {
        let st = self.state.lock();
        (st.batches, st.items)
    }

    /// Runs `item` in a batch with whatever else is queued; `run` answers
    /// a batch, one answer per item in order (missing answers and a panic
    /// give `None`).
    pub fn submit(&self, item: T, run: &dyn Fn(Vec<T>) -> Vec<R>) -> Option<R> {
        let mut st = self.state.lock();
        let ticket = st.next;
        st.next += 1;
        st.queue.push((ticket, item));
        st.in_flight += 1;
        if st.gathering {
            // The gathering leader re-checks whether the batch is complete.
            self.gather.notify_one();
        }
        loop {
            if let Some(r) = st.done.remove(&ticket) {
                st.in_flight -= 1;
                return r;
            }
            if st.leading {
                self.cv.wait(&mut st);
                continue;
            }
            st.leading = true;
            // Wait for company only under concurrency: while others are in
            // flight, or until as many have queued as the last batch held
            // (its callers are sending their next searches).
            let deadline = Instant::now() + self.window;
            st.gathering = true;
            while st.queue.len() < self.max_batch && (st.in_flight > st.queue.len() || st.last_batch > st.queue.len()) {
                if self.gather.wait_until(&mut st, deadline).timed_out() {
                    break;
                }
            }
            st.gathering = false;
            let take = st.queue.len().min(self.max_batch);
            let (tickets, items): (Vec<u64>, Vec<T>) = st.queue.drain(..take).unzip();
            st.batches += 1;
            st.items += take as u64;
            st.last_batch = take;
            let answers = parking_lot::MutexGuard::unlocked(&mut st, || std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(items))).ok());
            let mut answers = answers.unwrap_or_default().into_iter();
            for t in tickets {
                st.done.insert(t, answers.next());
            }
            st.leading = false;
            self.cv.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn lone_callers_run_at_once_and_concurrent_ones_share_batches() {
        let b: Batcher<u32, u32> = Batcher::new(Duration::from_millis(50), 64);
        let calls = AtomicUsize::new(0);
        let run = |xs: Vec<u32>| {
            calls.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(5));
            xs.into_iter().map(|x| x * 2).collect()
        };
        // Alone: no window is waited.
        let t = Instant::now();
        assert_eq!(b.submit(21, &run), Some(42));
        assert!(t.elapsed() < Duration::from_millis(45), "a lone caller does not wait for the window: {:?}", t.elapsed());
        // 32 threads at once: every one gets its own answer, in fewer
        // batches than callers.
        let answers: Vec<Option<u32>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..32u32).map(|i| {
                let (b, run) = (&b, &run);
                s.spawn(move || b.submit(i, run))
            }).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(answers, (0..32u32).map(|i| Some(i * 2)).collect::<Vec<_>>());
        let (batches, items) = b.stats();
        assert_eq!(items, 33);
        assert!(batches < 33, "concurrent callers were batched: {batches} batches for 33 items");
        assert_eq!(calls.load(Ordering::Relaxed) as u64, batches);
    }

    #[test]
    fn batches_are_capped_and_a_panicking_runner_answers_none() {
        let b: Batcher<u32, u32> = Batcher::new(Duration::from_millis(20), 4);
        let largest = AtomicUsize::new(0);
        let run = |xs: Vec<u32>| {
            largest.fetch_max(xs.len(), Ordering::Relaxed);
            if xs.contains(&13) {
                panic!("runner fault");
            }
            std::thread::sleep(Duration::from_millis(2));
            xs
        };
        let answers: Vec<Option<u32>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..20u32).map(|i| {
                let (b, run) = (&b, &run);
                s.spawn(move || b.submit(i, run))
            }).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(largest.load(Ordering::Relaxed) <= 4, "batches hold at most max_batch items");
        assert_eq!(answers[13], None, "the faulting batch answers None");
        let answered = answers.iter().filter(|a| a.is_some()).count();
        assert!(answered >= 16, "only the faulting batch (at most 4) fails: {answered} answered");
        // The batcher keeps serving after a fault.
        assert_eq!(b.submit(7, &run), Some(7));
    }
}
