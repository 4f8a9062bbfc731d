//! amoCRM's OAuth 2.0: an access token kept fresh from a refresh token that amoCRM rotates
//! on every use.
//!
//! Each connected account has its own pair, in the store under [`oauth_credential`], shared
//! by every node.
//!
//! Crash safety: a refresh first leases the stored pair (compare-and-swap, so one node
//! refreshes at a time), then asks amoCRM, then writes the new pair durably and only then
//! uses it. A crash after the write finds the new pair on restart. A crash while amoCRM's
//! answer is on its way (between amoCRM rotating and the write, a few milliseconds) loses
//! the new pair: the integration must be connected again (`shortlinks amocrm connect`). A
//! lease left by a crashed node lapses after [`LEASE`].
//!
//! A new pair the store does not take (it is out of reach) is the only valid pair there
//! is: it is kept in memory and used, and written before anything else once the store
//! takes writes again. Until then a crash of this node loses it, as above.

use std::time::Duration;

use hyper::Uri;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use shortlinks_core::store::{decode, encode, CredentialStore};
use shortlinks_core::{AccountId, Timestamp};

use crate::sink::http::HttpClient;
use crate::sink::SinkError;

/// Where the store keeps the pair before each account had its own.
const LEGACY_CREDENTIAL: &str = "amocrm.oauth";

/// The store's name for `account`'s pair.
pub fn oauth_credential(account: AccountId) -> String {
    format!("{LEGACY_CREDENTIAL}:{}", account.0)
}
/// How long a node may take over a refresh before another may try.
const LEASE: Duration = Duration::from_secs(30);
/// An access token is refreshed this long before it expires.
const EARLY: Duration = Duration::from_secs(300);
/// How long to wait before asking again when amoCRM is not connected or refuses.
const NOT_CONNECTED_RETRY: Duration = Duration::from_secs(60);

/// The integration as registered in amoCRM.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthApp {
    /// The integration's id.
    pub client_id: String,
    /// Its secret key.
    pub client_secret: String,
    /// The redirect URI registered with it.
    pub redirect_uri: String,
}

/// Never the secret: settings may be printed.
impl std::fmt::Debug for OAuthApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthApp")
            .field("client_id", &self.client_id)
            .field("client_secret", &"…")
            .field("redirect_uri", &self.redirect_uri)
            .finish()
    }
}

/// The stored pair, with the lease of the node refreshing it, if any.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthPair {
    /// Sent as `Authorization: Bearer`.
    pub access_token: String,
    /// Exchanged for the next pair; amoCRM retires it on use.
    pub refresh_token: String,
    /// When the access token expires (Unix seconds).
    pub expires_at: u64,
    /// `(node, until, in Unix milliseconds)` while a node refreshes.
    pub refreshing: Option<(u64, u64)>,
}

/// Never the tokens themselves: they must not reach a log.
impl std::fmt::Debug for OAuthPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthPair")
            .field("access_token", &"…")
            .field("refresh_token", &"…")
            .field("expires_at", &self.expires_at)
            .field("refreshing", &self.refreshing)
            .finish()
    }
}

impl OAuthPair {
    fn fresh(&self, now: Timestamp) -> bool {
        self.expires_at.saturating_mul(1000) > now.0.saturating_add(EARLY.as_millis() as u64)
    }
}

/// What a grant asks amoCRM for.
enum Grant<'a> {
    Code(&'a str),
    Refresh(&'a str),
}

/// Exchanges a grant for a pair at `{base}/oauth2/access_token`.
async fn exchange(
    client: &HttpClient,
    token_url: &Uri,
    app: &OAuthApp,
    grant: Grant<'_>,
) -> Result<OAuthPair, SinkError> {
    let mut body = serde_json::json!({
        "client_id": app.client_id,
        "client_secret": app.client_secret,
        "redirect_uri": app.redirect_uri,
    });
    match grant {
        Grant::Code(code) => {
            body["grant_type"] = "authorization_code".into();
            body["code"] = code.into();
        }
        Grant::Refresh(token) => {
            body["grant_type"] = "refresh_token".into();
            body["refresh_token"] = token.into();
        }
    }
    let answer = client.post_json(token_url, &[], body.to_string().into_bytes()).await?;
    if !answer.status.is_success() {
        // The body may echo what was sent; only the status is told.
        let reason = format!("amoCRM refused the token exchange: {}", answer.status);
        return Err(match answer.status.is_server_error() || answer.status.as_u16() == 429 {
            true => SinkError::Retry { reason, after: answer.retry_after },
            false => SinkError::Unauthorized {
                reason: format!("{reason}; connect the integration again"),
                after: NOT_CONNECTED_RETRY,
            },
        });
    }
    #[derive(Deserialize)]
    struct Answer {
        access_token: String,
        refresh_token: String,
        expires_in: u64,
    }
    let parsed: Answer = serde_json::from_slice(&answer.body).map_err(|e| SinkError::Retry {
        reason: format!("amoCRM's token answer is not understood: {e}"),
        after: None,
    })?;
    Ok(OAuthPair {
        access_token: parsed.access_token,
        refresh_token: parsed.refresh_token,
        expires_at: Timestamp::now().as_secs().saturating_add(parsed.expires_in),
        refreshing: None,
    })
}

/// The token endpoint under an amoCRM base URL.
pub(crate) fn token_url(base: &str) -> Result<Uri, crate::Error> {
    format!("{}/oauth2/access_token", base.trim_end_matches('/'))
        .parse()
        .map_err(|e| crate::Error::Sink(format!("amoCRM base URL {base:?}: {e}")))
}

/// Exchanges an authorization code for the first pair and stores it, replacing any pair
/// there: what `shortlinks amocrm connect` does.
pub async fn connect(client: &HttpClient, base: &str, app: &OAuthApp, code: &str) -> Result<OAuthPair, SinkError> {
    let url = token_url(base).map_err(|e| SinkError::Permanent(e.to_string()))?;
    exchange(client, &url, app, Grant::Code(code)).await
}

/// Stores `pair` as `account`'s, whatever is stored now.
pub async fn store_pair<S: CredentialStore>(
    store: &S,
    account: AccountId,
    pair: &OAuthPair,
) -> Result<(), shortlinks_core::Error> {
    store_pair_as(store, &oauth_credential(account), pair).await
}

async fn store_pair_as<S: CredentialStore>(
    store: &S,
    name: &str,
    pair: &OAuthPair,
) -> Result<(), shortlinks_core::Error> {
    let bytes = encode(pair)?;
    loop {
        let current = store.credential(name).await?;
        if store.swap_credential(name, current, bytes.clone()).await? {
            return Ok(());
        }
    }
}

/// Forgets `account`'s pair (amoCRM revoked it: the integration was uninstalled).
pub(crate) async fn forget_pair<S: CredentialStore>(
    store: &S,
    account: AccountId,
) -> Result<(), shortlinks_core::Error> {
    let name = oauth_credential(account);
    loop {
        let current = store.credential(&name).await?;
        if current.as_ref().is_none_or(Vec::is_empty) || store.swap_credential(&name, current, Vec::new()).await? {
            return Ok(());
        }
    }
}

/// Makes the pair a release before per-account pairs stored the pair of `account` (the
/// one account it delivered for), unless `account` has one already; true if it did. The
/// old place is emptied, so that the pair, which amoCRM rotates, lives in one place only.
pub async fn adopt_legacy_pair<S: CredentialStore>(
    store: &S,
    account: AccountId,
) -> Result<bool, shortlinks_core::Error> {
    let Some(bytes) = store.credential(LEGACY_CREDENTIAL).await?.filter(|b| !b.is_empty()) else { return Ok(false) };
    let adopted = store.swap_credential(&oauth_credential(account), None, bytes.clone()).await?;
    store.swap_credential(LEGACY_CREDENTIAL, Some(bytes), Vec::new()).await?;
    Ok(adopted)
}

/// Access tokens for one integration, from the store, refreshed when needed.
pub(crate) struct OAuthTokens<S> {
    store: S,
    /// Where the store keeps this account's pair.
    credential: String,
    client: HttpClient,
    token_url: Uri,
    app: OAuthApp,
    /// This process, as a lease holder.
    me: u64,
    cached: Mutex<Option<OAuthPair>>,
    /// A pair amoCRM gave whose write to the store failed: amoCRM has retired the one
    /// stored, so this one is the only pair there is. Used, and written before anything
    /// else is done, until the store takes it.
    unsaved: Mutex<Option<OAuthPair>>,
}

fn store_failure(e: shortlinks_core::Error) -> SinkError {
    SinkError::Retry { reason: format!("the store: {e}"), after: None }
}

impl<S: CredentialStore> OAuthTokens<S> {
    pub(crate) fn new(
        store: S,
        client: HttpClient,
        base: &str,
        app: OAuthApp,
        account: AccountId,
    ) -> Result<Self, crate::Error> {
        let mut me = [0u8; 8];
        getrandom::getrandom(&mut me).map_err(|e| crate::Error::Random(e.to_string()))?;
        Ok(Self {
            store,
            credential: oauth_credential(account),
            client,
            token_url: token_url(base)?,
            app,
            me: u64::from_le_bytes(me),
            cached: Mutex::new(None),
            unsaved: Mutex::new(None),
        })
    }

    /// A fresh access token: the one in hand, or the stored one, or a new one.
    pub(crate) async fn access_token(&self) -> Result<String, SinkError> {
        self.save_unsaved().await;
        if let Some(pair) = self.cached.lock().as_ref().filter(|p| p.fresh(Timestamp::now())) {
            return Ok(pair.access_token.clone());
        }
        self.renew(None).await
    }

    /// After amoCRM answered 401 to `rejected`: another node's newer token, or a refresh.
    pub(crate) async fn after_rejection(&self, rejected: &str) -> Result<String, SinkError> {
        self.cached.lock().take();
        self.renew(Some(rejected)).await
    }

    /// Writes the pair the store did not take before, if there is one.
    async fn save_unsaved(&self) {
        let Some(pair) = self.unsaved.lock().clone() else { return };
        match store_pair_as(&self.store, &self.credential, &pair).await {
            Ok(()) => {
                self.unsaved.lock().take();
                tracing::info!("stored the amoCRM token pair that the store had refused");
            }
            Err(e) => tracing::error!(error = %e, "the amoCRM token pair is still not stored; kept in memory, retried"),
        }
    }

    async fn renew(&self, rejected: Option<&str>) -> Result<String, SinkError> {
        if let Some(pair) = self.unsaved.lock().clone() {
            // The only pair there is: not stored yet (this node holds the refresh lease).
            if Some(pair.access_token.as_str()) != rejected && pair.fresh(Timestamp::now()) {
                return Ok(pair.access_token);
            }
        }
        loop {
            let stored = self.store.credential(&self.credential).await.map_err(store_failure)?;
            let Some(bytes) = stored.filter(|b| !b.is_empty()) else {
                return Err(SinkError::Unauthorized {
                    reason: "amoCRM is not connected for this account: run `shortlinks amocrm connect --account \
                             <id> --code <authorization code>`"
                        .into(),
                    after: NOT_CONNECTED_RETRY,
                });
            };
            let pair: OAuthPair = decode(&bytes).map_err(store_failure)?;
            let now = Timestamp::now();
            if Some(pair.access_token.as_str()) != rejected && pair.fresh(now) {
                *self.cached.lock() = Some(pair.clone());
                return Ok(pair.access_token);
            }
            if let Some((holder, until)) = pair.refreshing {
                if holder != self.me && until > now.0 {
                    tokio::time::sleep(Duration::from_millis(200)).await; // another node refreshes
                    continue;
                }
            }
            let unleased = OAuthPair { refreshing: None, ..pair.clone() };
            let leased = OAuthPair { refreshing: Some((self.me, now.0 + LEASE.as_millis() as u64)), ..pair };
            let leased_bytes = encode(&leased).map_err(store_failure)?;
            if !self
                .store
                .swap_credential(&self.credential, Some(bytes), leased_bytes.clone())
                .await
                .map_err(store_failure)?
            {
                continue;
            }
            match exchange(&self.client, &self.token_url, &self.app, Grant::Refresh(&leased.refresh_token)).await {
                Ok(new) => {
                    // amoCRM has retired the old refresh token: the new pair is stored
                    // durably before anything uses it. If the store cannot take it now, it
                    // is kept in memory and written as soon as the store can: dropping it
                    // would strand the connection.
                    if let Err(e) = store_pair_as(&self.store, &self.credential, &new).await {
                        tracing::error!(error = %e, "cannot store the refreshed amoCRM token pair; kept in memory, retried");
                        *self.unsaved.lock() = Some(new.clone());
                    } else {
                        tracing::info!("refreshed the amoCRM access token");
                    }
                    *self.cached.lock() = Some(new.clone());
                    return Ok(new.access_token);
                }
                Err(e) => {
                    let back = encode(&unleased).map_err(store_failure)?;
                    if let Err(release) = self.store.swap_credential(&self.credential, Some(leased_bytes), back).await {
                        tracing::warn!(error = %release, "cannot release the refresh lease; it lapses by itself");
                    }
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use shortlinks_core::MemoryStore;

    use super::*;
    use crate::stand_in::{AmoCrmStandIn, StandInOptions};

    const ACCOUNT: AccountId = AccountId(3);

    fn app() -> OAuthApp {
        OAuthApp { client_id: "id".into(), client_secret: "secret".into(), redirect_uri: "https://x.example/cb".into() }
    }

    async fn connected(access_ttl: Duration) -> (AmoCrmStandIn, MemoryStore, HttpClient) {
        let options = StandInOptions {
            oauth: Some(("id".into(), "secret".into(), "code".into())),
            access_ttl: Some(access_ttl),
            ..Default::default()
        };
        let stand_in = AmoCrmStandIn::start(options).await.unwrap();
        let (store, client) = (MemoryStore::new(), HttpClient::new(Duration::from_secs(5)));
        let pair = connect(&client, &stand_in.url, &app(), "code").await.unwrap();
        store_pair(&store, ACCOUNT, &pair).await.unwrap();
        (stand_in, store, client)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_token_near_its_expiry_is_refreshed_before_use() {
        let (stand_in, store, client) = connected(Duration::from_secs(3600)).await;
        let tokens = OAuthTokens::new(store.clone(), client.clone(), &stand_in.url, app(), ACCOUNT).unwrap();
        assert_eq!(tokens.access_token().await.unwrap(), "access-1");
        assert_eq!(stand_in.refreshes(), 0);

        // Within five minutes of expiry: refreshed before anything is sent with it.
        let (stand_in, store, client) = connected(Duration::from_secs(200)).await;
        let tokens = OAuthTokens::new(store.clone(), client, &stand_in.url, app(), ACCOUNT).unwrap();
        assert_eq!(tokens.access_token().await.unwrap(), "access-2");
        assert_eq!(stand_in.refreshes(), 1);
        let stored: OAuthPair = decode(&store.credential(&oauth_credential(ACCOUNT)).await.unwrap().unwrap()).unwrap();
        assert_eq!((stored.access_token.as_str(), stored.refresh_token.as_str()), ("access-2", "refresh-2"));
        assert_eq!(stored.refreshing, None, "the lease is gone with the refresh");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_sharing_a_store_refresh_once() {
        let (stand_in, store, client) = connected(Duration::from_secs(3600)).await;
        let nodes: Vec<_> = (0..4)
            .map(|_| OAuthTokens::new(store.clone(), client.clone(), &stand_in.url, app(), ACCOUNT).unwrap())
            .collect();
        // Every node is told its token was refused: one refreshes, the others take its pair.
        let renewed = futures_util::future::join_all(nodes.iter().map(|n| n.after_rejection("access-1"))).await;
        assert!(renewed.iter().all(|t| t.as_deref().ok() == Some("access-2")), "{renewed:?}");
        assert_eq!(stand_in.refreshes(), 1, "one refresh for all nodes");
    }
}
