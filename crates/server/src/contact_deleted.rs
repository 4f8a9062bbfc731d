//! amoCRM's "contact deleted" webhook, for the accounts that turn it on:
//! `POST /amocrm/contact-deleted/<account>/<secret>`, with amoCRM's form-encoded body
//! (`contacts[delete][0][id]=…&account[id]=…`). Each deleted contact is erased as
//! `shortlinks erase` does.
//!
//! The secret in the URL is the account's own, made by `shortlinks amocrm
//! contact-deleted-url` (which prints the URL to enter in amoCRM, and makes a new secret
//! each time); the store keeps only its blake3 hash. The body's `account[id]` must be the
//! amoCRM account connected to this account, so that a URL entered in the wrong amoCRM
//! account erases nothing. Anything refused is answered 403 and changes nothing.

use hyper::{Request, Response, StatusCode};
use shortlinks_core::store::CredentialStore;
use shortlinks_core::{random_base62, AccountId, EntityRef, Store};
use shortlinks_notes::erasure;
use shortlinks_notes::sink::amocrm::connection;

use crate::app::App;
use crate::problem::{self, Body};
use crate::ServerError;

/// Where the webhook is served: the account and the secret follow.
pub const PATH_PREFIX: &str = "/amocrm/contact-deleted/";

/// The most contacts one call erases: amoCRM sends deletions in small groups.
const MOST_PER_CALL: usize = 500;

/// The store's name for the hash of `account`'s secret (empty: turned off).
fn record_name(account: AccountId) -> String {
    format!("amocrm.contact-deleted:{}", account.0)
}

/// Turns the webhook on for `account` with a new secret, which it returns (the old one
/// stops working), or off.
pub async fn set<S: CredentialStore>(store: &S, account: AccountId, on: bool) -> Result<Option<String>, ServerError> {
    let secret = if on { Some(random_base62(32)?) } else { None };
    let hash = secret.as_ref().map_or_else(Vec::new, |s| blake3::hash(s.as_bytes()).as_bytes().to_vec());
    let name = record_name(account);
    loop {
        let current = store.credential(&name).await?;
        if store.swap_credential(&name, current, hash.clone()).await? {
            return Ok(secret);
        }
    }
}

/// Whether `secret` is `account`'s, in constant time.
async fn is_secret_of<S: CredentialStore>(store: &S, account: AccountId, secret: &str) -> Result<bool, ServerError> {
    let Some(stored) = store.credential(&record_name(account)).await? else { return Ok(false) };
    let Ok(stored) = <[u8; 32]>::try_from(stored.as_slice()) else { return Ok(false) };
    // blake3::Hash compares in constant time.
    Ok(blake3::hash(secret.as_bytes()) == blake3::Hash::from(stored))
}

/// What a call asks: amoCRM's account id and the contacts deleted there.
#[derive(Debug, PartialEq, Eq)]
struct Deleted {
    amo_account: Option<u64>,
    contacts: Vec<u64>,
}

/// Reads amoCRM's form: `contacts[delete][<n>][id]` (with `[type]`, when given, `contact`:
/// a company deleted is not a contact) and `account[id]`.
fn parse(body: &[u8]) -> Result<Deleted, String> {
    let mut amo_account = None;
    let mut items: std::collections::BTreeMap<String, (Option<u64>, Option<String>)> = Default::default();
    for (key, value) in url::form_urlencoded::parse(body) {
        if key == "account[id]" {
            amo_account = Some(value.parse::<u64>().map_err(|_| format!("account[id] is not a number: {value:?}"))?);
            continue;
        }
        let Some(rest) = key.strip_prefix("contacts[delete][") else { continue };
        let Some((n, field)) = rest.split_once("][") else { continue };
        let item = items.entry(n.to_owned()).or_default();
        match field {
            "id]" => item.0 = Some(value.parse().map_err(|_| format!("a contact id is not a number: {value:?}"))?),
            "type]" => item.1 = Some(value.into_owned()),
            _ => {}
        }
    }
    let contacts: Vec<u64> = items
        .into_values()
        .filter(|(_, kind)| kind.as_deref().is_none_or(|k| k == "contact"))
        .filter_map(|(id, _)| id)
        .collect();
    if contacts.len() > MOST_PER_CALL {
        return Err(format!("{} contacts in one call; at most {MOST_PER_CALL}", contacts.len()));
    }
    Ok(Deleted { amo_account, contacts })
}

impl<S: Store> App<S> {
    /// Whether `path` is the webhook's.
    pub(crate) fn is_contact_deleted(path: &str) -> bool {
        path.starts_with(PATH_PREFIX)
    }

    /// The webhook's answer.
    pub(crate) async fn contact_deleted<B>(&self, request: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let forbidden = || problem::text(StatusCode::FORBIDDEN, "forbidden\n");
        let path = request.uri().path().to_owned();
        let Some((account, secret)) = path.strip_prefix(PATH_PREFIX).and_then(|rest| rest.split_once('/')) else {
            return problem::not_found_page();
        };
        let Some(account) = account.parse::<u64>().ok().filter(|&id| id > 0).map(AccountId) else {
            return problem::not_found_page();
        };
        match is_secret_of(&self.store, account, secret).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(account = account.0, "a contact-deleted call with a wrong secret was refused");
                return forbidden();
            }
            Err(e) => return failed(&e),
        }
        let body = match self.body(request).await {
            Ok(body) => body,
            Err(refused) => return refused,
        };
        let deleted = match parse(&body) {
            Ok(deleted) => deleted,
            Err(why) => return problem::problem(StatusCode::BAD_REQUEST, &why),
        };
        let connected = match connection::load(&self.store, account).await {
            Ok(record) => record.and_then(|c| c.amo_account),
            Err(e) => return failed(&e.into()),
        };
        if connected.is_none() || connected != deleted.amo_account {
            tracing::warn!(
                account = account.0,
                amocrm = ?deleted.amo_account,
                "a contact-deleted call from an amoCRM account not connected to this account was refused"
            );
            return forbidden();
        }
        let entities: Vec<EntityRef> = deleted.contacts.iter().map(|&id| EntityRef::contact(id)).collect();
        for &entity in &entities {
            let erased = match erasure::erase(&self.engine, &self.store, account, entity).await {
                Ok(erased) => erased,
                Err(e) => return failed(&ServerError::Admin(e.to_string())),
            };
            tracing::info!(
                account = account.0,
                links = erased.links,
                notes = erased.notes,
                "erased a contact deleted in amoCRM"
            );
        }
        // Answered now: amoCRM waits for no sweep. One sweep for every contact of the call.
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = erasure::settle(&store, account, &entities).await {
                tracing::warn!(error = %e, account = account.0, "the sweep after an erasure failed; erase the contacts again");
            }
        });
        problem::text(StatusCode::OK, "ok\n")
    }
}

/// The store failed: amoCRM may call again.
fn failed(e: &ServerError) -> Response<Body> {
    tracing::error!(error = %e, "a contact-deleted call could not be carried out");
    problem::text(StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amocrms_form_gives_the_contacts_deleted_and_not_companies() {
        let body = b"contacts%5Bdelete%5D%5B0%5D%5Bid%5D=101&contacts%5Bdelete%5D%5B0%5D%5Btype%5D=contact\
&contacts%5Bdelete%5D%5B1%5D%5Bid%5D=202&contacts%5Bdelete%5D%5B1%5D%5Btype%5D=company\
&contacts%5Bdelete%5D%5B2%5D%5Bid%5D=303&account%5Bid%5D=29085955&account%5Bsubdomain%5D=example";
        assert_eq!(parse(body), Ok(Deleted { amo_account: Some(29085955), contacts: vec![101, 303] }));
        assert!(parse(b"contacts[delete][0][id]=x&account[id]=1").is_err());
        assert_eq!(parse(b"leads[delete][0][id]=5"), Ok(Deleted { amo_account: None, contacts: vec![] }));
    }
}
