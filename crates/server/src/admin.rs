//! Operator commands (`token …`, `resolve`, `erase`, …) that work whether or not a server is running.
//!
//! sled locks its directory to one process. So a running server listens on a Unix socket,
//! `admin.sock`, in its data directory (mode 0600: whoever may read the data may
//! administer it, nobody else). A command first tries that socket; if no server answers,
//! it opens the data directory itself. Both paths run the same [`execute`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use shortlinks_core::model::NoteBody;
use shortlinks_core::{
    AccountId, ContactScope, EntityRef, LinkCache, ShortCode, Shortener, SledStore, Store, Timestamp, UserId,
};
use shortlinks_notes::backlog::{self, QueueBacklog};
use shortlinks_notes::erasure::{self, Erased};
use shortlinks_notes::sink::amocrm::connection::Connection;
use shortlinks_notes::sink::amocrm::install::StateKey;
use shortlinks_notes::sink::amocrm::status::{status, ConnectionStatus};
use shortlinks_notes::sink::amocrm::{state_for, store_connection};
use shortlinks_notes::sink::dead_letter::{DeadLetters, Purge};
use shortlinks_notes::sink::{OAuthPair, SinkKeys};
use shortlinks_notes::stats::Summary;
use shortlinks_redis::RedisStore;

use crate::config::StorageSettings;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::accept_backoff::AcceptBackoff;
use crate::app::App;
use crate::contact_deleted;
use crate::{auth, ServerError};

/// The socket's file name inside the data directory.
pub const SOCKET_NAME: &str = "admin.sock";

/// Where a data directory's admin socket lives.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// One operator command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum AdminRequest {
    /// Issue a token.
    TokenCreate {
        /// The account it acts in.
        account: u64,
        /// The user it acts as.
        user: u64,
        /// The contacts it has rights to.
        scope: ContactScope,
    },
    /// List tokens (never their secrets).
    TokenList,
    /// Revoke a token by id.
    TokenRevoke {
        /// The token's public id.
        id: String,
    },
    /// Show a link.
    Resolve {
        /// The code.
        code: String,
    },
    /// Store an account's amoCRM OAuth token pair and connection (from `amocrm connect`),
    /// replacing any.
    AmoCrmTokens {
        /// The shortlinks account whose connection it is.
        account: u64,
        /// The pair.
        pair: OAuthPair,
        /// Which amoCRM account it is.
        connection: Connection,
    },
    /// Look at, replay or purge one account's dead letters in one sink.
    DeadLetters {
        /// `amocrm` or `webhook`.
        sink: String,
        /// The shortlinks account.
        account: u64,
        /// What to do.
        action: DeadLetterAction,
    },
    /// How each amoCRM connection stands: those of `accounts` (the settings') and every
    /// one the store records.
    AmoCrmStatus {
        /// The accounts the settings connect.
        accounts: Vec<u64>,
    },
    /// Make the `state` of an authorization URL that connects an account.
    AmoCrmState {
        /// The shortlinks account.
        account: u64,
    },
    /// Turn amoCRM's contact-deleted webhook on for an account (with a new secret) or off.
    ContactDeletedHook {
        /// The shortlinks account.
        account: u64,
        /// On or off.
        on: bool,
    },
    /// How the service stands: backlogs, connections, and a running server's figures.
    Status {
        /// The accounts the settings connect to amoCRM.
        accounts: Vec<u64>,
        /// Whether the settings have a webhook.
        webhook: bool,
    },
    /// Rewrite the store's files without what is erased or handled.
    Compact,
    /// Erase a contact: its links, notes, waiting notes and dead letters.
    Erase {
        /// The shortlinks account.
        account: u64,
        /// The contact's id.
        contact: u64,
    },
}

/// What to do with dead letters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum DeadLetterAction {
    /// Show how many, and the first `limit`.
    List {
        /// How many to show.
        limit: usize,
    },
    /// Put them back on the sink's queue.
    Replay,
    /// Delete them, if `confirm` is their count.
    Purge {
        /// The count the operator confirms.
        confirm: Option<usize>,
    },
}

/// The answer to a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum AdminReply {
    /// A new token; its text is shown only now.
    Token {
        /// The token.
        token: String,
    },
    /// Token records.
    Tokens {
        /// One line per token.
        tokens: Vec<TokenInfo>,
    },
    /// A token was revoked (or already was).
    Revoked {
        /// Its id.
        id: String,
    },
    /// A link, if the code is known.
    Link {
        /// The link, as an operator sees it.
        link: Option<LinkInfo>,
    },
    /// Done; nothing to show.
    Done,
    /// An account's dead letters.
    DeadLetters {
        /// How many there are.
        count: usize,
        /// The first of them, oldest first.
        letters: Vec<DeadLetterInfo>,
    },
    /// Dead letters put back on their queue.
    Replayed {
        /// How many.
        count: usize,
    },
    /// Dead letters deleted.
    Purged {
        /// How many.
        count: usize,
    },
    /// A purge waits for the operator to confirm this count.
    ToConfirm {
        /// How many would go.
        count: usize,
    },
    /// How each amoCRM connection stands.
    AmoCrmStatus {
        /// One per connection, by account.
        connections: Vec<ConnectionStatus>,
    },
    /// An authorization URL's `state`.
    State {
        /// The value.
        state: String,
    },
    /// The contact-deleted webhook's new secret (`None`: turned off).
    HookSecret {
        /// The secret, shown only now.
        secret: Option<String>,
    },
    /// How the service stands.
    Status {
        /// The report.
        report: StatusReport,
    },
    /// The store was compacted.
    Compacted {
        /// Bytes freed.
        freed: u64,
    },
    /// A contact was erased: how much of it went.
    Erased {
        /// Links (their codes now answer 410 Gone).
        links: usize,
        /// Notes in the journal.
        notes: u64,
        /// Notes waiting for a sink.
        waiting: usize,
        /// Dead letters.
        dead_letters: usize,
    },
    /// The command failed.
    Failed {
        /// Why.
        message: String,
    },
}

/// What `shortlinks status` shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Each queue's backlog, from the store: the outbox, then each sink's.
    pub queues: Vec<QueueBacklog>,
    /// Each amoCRM connection, from the store.
    pub connections: Vec<ConnectionStatus>,
    /// The running server's own figures, when a server answered.
    pub server: Option<ServerFigures>,
}

/// A running server's figures since it started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerFigures {
    /// The pipeline's counts.
    pub pipeline: Summary,
    /// Redirects answered by the lane.
    pub redirects_lane: u64,
    /// Redirects answered by hyper.
    pub redirects_hyper: u64,
}

/// What `token list` shows of a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Public id.
    pub id: String,
    /// Account.
    pub account: u64,
    /// User.
    pub user: u64,
    /// `all` or the contact ids.
    pub contacts: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds, if revoked.
    pub revoked_at: Option<u64>,
}

/// What `dead-letters list` shows of one: the contact and the ORIGINAL URL, never a code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterInfo {
    /// The note's id.
    pub note: u64,
    /// The contact.
    pub contact: u64,
    /// The URL the contact visited.
    pub url: String,
    /// When it was set aside (Unix seconds).
    pub at: u64,
    /// Why.
    pub reason: String,
}

/// What `resolve` shows of a link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInfo {
    /// The code.
    pub code: String,
    /// The original URL.
    pub target: String,
    /// Account.
    pub account: u64,
    /// Entity type.
    pub entity_type: String,
    /// Entity id.
    pub entity_id: u64,
    /// Unix seconds.
    pub created_at: u64,
    /// Author.
    pub created_by: u64,
}

/// Runs a command against a store.
pub async fn execute<S: Store>(store: &S, request: AdminRequest) -> AdminReply {
    match run(store, request).await {
        Ok(reply) => reply,
        Err(e) => AdminReply::Failed { message: e.to_string() },
    }
}

async fn run<S: Store>(store: &S, request: AdminRequest) -> Result<AdminReply, ServerError> {
    Ok(match request {
        AdminRequest::TokenCreate { account, user, scope } => {
            if account == 0 || user == 0 {
                return Err(ServerError::Admin("account and user must be positive".into()));
            }
            let issued = auth::issue(AccountId(account), UserId(user), scope)?;
            store.put_token(issued.record).await?;
            AdminReply::Token { token: issued.text }
        }
        AdminRequest::TokenList => {
            let tokens = store.list_tokens().await?.into_iter().map(|t| TokenInfo {
                id: t.id,
                account: t.account.0,
                user: t.user.0,
                contacts: match t.scope {
                    ContactScope::All => "all".into(),
                    ContactScope::Only(ids) => ids.as_slice().iter().map(u64::to_string).collect::<Vec<_>>().join(","),
                },
                created_at: t.created_at.as_secs(),
                revoked_at: t.revoked_at.map(Timestamp::as_secs),
            });
            AdminReply::Tokens { tokens: tokens.collect() }
        }
        AdminRequest::TokenRevoke { id } => {
            let mut token =
                store.get_token(&id).await?.ok_or_else(|| ServerError::Admin(format!("no token with id {id}")))?;
            if token.revoked_at.is_none() {
                token.revoked_at = Some(Timestamp::now());
                store.put_token(token).await?;
            }
            AdminReply::Revoked { id }
        }
        AdminRequest::Resolve { code } => {
            let code = ShortCode::parse(&code).ok_or_else(|| ServerError::Admin(format!("{code:?} is not a code")))?;
            let link = store.get_link(&code).await?.map(|l| LinkInfo {
                code: l.code.to_string(),
                target: l.target.to_string(),
                account: l.account.0,
                entity_type: l.entity.kind.as_str().into(),
                entity_id: l.entity.id,
                created_at: l.created_at.as_secs(),
                created_by: l.created_by.0,
            });
            AdminReply::Link { link }
        }
        AdminRequest::AmoCrmTokens { account, pair, connection } => {
            store_connection(store, AccountId(account), &pair, &connection).await.map_err(notes_failure)?;
            AdminReply::Done
        }
        AdminRequest::DeadLetters { sink, account, action } => {
            let account = positive_account(account)?;
            let keys = match sink.as_str() {
                "amocrm" => SinkKeys::new("amocrm", Some(account)),
                "webhook" => SinkKeys::new("webhook", None),
                other => return Err(ServerError::Admin(format!("no sink {other:?}: amocrm or webhook"))),
            };
            let letters = DeadLetters::new(store, keys, account);
            match action {
                DeadLetterAction::List { limit } => {
                    let (count, first) = letters.list(limit).await.map_err(notes_failure)?;
                    let letters = first
                        .into_iter()
                        .map(|l| {
                            let NoteBody::LinkFollowed { url } = &l.note.body;
                            DeadLetterInfo {
                                note: l.note.id,
                                contact: l.note.entity.id,
                                url: url.to_string(),
                                at: l.at.as_secs(),
                                reason: l.reason,
                            }
                        })
                        .collect();
                    AdminReply::DeadLetters { count, letters }
                }
                DeadLetterAction::Replay => {
                    AdminReply::Replayed { count: letters.replay().await.map_err(notes_failure)? }
                }
                DeadLetterAction::Purge { confirm } => match letters.purge(confirm).await.map_err(notes_failure)? {
                    Purge::ToConfirm(count) => AdminReply::ToConfirm { count },
                    Purge::Purged(count) => AdminReply::Purged { count },
                },
            }
        }
        AdminRequest::AmoCrmStatus { accounts } => {
            let accounts: Vec<AccountId> = accounts.into_iter().map(AccountId).collect();
            AdminReply::AmoCrmStatus { connections: status(store, &accounts).await.map_err(notes_failure)? }
        }
        AdminRequest::AmoCrmState { account } => {
            let account = positive_account(account)?;
            let key = StateKey::derive(&store.load_or_create_secret().await?);
            AdminReply::State { state: state_for(store, &key, account).await.map_err(notes_failure)? }
        }
        AdminRequest::Status { accounts, webhook } => {
            let accounts: Vec<AccountId> = accounts.into_iter().map(AccountId).collect();
            let connections = status(store, &accounts).await.map_err(notes_failure)?;
            let mut sinks: Vec<SinkKeys> = webhook.then(|| SinkKeys::new("webhook", None)).into_iter().collect();
            sinks.extend(connections.iter().map(|c| SinkKeys::new("amocrm", Some(AccountId(c.account)))));
            let queues = backlog::backlog(store, &backlog::queues(&sinks)).await?;
            AdminReply::Status { report: StatusReport { queues, connections, server: None } }
        }
        AdminRequest::Compact => AdminReply::Compacted { freed: store.compact().await? },
        AdminRequest::ContactDeletedHook { account, on } => {
            AdminReply::HookSecret { secret: contact_deleted::set(store, positive_account(account)?, on).await? }
        }
        AdminRequest::Erase { account, contact } => {
            // No server runs on this store here, or it hears of the erasure as every node
            // does: an engine without a cache worth the name.
            let engine = Shortener::builder(store.clone()).cache(LinkCache::new(4)).build().await?;
            erase(&engine, store, account, contact).await?
        }
    })
}

/// Erases a contact with `engine` (a running server's own, so that its cache forgets the
/// links at once), then sweeps again once notes in flight have landed.
pub async fn erase<S: Store>(
    engine: &Shortener<S>,
    store: &S,
    account: u64,
    contact: u64,
) -> Result<AdminReply, ServerError> {
    let (account, entity) = (positive_account(account)?, EntityRef::contact(contact));
    let mut erased = erasure::erase(engine, store, account, entity).await.map_err(notes_failure)?;
    erased.add(&erasure::settle(store, account, &[entity]).await.map_err(notes_failure)?);
    tracing::info!(account = account.0, links = erased.links, notes = erased.notes, "erased a contact");
    let Erased { links, notes, waiting, dead_letters } = erased;
    Ok(AdminReply::Erased { links, notes, waiting, dead_letters })
}

/// The status as a running server sees it: the queues of the sinks it runs, and its figures.
async fn server_status<S: Store>(app: &App<S>) -> Result<AdminReply, ServerError> {
    let store = app.store();
    let pipeline = app.stats.summary();
    let running: Vec<SinkKeys> = app.stats.sink_keys();
    let accounts: Vec<AccountId> = running.iter().filter_map(|k| k.account).collect();
    let mut connections = status(store, &accounts).await.map_err(notes_failure)?;
    for c in &mut connections {
        c.delivered = app.stats.delivered("amocrm", Some(AccountId(c.account)));
    }
    let queues = backlog::backlog(store, &backlog::queues(&running)).await?;
    let (redirects_lane, redirects_hyper) = app.http_metrics.redirects();
    let server = Some(ServerFigures { pipeline, redirects_lane, redirects_hyper });
    Ok(AdminReply::Status { report: StatusReport { queues, connections, server } })
}

/// A token's contacts as an operator writes them: `all`, or positive ids separated by commas.
pub fn parse_scope(contacts: &str) -> Result<ContactScope, ServerError> {
    if contacts.trim() == "all" {
        return Ok(ContactScope::All);
    }
    let ids = contacts
        .split(',')
        .map(|id| match id.trim().parse::<u64>() {
            Ok(id) if id > 0 => Ok(id),
            _ => Err(ServerError::Admin(format!("contacts are `all` or positive ids separated by commas, not {id:?}"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ContactScope::only(ids))
}

/// Account 0 is nobody's: a command for it is a mistake.
fn positive_account(account: u64) -> Result<AccountId, ServerError> {
    match account {
        0 => Err(ServerError::Admin("the account must be positive".into())),
        id => Ok(AccountId(id)),
    }
}

fn notes_failure(e: shortlinks_notes::Error) -> ServerError {
    ServerError::Admin(e.to_string())
}

/// The server's end of the socket.
pub struct AdminSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl AdminSocket {
    /// Binds the socket, replacing a stale one: we hold the data directory's lock, so no
    /// other server can be using it. It is created private (the process umask, see
    /// [`crate::data_dir`]), never opened up and closed after.
    pub fn bind(path: &Path) -> Result<Self, ServerError> {
        let _ = std::fs::remove_file(path);
        let listener =
            UnixListener::bind(path).map_err(|e| ServerError::io(format!("binding {}", path.display()), e))?;
        Ok(Self { listener, path: path.to_owned() })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers commands, one JSON line in and one out per connection, until aborted.
    pub async fn serve<S: Store>(self, app: Arc<App<S>>) {
        let mut backoff = AcceptBackoff::new();
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => {
                    backoff.accepted();
                    stream
                }
                Err(e) => {
                    backoff.failed(&e, "admin socket").await;
                    continue;
                }
            };
            let app = app.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                if BufReader::new(read).read_line(&mut line).await.is_err() {
                    return;
                }
                let reply = match (serde_json::from_str(&line), &app.amocrm) {
                    // Through the running server's connections: its sink starts (or resumes) at once.
                    (Ok(AdminRequest::AmoCrmTokens { account, pair, connection }), Some(pages)) => {
                        match pages.connections.connected(AccountId(account), &pair, &connection).await {
                            Ok(()) => AdminReply::Done,
                            Err(e) => AdminReply::Failed { message: e.to_string() },
                        }
                    }
                    // With what only the running server knows: what it delivered.
                    (Ok(request @ AdminRequest::AmoCrmStatus { .. }), _) => match execute(app.store(), request).await {
                        AdminReply::AmoCrmStatus { mut connections } => {
                            for c in &mut connections {
                                c.delivered = app.stats.delivered("amocrm", Some(AccountId(c.account)));
                            }
                            AdminReply::AmoCrmStatus { connections }
                        }
                        other => other,
                    },
                    // With what only the running server knows: its sinks and its figures.
                    (Ok(AdminRequest::Status { .. }), _) => {
                        server_status(&app).await.unwrap_or_else(|e| AdminReply::Failed { message: e.to_string() })
                    }
                    // With the server's engine: its cache forgets the links at once.
                    (Ok(AdminRequest::Erase { account, contact }), _) => {
                        erase(app.engine(), app.store(), account, contact)
                            .await
                            .unwrap_or_else(|e| AdminReply::Failed { message: e.to_string() })
                    }
                    (Ok(request), _) => execute(app.store(), request).await,
                    (Err(e), _) => AdminReply::Failed { message: format!("bad admin request: {e}") },
                };
                let mut out = serde_json::to_vec(&reply).unwrap_or_default();
                out.push(b'\n');
                let _ = write.write_all(&out).await;
            });
        }
    }
}

/// Runs a command: on Redis directly (any number of nodes share it), else through a
/// running server's socket, or on the sled directory when no server runs.
pub async fn command(
    storage: &StorageSettings,
    data_dir: &Path,
    request: AdminRequest,
) -> Result<AdminReply, ServerError> {
    if let StorageSettings::Redis(config) = storage {
        let store = RedisStore::open((**config).clone()).await?;
        return Ok(execute(&store, request).await);
    }
    let path = socket_path(data_dir);
    if let Ok(stream) = UnixStream::connect(&path).await {
        return over_socket(stream, &request).await;
    }
    let dir = data_dir.to_owned();
    let store = tokio::task::spawn_blocking(move || SledStore::open(&dir))
        .await
        .map_err(|e| ServerError::Admin(e.to_string()))?
        .map_err(|e| {
            ServerError::Admin(format!(
                "cannot open {} ({e}); if a server is using it, it did not answer on {}",
                data_dir.display(),
                path.display()
            ))
        })?;
    let reply = execute(&store, request).await;
    store.flush().await?;
    Ok(reply)
}

async fn over_socket(stream: UnixStream, request: &AdminRequest) -> Result<AdminReply, ServerError> {
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(|e| ServerError::Admin(e.to_string()))?;
    line.push(b'\n');
    write.write_all(&line).await.map_err(|e| ServerError::io("writing to the admin socket", e))?;
    let mut answer = String::new();
    BufReader::new(read)
        .read_line(&mut answer)
        .await
        .map_err(|e| ServerError::io("reading from the admin socket", e))?;
    serde_json::from_str(&answer).map_err(|e| ServerError::Admin(format!("the server answered out of protocol: {e}")))
}
