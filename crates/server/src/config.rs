//! Settings: defaults, then a TOML file, then `SHORTLINKS_*` environment variables, then flags.
//!
//! Each source is a [`SettingsLayer`] of optional values; a higher layer wins field by field.
//! The binary's flags carry their environment variable (clap's `env`), so "flags over env"
//! is settled there, and [`SettingsLayer::over`] puts both over the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::header::HeaderName;
use serde::Deserialize;
use shortlinks_core::store::AddressTally;
use shortlinks_core::store::Rate;
use shortlinks_core::{AccountId, CodeLength, LinkCache, SledStore};
use shortlinks_notes::gateway::AddressRule;
use shortlinks_notes::retention::Retention;
use shortlinks_notes::sink::amocrm::InstallSettings;
use shortlinks_notes::sink::{AmoCrmAuth, AmoCrmConfig, AmoNoteType, HttpClient, OAuthApp};
use shortlinks_notes::{Durability, PipelineConfig};
use shortlinks_redis::{RedisConfig, RedisTarget};

use crate::ServerError;

/// One source of settings; `None` means "not set here".
///
/// The same struct is the TOML file's schema and the binary's flags: each flag also reads
/// its `SHORTLINKS_*` environment variable.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct SettingsLayer {
    /// `sled` (the default: embedded, in `data_dir`) or `redis` (shared by many nodes).
    #[arg(long, env = "SHORTLINKS_STORAGE", value_enum)]
    pub storage: Option<StorageKind>,
    /// Where the embedded store's files (and the admin socket) live.
    #[arg(long, env = "SHORTLINKS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Start even if the data directory is open to group or others (it is refused otherwise).
    #[arg(long, env = "SHORTLINKS_ALLOW_OPEN_PERMISSIONS", num_args = 0..=1, default_missing_value = "true")]
    pub allow_open_permissions: Option<bool>,
    /// With `storage = "redis"`: one server, such as `redis://127.0.0.1:6379/0`.
    #[arg(long, env = "SHORTLINKS_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// With `storage = "redis"`: some nodes of a Redis Cluster, comma-separated.
    #[arg(long, env = "SHORTLINKS_REDIS_NODES", hide_env_values = true)]
    pub redis_nodes: Option<String>,
    /// The prefix of every Redis key (default `sl`).
    #[arg(long, env = "SHORTLINKS_REDIS_KEY_PREFIX")]
    pub redis_key_prefix: Option<String>,
    /// A node silent this long loses its leased clicks and notes to another (default 30000).
    #[arg(long, env = "SHORTLINKS_REDIS_CLAIM_AFTER_MS")]
    pub redis_claim_after_ms: Option<u64>,
    /// A node silent this long and holding nothing leaves the queues' consumer groups
    /// (default 3600).
    #[arg(long, env = "SHORTLINKS_REDIS_FORGET_CONSUMER_AFTER_SECS")]
    pub redis_forget_consumer_after_secs: Option<u64>,
    /// Links, queued clicks and notes are acknowledged only once this many replicas have
    /// them (`WAIT`; default 0: once the primary has them).
    #[arg(long, env = "SHORTLINKS_REDIS_REPLICAS_ACK")]
    pub redis_replicas_ack: Option<u32>,
    /// How long such a write waits for its replicas before it is an error, in
    /// milliseconds (default 1000).
    #[arg(long, env = "SHORTLINKS_REDIS_REPLICAS_ACK_TIMEOUT_MS")]
    pub redis_replicas_ack_timeout_ms: Option<u64>,
    /// Index each link by its target too, for the console's look-up by URL (default true;
    /// about 130 bytes of Redis memory a link when each has a URL of its own).
    #[arg(long, env = "SHORTLINKS_REDIS_INDEX_TARGETS")]
    pub redis_index_targets: Option<bool>,
    /// For `rediss://` addresses: a CA certificate (PEM) to trust instead of the system's.
    #[arg(long, env = "SHORTLINKS_REDIS_TLS_CA_FILE")]
    pub redis_tls_ca_file: Option<PathBuf>,
    /// For `rediss://` addresses: a client certificate (PEM), with `redis_tls_client_key_file`.
    #[arg(long, env = "SHORTLINKS_REDIS_TLS_CLIENT_CERT_FILE")]
    pub redis_tls_client_cert_file: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, env = "SHORTLINKS_REDIS_TLS_CLIENT_KEY_FILE")]
    pub redis_tls_client_key_file: Option<PathBuf>,
    /// The address to listen on (default `127.0.0.1:8080`, loopback only).
    #[arg(long, env = "SHORTLINKS_LISTEN")]
    pub listen: Option<String>,
    /// The base of issued short links, such as `https://sho.rt`.
    #[arg(long, env = "SHORTLINKS_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Characters in new codes, 8 to 22 (default 12).
    #[arg(long, env = "SHORTLINKS_CODE_LENGTH")]
    pub code_length: Option<usize>,
    /// The largest accepted request body, in bytes (default 1048576).
    #[arg(long, env = "SHORTLINKS_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// How long a connection may go without starting a request (headers in), after it
    /// opens and after each response; closed within half to all of it (default 10).
    #[arg(long, env = "SHORTLINKS_HEADER_READ_TIMEOUT_SECS")]
    pub header_read_timeout_secs: Option<u64>,
    /// How long a client may take to send a request body, in seconds (default 30).
    #[arg(long, env = "SHORTLINKS_BODY_READ_TIMEOUT_SECS")]
    pub body_read_timeout_secs: Option<u64>,
    /// How long an answer may wait on a client that does not read it, in seconds (default
    /// 30); the connection then closes (within a tick: half the shorter of this and the
    /// header read timeout).
    #[arg(long, env = "SHORTLINKS_SEND_TIMEOUT_SECS")]
    pub send_timeout_secs: Option<u64>,
    /// The most a request's line and headers may take, in bytes (default 16384, at least 8192).
    #[arg(long, env = "SHORTLINKS_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Open connections in all (default: the descriptor limit less 128).
    #[arg(long, env = "SHORTLINKS_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Open connections from one client address (default: a quarter of `max_connections`).
    #[arg(long, env = "SHORTLINKS_MAX_CONNECTIONS_PER_ADDRESS")]
    pub max_connections_per_address: Option<usize>,
    /// API requests a second per token (default 7, amoCRM's limit).
    #[arg(long, env = "SHORTLINKS_API_RATE_PER_SEC")]
    pub api_rate_per_sec: Option<u32>,
    /// API requests a token may make at once after a quiet spell (default 7).
    #[arg(long, env = "SHORTLINKS_API_RATE_BURST")]
    pub api_rate_burst: Option<u32>,
    /// How long shutdown waits for in-flight requests, in seconds (default 10).
    #[arg(long, env = "SHORTLINKS_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// How many links the read cache holds (default 2000000, about 500 MB when full).
    #[arg(long, env = "SHORTLINKS_CACHED_LINKS")]
    pub cached_links: Option<usize>,
    /// sled's page cache in MiB while a data directory of format 1 or 2 is imported
    /// (default 64).
    #[arg(long, env = "SHORTLINKS_SLED_CACHE_MIB")]
    pub sled_cache_mib: Option<u64>,
    /// `group` (default) or `sync`: see [`shortlinks_notes::Durability`].
    #[arg(long, env = "SHORTLINKS_DURABILITY", value_enum)]
    pub durability: Option<DurabilityKind>,
    /// The group-commit window in milliseconds (default 10).
    #[arg(long, env = "SHORTLINKS_COMMIT_WINDOW_MS")]
    pub commit_window_ms: Option<u64>,
    /// Repeat visits by one client within this many seconds make one note (default 3600).
    #[arg(long, env = "SHORTLINKS_DEDUP_WINDOW_SECS")]
    pub dedup_window_secs: Option<u64>,
    /// At most this many notes per link within the dedup window (default 5; 0: no cap).
    /// Visits beyond it are counted on `/metrics` (reason `link_cap`) and make no note.
    #[arg(long, env = "SHORTLINKS_NOTES_PER_LINK")]
    pub notes_per_link: Option<u32>,
    /// Notes are kept this many days after the visit (default 365; 0: for ever), then
    /// erased from the journal (amoCRM keeps its own copy).
    #[arg(long, env = "SHORTLINKS_NOTES_RETENTION_DAYS")]
    pub notes_retention_days: Option<u64>,
    /// Dead letters are kept this many days after they were set aside (default 30; 0: for
    /// ever).
    #[arg(long, env = "SHORTLINKS_DEAD_LETTERS_RETENTION_DAYS")]
    pub dead_letters_retention_days: Option<u64>,
    /// A visit becomes a note only this many seconds after the click (default 60; 0: at
    /// once), so that the address rule can still veto it.
    #[arg(long, env = "SHORTLINKS_NOTE_HOLD_SECS")]
    pub note_hold_secs: Option<u64>,
    /// An address that follows links of this many different contacts within
    /// `address_rule_window_secs` is a gateway, not a person (default 3; 0: no such rule;
    /// at most 16).
    #[arg(long, env = "SHORTLINKS_ADDRESS_RULE_CONTACTS")]
    pub address_rule_contacts: Option<u32>,
    /// The window of the address rule in seconds (default 60).
    #[arg(long, env = "SHORTLINKS_ADDRESS_RULE_WINDOW_SECS")]
    pub address_rule_window_secs: Option<u64>,
    /// More scanner networks beside the shipped table: prefixes, comma-separated
    /// (`192.0.2.0/24,2001:db8::/32`).
    #[arg(long, env = "SHORTLINKS_SCANNER_NETWORKS")]
    pub scanner_networks: Option<String>,
    /// `api` (default: one line per API request) or `all` (redirects too).
    #[arg(long, env = "SHORTLINKS_ACCESS_LOG", value_enum)]
    pub access_log: Option<AccessLog>,
    /// Where the operator console listens, such as `127.0.0.1:8081`; off unless set.
    /// Needs `console_password_file`.
    #[arg(long, env = "SHORTLINKS_CONSOLE_LISTEN")]
    pub console_listen: Option<String>,
    /// A file holding the console's password: at least 12 characters, surrounding
    /// whitespace ignored.
    #[arg(long, env = "SHORTLINKS_CONSOLE_PASSWORD_FILE")]
    pub console_password_file: Option<PathBuf>,
    /// A header set by a trusted proxy with the client's address, such as `X-Forwarded-For`.
    /// Unset (the default), the peer address is used and no header is trusted.
    #[arg(long, env = "SHORTLINKS_CLIENT_IP_HEADER")]
    pub client_ip_header: Option<String>,
    /// Where the webhook sink posts notes; unset, there is no webhook sink.
    #[arg(long, env = "SHORTLINKS_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// The webhook's HMAC-SHA256 key. Prefer `webhook_secret_file`: flags show in `ps`.
    #[arg(long, env = "SHORTLINKS_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// A file holding the webhook's key (trailing newlines are ignored).
    #[arg(long, env = "SHORTLINKS_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// The timeout of each request to a sink, in seconds (default 10).
    #[arg(long, env = "SHORTLINKS_SINK_TIMEOUT_SECS")]
    pub sink_timeout_secs: Option<u64>,
    /// The longest delay between a sink's retries, in milliseconds (default 60000).
    #[arg(long, env = "SHORTLINKS_SINK_RETRY_MAX_MS")]
    pub sink_retry_max_ms: Option<u64>,
    /// The amoCRM account (`{subdomain}.amocrm.ru`) the amoCRM sink writes to.
    #[arg(long, env = "SHORTLINKS_AMOCRM_SUBDOMAIN")]
    pub amocrm_subdomain: Option<String>,
    /// Instead of the subdomain: the amoCRM API base URL (for testing or proxies).
    #[arg(long, env = "SHORTLINKS_AMOCRM_BASE_URL")]
    pub amocrm_base_url: Option<String>,
    /// The amoCRM API token. Prefer `amocrm_token_file`: flags show in `ps`.
    #[arg(long, env = "SHORTLINKS_AMOCRM_TOKEN", hide_env_values = true)]
    pub amocrm_token: Option<String>,
    /// A file holding the amoCRM API token (trailing newlines are ignored).
    #[arg(long, env = "SHORTLINKS_AMOCRM_TOKEN_FILE")]
    pub amocrm_token_file: Option<PathBuf>,
    /// Whose notes go to amoCRM: this shortlinks account id (default 1).
    #[arg(long, env = "SHORTLINKS_AMOCRM_ACCOUNT_ID")]
    pub amocrm_account_id: Option<u64>,
    /// OAuth 2.0 instead of a token: the integration's id (with its secret and redirect URI;
    /// `shortlinks amocrm connect` stores the first token pair).
    #[arg(long, env = "SHORTLINKS_AMOCRM_CLIENT_ID")]
    pub amocrm_client_id: Option<String>,
    /// The integration's secret key. Prefer `amocrm_client_secret_file`.
    #[arg(long, env = "SHORTLINKS_AMOCRM_CLIENT_SECRET", hide_env_values = true)]
    pub amocrm_client_secret: Option<String>,
    /// A file holding the integration's secret key.
    #[arg(long, env = "SHORTLINKS_AMOCRM_CLIENT_SECRET_FILE")]
    pub amocrm_client_secret_file: Option<PathBuf>,
    /// The redirect URI registered with the integration.
    #[arg(long, env = "SHORTLINKS_AMOCRM_REDIRECT_URI")]
    pub amocrm_redirect_uri: Option<String>,
    /// `service_message` (default) or `common`.
    #[arg(long, env = "SHORTLINKS_AMOCRM_NOTE_TYPE", value_parser = str::parse::<AmoNoteType>)]
    pub amocrm_note_type: Option<AmoNoteType>,
    /// Notes per amoCRM request, 1 to 250 (default 50).
    #[arg(long, env = "SHORTLINKS_AMOCRM_BATCH")]
    pub amocrm_batch: Option<usize>,
    /// How long a short batch waits for more notes, in milliseconds (default 200).
    #[arg(long, env = "SHORTLINKS_AMOCRM_LINGER_MS")]
    pub amocrm_linger_ms: Option<u64>,
    /// amoCRM requests a second, shared by every node of one store (default 5; above 7,
    /// amoCRM's limit, only with `amocrm_exceed_limit`).
    #[arg(long, env = "SHORTLINKS_AMOCRM_REQUESTS_PER_SEC")]
    pub amocrm_requests_per_sec: Option<u32>,
    /// Allow `amocrm_requests_per_sec` above amoCRM's 7 (a stand-in, or a limit amoCRM raised).
    #[arg(long, env = "SHORTLINKS_AMOCRM_EXCEED_LIMIT", num_args = 0..=1, default_missing_value = "true")]
    pub amocrm_exceed_limit: Option<bool>,
    /// The pause after amoCRM restricts the integration's access (403) or refuses the account
    /// (a 400 naming no note, a 402), in seconds (default 900).
    #[arg(long, env = "SHORTLINKS_AMOCRM_RESTRICTED_PAUSE_SECS")]
    pub amocrm_restricted_pause_secs: Option<u64>,
    /// Where the install flow's Redirect URI is served is the path of `amocrm_redirect_uri`;
    /// amoCRM's uninstall hook is served here (default /amocrm/uninstall).
    #[arg(long, env = "SHORTLINKS_AMOCRM_UNINSTALL_PATH")]
    pub amocrm_uninstall_path: Option<String>,
    /// amoCRM's authorization page, which `amocrm connect-url` links to (default
    /// https://www.amocrm.ru/oauth; https://www.kommo.com/oauth for Kommo).
    #[arg(long, env = "SHORTLINKS_AMOCRM_AUTHORIZE_URL")]
    pub amocrm_authorize_url: Option<String>,
    /// Base URLs, comma-separated, of hosts taken as an install's `referer` besides
    /// amoCRM's own (`*.amocrm.ru`, `*.amocrm.com`, `*.kommo.com`); default none.
    #[arg(long, env = "SHORTLINKS_AMOCRM_ALLOWED_BASES")]
    pub amocrm_allowed_bases: Option<String>,
    /// amoCRM connections, one per shortlinks account (the file's `[[amocrm_connections]]`
    /// tables only), beside the one the `amocrm_subdomain` settings make.
    #[arg(skip)]
    pub amocrm_connections: Option<Vec<AmoCrmConnection>>,
}

/// One amoCRM connection in the settings file: which shortlinks account's notes go to which
/// amoCRM account, and how the server proves who it is there. Batching, pace and the kind of
/// note are the `amocrm_*` settings, the same for every connection; each connection is paced
/// on its own.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AmoCrmConnection {
    /// The shortlinks account whose notes go there.
    pub account: u64,
    /// The amoCRM account, `{subdomain}.amocrm.ru`.
    pub subdomain: Option<String>,
    /// Instead of the subdomain: the amoCRM API base URL.
    pub base_url: Option<String>,
    /// A long-lived token of that account. Without one, the integration's OAuth settings
    /// (`amocrm_client_id` …) are used, with this account's token pair in the store.
    pub token: Option<String>,
    /// A file holding the token.
    pub token_file: Option<PathBuf>,
}

/// Which storage engine holds the data.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// Embedded, in `data_dir`.
    #[default]
    Sled,
    /// Redis or Redis Cluster, shared by many nodes.
    Redis,
}

/// When a redirect may answer relative to its click's flush: [`Durability`]'s modes.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityKind {
    /// Clicks are flushed together within a commit window; the redirect does not wait.
    #[default]
    Group,
    /// The redirect answers once its click is flushed.
    Sync,
}

/// What is logged, one line per request.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AccessLog {
    /// API requests only.
    #[default]
    Api,
    /// API requests and redirects.
    All,
}

/// Field by field: `a.or(b)` for every field.
macro_rules! layer_over {
    ($high:expr, $low:expr, $($field:ident),* $(,)?) => {
        SettingsLayer { $($field: $high.$field.or($low.$field)),* }
    };
}

impl SettingsLayer {
    /// Reads a TOML file; unknown keys are an error, so typos do not pass silently.
    pub fn from_file(path: &Path) -> Result<Self, ServerError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ServerError::io(format!("reading {}", path.display()), e))?;
        toml::from_str(&text).map_err(|e| ServerError::Config(format!("{}: {e}", path.display())))
    }

    /// This layer over `lower`: every field set here wins.
    pub fn over(self, lower: SettingsLayer) -> SettingsLayer {
        layer_over!(
            self,
            lower,
            storage,
            data_dir,
            allow_open_permissions,
            redis_url,
            redis_nodes,
            redis_key_prefix,
            redis_claim_after_ms,
            redis_forget_consumer_after_secs,
            redis_replicas_ack,
            redis_replicas_ack_timeout_ms,
            redis_index_targets,
            redis_tls_ca_file,
            redis_tls_client_cert_file,
            redis_tls_client_key_file,
            listen,
            public_url,
            code_length,
            max_body_bytes,
            header_read_timeout_secs,
            body_read_timeout_secs,
            send_timeout_secs,
            max_header_bytes,
            max_connections,
            max_connections_per_address,
            api_rate_per_sec,
            api_rate_burst,
            shutdown_grace_secs,
            cached_links,
            sled_cache_mib,
            durability,
            commit_window_ms,
            dedup_window_secs,
            notes_per_link,
            notes_retention_days,
            dead_letters_retention_days,
            note_hold_secs,
            address_rule_contacts,
            address_rule_window_secs,
            scanner_networks,
            access_log,
            console_listen,
            console_password_file,
            client_ip_header,
            webhook_url,
            webhook_secret,
            webhook_secret_file,
            sink_timeout_secs,
            sink_retry_max_ms,
            amocrm_subdomain,
            amocrm_base_url,
            amocrm_token,
            amocrm_token_file,
            amocrm_account_id,
            amocrm_client_id,
            amocrm_client_secret,
            amocrm_client_secret_file,
            amocrm_redirect_uri,
            amocrm_note_type,
            amocrm_batch,
            amocrm_linger_ms,
            amocrm_requests_per_sec,
            amocrm_exceed_limit,
            amocrm_restricted_pause_secs,
            amocrm_uninstall_path,
            amocrm_authorize_url,
            amocrm_allowed_bases,
            amocrm_connections,
        )
    }

    /// The console's settings: both or neither.
    fn console(&self) -> Result<Option<ConsoleSettings>, ServerError> {
        let (listen, file) = match (&self.console_listen, &self.console_password_file) {
            (None, None) => return Ok(None),
            (Some(listen), Some(file)) => (listen, file),
            (Some(_), None) => return Err(ServerError::Config("console_listen needs console_password_file".into())),
            (None, Some(_)) => return Err(ServerError::Config("console_password_file needs console_listen".into())),
        };
        let listen: SocketAddr = listen.parse().map_err(|_| {
            ServerError::Config(format!("console_listen {listen:?} is not an address like 127.0.0.1:8081"))
        })?;
        let text = std::fs::read_to_string(file)
            .map_err(|e| ServerError::io(format!("reading console_password_file {}", file.display()), e))?;
        let password = ConsolePassword::new(text.trim()).ok_or_else(|| {
            ServerError::Config(format!(
                "console_password_file {}: the password must have at least {} characters",
                file.display(),
                ConsolePassword::MIN_CHARS
            ))
        })?;
        Ok(Some(ConsoleSettings { listen, password }))
    }

    /// Fills in defaults and checks every value.
    pub fn resolve(self) -> Result<Settings, ServerError> {
        let console = self.console()?;
        let clicks = self.clicks()?;
        let storage = self.storage()?;
        let listen = self.listen.as_deref().unwrap_or(Settings::DEFAULT_LISTEN);
        let listen: SocketAddr = listen
            .parse()
            .map_err(|_| ServerError::Config(format!("listen {listen:?} is not an address like 127.0.0.1:8080")))?;
        let code_length = self
            .code_length
            .map_or(Ok(CodeLength::DEFAULT), CodeLength::new)
            .map_err(|e| ServerError::Config(e.to_string()))?;
        let public_url = self.public_url.map(|u| PublicUrl::parse(&u)).transpose()?;
        let max_body_bytes = self.max_body_bytes.unwrap_or(Limits::DEFAULT.max_body_bytes);
        if max_body_bytes == 0 {
            return Err(ServerError::Config("max_body_bytes must be positive".into()));
        }
        let max_header_bytes = self.max_header_bytes.unwrap_or(Limits::DEFAULT.max_header_bytes);
        if !(Limits::MIN_HEADER_BYTES..=1 << 20).contains(&max_header_bytes) {
            return Err(ServerError::Config(format!(
                "max_header_bytes must be from {} to 1048576",
                Limits::MIN_HEADER_BYTES
            )));
        }
        let positive_size = |v: Option<usize>, name: &str| match v {
            Some(0) => Err(ServerError::Config(format!("{name} must be positive"))),
            v => Ok(v),
        };
        let positive_count = |v: Option<u32>, default: u32, name: &str| match v {
            Some(0) => Err(ServerError::Config(format!("{name} must be positive"))),
            v => Ok(v.unwrap_or(default)),
        };
        let secs = |v: Option<u64>, default: Duration, name: &str| match v {
            Some(0) => Err(ServerError::Config(format!("{name} must be positive"))),
            Some(s) => Ok(Duration::from_secs(s)),
            None => Ok(default),
        };
        // 0: for ever.
        let days = |v: Option<u64>, default: Option<Duration>| match v {
            Some(0) => None,
            Some(d) => Some(Duration::from_secs(d.saturating_mul(86_400))),
            None => default,
        };
        if self.cached_links.is_some_and(|n| n > LinkCache::MAX_CAPACITY) {
            return Err(ServerError::Config(format!(
                "cached_links must be at most {}: the cache's slots are allocated at start, 16 bytes a link",
                LinkCache::MAX_CAPACITY
            )));
        }
        Ok(Settings {
            console,
            storage,
            cached_links: self.cached_links.unwrap_or(LinkCache::DEFAULT_CAPACITY),
            sled_cache_bytes: self.sled_cache_mib.map_or(SledStore::DEFAULT_CACHE_BYTES, |mib| mib << 20),
            clicks,
            data_dir: self.data_dir.unwrap_or_else(|| PathBuf::from(Settings::DEFAULT_DATA_DIR)),
            allow_open_permissions: self.allow_open_permissions.unwrap_or(false),
            listen,
            public_url,
            code_length,
            access_log: self.access_log.unwrap_or_default(),
            retention: Retention {
                notes: days(self.notes_retention_days, Retention::DEFAULT.notes),
                dead_letters: days(self.dead_letters_retention_days, Retention::DEFAULT.dead_letters),
            },
            limits: Limits {
                max_body_bytes,
                header_read_timeout: secs(
                    self.header_read_timeout_secs,
                    Limits::DEFAULT.header_read_timeout,
                    "header_read_timeout_secs",
                )?,
                body_read_timeout: secs(
                    self.body_read_timeout_secs,
                    Limits::DEFAULT.body_read_timeout,
                    "body_read_timeout_secs",
                )?,
                send_timeout: secs(self.send_timeout_secs, Limits::DEFAULT.send_timeout, "send_timeout_secs")?,
                shutdown_grace: secs(self.shutdown_grace_secs, Limits::DEFAULT.shutdown_grace, "shutdown_grace_secs")?,
                max_header_bytes,
                max_connections: positive_size(self.max_connections, "max_connections")?,
                max_connections_per_address: positive_size(
                    self.max_connections_per_address,
                    "max_connections_per_address",
                )?,
                api_rate: Rate::new(
                    positive_count(self.api_rate_per_sec, Limits::DEFAULT.api_rate.per_second, "api_rate_per_sec")?,
                    positive_count(self.api_rate_burst, Limits::DEFAULT.api_rate.burst, "api_rate_burst")?,
                ),
            },
        })
    }
}

impl SettingsLayer {
    fn storage(&self) -> Result<StorageSettings, ServerError> {
        let redis_set = self.redis_url.is_some() || self.redis_nodes.is_some();
        match self.storage.unwrap_or_default() {
            StorageKind::Sled if redis_set => {
                Err(ServerError::Config("redis_url and redis_nodes need storage = \"redis\"".into()))
            }
            StorageKind::Sled => Ok(StorageSettings::Sled),
            StorageKind::Redis => {
                let target = match (&self.redis_url, &self.redis_nodes) {
                    (Some(url), None) => RedisTarget::Standalone(redis_url(url)?),
                    (None, Some(nodes)) => RedisTarget::Cluster(
                        nodes
                            .split(',')
                            .map(str::trim)
                            .filter(|n| !n.is_empty())
                            .map(redis_url)
                            .collect::<Result<_, _>>()?,
                    ),
                    (Some(_), Some(_)) => {
                        return Err(ServerError::Config("give redis_url or redis_nodes, not both".into()))
                    }
                    (None, None) => {
                        return Err(ServerError::Config("storage = \"redis\" needs redis_url or redis_nodes".into()))
                    }
                };
                if matches!(&target, RedisTarget::Cluster(nodes) if nodes.is_empty()) {
                    return Err(ServerError::Config("redis_nodes lists no node".into()));
                }
                let mut config = RedisConfig::new(target);
                if let Some(prefix) = &self.redis_key_prefix {
                    let ok = !prefix.is_empty()
                        && prefix.len() <= 64
                        && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
                    if !ok {
                        return Err(ServerError::Config(format!(
                            "redis_key_prefix {prefix:?}: use 1-64 of A-Z a-z 0-9 _ - ."
                        )));
                    }
                    config.key_prefix.clone_from(prefix);
                }
                match self.redis_claim_after_ms {
                    Some(0) => return Err(ServerError::Config("redis_claim_after_ms must be positive".into())),
                    Some(ms) => config.claim_after = Duration::from_millis(ms),
                    None => {}
                }
                match self.redis_forget_consumer_after_secs {
                    Some(0) => {
                        return Err(ServerError::Config("redis_forget_consumer_after_secs must be positive".into()))
                    }
                    Some(secs) => config.forget_consumer_after = Duration::from_secs(secs),
                    None => {}
                }
                config.replicas_ack = self.redis_replicas_ack.unwrap_or(config.replicas_ack);
                config.index_targets = self.redis_index_targets.unwrap_or(config.index_targets);
                match self.redis_replicas_ack_timeout_ms {
                    Some(0) => {
                        return Err(ServerError::Config("redis_replicas_ack_timeout_ms must be positive".into()))
                    }
                    Some(ms) => config.replicas_ack_timeout = Duration::from_millis(ms),
                    None => {}
                }
                config.tls.ca_file.clone_from(&self.redis_tls_ca_file);
                config.tls.client_cert = match (&self.redis_tls_client_cert_file, &self.redis_tls_client_key_file) {
                    (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
                    (None, None) => None,
                    _ => {
                        return Err(ServerError::Config(
                            "give both redis_tls_client_cert_file and redis_tls_client_key_file, or neither".into(),
                        ))
                    }
                };
                Ok(StorageSettings::Redis(Box::new(config)))
            }
        }
    }

    fn clicks(&self) -> Result<ClickSettings, ServerError> {
        let bad = |msg: String| Err(ServerError::Config(msg));
        let window = self.commit_window_ms.map_or(Durability::DEFAULT_WINDOW, Duration::from_millis);
        let durability = match self.durability.unwrap_or_default() {
            DurabilityKind::Group if window > Durability::MAX_WINDOW => {
                return bad(format!("commit_window_ms must be at most {}", Durability::MAX_WINDOW.as_millis()))
            }
            DurabilityKind::Group => Durability::Group { window },
            DurabilityKind::Sync => Durability::Sync,
        };
        let client_ip_header = match &self.client_ip_header {
            None => None,
            Some(name) => Some(
                HeaderName::from_bytes(name.trim().as_bytes())
                    .map_err(|_| ServerError::Config(format!("client_ip_header {name:?} is not a header name")))?,
            ),
        };
        let webhook_secret = secret(&self.webhook_secret, &self.webhook_secret_file, "webhook_secret")?;
        let amocrm_token = secret(&self.amocrm_token, &self.amocrm_token_file, "amocrm_token")?;
        let webhook = match (&self.webhook_url, &webhook_secret) {
            (None, _) => None,
            (Some(_), None) => return bad("webhook_url needs webhook_secret, to sign what it sends".into()),
            (Some(url), Some(secret)) => {
                Some(WebhookSettings { url: http_uri(url, "webhook_url")?, secret: secret.clone() })
            }
        };
        let amocrm = self.amocrm_connections(amocrm_token)?;
        let amocrm_install = self.amocrm_install()?;
        let positive = |v: Option<u64>, unit: fn(u64) -> Duration, default: Duration, name: &str| match v {
            Some(0) => Err(ServerError::Config(format!("{name} must be positive"))),
            v => Ok(v.map_or(default, unit)),
        };
        let pipeline = PipelineConfig::default();
        Ok(ClickSettings {
            durability,
            dedup_window: positive(
                self.dedup_window_secs,
                Duration::from_secs,
                pipeline.dedup_window,
                "dedup_window_secs",
            )?,
            notes_per_link: self.notes_per_link.unwrap_or(pipeline.notes_per_link),
            note_hold: self.note_hold_secs.map_or(pipeline.note_hold, Duration::from_secs),
            address_rule: AddressRule {
                contacts: match self.address_rule_contacts.unwrap_or(pipeline.address_rule.contacts) {
                    n if n as usize > AddressTally::MOST_CONTACTS => {
                        return Err(ServerError::Config(format!(
                            "address_rule_contacts must be at most {} (an address's tally keeps that many)",
                            AddressTally::MOST_CONTACTS
                        )))
                    }
                    n => n,
                },
                window: positive(
                    self.address_rule_window_secs,
                    Duration::from_secs,
                    pipeline.address_rule.window,
                    "address_rule_window_secs",
                )?,
            },
            scanner_networks: match &self.scanner_networks {
                None => Vec::new(),
                Some(list) => list
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| match s.parse::<ipnet::IpNet>() {
                        Ok(net) if net.trunc() == net => Ok(net),
                        Ok(net) => Err(ServerError::Config(format!(
                            "scanner_networks: {s} has host bits set (is it {}?)",
                            net.trunc()
                        ))),
                        Err(e) => Err(ServerError::Config(format!("scanner_networks: {s:?}: {e}"))),
                    })
                    .collect::<Result<_, _>>()?,
            },
            client_ip_header,
            webhook,
            amocrm,
            amocrm_install,
            sink_timeout: positive(
                self.sink_timeout_secs,
                Duration::from_secs,
                HttpClient::DEFAULT_TIMEOUT,
                "sink_timeout_secs",
            )?,
            sink_retry_max: positive(
                self.sink_retry_max_ms,
                Duration::from_millis,
                pipeline.retry.max,
                "sink_retry_max_ms",
            )?,
        })
    }
}

/// A secret given as a value or in a file (`name_file`), not both. A file keeps it out of
/// `ps` and out of the environment, which children inherit.
impl SettingsLayer {
    /// Every amoCRM connection: the one the `amocrm_subdomain` settings make (`token` is
    /// its `amocrm_token`), and the file's `[[amocrm_connections]]`.
    fn amocrm_connections(&self, token: Option<String>) -> Result<Vec<AmoCrmConfig>, ServerError> {
        let mut connections = Vec::new();
        if let Some(base) = amocrm_base(&self.amocrm_base_url, &self.amocrm_subdomain, "amocrm_")? {
            let account = AccountId(self.amocrm_account_id.unwrap_or(1));
            connections.push(self.amocrm_config(account, base, token)?);
        }
        for (i, connection) in self.amocrm_connections.iter().flatten().enumerate() {
            let name = format!("amocrm_connections[{i}]");
            let Some(base) = amocrm_base(&connection.base_url, &connection.subdomain, &format!("{name}."))? else {
                return Err(ServerError::Config(format!("{name} needs subdomain or base_url")));
            };
            if connection.account == 0 {
                return Err(ServerError::Config(format!("{name}.account must be positive")));
            }
            let token = secret(&connection.token, &connection.token_file, &format!("{name}.token"))?;
            connections.push(self.amocrm_config(AccountId(connection.account), base, token)?);
        }
        let mut accounts: Vec<u64> = connections.iter().map(|c| c.account.0).collect();
        accounts.sort_unstable();
        if let Some(twice) = accounts.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(ServerError::Config(format!(
                "account {} has two amoCRM connections; an account's notes go to one amoCRM account",
                twice[0]
            )));
        }
        Ok(connections)
    }

    /// The install flow, when the integration's OAuth settings are all given.
    fn amocrm_install(&self) -> Result<Option<AmoCrmInstall>, ServerError> {
        let client_secret =
            secret(&self.amocrm_client_secret, &self.amocrm_client_secret_file, "amocrm_client_secret")?;
        let (Some(_), Some(_), Some(redirect_uri)) = (&self.amocrm_client_id, client_secret, &self.amocrm_redirect_uri)
        else {
            return Ok(None);
        };
        let template = self.amocrm_config(AccountId(0), String::new(), None)?;
        let path_of = |uri: &str, name: &str| -> Result<String, ServerError> {
            let path = match uri.parse::<hyper::Uri>() {
                Ok(parsed) if parsed.scheme().is_some() => parsed.path().to_owned(),
                _ => uri.to_owned(),
            };
            // Two segments at least, so that it can never be a short link's path.
            let segments = path.strip_prefix('/').map(|rest| rest.split('/').count()).unwrap_or(0);
            if segments < 2 || path.starts_with("/api/") || path.ends_with('/') {
                return Err(ServerError::Config(format!(
                    "{name}: the path {path:?} must have two segments or more (like /amocrm/oauth), outside /api"
                )));
            }
            Ok(path)
        };
        // A Redirect URI served elsewhere (its page hands the code to `amocrm connect`) may
        // have any path; only one this server can serve is served.
        let redirect_path = match path_of(redirect_uri, "amocrm_redirect_uri") {
            Ok(path) => Some(path),
            Err(e) => {
                tracing::warn!(error = %e, "the Redirect URI is not served here: connect with `shortlinks amocrm connect --code`");
                None
            }
        };
        let uninstall_path =
            path_of(self.amocrm_uninstall_path.as_deref().unwrap_or("/amocrm/uninstall"), "amocrm_uninstall_path")?;
        if redirect_path.as_ref() == Some(&uninstall_path) {
            return Err(ServerError::Config("amocrm_uninstall_path is the Redirect URI's path".into()));
        }
        let authorize_url = self.amocrm_authorize_url.as_deref().unwrap_or("https://www.amocrm.ru/oauth");
        let authorize_url = http_uri(authorize_url, "amocrm_authorize_url")?.to_string();
        let mut allowed_bases = Vec::new();
        for base in self.amocrm_allowed_bases.iter().flat_map(|list| list.split(',')).map(str::trim) {
            if !base.is_empty() {
                allowed_bases
                    .push(http_uri(base, "amocrm_allowed_bases")?.to_string().trim_end_matches('/').to_owned());
            }
        }
        Ok(Some(AmoCrmInstall {
            settings: InstallSettings { template, allowed_bases },
            redirect_path,
            uninstall_path,
            authorize_url,
        }))
    }

    /// One amoCRM connection, for `account`'s notes, to the amoCRM account at `base`: with
    /// `token`, or else the integration's OAuth settings.
    fn amocrm_config(
        &self,
        account: AccountId,
        base: String,
        token: Option<String>,
    ) -> Result<AmoCrmConfig, ServerError> {
        let bad = |msg: String| Err(ServerError::Config(msg));
        let client_secret =
            secret(&self.amocrm_client_secret, &self.amocrm_client_secret_file, "amocrm_client_secret")?;
        let oauth = (&self.amocrm_client_id, client_secret, &self.amocrm_redirect_uri);
        let auth = match (token, oauth) {
            (Some(token), _) => AmoCrmAuth::Token(token),
            (None, (Some(client_id), Some(client_secret), Some(redirect_uri))) => AmoCrmAuth::OAuth(OAuthApp {
                client_id: client_id.clone(),
                client_secret,
                redirect_uri: http_uri(redirect_uri, "amocrm_redirect_uri")?.to_string(),
            }),
            _ => {
                return bad("an amoCRM connection needs a token, or amocrm_client_id, amocrm_client_secret and \
                     amocrm_redirect_uri"
                    .into())
            }
        };
        let mut config = AmoCrmConfig::new(account, base, auth);
        config.note_type = self.amocrm_note_type.unwrap_or_default();
        if let Some(batch) = self.amocrm_batch {
            if !(1..=AmoCrmConfig::MAX_BATCH).contains(&batch) {
                return bad(format!("amocrm_batch must be 1 to {}", AmoCrmConfig::MAX_BATCH));
            }
            config.batching.max = batch;
        }
        if let Some(ms) = self.amocrm_linger_ms {
            config.batching.linger = Duration::from_millis(ms);
        }
        if let Some(per_second) = self.amocrm_requests_per_sec {
            if per_second == 0 {
                return bad("amocrm_requests_per_sec must be positive".into());
            }
            if per_second > AmoCrmConfig::AMOCRM_LIMIT_PER_SEC && self.amocrm_exceed_limit != Some(true) {
                return bad(format!(
                    "amocrm_requests_per_sec {per_second} is above amoCRM's limit of {} (amoCRM restricts \
                     integrations that keep exceeding it); set amocrm_exceed_limit to insist",
                    AmoCrmConfig::AMOCRM_LIMIT_PER_SEC
                ));
            }
            config.rate.per_second = per_second;
        }
        if let Some(secs) = self.amocrm_restricted_pause_secs {
            config.restricted_pause = Duration::from_secs(secs.max(1));
        }
        Ok(config)
    }
}

/// The amoCRM API base URL that `base_url` or `subdomain` (settings named with `prefix`)
/// give, if either does.
fn amocrm_base(
    base_url: &Option<String>,
    subdomain: &Option<String>,
    prefix: &str,
) -> Result<Option<String>, ServerError> {
    match (base_url, subdomain) {
        (Some(base), _) => Ok(Some(http_uri(base, &format!("{prefix}base_url"))?.to_string())),
        (None, Some(sub)) if !sub.is_empty() && sub.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
            Ok(Some(format!("https://{sub}.amocrm.ru")))
        }
        (None, Some(sub)) => Err(ServerError::Config(format!("{prefix}subdomain {sub:?} is not a subdomain"))),
        (None, None) => Ok(None),
    }
}

fn secret(value: &Option<String>, file: &Option<PathBuf>, name: &str) -> Result<Option<String>, ServerError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(ServerError::Config(format!("give {name} or {name}_file, not both"))),
        (Some(value), None) => Ok(Some(value.clone())),
        (None, None) => Ok(None),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ServerError::io(format!("reading {name}_file {}", path.display()), e))?;
            let text = text.trim_end_matches(['\n', '\r']);
            if text.is_empty() {
                return Err(ServerError::Config(format!("{name}_file {} is empty", path.display())));
            }
            Ok(Some(text.to_owned()))
        }
    }
}

fn redis_url(text: &str) -> Result<String, ServerError> {
    // Addresses may carry a password: errors show them masked, or not at all.
    let url = url::Url::parse(text).map_err(|e| ServerError::Config(format!("a redis address is not a URL: {e}")))?;
    if !matches!(url.scheme(), "redis" | "rediss") || url.host_str().is_none() {
        return Err(ServerError::Config(format!(
            "redis address {} must be a redis:// URL (rediss:// for TLS) with a host",
            shortlinks_redis::redacted(text)
        )));
    }
    Ok(text.to_owned())
}

/// Where the data lives.
#[derive(Clone, Debug)]
pub enum StorageSettings {
    /// The embedded store (named `sled`), in the data directory.
    Sled,
    /// Redis or Redis Cluster.
    Redis(Box<RedisConfig>),
}

fn http_uri(text: &str, name: &str) -> Result<hyper::Uri, ServerError> {
    let url = url::Url::parse(text).map_err(|e| ServerError::Config(format!("{name} {text:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ServerError::Config(format!("{name} must be an http or https URL")));
    }
    url.as_str().parse().map_err(|e| ServerError::Config(format!("{name} {text:?}: {e}")))
}

/// How clicks become notes.
#[derive(Clone, Debug)]
pub struct ClickSettings {
    /// Group commit or sync.
    pub durability: Durability,
    /// The deduplication window.
    pub dedup_window: Duration,
    /// The cap on notes per link within the window (0: none).
    pub notes_per_link: u32,
    /// How long a visit waits before it becomes a note.
    pub note_hold: Duration,
    /// One address, many contacts.
    pub address_rule: AddressRule,
    /// The operator's scanner networks.
    pub scanner_networks: Vec<ipnet::IpNet>,
    /// The trusted proxy's client-address header, if any.
    pub client_ip_header: Option<HeaderName>,
    /// The webhook sink, if configured.
    pub webhook: Option<WebhookSettings>,
    /// The amoCRM connections, one per account at most.
    pub amocrm: Vec<AmoCrmConfig>,
    /// amoCRM's install flow, on when the integration's OAuth settings are given.
    pub amocrm_install: Option<AmoCrmInstall>,
    /// The timeout of each sink request.
    pub sink_timeout: Duration,
    /// The longest delay between a sink's retries.
    pub sink_retry_max: Duration,
}

/// amoCRM's install flow: where its pages are and what it accepts.
#[derive(Clone, Debug)]
pub struct AmoCrmInstall {
    /// The connections' settings and the accepted referers.
    pub settings: InstallSettings,
    /// The Redirect URI's path (that of `amocrm_redirect_uri`), if this server can serve
    /// it (two segments or more, outside `/api`).
    pub redirect_path: Option<String>,
    /// The uninstall hook's path.
    pub uninstall_path: String,
    /// amoCRM's authorization page.
    pub authorize_url: String,
}

/// The webhook sink's settings.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// Where to post.
    pub url: hyper::Uri,
    /// The HMAC key.
    pub secret: String,
}

/// Complete, checked settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The operator console, if it is on.
    pub console: Option<ConsoleSettings>,
    /// Where the data lives.
    pub storage: StorageSettings,
    /// How clicks become notes.
    pub clicks: ClickSettings,
    /// Where the embedded store's files and the admin socket live.
    pub data_dir: PathBuf,
    /// Whether a data directory open to others is accepted.
    pub allow_open_permissions: bool,
    /// The address to listen on.
    pub listen: SocketAddr,
    /// The base of issued links; derived from the bound address when unset.
    pub public_url: Option<PublicUrl>,
    /// Characters in new codes.
    pub code_length: CodeLength,
    /// How many links the read cache holds.
    pub cached_links: usize,
    /// sled's page cache while a directory of format 1 or 2 is imported.
    pub sled_cache_bytes: u64,
    /// Request size and time limits.
    pub limits: Limits,
    /// What is logged per request.
    pub access_log: AccessLog,
    /// How long notes and dead letters are kept.
    pub retention: Retention,
}

/// The operator console: where it listens and what signs an operator in.
#[derive(Clone, Debug)]
pub struct ConsoleSettings {
    /// Its own address, apart from the public one.
    pub listen: SocketAddr,
    /// Its password.
    pub password: ConsolePassword,
}

/// The console's password, kept only as its hash.
#[derive(Clone)]
pub struct ConsolePassword(blake3::Hash);

impl ConsolePassword {
    /// Shorter passwords are refused.
    pub const MIN_CHARS: usize = 12;

    /// The password `text`, if it is long enough.
    pub fn new(text: &str) -> Option<Self> {
        (text.chars().count() >= Self::MIN_CHARS).then(|| Self(blake3::hash(text.as_bytes())))
    }

    /// Whether `attempt` is the password (compared as hashes, in constant time).
    pub fn matches(&self, attempt: &str) -> bool {
        blake3::hash(attempt.as_bytes()) == self.0
    }
}

impl std::fmt::Debug for ConsolePassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConsolePassword(..)")
    }
}

impl Settings {
    /// The default data directory.
    pub const DEFAULT_DATA_DIR: &'static str = "./data";
    /// The default listen address: loopback only, until an operator decides otherwise.
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:8080";
}

/// Request size and time limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest accepted request body (413 above it).
    pub max_body_bytes: usize,
    /// How long a connection may go without starting a request (see `idle`).
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request body (408 after it).
    pub body_read_timeout: Duration,
    /// How long an answer may wait on a client that does not read it (see `client_socket`).
    pub send_timeout: Duration,
    /// How long shutdown waits for in-flight requests, in seconds (default 10).
    pub shutdown_grace: Duration,
    /// The most a request's line and headers may take (431 above it): what a connection
    /// may make the server hold for it while it sends them.
    pub max_header_bytes: usize,
    /// Each API token's rate (429 above it); redirects are never limited per request.
    pub api_rate: Rate,
    /// Open connections in all; `None`: derived from the descriptor limit at start.
    pub max_connections: Option<usize>,
    /// Open connections per client address; `None`: derived likewise.
    pub max_connections_per_address: Option<usize>,
}

impl Limits {
    /// The smallest header limit: hyper's own floor for its read buffer.
    pub const MIN_HEADER_BYTES: usize = 8 << 10;

    /// 1 MiB bodies, 16 KiB of headers, 10 s for headers, 30 s for a body, 30 s for a
    /// client to take an answer, 10 s to drain,
    /// 7 API requests a second per token (amoCRM's own limit) with bursts of 7.
    pub const DEFAULT: Limits = Limits {
        max_body_bytes: 1 << 20,
        header_read_timeout: Duration::from_secs(10),
        body_read_timeout: Duration::from_secs(30),
        send_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(10),
        max_header_bytes: 16 << 10,
        api_rate: Rate::new(7, 7),
        max_connections: None,
        max_connections_per_address: None,
    };
}

/// The base of issued short links: `http` or `https`, no query or fragment, no trailing `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicUrl(String);

impl PublicUrl {
    /// Checks a configured base URL.
    pub fn parse(input: &str) -> Result<Self, ServerError> {
        let bad = |why: &str| ServerError::Config(format!("public_url {input:?} {why}"));
        let url = url::Url::parse(input).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(bad("must be an http or https URL with a host"));
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(bad("must not have a query, a fragment or credentials"));
        }
        Ok(Self(url.as_str().trim_end_matches('/').to_owned()))
    }

    /// For a server that was given none: its own address, with a wildcard replaced by loopback.
    pub fn from_bound(addr: SocketAddr) -> Self {
        let mut addr = addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
        }
        Self(format!("http://{addr}"))
    }

    /// The base, without a trailing slash.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_layers_win_field_by_field() {
        let file = SettingsLayer {
            listen: Some("127.0.0.1:1".into()),
            code_length: Some(10),
            data_dir: Some("/file".into()),
            ..Default::default()
        };
        let env_and_flags = SettingsLayer { listen: Some("127.0.0.1:2".into()), ..Default::default() };
        let s = env_and_flags.over(file).resolve().unwrap();
        assert_eq!(s.listen.port(), 2);
        assert_eq!(s.code_length.get(), 10);
        assert_eq!(s.data_dir, PathBuf::from("/file"));
        assert_eq!(s.limits, Limits::DEFAULT);
    }

    #[test]
    fn redis_storage_is_checked_and_passwords_stay_out_of_errors() {
        let redis = |url: Option<&str>, nodes: Option<&str>| SettingsLayer {
            storage: Some(StorageKind::Redis),
            redis_url: url.map(Into::into),
            redis_nodes: nodes.map(Into::into),
            ..Default::default()
        };
        let ok = redis(None, Some("redis://:pw@10.0.0.1:7000, redis://10.0.0.2:7000")).resolve().unwrap();
        let StorageSettings::Redis(config) = ok.storage else { panic!("redis expected") };
        assert_eq!(config.target.to_string(), "redis://:***@10.0.0.1:7000,redis://10.0.0.2:7000");
        for (layer, why) in [
            (redis(None, None), "needs redis_url or redis_nodes"),
            (redis(Some("redis://a:1"), Some("redis://b:1")), "not both"),
            (redis(Some("http://:s3cret@a.example:1"), None), "redis:// URL"),
            (SettingsLayer { redis_url: Some("redis://a:1".into()), ..Default::default() }, "need storage"),
        ] {
            let error = layer.resolve().unwrap_err().to_string();
            assert!(error.contains(why), "{error}");
            assert!(!error.contains("s3cret"), "{error}");
        }
    }

    #[test]
    fn defaults() {
        let s = SettingsLayer::default().resolve().unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        assert_eq!(s.public_url, None);
        assert_eq!(s.code_length.get(), 12);
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        let bad = [
            SettingsLayer { listen: Some("localhost".into()), ..Default::default() },
            SettingsLayer { code_length: Some(4), ..Default::default() },
            SettingsLayer { public_url: Some("ftp://x".into()), ..Default::default() },
            SettingsLayer { public_url: Some("https://x.example/?a=b".into()), ..Default::default() },
            SettingsLayer { max_body_bytes: Some(0), ..Default::default() },
            SettingsLayer { shutdown_grace_secs: Some(0), ..Default::default() },
            SettingsLayer { cached_links: Some(LinkCache::MAX_CAPACITY + 1), ..Default::default() },
        ];
        for layer in bad {
            assert!(layer.clone().resolve().is_err(), "{layer:?}");
        }
        for text in ["durability = \"eventually\"", "storage = \"postgres\""] {
            let parsed = toml::from_str::<SettingsLayer>(text);
            assert!(parsed.as_ref().is_err_and(|e| e.to_string().contains("unknown variant")), "{text}: {parsed:?}");
        }
        for layer in [
            SettingsLayer { webhook_url: Some("http://x.example/hook".into()), ..Default::default() },
            SettingsLayer {
                webhook_url: Some("ftp://x".into()),
                webhook_secret: Some("k".into()),
                ..Default::default()
            },
            SettingsLayer {
                amocrm_subdomain: Some("x.evil/".into()),
                amocrm_token: Some("t".into()),
                ..Default::default()
            },
            SettingsLayer { amocrm_subdomain: Some("acme".into()), ..Default::default() },
            SettingsLayer { client_ip_header: Some("bad header".into()), ..Default::default() },
            SettingsLayer { dedup_window_secs: Some(0), ..Default::default() },
        ] {
            assert!(layer.clone().resolve().is_err(), "{layer:?}");
        }
        let unknown: Result<SettingsLayer, _> = toml::from_str("lisen = \"127.0.0.1:1\"");
        assert!(unknown.is_err(), "a typo in the file is an error");
    }

    #[test]
    fn retention_is_a_year_of_notes_and_a_month_of_dead_letters_unless_set_and_0_is_for_ever() {
        let day = Duration::from_secs(86_400);
        assert_eq!(SettingsLayer::default().resolve().unwrap().retention, Retention::DEFAULT);
        assert_eq!(Retention::DEFAULT, Retention { notes: Some(day * 365), dead_letters: Some(day * 30) });
        let set =
            SettingsLayer { notes_retention_days: Some(0), dead_letters_retention_days: Some(7), ..Default::default() };
        assert_eq!(set.resolve().unwrap().retention, Retention { notes: None, dead_letters: Some(day * 7) });
    }

    #[test]
    fn click_settings() {
        let s = SettingsLayer::default().resolve().unwrap().clicks;
        assert_eq!(s.durability, Durability::Group { window: Duration::from_millis(10) });
        assert_eq!(s.dedup_window, Duration::from_secs(3600));
        assert_eq!(s.notes_per_link, 5);
        assert!(s.client_ip_header.is_none() && s.webhook.is_none() && s.amocrm.is_empty());
        let s = SettingsLayer {
            durability: Some(DurabilityKind::Sync),
            amocrm_subdomain: Some("acme".into()),
            amocrm_token: Some("t".into()),
            client_ip_header: Some("X-Forwarded-For".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap()
        .clicks;
        assert_eq!(s.durability, Durability::Sync);
        assert_eq!(s.amocrm[0].base, "https://acme.amocrm.ru");
        assert_eq!(s.client_ip_header.unwrap().as_str(), "x-forwarded-for");
    }

    #[test]
    fn amocrm_settings_stay_inside_amocrm_limits() {
        let token = SettingsLayer {
            amocrm_subdomain: Some("acme".into()),
            amocrm_token: Some("t".into()),
            ..Default::default()
        };
        let config = token.clone().resolve().unwrap().clicks.amocrm.remove(0);
        assert_eq!((config.batching.max, config.batching.linger), (50, Duration::from_millis(200)));
        assert_eq!((config.rate.per_second, config.rate.burst), (5, 1));
        assert_eq!(config.note_type, AmoNoteType::ServiceMessage);
        let err = |layer: SettingsLayer| layer.resolve().unwrap_err().to_string();
        assert!(
            err(SettingsLayer { amocrm_requests_per_sec: Some(8), ..token.clone() }).contains("amocrm_exceed_limit")
        );
        let over = SettingsLayer { amocrm_requests_per_sec: Some(8), amocrm_exceed_limit: Some(true), ..token.clone() };
        assert_eq!(over.resolve().unwrap().clicks.amocrm.remove(0).rate.per_second, 8);
        for batch in [0, 251] {
            assert!(err(SettingsLayer { amocrm_batch: Some(batch), ..token.clone() }).contains("amocrm_batch"));
        }
        assert!(err(SettingsLayer { amocrm_requests_per_sec: Some(0), ..token.clone() }).contains("positive"));
        let oauth = SettingsLayer {
            amocrm_subdomain: Some("acme".into()),
            amocrm_client_id: Some("id".into()),
            amocrm_client_secret: Some("secret".into()),
            amocrm_redirect_uri: Some("https://x.example/cb".into()),
            ..Default::default()
        };
        let config = oauth.clone().resolve().unwrap().clicks.amocrm.remove(0);
        assert!(
            matches!(config.auth, AmoCrmAuth::OAuth(ref app) if app.client_id == "id" && app.client_secret == "secret")
        );
        let printed = format!("{config:?} {:?}", token.clone().resolve().unwrap().clicks.amocrm);
        assert!(!printed.contains("\"secret\"") && !printed.contains("\"t\""), "secrets never printed: {printed}");
        // The integration's OAuth settings serve every connection without a token of its own.
        let both = SettingsLayer { amocrm_token: Some("t".into()), ..oauth.clone() }.resolve().unwrap();
        assert_eq!(both.clicks.amocrm[0].auth, AmoCrmAuth::Token("t".into()));
        assert!(err(SettingsLayer { amocrm_client_secret: None, ..oauth.clone() }).contains("amocrm_client_secret"));
        assert!(err(SettingsLayer { amocrm_redirect_uri: Some("not a url".into()), ..oauth })
            .contains("amocrm_redirect_uri"));
    }

    #[test]
    fn amocrm_connections_each_serve_one_account() {
        let text = r#"
            amocrm_subdomain = "first"
            amocrm_token = "t1"
            amocrm_account_id = 4
            amocrm_client_id = "id"
            amocrm_client_secret = "secret"
            amocrm_redirect_uri = "https://x.example/cb"

            [[amocrm_connections]]
            account = 5
            base_url = "http://127.0.0.1:9/"
            token = "t5"

            [[amocrm_connections]]
            account = 6
            subdomain = "sixth"
        "#;
        let layer: SettingsLayer = toml::from_str(text).unwrap();
        let connections = layer.clone().resolve().unwrap().clicks.amocrm;
        let summary: Vec<_> = connections.iter().map(|c| (c.account.0, c.base.as_str())).collect();
        assert_eq!(
            summary,
            [(4, "https://first.amocrm.ru"), (5, "http://127.0.0.1:9/"), (6, "https://sixth.amocrm.ru")]
        );
        assert_eq!(connections[1].auth, AmoCrmAuth::Token("t5".into()));
        assert!(
            matches!(connections[2].auth, AmoCrmAuth::OAuth(ref app) if app.client_id == "id"),
            "the integration's"
        );
        assert_eq!(connections[2].batching, connections[0].batching, "the amocrm_* settings serve every connection");

        let err = |layer: SettingsLayer| layer.resolve().unwrap_err().to_string();
        let with = |connection: AmoCrmConnection| SettingsLayer {
            amocrm_connections: Some(vec![connection]),
            ..layer.clone()
        };
        let sub = |account| AmoCrmConnection { account, subdomain: Some("x".into()), ..Default::default() };
        assert!(err(with(sub(4))).contains("account 4 has two amoCRM connections"));
        assert!(err(with(sub(0))).contains("account must be positive"));
        assert!(err(with(AmoCrmConnection { account: 7, ..Default::default() })).contains("subdomain or base_url"));
        assert!(err(with(AmoCrmConnection { subdomain: Some("a.b".into()), ..sub(7) })).contains("not a subdomain"));
        let no_oauth = SettingsLayer { amocrm_client_id: None, ..with(sub(7)) };
        assert!(err(no_oauth).contains("needs a token"));
        let unknown: Result<SettingsLayer, _> = toml::from_str("[[amocrm_connections]]\naccount = 1\ntokn = \"x\"");
        assert!(unknown.is_err(), "a typo in a connection is an error");
    }

    #[test]
    fn the_note_type_is_read_from_files_and_flags_alike() {
        let layer: SettingsLayer = toml::from_str("amocrm_note_type = \"common\"").unwrap();
        assert_eq!(layer.amocrm_note_type, Some(AmoNoteType::Common));
        assert!(toml::from_str::<SettingsLayer>("amocrm_note_type = \"loud\"").is_err());
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            settings: SettingsLayer,
        }
        use clap::Parser;
        let flags = Flags::try_parse_from(["shortlinks", "--amocrm-note-type", "service_message"]).unwrap();
        assert_eq!(flags.settings.amocrm_note_type, Some(AmoNoteType::ServiceMessage));
        let refused = Flags::try_parse_from(["shortlinks", "--amocrm-note-type", "loud"]).err().unwrap().to_string();
        assert!(refused.contains("service_message or common"), "{refused}");
    }

    #[test]
    fn secrets_come_from_files_too() {
        let dir = tempfile::tempdir().unwrap();
        let (token, key, empty) = (dir.path().join("token"), dir.path().join("key"), dir.path().join("empty"));
        std::fs::write(&token, "amo-token\n").unwrap();
        std::fs::write(&key, "hook-key\r\n").unwrap();
        std::fs::write(&empty, "\n").unwrap();
        let layer = SettingsLayer {
            amocrm_subdomain: Some("acme".into()),
            amocrm_token_file: Some(token.clone()),
            webhook_url: Some("https://hook.example/notes".into()),
            webhook_secret_file: Some(key),
            ..Default::default()
        };
        let clicks = layer.clone().resolve().unwrap().clicks;
        assert_eq!(clicks.amocrm[0].auth, AmoCrmAuth::Token("amo-token".into()));
        assert_eq!(clicks.webhook.unwrap().secret, "hook-key");
        for bad in [
            SettingsLayer { amocrm_token: Some("t".into()), ..layer.clone() },
            SettingsLayer { amocrm_token_file: Some(empty), ..layer.clone() },
            SettingsLayer { amocrm_token_file: Some(dir.path().join("missing")), ..layer },
        ] {
            let err = bad.resolve().unwrap_err().to_string();
            assert!(err.contains("amocrm_token"), "{err}");
        }
    }

    #[test]
    fn public_urls() {
        assert_eq!(PublicUrl::parse("https://sho.rt/").unwrap().as_str(), "https://sho.rt");
        assert_eq!(PublicUrl::parse("https://x.example/s/").unwrap().as_str(), "https://x.example/s");
        assert_eq!(PublicUrl::from_bound("0.0.0.0:80".parse().unwrap()).as_str(), "http://127.0.0.1:80");
        assert_eq!(PublicUrl::from_bound("[::]:81".parse().unwrap()).as_str(), "http://[::1]:81");
    }
}
