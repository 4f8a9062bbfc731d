//! What the store keeps of each amoCRM connection beside its token pair: where the amoCRM
//! account is, which one it is, and whether the integration is installed there.
//!
//! Shared by every node of a store: the install flow and `shortlinks amocrm connect` write
//! it, amoCRM's uninstall hook marks it, each node's sink reads it before each request
//! (so an uninstall stops every node), and each node looks at [`INDEX`] now and then to
//! start the sinks of connections made on another node.
//!
//! Crash safety: a record is written (compare-and-swap, durable) before its account is
//! added to the index; a crash between the two leaves a record no node serves until it is
//! written again (by connecting again), never an index entry without a record.

use serde::{Deserialize, Serialize};
use shortlinks_core::store::{decode, encode, CredentialStore};
use shortlinks_core::{AccountId, Error};

/// The accounts that have a record, as one list: a node reads it to find connections made
/// elsewhere.
const INDEX: &str = "amocrm.connections";

/// The store's name for `account`'s record.
fn record_name(account: AccountId) -> String {
    format!("amocrm.connection:{}", account.0)
}

/// One account's connection, as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// The amoCRM account's API base, `https://{subdomain}.amocrm.ru` (or `.kommo.com`…).
    pub base: String,
    /// amoCRM's id of the account (from `/api/v4/account`); its uninstall hook names it.
    pub amo_account: Option<u64>,
    /// The account's subdomain, for people.
    pub subdomain: Option<String>,
    /// When it was last connected (Unix seconds).
    pub connected_at: u64,
    /// When amoCRM said the integration was uninstalled (Unix seconds), if it did since.
    pub disconnected_at: Option<u64>,
}

impl Connection {
    /// Connected now to the amoCRM account at `base`, not yet known by id.
    pub fn at(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            amo_account: None,
            subdomain: None,
            connected_at: shortlinks_core::Timestamp::now().as_secs(),
            disconnected_at: None,
        }
    }

    /// Whether notes may be sent.
    pub fn installed(&self) -> bool {
        self.disconnected_at.is_none()
    }
}

/// `account`'s record, if it has one.
pub async fn load<S: CredentialStore>(store: &S, account: AccountId) -> Result<Option<Connection>, Error> {
    match store.credential(&record_name(account)).await? {
        Some(bytes) if !bytes.is_empty() => Ok(Some(decode(&bytes)?)),
        _ => Ok(None),
    }
}

/// Writes `account`'s record, whatever is stored now, then lists the account in the index.
pub async fn save<S: CredentialStore>(store: &S, account: AccountId, connection: &Connection) -> Result<(), Error> {
    let name = record_name(account);
    let bytes = encode(connection)?;
    loop {
        let current = store.credential(&name).await?;
        if store.swap_credential(&name, current, bytes.clone()).await? {
            break;
        }
    }
    loop {
        let current = store.credential(INDEX).await?;
        let mut accounts: Vec<u64> = match &current {
            Some(bytes) if !bytes.is_empty() => decode(bytes)?,
            _ => Vec::new(),
        };
        if accounts.contains(&account.0) {
            return Ok(());
        }
        accounts.push(account.0);
        accounts.sort_unstable();
        if store.swap_credential(INDEX, current, encode(&accounts)?).await? {
            return Ok(());
        }
    }
}

/// Every account with a record, in order.
pub async fn accounts<S: CredentialStore>(store: &S) -> Result<Vec<AccountId>, Error> {
    match store.credential(INDEX).await? {
        Some(bytes) if !bytes.is_empty() => Ok(decode::<Vec<u64>>(&bytes)?.into_iter().map(AccountId).collect()),
        _ => Ok(Vec::new()),
    }
}

/// The account connected to amoCRM's account `amo_account`, with its record.
pub async fn by_amo_account<S: CredentialStore>(
    store: &S,
    amo_account: u64,
) -> Result<Option<(AccountId, Connection)>, Error> {
    for account in accounts(store).await? {
        if let Some(connection) = load(store, account).await?.filter(|c| c.amo_account == Some(amo_account)) {
            return Ok(Some((account, connection)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use shortlinks_core::MemoryStore;

    use super::*;

    fn connection(amo: u64) -> Connection {
        Connection {
            base: format!("https://a{amo}.amocrm.ru"),
            amo_account: Some(amo),
            subdomain: Some(format!("a{amo}")),
            connected_at: 1,
            disconnected_at: None,
        }
    }

    #[tokio::test]
    async fn records_are_found_by_account_and_by_amocrm_account() {
        let store = MemoryStore::new();
        assert_eq!(accounts(&store).await.unwrap(), []);
        save(&store, AccountId(7), &connection(70)).await.unwrap();
        save(&store, AccountId(3), &connection(30)).await.unwrap();
        let mut again = connection(70);
        again.disconnected_at = Some(5);
        save(&store, AccountId(7), &again).await.unwrap();
        assert_eq!(accounts(&store).await.unwrap(), [AccountId(3), AccountId(7)], "each account once");
        assert_eq!(load(&store, AccountId(7)).await.unwrap(), Some(again.clone()));
        assert!(!again.installed());
        assert_eq!(by_amo_account(&store, 30).await.unwrap(), Some((AccountId(3), connection(30))));
        assert_eq!(by_amo_account(&store, 31).await.unwrap(), None);
        assert_eq!(load(&store, AccountId(4)).await.unwrap(), None);
    }
}
