//! State that every redirect writes, kept apart per thread.
//!
//! A value that two cores write in turn moves its cache line between them on every write;
//! under load that was most of what handing a click over cost (an atomic counter and
//! tokio's channel: four such writes per click, ~160 ns). Each thread writes its own
//! stripe instead, and readers, rare, visit them all.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A value alone on its cache line (two lines: adjacent-line prefetch pairs them).
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// This thread's number, given on first use: the stripe it writes.
pub(crate) fn this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static NUMBER: usize = NEXT.fetch_add(1, Relaxed);
    }
    NUMBER.with(|n| *n)
}

/// A counter every thread adds to without contention.
#[derive(Default)]
pub struct StripedCounter {
    stripes: [Padded<AtomicU64>; 16],
}

impl StripedCounter {
    /// Adds `n`, on this thread's stripe.
    pub fn add(&self, n: u64) {
        self.stripes[this_thread() % self.stripes.len()].0.fetch_add(n, Relaxed);
    }

    /// The total so far.
    pub fn get(&self) -> u64 {
        self.stripes.iter().map(|s| s.0.load(Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_count_apart_and_add_up() {
        let counter = std::sync::Arc::new(StripedCounter::default());
        let threads: Vec<_> = (0..20)
            .map(|_| {
                let counter = counter.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| counter.add(1)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(counter.get(), 20_000);
        assert!(std::mem::align_of::<Padded<AtomicU64>>() >= 128);
    }
}
