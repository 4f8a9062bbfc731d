//! The store handle: connecting, the installation secret, tokens.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::aio::ConnectionManagerConfig;
use redis::cluster::ClusterClient;
use redis::{ClientTlsConfig, TlsCertificates};
use shortlinks_core::model::ApiToken;
use shortlinks_core::store::{decode, encode};
use shortlinks_core::store::{CredentialStore, TokenStore};
use shortlinks_core::{Error, InstallationSecret, SecretStore, Store};

use crate::config::{RedisConfig, RedisTarget, RedisTls};
use crate::connection::{store_error, Connection};
use crate::keys::Keys;

/// Storage on Redis or Redis Cluster. Cheap to clone; clones share one connection and are
/// one consumer of the queues.
#[derive(Clone)]
pub struct RedisStore {
    pub(crate) connection: Connection,
    /// The redirect's own traffic, on a connection of its own: its reads of links, and the
    /// appends of its clicks to the outbox (which a redirect waits for in `sync` mode).
    /// Queued on the shared connection, they would wait behind whatever the dispatcher sent
    /// before them (a batch's pipelines and script calls take Redis milliseconds).
    pub(crate) hot: Connection,
    pub(crate) keys: Keys,
    pub(crate) consumer: Arc<str>,
    pub(crate) claim_after: Duration,
    pub(crate) forget_consumer_after: Duration,
    /// Links are indexed by target too ([`RedisConfig::index_targets`]).
    pub(crate) index_targets: bool,
    /// When this node last looked for abandoned entries, per queue key.
    pub(crate) last_takeover: Arc<Mutex<HashMap<String, Instant>>>,
    /// Queue keys whose consumer group is known to exist.
    pub(crate) groups: Arc<Mutex<std::collections::HashSet<String>>>,
    /// With `replicas_ack`: the connection durable writes go through, and what `WAIT` asks.
    pub(crate) acked: Option<Acked>,
}

/// Writes whose replication is waited for. `WAIT` covers the writes sent before it on its
/// own connection, and blocks that connection meanwhile: so these writes have one of
/// their own, and the redirects' reads never queue behind a `WAIT`.
#[derive(Clone)]
pub(crate) struct Acked {
    connection: Connection,
    replicas: u32,
    timeout: Duration,
}

impl RedisStore {
    /// Connects and checks that Redis answers. Later connection loss is not fatal: the
    /// connection is re-established by itself, and calls fail with
    /// [`Error::Unavailable`] meanwhile.
    pub async fn open(config: RedisConfig) -> Result<Self, Error> {
        let certificates = certificates(&config.tls)?;
        let connection = connect(&config.target, certificates.as_ref(), config.response_timeout).await?;
        let hot = connect(&config.target, certificates.as_ref(), config.response_timeout).await?;
        let acked = match config.replicas_ack {
            0 => None,
            replicas => Some(Acked {
                // A write may wait up to the ack timeout on top of its own time.
                connection: connect(
                    &config.target,
                    certificates.as_ref(),
                    config.response_timeout + config.replicas_ack_timeout,
                )
                .await?,
                replicas,
                timeout: config.replicas_ack_timeout,
            }),
        };
        let consumer = match config.consumer {
            Some(name) => name,
            None => random_consumer_name()?,
        };
        let store = Self {
            connection,
            hot,
            keys: Keys::new(&config.key_prefix),
            consumer: consumer.into(),
            claim_after: config.claim_after,
            forget_consumer_after: config.forget_consumer_after,
            index_targets: config.index_targets,
            last_takeover: Arc::default(),
            groups: Arc::default(),
            acked,
        };
        let _: String = redis::cmd("PING").query_async(&mut store.connection()).await.map_err(store_error)?;
        Ok(store)
    }

    /// This node's name in the queues' consumer group.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// A handle on the shared connection, for one command or pipeline.
    pub(crate) fn connection(&self) -> Connection {
        self.connection.clone()
    }

    /// The connection for a write the store promises as durable.
    pub(crate) fn write_connection(&self) -> Connection {
        self.acked.as_ref().map_or_else(|| self.connection(), |a| a.connection.clone())
    }

    /// The connection for the redirect's own traffic (see [`RedisStore::hot`]), or for its
    /// durable writes the acknowledged one.
    pub(crate) fn hot_connection(&self, write: bool) -> Connection {
        match &self.acked {
            Some(acked) if write => acked.connection.clone(),
            _ => self.hot.clone(),
        }
    }

    /// Runs a durable write's command (see [`RedisStore::write_connection`]).
    pub(crate) async fn write<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Error> {
        cmd.query_async(&mut self.write_connection()).await.map_err(store_error)
    }

    /// With `replicas_ack`, waits until that many replicas have every durable write made
    /// so far; an error if they do not within the timeout.
    pub(crate) async fn replicated(&self) -> Result<(), Error> {
        let Some(acked) = &self.acked else { return Ok(()) };
        let timeout_ms = u64::try_from(acked.timeout.as_millis()).unwrap_or(u64::MAX);
        let got: i64 = redis::cmd("WAIT")
            .arg(acked.replicas)
            .arg(timeout_ms)
            .query_async(&mut acked.connection.clone())
            .await
            .map_err(store_error)?;
        if got < i64::from(acked.replicas) {
            return Err(Error::Unavailable(format!(
                "only {got} of {} replicas acknowledged the write within {:?} (the primary has it; retrying is safe)",
                acked.replicas, acked.timeout
            )));
        }
        Ok(())
    }

    /// Runs a command, mapping the error.
    pub(crate) async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Error> {
        cmd.query_async(&mut self.connection()).await.map_err(store_error)
    }
}

/// The certificates to use beyond the defaults, read from their files; `None` for the
/// defaults (plain text, or TLS with the system's roots).
fn certificates(tls: &RedisTls) -> Result<Option<TlsCertificates>, Error> {
    if tls == &RedisTls::default() {
        return Ok(None);
    }
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path)
            .map_err(|e| Error::InvalidInput(format!("cannot read the Redis TLS {what} {}: {e}", path.display())))
    };
    let root_cert = tls.ca_file.as_deref().map(|p| read(p, "CA file")).transpose()?;
    let client_tls = match &tls.client_cert {
        Some((cert, key)) => Some(ClientTlsConfig {
            client_cert: read(cert, "client certificate")?,
            client_key: read(key, "client key")?,
        }),
        None => None,
    };
    Ok(Some(TlsCertificates { client_tls, root_cert }))
}

/// One multiplexed connection to the target that reconnects by itself.
async fn connect(target: &RedisTarget, tls: Option<&TlsCertificates>, timeout: Duration) -> Result<Connection, Error> {
    // rustls takes its cryptography from a process-wide default: ring, as the HTTPS client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls_error = |e: redis::RedisError| Error::InvalidInput(format!("Redis TLS settings: {e}"));
    Ok(match target {
        RedisTarget::Standalone(url) => {
            let client = match tls {
                Some(certificates) if url.starts_with("rediss://") => {
                    redis::Client::build_with_tls(url.as_str(), certificates.clone()).map_err(tls_error)?
                }
                _ => redis::Client::open(url.as_str()).map_err(store_error)?,
            };
            let settings = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1));
            Connection::Standalone(client.get_connection_manager_with_config(settings).await.map_err(store_error)?)
        }
        RedisTarget::Cluster(nodes) => {
            let mut builder = ClusterClient::builder(nodes.iter().map(String::as_str))
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(2);
            if let Some(certificates) = tls.filter(|_| nodes.iter().any(|n| n.starts_with("rediss://"))) {
                builder = builder.certs(certificates.clone());
            }
            Connection::Cluster(
                builder.build().map_err(store_error)?.get_async_connection().await.map_err(store_error)?,
            )
        }
    })
}

fn random_consumer_name() -> Result<String, Error> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).map_err(|e| Error::Random(e.to_string()))?;
    Ok(format!("node-{}-{:016x}", std::process::id(), u64::from_le_bytes(bytes)))
}

impl TokenStore for RedisStore {
    async fn put_token(&self, token: ApiToken) -> Result<(), Error> {
        let _: i64 = self.query(redis::cmd("HSET").arg(self.keys.tokens()).arg(&token.id).arg(encode(&token)?)).await?;
        Ok(())
    }

    async fn get_token(&self, id: &str) -> Result<Option<ApiToken>, Error> {
        let bytes: Option<Vec<u8>> = self.query(redis::cmd("HGET").arg(self.keys.tokens()).arg(id)).await?;
        bytes.map(|b| decode(&b)).transpose()
    }

    async fn list_tokens(&self) -> Result<Vec<ApiToken>, Error> {
        let all: Vec<(String, Vec<u8>)> = self.query(redis::cmd("HGETALL").arg(self.keys.tokens())).await?;
        let mut tokens = all.iter().map(|(_, bytes)| decode::<ApiToken>(bytes)).collect::<Result<Vec<_>, _>>()?;
        tokens.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(tokens)
    }
}

impl SecretStore for RedisStore {
    async fn installation_secret(&self, candidate: InstallationSecret) -> Result<InstallationSecret, Error> {
        let key = self.keys.secret();
        let _: Option<String> =
            self.query(redis::cmd("SET").arg(&key).arg(candidate.to_bytes().as_slice()).arg("NX")).await?;
        let stored: Vec<u8> = self.query(redis::cmd("GET").arg(&key)).await?;
        let bytes: [u8; 32] =
            stored.try_into().map_err(|_| Error::Corrupt(format!("{key} does not hold a 32-byte secret")))?;
        Ok(InstallationSecret::from_bytes(bytes))
    }
}

/// Sets KEYS[1] to ARGV[2] if it holds ARGV[1] (ARGV[3] = "1"), or nothing (ARGV[3] = "0").
const SWAP_CREDENTIAL: &str = r"
local current = redis.call('GET', KEYS[1])
if ARGV[3] == '1' then
  if current ~= ARGV[1] then return 0 end
elseif current then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
";

impl CredentialStore for RedisStore {
    async fn credential(&self, name: &str) -> Result<Option<Vec<u8>>, Error> {
        self.query(redis::cmd("GET").arg(self.keys.credential(name))).await
    }

    /// As durable as Redis' own persistence makes any write (`appendfsync`).
    async fn swap_credential(&self, name: &str, expected: Option<Vec<u8>>, new: Vec<u8>) -> Result<bool, Error> {
        let swapped: i64 = redis::Script::new(SWAP_CREDENTIAL)
            .key(self.keys.credential(name))
            .arg(expected.as_deref().unwrap_or_default())
            .arg(new)
            .arg(if expected.is_some() { "1" } else { "0" })
            .invoke_async(&mut self.connection())
            .await
            .map_err(store_error)?;
        Ok(swapped == 1)
    }
}

impl Store for RedisStore {
    /// Redis persists on its own schedule (`appendfsync`); there is nothing to force here.
    async fn flush(&self) -> Result<(), Error> {
        Ok(())
    }

    /// Erased keys are gone from Redis's memory at once; what is left is the stream of
    /// erased codes, kept for the nodes' caches: trimmed now (a node that had not read it
    /// yet drops its whole cache). Redis rewrites its own files (AOF, RDB) on its schedule.
    async fn compact(&self) -> Result<u64, Error> {
        self.trim_erasures(std::time::Duration::ZERO).await?;
        Ok(0)
    }
}
