//! How each amoCRM connection stands, read from the store alone, so that any node, or a
//! command with no server running, can tell: `shortlinks amocrm status`.

use serde::{Deserialize, Serialize};
use shortlinks_core::store::decode;
use shortlinks_core::{AccountId, Store};

use super::connection;
use super::oauth::{oauth_credential, OAuthPair};
use crate::sink::dead_letter::DeadLetters;
use crate::sink::{standing, SinkKeys};
use crate::Error;

/// One connection, as the store has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionStatus {
    /// The shortlinks account.
    pub account: u64,
    /// The amoCRM account's address, if the store knows it (a connection made in the
    /// settings with a token has no record).
    pub amocrm: Option<String>,
    /// `connected`, `paused`, `needs_reconnect`, `refused`, `disconnected`, or `unknown`
    /// when no node has delivered or tried yet.
    pub state: String,
    /// Since when (Unix seconds), if known.
    pub since: Option<u64>,
    /// Until when a pause lasts (Unix seconds).
    pub until: Option<u64>,
    /// Notes waiting in its queue.
    pub backlog: u64,
    /// Its dead letters.
    pub dead_letters: usize,
    /// When its OAuth access token expires (Unix seconds); `None` without a pair.
    pub token_expires: Option<u64>,
    /// Notes delivered since the server answering started (only when one answers).
    pub delivered: Option<u64>,
}

/// The status of `accounts`' connections and of every one the store records, by account.
pub async fn status<S: Store>(store: &S, accounts: &[AccountId]) -> Result<Vec<ConnectionStatus>, Error> {
    let mut all: Vec<AccountId> = connection::accounts(store).await?;
    all.extend_from_slice(accounts);
    all.sort_unstable();
    all.dedup();
    let mut out = Vec::with_capacity(all.len());
    for account in all {
        let keys = SinkKeys::new("amocrm", Some(account));
        let record = connection::load(store, account).await?;
        let standing = standing::read(store, &keys.label).await?;
        let (state, since, until) = match (&record, standing) {
            (Some(r), _) if !r.installed() => ("disconnected".to_owned(), r.disconnected_at, None),
            (_, Some(s)) => (s.state, Some(s.since), s.until),
            (_, None) => ("unknown".to_owned(), None, None),
        };
        let pair = match store.credential(&oauth_credential(account)).await? {
            Some(bytes) if !bytes.is_empty() => Some(decode::<OAuthPair>(&bytes)?),
            _ => None,
        };
        out.push(ConnectionStatus {
            account: account.0,
            amocrm: record.map(|r| r.subdomain.map_or(r.base.clone(), |sub| format!("{sub} ({})", r.base))),
            state,
            since,
            until,
            backlog: store.depth(&keys.queue()).await?,
            dead_letters: DeadLetters::new(store, keys, account).list(0).await?.0,
            token_expires: pair.map(|p| p.expires_at),
            delivered: None,
        });
    }
    Ok(out)
}
