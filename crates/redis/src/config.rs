//! Where the Redis data is, and how this node takes part in it.

use std::time::Duration;

/// A standalone server or a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server (or a primary behind a proxy), such as `redis://127.0.0.1:6379/0`.
    Standalone(String),
    /// Some nodes of a Redis Cluster; the rest are discovered.
    Cluster(Vec<String>),
}

/// How to reach Redis and share its queues with other nodes.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// The server or cluster.
    pub target: RedisTarget,
    /// Prepended to every key, so that several installations (or tests) can share Redis.
    pub key_prefix: String,
    /// This node's name in the queues' consumer group; unique per process. `None` picks a
    /// random one, which is right unless a restarted node should resume its own leases.
    pub consumer: Option<String>,
    /// A queue entry leased by a node that has been silent this long is taken over by
    /// another. Longer than any one delivery attempt should take.
    pub claim_after: Duration,
    /// How long one command may take before the store counts as unreachable (redirects
    /// then answer 503 instead of hanging).
    pub response_timeout: Duration,
}

impl RedisConfig {
    /// Defaults for the given target.
    pub fn new(target: RedisTarget) -> Self {
        Self {
            target,
            key_prefix: "sl".into(),
            consumer: None,
            claim_after: Duration::from_secs(30),
            response_timeout: Duration::from_secs(2),
        }
    }
}
