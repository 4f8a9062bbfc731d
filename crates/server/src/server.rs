//! Running the server: open the store (sled or Redis), bind, serve connections, shut down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;

use shortlinks_core::store::ErasureCursor;
use shortlinks_core::{AccountId, ContactScope, SledStore, Store, Timestamp, UserId};
use shortlinks_redis::RedisStore;
use tokio::net::TcpListener;

use shortlinks_notes::retention::{self, Retention, Swept};
use shortlinks_notes::sink::amocrm::{AmoConnections, DISCOVER_EVERY};
use shortlinks_notes::sink::{
    adopt_legacy_pair, adopt_legacy_queue, AmoCrmAuth, AmoCrmConfig, HttpClient, RetryPolicy, WebhookSink,
};
use shortlinks_notes::{Pipeline, PipelineConfig};

use crate::accept_backoff::AcceptBackoff;
use crate::admission::{self, Admission, ConnectionLimits};
use crate::amocrm_pages::AmoCrmPages;
use crate::app::{App, AppSettings};
use crate::config::ConsolePassword;
use crate::config::{AccessLog, PublicUrl, Settings, StorageSettings};
use crate::console::Console;
use crate::drain::Drain;
use crate::{admin, auth, data_dir, idle, lane, ServerError};

/// A server that is bound and ready to run.
pub struct Started {
    backend: Backend,
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The first token, when this start created it: to be shown once.
    pub first_token: Option<String>,
    /// The operator console's bound address, when it is on.
    pub console_addr: Option<SocketAddr>,
}

/// The running parts on one storage engine; the rest of the server is the same on either.
enum Backend {
    Sled(Parts<SledStore>),
    Redis(Parts<RedisStore>),
}

struct Parts<S: Store> {
    app: Arc<App<S>>,
    pipeline: Pipeline,
    listener: TcpListener,
    /// Only on sled: with Redis, the command line talks to Redis itself.
    admin: Option<admin::AdminSocket>,
    /// The amoCRM connections, looked through now and then for ones made elsewhere.
    connections: Arc<AmoConnections<S>>,
    /// How long notes and dead letters are kept, and the settings' amoCRM accounts, whose
    /// dead letters that concerns too.
    retention: (Retention, Vec<AccountId>),
    /// The operator console's listener and password, when it is on.
    console: Option<(TcpListener, ConsolePassword)>,
}

/// Binds, opens the store, and makes the first token if there is none: in that order, so
/// that a start that fails (a port taken, a store out of reach) leaves no token nobody saw
/// and no admin socket behind.
pub async fn start(settings: Settings) -> Result<Started, ServerError> {
    data_dir::restrict_umask();
    data_dir::prepare(&settings.data_dir, settings.allow_open_permissions)?;
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|e| ServerError::io(format!("binding {}", settings.listen), e))?;
    let addr = listener.local_addr().map_err(|e| ServerError::io("reading the bound address", e))?;
    let console = match &settings.console {
        None => None,
        Some(console) => Some((
            TcpListener::bind(console.listen)
                .await
                .map_err(|e| ServerError::io(format!("binding the console's {}", console.listen), e))?,
            console.password.clone(),
        )),
    };
    let console_addr = console
        .as_ref()
        .map(|(listener, _)| listener.local_addr())
        .transpose()
        .map_err(|e| ServerError::io("reading the console's bound address", e))?;
    let (backend, first_token) = match &settings.storage {
        StorageSettings::Sled => {
            let dir = settings.data_dir.clone();
            let cache_bytes = settings.sled_cache_bytes;
            let store = tokio::task::spawn_blocking(move || SledStore::open_with_cache(&dir, cache_bytes))
                .await
                .map_err(|e| ServerError::Config(format!("opening the data directory: {e}")))?
                .map_err(|e| {
                    ServerError::Config(format!("cannot open the data directory {}: {e}", settings.data_dir.display()))
                })?;
            let admin = admin::AdminSocket::bind(&admin::socket_path(&settings.data_dir))?;
            let (parts, token) = assemble(store, listener, &settings, Some(admin), console).await?;
            (Backend::Sled(parts), token)
        }
        StorageSettings::Redis(config) => {
            let store = RedisStore::open((**config).clone())
                .await
                .map_err(|e| ServerError::Config(format!("cannot reach Redis ({}): {e}", config.target)))?;
            let (parts, token) = assemble(store, listener, &settings, None, console).await?;
            (Backend::Redis(parts), token)
        }
    };
    Ok(Started { backend, addr, first_token, console_addr })
}

/// The application on `store`, with the configured sinks, serving `listener`.
async fn assemble<S: Store>(
    store: S,
    listener: TcpListener,
    settings: &Settings,
    admin: Option<admin::AdminSocket>,
    console: Option<(TcpListener, ConsolePassword)>,
) -> Result<(Parts<S>, Option<String>), ServerError> {
    let addr = listener.local_addr().map_err(|e| ServerError::io("reading the bound address", e))?;
    let clicks = &settings.clicks;
    let http = HttpClient::new(clicks.sink_timeout);
    let webhook = clicks.webhook.as_ref().map(|w| WebhookSink::new(http.clone(), w.url.clone(), w.secret.as_bytes()));
    adopt_legacy_amocrm(&store, &clicks.amocrm).await?;
    let app_settings = AppSettings {
        public_url: settings.public_url.clone().unwrap_or_else(|| PublicUrl::from_bound(addr)),
        limits: settings.limits,
        code_length: settings.code_length,
        cached_links: settings.cached_links,
        pipeline: PipelineConfig {
            durability: clicks.durability,
            dedup_window: clicks.dedup_window,
            notes_per_link: clicks.notes_per_link,
            note_hold: clicks.note_hold,
            address_rule: clicks.address_rule,
            scanner_networks: clicks.scanner_networks.clone(),
            retry: RetryPolicy { max: clicks.sink_retry_max, ..RetryPolicy::default() },
            ..PipelineConfig::default()
        },
        client_ip_header: clicks.client_ip_header.clone(),
        log_redirects: settings.access_log == AccessLog::All,
    };
    // The journal is always on; the sinks are what was configured, and amoCRM connections
    // made while the server runs.
    let mut sinks = None;
    let (mut app, pipeline) = App::start(store.clone(), app_settings, |mut pipeline| {
        if let Some(sink) = webhook {
            pipeline = pipeline.sink(sink, None);
        }
        sinks = Some(pipeline.sinks());
        pipeline
    })
    .await?;
    let sinks = sinks.ok_or_else(|| ServerError::Config("the pipeline was built without its sinks".into()))?;
    let install = clicks.amocrm_install.clone();
    let connections = AmoConnections::start(
        store,
        http,
        sinks.clone(),
        clicks.amocrm.clone(),
        install.as_ref().map(|i| i.settings.clone()),
    )
    .await
    .map_err(|e| ServerError::Config(e.to_string()))?;
    let connections = Arc::new(connections);
    if let Some(install) = install {
        // Connections made on another node are found before their notes are routed here.
        sinks.find_routes_with(connections.clone());
        app.amocrm = Some(AmoCrmPages {
            connections: connections.clone(),
            redirect_path: install.redirect_path,
            uninstall_path: install.uninstall_path,
        });
    }
    // Last: nothing after it can fail, so a token is only made for a server that runs.
    let first_token = ensure_first_token(app.store()).await?;
    let retention = (settings.retention, clicks.amocrm.iter().map(|c| c.account).collect());
    Ok((Parts { app: Arc::new(app), pipeline, listener, admin, connections, retention, console }, first_token))
}

/// What a release before per-account connections left (one queue for every account, one
/// OAuth pair) is taken over: the queue's notes go to their accounts' queues, and the pair
/// to the only connection there was then, that of `amocrm_account_id`, when it uses OAuth.
async fn adopt_legacy_amocrm<S: Store>(store: &S, connections: &[AmoCrmConfig]) -> Result<(), ServerError> {
    if connections.is_empty() {
        return Ok(());
    }
    let moved = adopt_legacy_queue(store, "amocrm").await?;
    if moved > 0 {
        tracing::info!(notes = moved, "moved the notes of the shared amoCRM queue to their accounts' queues");
    }
    if let Some(first) = connections.first().filter(|c| matches!(c.auth, AmoCrmAuth::OAuth(_))) {
        if adopt_legacy_pair(store, first.account).await? {
            tracing::info!(account = first.account.0, "the stored amoCRM token pair is now this account's");
        }
    }
    Ok(())
}

/// On a store with no tokens at all, issues one for account 1, user 1, all contacts.
async fn ensure_first_token<S: Store>(store: &S) -> Result<Option<String>, ServerError> {
    if !store.list_tokens().await?.is_empty() {
        return Ok(None);
    }
    let issued = auth::issue(AccountId(1), UserId(1), ContactScope::All)?;
    store.put_token(issued.record).await?;
    Ok(Some(issued.text))
}

impl Started {
    /// The base URL of issued links.
    pub fn public_url(&self) -> &PublicUrl {
        match &self.backend {
            Backend::Sled(parts) => parts.app.public_url(),
            Backend::Redis(parts) => parts.app.public_url(),
        }
    }

    /// Serves until `shutdown` completes, then drains and flushes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        match self.backend {
            Backend::Sled(parts) => parts.run(shutdown).await,
            Backend::Redis(parts) => parts.run(shutdown).await,
        }
    }
}

impl<S: Store> Parts<S> {
    async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let Parts { app, pipeline, listener, admin, connections, retention, console } = self;
        let console = console.map(|(listener, password)| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!("the operator console listens on http://{addr}");
            }
            tokio::spawn(Arc::new(Console::new(app.clone(), password)).serve(listener))
        });
        // Connections made on another node of the store (or by a command) get their sinks here.
        let discover = tokio::spawn(async move {
            loop {
                tokio::time::sleep(DISCOVER_EVERY).await;
                match connections.discover().await {
                    Ok(0) => {}
                    Ok(started) => tracing::info!(started, "started the sinks of amoCRM connections made elsewhere"),
                    Err(e) => tracing::warn!(error = %e, "cannot look for new amoCRM connections; trying again later"),
                }
            }
        });
        let hear = tokio::spawn(hear_erasures(app.clone()));
        let maintain = tokio::spawn(maintain(app.clone(), retention));
        let admin = admin.map(|admin| {
            let path: PathBuf = admin.path().to_owned();
            (path, tokio::spawn(admin.serve(app.clone())))
        });
        let result = serve(app.clone(), listener, shutdown).await;
        // No request is in flight any more: every click handed over is drained and flushed.
        discover.abort();
        hear.abort();
        if let Some(console) = console {
            console.abort();
        }
        // A compaction under way runs on to its end (or is cut short by the exit, which
        // leaves the old files in use): either way nothing is lost.
        maintain.abort();
        pipeline.shutdown().await;
        if let Some((path, task)) = admin {
            // Abort only asks; awaiting makes sure the task, and its hold on the store, is gone.
            task.abort();
            let _ = task.await;
            let _ = std::fs::remove_file(&path);
        }
        result?;
        app.store().flush().await?;
        Ok(())
    }
}

/// Drops from this node's cache the links that other nodes of the store erased, every
/// [`HEAR_ERASURES_EVERY`]: the bound within which an erased link stops redirecting on
/// every node (a store that one process owns has no other node, and nothing to hear).
async fn hear_erasures<S: Store>(app: Arc<App<S>>) {
    let (mut cursor, mut failing) = (ErasureCursor::default(), false);
    loop {
        match app.engine().hear_erasures(cursor.clone()).await {
            Ok(next) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("reading the erasures of other nodes again");
                }
                cursor = next;
            }
            // Once per outage, not every second of it.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot read the erasures of other nodes; trying every second");
            }
            Err(_) => {}
        }
        tokio::time::sleep(HEAR_ERASURES_EVERY).await;
    }
}

/// Once a day, removes what is older than the retention allows ([`retention::sweep`]);
/// every minute, compacts the store when it is due ([`Store::maintain`]): at the latest a
/// day after an erasure or a sweep, so that their bytes are gone from the files within that.
async fn maintain<S: Store>(app: Arc<App<S>>, (retention, accounts): (Retention, Vec<AccountId>)) {
    let mut swept_at: Option<std::time::Instant> = None;
    loop {
        tokio::time::sleep(MAINTAIN_EVERY).await;
        if swept_at.is_none_or(|at| at.elapsed() >= SWEEP_EVERY) {
            swept_at = Some(std::time::Instant::now());
            match retention::sweep(app.store(), retention, Timestamp::now(), &accounts).await {
                Ok(swept) if swept == Swept::default() => {}
                Ok(swept) => tracing::info!(
                    notes = swept.notes,
                    dead_letters = swept.dead_letters,
                    "removed what the retention no longer keeps"
                ),
                Err(e) => tracing::error!(error = %e, "the retention's sweep failed; trying again in a day"),
            }
        }
        match app.store().maintain(COMPACT_AFTER_ERASURE).await {
            Ok(Some(freed)) => tracing::info!(freed, "compacted the store"),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "compacting the store failed; trying again later"),
        }
    }
}

/// How often the retention's sweep runs.
const SWEEP_EVERY: Duration = Duration::from_secs(24 * 3600);

/// How often a node looks whether the store is due a compaction.
const MAINTAIN_EVERY: Duration = Duration::from_secs(60);

/// The longest an erasure's bytes stay in the store's files (a running server's bound).
pub const COMPACT_AFTER_ERASURE: Duration = Duration::from_secs(24 * 3600);

/// How often a node reads other nodes' erasures.
pub const HEAR_ERASURES_EVERY: Duration = Duration::from_secs(1);

/// The accept loop. Shutdown stops accepting, lets in-flight requests finish within the
/// grace period, and returns.
pub async fn serve<S: Store>(
    app: Arc<App<S>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let limits = app.limits;
    let mut http = http1::Builder::new();
    // The slow-client limit is `idle::close_when_idle`'s, one timer per connection, not
    // hyper's timer per request head: hyper gets no timer, so it arms none.
    http.header_read_timeout(None).keep_alive(true);
    // A head over the limit is answered 431 and the connection closed.
    http.max_buf_size(limits.max_header_bytes);
    let http = Arc::new(http);
    let drain = Arc::new(Drain::new());
    let descriptors = admission::raise_descriptor_limit();
    let derived = ConnectionLimits::from_descriptors(descriptors);
    let caps = ConnectionLimits {
        total: limits.max_connections.unwrap_or(derived.total),
        per_address: limits.max_connections_per_address.unwrap_or(derived.per_address),
    };
    tracing::info!(descriptors, connections = caps.total, per_address = caps.per_address, "connection limits");
    let admission = Admission::new(caps);
    let mut backoff = AcceptBackoff::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => {
                    backoff.accepted();
                    conn
                }
                Err(e) => {
                    backoff.failed(&e, "HTTP").await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let activity = Arc::new(idle::Activity::default());
        let Some(place) = admission.admit(peer.ip(), activity.clone()) else {
            tracing::debug!(%peer, "every connection busy at the cap: turned away");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connected =
            lane::Connected { app: app.clone(), http: http.clone(), peer: Some(peer.ip()), activity: activity.clone() };
        let connection = lane::serve(stream, connected);
        let drain = drain.clone();
        let id = place.id();
        let connection = async move {
            let _place = place; // the connection's place is freed when it ends
            if let Err(e) = drain.run(connection).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        };
        let timeouts = idle::Timeouts { idle: limits.header_read_timeout, send: limits.send_timeout };
        let task = idle::spawn_watched(connection, activity, timeouts);
        admission.closes_with(id, task.abort_handle());
    }

    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    if tokio::time::timeout(limits.shutdown_grace, drain.close()).await.is_err() {
        tracing::warn!(grace = ?limits.shutdown_grace, "some connections were still open after the grace period");
    }
    Ok(())
}
