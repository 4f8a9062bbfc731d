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

/// Shows the addresses with any password masked, so that the target can be logged and put
/// in error messages.
impl std::fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls = match self {
            RedisTarget::Standalone(url) => std::slice::from_ref(url),
            RedisTarget::Cluster(urls) => urls.as_slice(),
        };
        for (i, url) in urls.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&redacted(url))?;
        }
        Ok(())
    }
}

/// `url` with its password replaced by `***`; text that is not a URL is not shown at all.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "(not a URL)".into(),
    }
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
    /// A consumer (a node) silent this long, with nothing leased, is removed from the
    /// queues' consumer groups, so that nodes gone for good do not pile up there. A node
    /// that comes back later simply joins again.
    pub forget_consumer_after: Duration,
    /// Writes the store promises as durable (links, queued clicks and notes, notes) are
    /// acknowledged only once this many replicas have them (`WAIT`); 0: once the primary
    /// has them, as Redis itself acknowledges.
    pub replicas_ack: u32,
    /// How long a write may wait for its replicas; past it the write is an error to the
    /// caller (the primary has it, a retry is harmless), never a silent success.
    pub replicas_ack_timeout: Duration,
    /// Whether each link is indexed under its account and target too, for a look-up by URL:
    /// about 130 bytes more per link when every link has a URL of its own (a member of an
    /// existing set when links share one). Links made while it is off are not in the index.
    pub index_targets: bool,
    /// For `rediss://` addresses: whom to trust and who we are. Without it, the system's
    /// roots are trusted and no client certificate is shown.
    pub tls: RedisTls,
}

/// TLS beyond the defaults, for `rediss://` addresses. The server's name for SNI and for
/// checking its certificate is the address's host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// A CA certificate (PEM) to trust instead of the system's roots: a private CA.
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate and its key (PEM), for servers that ask for one.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
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
            forget_consumer_after: Duration::from_secs(3600),
            replicas_ack: 0,
            replicas_ack_timeout: Duration::from_secs(1),
            index_targets: true,
            tls: RedisTls::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let target = RedisTarget::Cluster(vec![
            "redis://:s3cret@10.0.0.1:7000/".into(),
            "redis://user:s3cret@10.0.0.2:7000/".into(),
            "redis://10.0.0.3:7000/".into(),
        ]);
        let shown = target.to_string();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_eq!(shown, "redis://:***@10.0.0.1:7000/,redis://user:***@10.0.0.2:7000/,redis://10.0.0.3:7000/");
        assert_eq!(redacted("redis://:pw@[::1"), "(not a URL)");
    }
}
