//! Every amoCRM connection of a server, and the sinks that deliver for them: those its
//! settings name, those connected through the install flow (on this node or another),
//! connected again, or uninstalled.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use shortlinks_core::{AccountId, Store, Timestamp};

use super::connection::{self, Connection};
use super::install::{base_for_referer, uninstall_signed, StateKey, STATE_LIFETIME};
use super::oauth::{connect, store_pair, OAuthPair};
use super::{AmoCrmAuth, AmoCrmConfig, AmoCrmSink};
use crate::pipeline::{RouteFinder, Sinks};
use crate::sink::{HttpClient, SinkError};
use crate::Error;

/// How often a node looks for connections made on another node.
pub const DISCOVER_EVERY: Duration = Duration::from_secs(60);

/// What the install flow needs beyond the integration's OAuth settings.
#[derive(Clone, Debug)]
pub struct InstallSettings {
    /// A connection's settings (OAuth, note type, batching, pace) less its account and
    /// base, which each connection brings.
    pub template: AmoCrmConfig,
    /// Base URLs of amoCRM-like hosts taken as `referer` besides amoCRM's own domains.
    pub allowed_bases: Vec<String>,
}

/// What a successful install tells the person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connected {
    /// The shortlinks account.
    pub account: AccountId,
    /// The amoCRM account.
    pub connection: Connection,
}

/// The amoCRM connections, and the sinks that serve them.
pub struct AmoConnections<S> {
    store: S,
    http: HttpClient,
    sinks: Sinks<S>,
    install: Option<InstallSettings>,
    state_key: StateKey,
    /// Accounts whose connection the settings make: the install flow does not move them.
    configured: Vec<AmoCrmConfig>,
}

impl<S: Store> AmoConnections<S> {
    /// Starts a sink for each connection in `configured`, and, with `install`, for each
    /// connection stored by the install flow.
    pub async fn start(
        store: S,
        http: HttpClient,
        sinks: Sinks<S>,
        configured: Vec<AmoCrmConfig>,
        install: Option<InstallSettings>,
    ) -> Result<Self, Error> {
        let secret = store.load_or_create_secret().await?;
        let connections = Self { store, http, sinks, install, state_key: StateKey::derive(&secret), configured };
        for config in connections.configured.clone() {
            connections.serve(config)?;
        }
        connections.discover().await?;
        Ok(connections)
    }

    /// Starts the sinks of stored connections this node does not serve yet (made on
    /// another node, or before this one started).
    pub async fn discover(&self) -> Result<usize, Error> {
        self.discover_among(None).await
    }

    /// [`AmoConnections::discover`], for `among` only if given.
    async fn discover_among(&self, among: Option<&[AccountId]>) -> Result<usize, Error> {
        let Some(install) = &self.install else { return Ok(0) };
        let mut started = 0;
        for account in connection::accounts(&self.store).await? {
            if among.is_some_and(|among| !among.contains(&account)) || self.sinks.serves("amocrm", Some(account)) {
                continue;
            }
            if let Some(stored) = connection::load(&self.store, account).await? {
                let config = AmoCrmConfig { account, base: stored.base, ..install.template.clone() };
                started += usize::from(self.serve(config)?);
            }
        }
        Ok(started)
    }

    /// Starts a sink for `config` unless its account has one; true if it started one.
    fn serve(&self, config: AmoCrmConfig) -> Result<bool, Error> {
        let account = config.account;
        if self.sinks.serves("amocrm", Some(account)) {
            return Ok(false);
        }
        let sink = AmoCrmSink::new(self.http.clone(), config, self.store.clone())?;
        Ok(self.sinks.add(sink, Some(account)))
    }

    /// The Redirect URI's work: checks `state` and `referer`, exchanges `code` at the
    /// amoCRM account, reads which account it is, stores the pair and the connection, and
    /// starts (or resumes) its sink.
    pub async fn install(&self, state: &str, code: &str, referer: &str) -> Result<Connected, Error> {
        let Some(install) = &self.install else {
            return Err(Error::Connect("this server has no amoCRM integration configured".into()));
        };
        let AmoCrmAuth::OAuth(app) = &install.template.auth else {
            return Err(Error::Connect("this server's amoCRM integration has no OAuth settings".into()));
        };
        let (account, generation) = self.state_key.check(state, Timestamp::now())?;
        let stored = connection::load(&self.store, account).await?;
        if generation != stored.as_ref().map_or(0, |c| c.connected_at) {
            return Err(Error::Connect("this authorization link was used already: ask for a new one".into()));
        }
        let base = base_for_referer(referer, &install.allowed_bases)?;
        // An account stays with the amoCRM account it was first connected to: its sink
        // runs with that address, and its notes must never reach another.
        let bound = self.configured.iter().find(|c| c.account == account).map(|c| &c.base);
        if let Some(bound) = bound.or(stored.as_ref().map(|c| &c.base)).filter(|b| **b != base) {
            return Err(Error::Connect(format!(
                "account {} is connected to {bound}, not {base}: one shortlinks account has one amoCRM account",
                account.0
            )));
        }
        let pair = connect(&self.http, &base, app, code).await.map_err(refusal)?;
        let connection = read_account(&self.http, &base, &pair).await.map_err(refusal)?;
        self.connected(account, &pair, &connection).await?;
        Ok(Connected { account, connection })
    }

    /// Stores `account`'s new pair and connection (from the install flow or from
    /// `shortlinks amocrm connect`), and gets its sink delivering.
    pub async fn connected(&self, account: AccountId, pair: &OAuthPair, connection: &Connection) -> Result<(), Error> {
        store_connection(&self.store, account, pair, connection).await?;
        tracing::info!(account = account.0, amocrm = %connection.base, "amoCRM account connected");
        // An account in the settings has its sink already.
        if let (false, Some(install)) = (self.configured.iter().any(|c| c.account == account), &self.install) {
            self.serve(AmoCrmConfig { account, base: connection.base.clone(), ..install.template.clone() })?;
        }
        self.sinks.resume("amocrm", Some(account));
        Ok(())
    }

    /// amoCRM's uninstall hook: when signed with the integration's secret, marks the
    /// connection of amoCRM's account `amo_account` disconnected (its notes wait) and
    /// forgets its tokens, which amoCRM has revoked. The account it was, if any.
    pub async fn uninstall(
        &self,
        amo_account: &str,
        client_uuid: &str,
        signature: &str,
    ) -> Result<Option<AccountId>, Error> {
        let app = match self.install.as_ref().map(|i| &i.template.auth) {
            Some(AmoCrmAuth::OAuth(app)) => app,
            _ => return Err(Error::Connect("this server has no amoCRM integration configured".into())),
        };
        if !uninstall_signed(&app.client_id, &app.client_secret, amo_account, client_uuid, signature) {
            return Err(Error::Connect("the uninstall hook's signature is not valid".into()));
        }
        let Ok(amo_account) = amo_account.parse::<u64>() else { return Ok(None) };
        let Some((account, mut stored)) = connection::by_amo_account(&self.store, amo_account).await? else {
            return Ok(None);
        };
        stored.disconnected_at = Some(Timestamp::now().as_secs());
        connection::save(&self.store, account, &stored).await?;
        super::oauth::forget_pair(&self.store, account).await?;
        self.sinks.resume("amocrm", Some(account)); // shows the state at once
        tracing::warn!(account = account.0, amocrm = %stored.base, "amoCRM integration uninstalled: its notes are held");
        Ok(Some(account))
    }
}

/// Before a note of an account with no sink here is routed, the store's connections are
/// looked at: one small read per dispatched batch that holds such notes, and only with the
/// install flow on.
impl<S: Store> RouteFinder for AmoConnections<S> {
    fn find<'a>(
        &'a self,
        accounts: &'a [AccountId],
    ) -> Pin<Box<dyn Future<Output = Result<(), shortlinks_core::Error>> + Send + 'a>> {
        Box::pin(async move {
            match self.discover_among(Some(accounts)).await {
                Ok(_) => Ok(()),
                Err(Error::Store(e)) => Err(e),
                // A record the sink cannot be made from: its notes go to the journal only.
                Err(e) => {
                    tracing::error!(error = %e, "cannot start an amoCRM connection's sink");
                    Ok(())
                }
            }
        })
    }
}

/// A `state` for connecting `account`, with `key`.
pub async fn state_for<S: Store>(store: &S, key: &StateKey, account: AccountId) -> Result<String, Error> {
    let generation = connection::load(store, account).await?.map_or(0, |c| c.connected_at);
    let expires = Timestamp::now().as_secs() + STATE_LIFETIME.as_secs();
    Ok(key.state(account, expires, generation))
}

/// Stores `account`'s pair, then its connection record: the pair first, so a record
/// never says connected without one.
pub async fn store_connection<S: Store>(
    store: &S,
    account: AccountId,
    pair: &OAuthPair,
    connection: &Connection,
) -> Result<(), Error> {
    store_pair(store, account, pair).await?;
    connection::save(store, account, connection).await?;
    Ok(())
}

/// Which amoCRM account a new pair belongs to: `GET /api/v4/account`.
pub async fn read_account(client: &HttpClient, base: &str, pair: &OAuthPair) -> Result<Connection, SinkError> {
    let url = format!("{}/api/v4/account", base.trim_end_matches('/'))
        .parse()
        .map_err(|e| SinkError::Permanent(format!("amoCRM base URL {base:?}: {e}")))?;
    let token = super::bearer(&pair.access_token)?;
    let answer = client.get(&url, &[(hyper::header::AUTHORIZATION, token)]).await?;
    if !answer.status.is_success() {
        return Err(SinkError::Permanent(format!("amoCRM did not tell which account this is: {}", answer.status)));
    }
    #[derive(serde::Deserialize)]
    struct Account {
        id: u64,
        subdomain: Option<String>,
    }
    let account: Account = serde_json::from_slice(&answer.body)
        .map_err(|e| SinkError::Permanent(format!("amoCRM's account answer is not understood: {e}")))?;
    Ok(Connection { amo_account: Some(account.id), subdomain: account.subdomain, ..Connection::at(base) })
}

fn refusal(e: SinkError) -> Error {
    Error::Connect(format!("amoCRM did not connect: {e}"))
}
