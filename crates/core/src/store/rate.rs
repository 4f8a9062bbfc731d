//! Rate limits as a generic cell rate algorithm (GCRA): one number per key, the time at
//! which its allowance is next fully spent ("theoretical arrival time"), so a limit costs
//! one read and one write, and a shared store can keep it for every node at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A sustained rate with a burst on top.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Requests per second, sustained.
    pub per_second: u32,
    /// How many may come at once after a quiet spell (at least 1).
    pub burst: u32,
    /// Added to every interval: room for requests reaching a receiver unevenly (network
    /// jitter) when the receiver is the one counting per second. Zero for limits counted
    /// where they are taken.
    pub headroom: Duration,
}

impl Rate {
    /// `per_second` with a burst, counted where it is taken.
    pub const fn new(per_second: u32, burst: u32) -> Self {
        Self { per_second, burst, headroom: Duration::ZERO }
    }

    /// Microseconds between two requests at the sustained rate.
    pub fn interval_us(self) -> u64 {
        1_000_000 / u64::from(self.per_second.max(1)) + self.headroom.as_micros() as u64
    }

    /// How far ahead of now the allowance may be spent before a request must wait.
    pub fn tolerance_us(self) -> u64 {
        self.interval_us() * u64::from(self.burst.max(1) - 1)
    }
}

/// One request against a key whose allowance is spent up to `tat` (microseconds, on the
/// caller's clock; 0 for a key never seen), at time `now`. Either the new `tat` to store,
/// or how long the request must wait. Every backend decides with this (Redis in a script
/// that mirrors it).
pub fn gcra(tat: u64, now: u64, rate: Rate) -> Result<u64, Duration> {
    let tat = tat.max(now);
    let ahead = tat - now;
    if ahead > rate.tolerance_us() {
        Err(Duration::from_micros(ahead - rate.tolerance_us()))
    } else {
        Ok(tat + rate.interval_us())
    }
}

/// Rate limits kept in process memory: right for a backend that one process owns.
#[derive(Default)]
pub(crate) struct LocalRates {
    start: Option<Instant>,
    tats: HashMap<String, u64>,
}

impl LocalRates {
    /// See [`super::RateLimiter::take`].
    pub(crate) fn take(limits: &Mutex<LocalRates>, key: &str, rate: Rate) -> Option<Duration> {
        let mut limits = limits.lock();
        let now = limits.start.get_or_insert_with(Instant::now).elapsed().as_micros() as u64 + 1;
        let tat = limits.tats.get(key).copied().unwrap_or(0);
        match gcra(tat, now, rate) {
            Ok(next) => {
                // A key whose allowance is whole again carries no information: past a few
                // hundred keys, forget those, so the map holds only keys in use.
                if limits.tats.len() >= 512 {
                    limits.tats.retain(|_, tat| *tat > now);
                }
                limits.tats.insert(key.to_owned(), next);
                None
            }
            Err(wait) => Some(wait),
        }
    }
}
