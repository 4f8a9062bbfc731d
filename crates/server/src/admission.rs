//! Which connections the server keeps: a cap on open connections in all and per client
//! address, below the descriptor limit, so that a greedy client can never make the next
//! one wait for a descriptor.
//!
//! At a cap, an idle connection (open, with no request in flight: a kept-alive one, or one
//! that never sent a request) is closed to make room, the client's own first; only when
//! none is idle is the newcomer turned away. A person's click therefore gets through while
//! one client holds every connection it can. Bookkeeping is per connection, never per
//! request: the hot path does not see it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::task::AbortHandle;

use crate::idle::Activity;

/// The caps; see [`ConnectionLimits::from_descriptors`] for the defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections in all.
    pub total: usize,
    /// Open connections from one client address.
    pub per_address: usize,
}

impl ConnectionLimits {
    /// Descriptors kept back from connections: the store's files, sockets to Redis and to
    /// sinks, the admin socket, the listener.
    pub const RESERVED_DESCRIPTORS: u64 = 128;

    /// From the process's descriptor limit: every descriptor but the reserved ones (at least
    /// 16), and a quarter of those per address (at least 8). A quarter: one address (an
    /// office behind NAT, a proxy) gets a large share, never all.
    pub fn from_descriptors(limit: u64) -> Self {
        let total = limit.saturating_sub(Self::RESERVED_DESCRIPTORS).max(16) as usize;
        Self { total, per_address: (total / 4).max(8) }
    }
}

/// Raises the soft descriptor limit to the hard one, and returns it: the server is the
/// process's whole job, so it may use every descriptor the system grants it.
pub fn raise_descriptor_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "cannot raise the descriptor limit");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// The open connections.
pub(crate) struct Admission {
    limits: ConnectionLimits,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    open: HashMap<u64, Open>,
    per_address: HashMap<IpAddr, usize>,
}

struct Open {
    address: IpAddr,
    activity: Arc<Activity>,
    abort: Option<AbortHandle>,
}

/// A connection's place; dropping it (the connection ended) frees the place.
pub(crate) struct Admitted {
    admission: Arc<Admission>,
    id: u64,
}

impl Admission {
    pub(crate) fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Self { limits, state: Mutex::default() })
    }

    /// A place for a new connection from `address`, closing an idle one if a cap is
    /// reached; `None` if every connection that would have to go is busy.
    pub(crate) fn admit(self: &Arc<Self>, address: IpAddr, activity: Arc<Activity>) -> Option<Admitted> {
        let mut state = self.state.lock();
        let from_address = state.per_address.get(&address).copied().unwrap_or(0);
        let closed = if from_address >= self.limits.per_address {
            Some(state.close_idle(Some(address))?)
        } else if state.open.len() >= self.limits.total {
            // The address with the most connections gives one up first.
            let busiest = state.per_address.iter().max_by_key(|(_, n)| **n).map(|(a, _)| *a);
            Some(state.close_idle(busiest).or_else(|| state.close_idle(None))?)
        } else {
            None
        };
        let id = state.next_id;
        state.next_id += 1;
        state.open.insert(id, Open { address, activity, abort: None });
        *state.per_address.entry(address).or_default() += 1;
        drop(state);
        // Outside the lock: the aborted task may be dropped right here, and with it its place.
        if let Some(closed) = closed {
            closed.abort();
        }
        Some(Admitted { admission: self.clone(), id })
    }

    /// The handle that closes connection `id`, once its task is spawned (the place itself
    /// moves into the task). Until then it is not closed to make room.
    pub(crate) fn closes_with(&self, id: u64, abort: AbortHandle) {
        if let Some(open) = self.state.lock().open.get_mut(&id) {
            open.abort = Some(abort);
        }
    }

    /// How many connections are open.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.state.lock().open.len()
    }
}

impl State {
    /// Forgets one idle connection (of `address`, if given), returning what closes it.
    fn close_idle(&mut self, address: Option<IpAddr>) -> Option<AbortHandle> {
        let id = self.open.iter().find_map(|(id, open)| {
            (open.activity.is_idle() && open.abort.is_some() && address.is_none_or(|a| a == open.address))
                .then_some(*id)
        })?;
        let closed = self.forget(id)?;
        tracing::debug!(address = %closed.address, "closing an idle connection to make room");
        closed.abort
    }

    fn forget(&mut self, id: u64) -> Option<Open> {
        let open = self.open.remove(&id)?;
        if let Some(n) = self.per_address.get_mut(&open.address) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&open.address);
            }
        }
        Some(open)
    }
}

impl Admitted {
    /// Which connection this is, for [`Admission::closes_with`].
    pub(crate) fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.state.lock().forget(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(last: u8) -> IpAddr {
        [10, 0, 0, last].into()
    }

    #[tokio::test]
    async fn at_a_cap_an_idle_connection_makes_room_and_a_busy_one_does_not() {
        let admission = Admission::new(ConnectionLimits { total: 3, per_address: 2 });
        let mut held = Vec::new();
        let mut tasks = Vec::new();
        for client in [1, 1, 2] {
            let activity = Arc::new(Activity::default());
            let place = admission.admit(address(client), activity.clone()).expect("below the caps");
            let task = tokio::spawn(std::future::pending::<()>());
            admission.closes_with(place.id(), task.abort_handle());
            held.push((place, activity));
            tasks.push(task);
        }
        // Client 1 is at its cap: its own idle connection goes.
        let newcomer = admission.admit(address(1), Arc::new(Activity::default()));
        assert!(newcomer.is_some());
        assert_eq!(admission.open(), 3);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let closed: Vec<bool> = tasks.iter().map(|t| t.is_finished()).collect();
        assert!(closed == [true, false, false] || closed == [false, true, false], "one of client 1's: {closed:?}");

        // Everyone busy: a newcomer is turned away, nobody is cut.
        let busy: Vec<_> = held.iter().map(|(_, activity)| activity.begin()).collect();
        let admission2 = Admission::new(ConnectionLimits { total: 2, per_address: 2 });
        let a = Arc::new(Activity::default());
        let place = admission2.admit(address(3), a.clone()).unwrap();
        admission2.closes_with(place.id(), tokio::spawn(std::future::pending::<()>()).abort_handle());
        let _in_flight = a.begin();
        let b = Arc::new(Activity::default());
        let place_b = admission2.admit(address(4), b.clone()).unwrap();
        admission2.closes_with(place_b.id(), tokio::spawn(std::future::pending::<()>()).abort_handle());
        let _in_flight_b = b.begin();
        assert!(admission2.admit(address(5), Arc::new(Activity::default())).is_none());
        drop(place_b);
        assert!(admission2.admit(address(5), Arc::new(Activity::default())).is_some(), "a place freed is a place");
        drop(busy);
    }

    #[test]
    fn defaults_come_from_the_descriptor_limit() {
        assert_eq!(ConnectionLimits::from_descriptors(1024), ConnectionLimits { total: 896, per_address: 224 });
        assert_eq!(ConnectionLimits::from_descriptors(256), ConnectionLimits { total: 128, per_address: 32 });
        assert_eq!(ConnectionLimits::from_descriptors(64), ConnectionLimits { total: 16, per_address: 8 });
    }
}
