//! The `shortlinks` binary: `serve` (the default), `token create|list|revoke`, `resolve`,
//! `amocrm connect`, `clicks replay`.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use shortlinks_notes::sink::amocrm::connection::Connection;
use shortlinks_notes::sink::amocrm::read_account;
use shortlinks_notes::sink::{AmoCrmAuth, HttpClient};
use shortlinks_server::admin::{self, AdminReply, AdminRequest, DeadLetterAction};
use shortlinks_server::config::{SettingsLayer, StorageKind};
use shortlinks_server::server;

/// mimalloc rather than the system allocator: sled and the click pipeline allocate a lot,
/// and glibc's malloc was a third of the time of sled's writes in a profile
/// (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Per-contact short links with notes on click (amoCRM-compatible).
#[derive(Parser)]
#[command(name = "shortlinks", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default when no command is given).
    Serve(Box<ServeArgs>),
    /// Manage API tokens; works whether or not a server is running.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Show a link's target and metadata.
    Resolve {
        /// The short code.
        code: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// The amoCRM integration.
    #[command(subcommand)]
    Amocrm(AmoCrmCommand),
    /// Clicks.
    #[command(subcommand)]
    Clicks(ClicksCommand),
    /// Notes a sink refused for good: look at them, put them back on the sink's queue, or
    /// delete them; one account at a time. Works whether or not a server is running.
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(DeadLetterCommand),
    /// Rewrite the store's files without what is erased or handled, now rather than
    /// when the server would (within a day of an erasure). Works whether or not a server
    /// is running.
    Compact {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// How the service stands: each queue's backlog and oldest item, each sink and amoCRM
    /// connection, and, when a server is running on this data directory, its figures
    /// since it started. Works whether or not a server is running.
    Status {
        #[command(flatten)]
        args: Box<ServeArgs>,
    },
    /// Erase a contact for good: its links (their codes then answer 410 Gone and are never
    /// issued again), its notes, the notes waiting for a sink and its dead letters. Works
    /// whether or not a server is running.
    Erase {
        /// The shortlinks account.
        #[arg(long)]
        account: u64,
        /// The contact's id.
        #[arg(long)]
        contact: u64,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// How many an account has in a sink, and the oldest: contact, URL, time, reason.
    List {
        #[command(flatten)]
        which: DeadLetterArgs,
        /// How many to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Put an account's dead letters back on the sink's queue, to be delivered again.
    Replay {
        #[command(flatten)]
        which: DeadLetterArgs,
    },
    /// Delete an account's dead letters: first without `--confirm` to see the count, then
    /// with `--confirm <count>`.
    Purge {
        #[command(flatten)]
        which: DeadLetterArgs,
        /// The count the first run printed.
        #[arg(long)]
        confirm: Option<usize>,
    },
}

#[derive(Args)]
struct DeadLetterArgs {
    /// The shortlinks account.
    #[arg(long)]
    account: u64,
    /// `amocrm` or `webhook`.
    #[arg(long, default_value = "amocrm")]
    sink: String,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Subcommand)]
enum ClicksCommand {
    /// Replay a file of clicks (JSON lines: time, address, code, headers) through the rules
    /// that decide what is a visit, and print each verdict with its reason. Uses the same
    /// settings as `serve` (the address rule, scanner networks, the store to look codes up).
    Replay {
        /// The JSON-lines file (`-` for standard input).
        file: PathBuf,
        #[command(flatten)]
        args: Box<ServeArgs>,
    },
}

#[derive(Subcommand)]
enum AmoCrmCommand {
    /// Exchange an authorization code for the first OAuth token pair and store it (with
    /// the same settings as `serve`: amocrm_client_id, amocrm_client_secret, …). Works
    /// whether or not a server is running.
    Connect {
        /// The authorization code amoCRM gave the redirect URI.
        #[arg(long)]
        code: String,
        /// The shortlinks account whose connection this is (needed when there are several).
        #[arg(long)]
        account: Option<u64>,
        #[command(flatten)]
        args: Box<ServeArgs>,
    },
    /// How each amoCRM connection stands, one line each: state, backlog, delivered (by the
    /// running server, if one answers), dead letters, token expiry (with the same settings
    /// as `serve`).
    Status {
        #[command(flatten)]
        args: Box<ServeArgs>,
    },
    /// Print the amoCRM authorization URL that connects a shortlinks account: whoever
    /// opens it as an administrator of an amoCRM account connects that account, once,
    /// through the server's Redirect URI (with the same settings as `serve`).
    ConnectUrl {
        /// The shortlinks account to connect.
        #[arg(long)]
        account: u64,
        #[command(flatten)]
        args: Box<ServeArgs>,
    },
    /// Turn on amoCRM's "contact deleted" webhook for a shortlinks account and print the
    /// URL to enter in that amoCRM account's webhooks (a new secret each time: the last
    /// URL stops working); `--off` turns it off. Each contact deleted there is erased here.
    ContactDeletedUrl {
        /// The shortlinks account.
        #[arg(long)]
        account: u64,
        /// Turn the webhook off instead.
        #[arg(long)]
        off: bool,
        #[command(flatten)]
        args: Box<ServeArgs>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it alone on standard output.
    Create {
        #[command(flatten)]
        store: StoreArgs,
        /// The account the token acts in.
        #[arg(long)]
        account: u64,
        /// The user the token acts as.
        #[arg(long)]
        user: u64,
        /// `all`, or a comma-separated list of contact ids.
        #[arg(long, default_value = "all")]
        contacts: String,
    },
    /// List tokens (ids and rights, never secrets).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a token by its id (the part after `sl_`, before the second `_`).
    Revoke {
        /// The token id.
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Where the data is: the same sources and precedence as `serve`.
#[derive(Args, Default)]
struct StoreArgs {
    /// A TOML settings file.
    #[arg(long, env = "SHORTLINKS_CONFIG")]
    config: Option<PathBuf>,
    /// The data directory [default: ./data].
    #[arg(long, env = "SHORTLINKS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// `sled` (default) or `redis`.
    #[arg(long, env = "SHORTLINKS_STORAGE", value_enum)]
    storage: Option<StorageKind>,
    /// With `--storage redis`: one server.
    #[arg(long, env = "SHORTLINKS_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// With `--storage redis`: cluster nodes, comma-separated.
    #[arg(long, env = "SHORTLINKS_REDIS_NODES", hide_env_values = true)]
    redis_nodes: Option<String>,
    /// The prefix of every Redis key (default `sl`).
    #[arg(long, env = "SHORTLINKS_REDIS_KEY_PREFIX")]
    redis_key_prefix: Option<String>,
}

impl StoreArgs {
    /// Runs an admin command on the configured store.
    async fn command(&self, request: AdminRequest) -> anyhow::Result<AdminReply> {
        let flags = SettingsLayer {
            data_dir: self.data_dir.clone(),
            storage: self.storage,
            redis_url: self.redis_url.clone(),
            redis_nodes: self.redis_nodes.clone(),
            redis_key_prefix: self.redis_key_prefix.clone(),
            ..Default::default()
        };
        let settings = flags.over(file_layer(self.config.as_deref())?).resolve()?;
        Ok(admin::command(&settings.storage, &settings.data_dir, request).await?)
    }
}

/// Every setting; each flag also reads its `SHORTLINKS_*` variable, and both beat the file.
#[derive(Args, Default)]
struct ServeArgs {
    /// A TOML settings file (same keys as the flags, with underscores).
    #[arg(long, env = "SHORTLINKS_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: SettingsLayer,
}

fn file_layer(path: Option<&std::path::Path>) -> anyhow::Result<SettingsLayer> {
    Ok(match path {
        Some(path) => SettingsLayer::from_file(path)?,
        None => SettingsLayer::default(),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Before any file is made: the data directory's files are private from birth.
    shortlinks_server::data_dir::restrict_umask();
    let cli = Cli::parse();
    match cli.command {
        None => serve(ServeArgs::from_env()).await,
        Some(Command::Serve(args)) => serve(*args).await,
        Some(Command::Token(command)) => token(command).await,
        Some(Command::Amocrm(AmoCrmCommand::Connect { code, account, args })) => {
            amocrm_connect(&code, account, *args).await
        }
        Some(Command::Amocrm(AmoCrmCommand::ConnectUrl { account, args })) => amocrm_connect_url(account, *args).await,
        Some(Command::Amocrm(AmoCrmCommand::Status { args })) => amocrm_status(*args).await,
        Some(Command::Amocrm(AmoCrmCommand::ContactDeletedUrl { account, off, args })) => {
            contact_deleted_url(account, off, *args).await
        }
        Some(Command::Clicks(ClicksCommand::Replay { file, args })) => replay(&file, *args).await,
        Some(Command::Status { args }) => status(*args).await,
        Some(Command::DeadLetters(command)) => dead_letters(command).await,
        Some(Command::Compact { store }) => match store.command(AdminRequest::Compact).await? {
            AdminReply::Compacted { freed } => {
                println!("compacted: {freed} bytes freed");
                Ok(())
            }
            other => unexpected(other),
        },
        Some(Command::Erase { account, contact, store }) => {
            match store.command(AdminRequest::Erase { account, contact }).await? {
                AdminReply::Erased { links, notes, waiting, dead_letters } => {
                    println!(
                        "erased contact {contact} of account {account}: {links} links (their codes now answer 410 Gone), \
{notes} notes, {waiting} notes waiting for a sink, {dead_letters} dead letters"
                    );
                    Ok(())
                }
                other => unexpected(other),
            }
        }
        Some(Command::Resolve { code, store }) => match store.command(AdminRequest::Resolve { code }).await? {
            AdminReply::Link { link: Some(l) } => {
                println!("code:       {}", l.code);
                println!("target:     {}", l.target);
                println!("account:    {}", l.account);
                println!("entity:     {} {}", l.entity_type, l.entity_id);
                println!("created_at: {}", l.created_at);
                println!("created_by: {}", l.created_by);
                Ok(())
            }
            AdminReply::Link { link: None } => bail!("no such link"),
            other => unexpected(other),
        },
    }
}

impl ServeArgs {
    /// `shortlinks` with no command: the same settings, from the environment and defaults.
    fn from_env() -> Self {
        #[derive(Parser)]
        struct Bare {
            #[command(flatten)]
            args: ServeArgs,
        }
        Bare::parse_from(["shortlinks"]).args
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let settings = args.settings.over(file_layer(args.config.as_deref())?).resolve()?;
    let data_dir = settings.data_dir.clone();
    let shutdown = shutdown_signal();
    let started = server::start(settings).await?;
    let base = started.public_url().as_str().to_owned();
    if let Some(token) = &started.first_token {
        show_first_token(token, started.addr, &data_dir)?;
    }
    println!("listening on http://{} (links: {base}/..., data: {})", started.addr, data_dir.display());
    started.run(shutdown).await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// On a terminal, the first token is shown once. Elsewhere stdout is a service manager's
/// log, which keeps it for anyone who reads logs: it goes to a private file instead.
fn show_first_token(token: &str, addr: std::net::SocketAddr, data_dir: &std::path::Path) -> anyhow::Result<()> {
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        let path = shortlinks_server::data_dir::write_first_token(data_dir, token)?;
        println!("Created the first API token (account 1, user 1, all contacts) in {} (mode 0600): read it, then delete the file.", path.display());
        tracing::warn!(path = %path.display(), "the first API token is in this file; read it, then delete it");
        return Ok(());
    }
    println!("Created the first API token (account 1, user 1, all contacts). It is shown only this once:");
    println!("  {token}");
    println!(
        "Use it as: curl -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \
         -d '[{{\"url\":\"https://example.com\",\"metadata\":{{\"entity_type\":\"contacts\",\"entity_id\":1}}}}]' \
         http://{addr}/api/v4/short_links"
    );
    Ok(())
}

/// Installs the handlers now, so that a SIGTERM sent the moment the server says it listens
/// already stops it gracefully; the future completes on the first SIGTERM or SIGINT.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot install signal handlers; stop the server with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

async fn token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { store, account, user, contacts } => {
            let scope = admin::parse_scope(&contacts).map_err(|e| anyhow::anyhow!("--contacts: {e}"))?;
            match store.command(AdminRequest::TokenCreate { account, user, scope }).await? {
                AdminReply::Token { token } => {
                    println!("{token}");
                    Ok(())
                }
                other => unexpected(other),
            }
        }
        TokenCommand::List { store } => match store.command(AdminRequest::TokenList).await? {
            AdminReply::Tokens { tokens } => {
                println!("{:<12} {:>10} {:>10} {:<10} {:>12}  contacts", "id", "account", "user", "status", "created");
                for t in tokens {
                    let status = if t.revoked_at.is_some() { "revoked" } else { "active" };
                    println!(
                        "{:<12} {:>10} {:>10} {:<10} {:>12}  {}",
                        t.id, t.account, t.user, status, t.created_at, t.contacts
                    );
                }
                Ok(())
            }
            other => unexpected(other),
        },
        TokenCommand::Revoke { id, store } => match store.command(AdminRequest::TokenRevoke { id }).await? {
            AdminReply::Revoked { id } => {
                println!("revoked {id}");
                Ok(())
            }
            other => unexpected(other),
        },
    }
}

async fn dead_letters(command: DeadLetterCommand) -> anyhow::Result<()> {
    let (which, action) = match command {
        DeadLetterCommand::List { which, limit } => (which, DeadLetterAction::List { limit }),
        DeadLetterCommand::Replay { which } => (which, DeadLetterAction::Replay),
        DeadLetterCommand::Purge { which, confirm } => (which, DeadLetterAction::Purge { confirm }),
    };
    let (account, sink) = (which.account, which.sink.clone());
    let request = AdminRequest::DeadLetters { sink: sink.clone(), account, action };
    match which.store.command(request).await? {
        AdminReply::DeadLetters { count, letters } => {
            println!("{count} dead letters of account {account} in {sink}");
            for l in letters {
                println!("note {}  contact {}  at {}  {}\n  reason: {}", l.note, l.contact, l.at, l.url, l.reason);
            }
        }
        AdminReply::Replayed { count } => println!("{count} notes of account {account} are back on {sink}'s queue"),
        AdminReply::Purged { count } => println!("purged {count} dead letters of account {account} in {sink}"),
        AdminReply::ToConfirm { count } => {
            println!("{count} dead letters of account {account} in {sink} would be deleted: run again with --confirm {count}")
        }
        other => return unexpected(other),
    }
    Ok(())
}

async fn amocrm_connect(code: &str, account: Option<u64>, args: ServeArgs) -> anyhow::Result<()> {
    let settings = args.settings.over(file_layer(args.config.as_deref())?).resolve()?;
    let connections = &settings.clicks.amocrm;
    let amo = match (account, connections.as_slice()) {
        (_, []) => bail!("no amoCRM connection is configured (amocrm_subdomain, or [[amocrm_connections]])"),
        (None, [only]) => only,
        (None, _) => bail!("there are several amoCRM connections: say which with --account"),
        (Some(id), _) => match connections.iter().find(|c| c.account.0 == id) {
            Some(connection) => connection,
            None => bail!("account {id} has no amoCRM connection in the settings"),
        },
    };
    let AmoCrmAuth::OAuth(app) = &amo.auth else {
        bail!("this amoCRM connection uses a long-lived token; connecting needs amocrm_client_id, amocrm_client_secret and amocrm_redirect_uri")
    };
    let client = HttpClient::new(settings.clicks.sink_timeout);
    let pair = shortlinks_notes::sink::connect(&client, &amo.base, app, code).await?;
    let expires_at = pair.expires_at;
    // The code is spent: a pair whose account cannot be read is still stored.
    let connection = match read_account(&client, &amo.base, &pair).await {
        Ok(connection) => connection,
        Err(e) => {
            eprintln!(
                "warning: amoCRM did not say which account this is ({e}); its uninstall hook will not be recognised"
            );
            Connection::at(&amo.base)
        }
    };
    let request = AdminRequest::AmoCrmTokens { account: amo.account.0, pair, connection };
    match admin::command(&settings.storage, &settings.data_dir, request).await? {
        AdminReply::Done => {
            println!(
                "connected account {} to {}: the token pair is stored (the access token expires at {expires_at}, Unix time, and is refreshed before)",
                amo.account.0, amo.base
            );
            Ok(())
        }
        other => unexpected(other),
    }
}

async fn amocrm_status(args: ServeArgs) -> anyhow::Result<()> {
    let settings = args.settings.over(file_layer(args.config.as_deref())?).resolve()?;
    let accounts = settings.clicks.amocrm.iter().map(|c| c.account.0).collect();
    let connections =
        match admin::command(&settings.storage, &settings.data_dir, AdminRequest::AmoCrmStatus { accounts }).await? {
            AdminReply::AmoCrmStatus { connections } => connections,
            other => return unexpected(other),
        };
    if connections.is_empty() {
        println!("no amoCRM connections");
    }
    let or_dash = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    for c in connections {
        let state = match c.until {
            Some(until) => format!("{} until {until}", c.state),
            None => c.state,
        };
        println!(
            "account {}  {}  {state} since {}  backlog {}  delivered {}  dead letters {}  token expires {}",
            c.account,
            c.amocrm.as_deref().unwrap_or("(settings)"),
            or_dash(c.since),
            c.backlog,
            or_dash(c.delivered),
            c.dead_letters,
            or_dash(c.token_expires),
        );
    }
    Ok(())
}

async fn status(args: ServeArgs) -> anyhow::Result<()> {
    let settings = args.settings.over(file_layer(args.config.as_deref())?).resolve()?;
    let accounts = settings.clicks.amocrm.iter().map(|c| c.account.0).collect();
    let request = AdminRequest::Status { accounts, webhook: settings.clicks.webhook.is_some() };
    match admin::command(&settings.storage, &settings.data_dir, request).await? {
        AdminReply::Status { report } => {
            print!("{}", shortlinks_server::status::render(&report, &settings.storage, &settings.data_dir));
            Ok(())
        }
        other => unexpected(other),
    }
}

async fn amocrm_connect_url(account: u64, args: ServeArgs) -> anyhow::Result<()> {
    let settings = args.settings.over(file_layer(args.config.as_deref())?).resolve()?;
    let Some(install) = &settings.clicks.amocrm_install else {
        bail!("the install flow needs amocrm_client_id, amocrm_client_secret and amocrm_redirect_uri")
    };
    let AmoCrmAuth::OAuth(app) = &install.settings.template.auth else {
        bail!("the integration has no OAuth settings")
    };
    let state =
        match admin::command(&settings.storage, &settings.data_dir, AdminRequest::AmoCrmState { account }).await? {
            AdminReply::State { state } => state,
            other => return unexpected(other),
        };
    let mut url = url::Url::parse(&install.authorize_url)?;
    url.query_pairs_mut().append_pair("client_id", &app.client_id).append_pair("state", &state);
    println!("{url}");
    eprintln!(
        "Open it as an administrator of the amoCRM account to connect to shortlinks account {account}. It works once, for {} hours.",
        shortlinks_notes::sink::amocrm::install::STATE_LIFETIME.as_secs() / 3600
    );
    Ok(())
}

async fn contact_deleted_url(account: u64, off: bool, args: ServeArgs) -> anyhow::Result<()> {
    let settings = args.settings.over(file_layer(args.config.as_deref())?).resolve()?;
    // Before a new secret is made: one that cannot be printed would only break the old URL.
    let Some(public_url) = &settings.public_url else { bail!("public_url is not set: the webhook's URL is under it") };
    let request = AdminRequest::ContactDeletedHook { account, on: !off };
    match admin::command(&settings.storage, &settings.data_dir, request).await? {
        AdminReply::HookSecret { secret: Some(secret) } => {
            let base = public_url.as_str().trim_end_matches('/');
            println!("{base}{}{account}/{secret}", shortlinks_server::contact_deleted::PATH_PREFIX);
            eprintln!(
                "Enter it in amoCRM (Settings → Integrations → Webhooks) for the event \"contact deleted\". \
The amoCRM account must be connected to shortlinks account {account}; an earlier URL no longer works."
            );
        }
        AdminReply::HookSecret { secret: None } => println!("the contact-deleted webhook of account {account} is off"),
        other => return unexpected(other),
    }
    Ok(())
}

async fn replay(file: &std::path::Path, args: ServeArgs) -> anyhow::Result<()> {
    use shortlinks_core::model::EntityRef;
    use shortlinks_core::AccountId;
    use shortlinks_notes::classify::Classifier;
    use shortlinks_notes::gateway::contact_key;
    use shortlinks_notes::networks::ScannerNetworks;

    let settings = args.settings.over(file_layer(args.config.as_deref())?).resolve()?;
    let text = match file.as_os_str() == "-" {
        true => std::io::read_to_string(std::io::stdin())?,
        false => std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?,
    };
    let mut contacts = std::collections::HashMap::new();
    for code in shortlinks_notes::replay::codes(&text) {
        let reply =
            admin::command(&settings.storage, &settings.data_dir, AdminRequest::Resolve { code: code.clone() }).await?;
        if let AdminReply::Link { link: Some(link) } = reply {
            contacts.insert(code, contact_key(AccountId(link.account), EntityRef::contact(link.entity_id)));
        }
    }
    let clicks = &settings.clicks;
    let classifier = Classifier::new(ScannerNetworks::published_and(&clicks.scanner_networks));
    let replayed =
        shortlinks_notes::replay::replay(&text, &classifier, clicks.address_rule, |code| contacts.get(code).copied());
    let mut tally: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for r in &replayed {
        let address = r.address.map_or_else(|| "-".to_owned(), |a| a.to_string());
        println!("{}\t{}\t{address}\t{}", r.line, r.code, r.verdict);
        *tally.entry(r.verdict.to_string()).or_default() += 1;
    }
    for (verdict, n) in tally {
        eprintln!("{n:>8}  {verdict}");
    }
    Ok(())
}

fn unexpected(reply: AdminReply) -> anyhow::Result<()> {
    match reply {
        AdminReply::Failed { message } => bail!("{message}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}
