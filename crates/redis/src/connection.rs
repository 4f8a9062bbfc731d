//! One connection type over a standalone server and a cluster, and error mapping.

use std::collections::HashMap;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};
use shortlinks_core::Error;

/// A multiplexed connection that reconnects by itself: cheap to clone, one per task.
#[derive(Clone)]
pub(crate) enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Standalone(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Standalone(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// The most items (claims, notes) one script call or pipeline takes: Redis serves nothing
/// else while a script runs, and this many take it about a millisecond; a pipeline's
/// replies stay small.
pub(crate) const MOST_PER_CALL: usize = 256;

impl Connection {
    /// Packs units of work into calls (a script's or a pipeline's), in order: each call
    /// takes whole units (one unit's items stay in one call, in their order), at most
    /// [`MOST_PER_CALL`] items unless one unit alone has more, and on a cluster only units
    /// whose keys share a slot.
    /// A unit comes with one of its keys: all of a unit's keys share that key's slot.
    pub(crate) fn pack<T>(&self, units: impl IntoIterator<Item = (String, Vec<T>)>) -> Vec<Vec<T>> {
        let mut open: HashMap<Option<Slot>, Vec<T>> = HashMap::new();
        let mut calls = Vec::new();
        for (key, items) in units {
            let slot = match self {
                Connection::Standalone(_) => None,
                Connection::Cluster(_) => Some(Slot::for_key(key)),
            };
            let call = open.entry(slot).or_default();
            if !call.is_empty() && call.len() + items.len() > MOST_PER_CALL {
                calls.push(std::mem::take(call));
            }
            call.extend(items);
        }
        calls.extend(open.into_values().filter(|call| !call.is_empty()));
        calls
    }
}

/// Pairs a call's items with Redis's answers, in order. A reply with another count of
/// answers is corrupt: pairing it anyway would give items answers not theirs.
pub(crate) fn one_each<T, A>(
    call: Vec<T>,
    answers: Vec<A>,
    what: &str,
) -> Result<std::iter::Zip<std::vec::IntoIter<T>, std::vec::IntoIter<A>>, Error> {
    if answers.len() != call.len() {
        return Err(Error::Corrupt(format!("{} answers to {} {what}", answers.len(), call.len())));
    }
    Ok(call.into_iter().zip(answers))
}

/// Lost connections, timeouts and a cluster without quorum are "unavailable" (retrying
/// may succeed); anything else is a storage failure.
pub(crate) fn store_error(e: RedisError) -> Error {
    if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.is_cluster_error()
    {
        Error::Unavailable(e.to_string())
    } else {
        Error::Storage(Box::new(e))
    }
}
