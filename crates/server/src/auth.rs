//! API tokens: issued at random, stored only as a hash, checked in constant time.
//!
//! A token reads `sl_<id>_<secret>`. The id is public: it finds the record and names the
//! token in `token list` and `token revoke`. The secret is ~238 bits from the OS; only a
//! blake3 hash of the whole token is stored, so a copy of the database grants nothing.

use hyper::header::HeaderValue;
use shortlinks_core::model::ApiToken;
use shortlinks_core::store::TokenStore;
use shortlinks_core::{random_base62, AccountId, ContactScope, Principal, Timestamp, UserId};

use crate::ServerError;

const PREFIX: &str = "sl_";
const ID_LEN: usize = 10;
const SECRET_LEN: usize = 40;

/// A newly issued token: the text, shown once, and the record to store.
#[derive(Debug)]
pub struct IssuedToken {
    /// The token itself; never stored.
    pub text: String,
    /// What is stored.
    pub record: ApiToken,
}

/// Why a request is not authenticated; each is a 401.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header.
    Missing,
    /// Not `Bearer sl_<id>_<secret>`.
    Malformed,
    /// No such token, or the secret does not match.
    Unknown,
    /// The token was revoked.
    Revoked,
}

impl AuthFailure {
    /// The detail of the 401 response.
    pub fn detail(&self) -> &'static str {
        match self {
            Self::Missing => "An Authorization: Bearer token is required",
            Self::Malformed => "The Authorization header is not a valid Bearer token",
            Self::Unknown => "The token is not valid",
            Self::Revoked => "The token has been revoked",
        }
    }
}

/// Makes a new token for a principal.
pub fn issue(account: AccountId, user: UserId, scope: ContactScope) -> Result<IssuedToken, ServerError> {
    let id = random_base62(ID_LEN)?;
    let text = format!("{PREFIX}{id}_{}", random_base62(SECRET_LEN)?);
    let record = ApiToken {
        id,
        hash: *blake3::hash(text.as_bytes()).as_bytes(),
        account,
        user,
        scope,
        created_at: Timestamp::now(),
        revoked_at: None,
    };
    Ok(IssuedToken { text, record })
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Who it acts as.
    pub principal: Principal,
    /// The public id of its token: rate limits are per token.
    pub token_id: String,
}

/// The caller a request comes from, by its `Authorization` header.
pub async fn authenticate<S: TokenStore>(
    store: &S,
    header: Option<&HeaderValue>,
) -> Result<Result<Caller, AuthFailure>, shortlinks_core::Error> {
    let Some(header) = header else { return Ok(Err(AuthFailure::Missing)) };
    let Some(text) = header.to_str().ok().and_then(bearer_token) else {
        return Ok(Err(AuthFailure::Malformed));
    };
    let Some(id) = token_id(text) else { return Ok(Err(AuthFailure::Malformed)) };
    let Some(record) = store.get_token(id).await? else { return Ok(Err(AuthFailure::Unknown)) };
    // blake3::Hash compares in constant time.
    if blake3::hash(text.as_bytes()) != blake3::Hash::from(record.hash) {
        return Ok(Err(AuthFailure::Unknown));
    }
    if record.revoked_at.is_some() {
        return Ok(Err(AuthFailure::Revoked));
    }
    let principal = Principal { account: record.account, user: record.user, scope: record.scope };
    Ok(Ok(Caller { principal, token_id: record.id }))
}

/// The credentials of a `Bearer` header; the scheme name is case-insensitive (RFC 9110, 11.1).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The id inside a well-formed token.
fn token_id(text: &str) -> Option<&str> {
    let rest = text.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let well_formed = id.len() == ID_LEN
        && secret.len() == SECRET_LEN
        && id.bytes().chain(secret.bytes()).all(|b| b.is_ascii_alphanumeric());
    well_formed.then_some(id)
}

#[cfg(test)]
mod tests {
    use shortlinks_core::MemoryStore;

    use super::*;

    fn bearer(s: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {s}")).unwrap()
    }

    #[tokio::test]
    async fn issued_tokens_authenticate_until_revoked() {
        let store = MemoryStore::new();
        let issued = issue(AccountId(4), UserId(5), ContactScope::only(vec![9])).unwrap();
        assert!(issued.text.starts_with("sl_") && issued.text.len() == 3 + ID_LEN + 1 + SECRET_LEN);
        assert!(!format!("{:?}", issued.record).contains(&issued.text[14..]), "the secret is not stored");
        store.put_token(issued.record.clone()).await.unwrap();

        let who = authenticate(&store, Some(&bearer(&issued.text))).await.unwrap().unwrap().principal;
        assert_eq!((who.account, who.user, who.scope), (AccountId(4), UserId(5), ContactScope::only(vec![9])));
        for scheme in ["bearer", "BEARER", "bEaReR"] {
            let header = HeaderValue::from_str(&format!("{scheme} {}", issued.text)).unwrap();
            assert!(authenticate(&store, Some(&header)).await.unwrap().is_ok(), "the scheme {scheme} is refused");
        }
        let basic = HeaderValue::from_str(&format!("Basic {}", issued.text)).unwrap();
        assert_eq!(authenticate(&store, Some(&basic)).await.unwrap(), Err(AuthFailure::Malformed));

        let mut revoked = issued.record.clone();
        revoked.revoked_at = Some(Timestamp::now());
        store.put_token(revoked).await.unwrap();
        assert_eq!(authenticate(&store, Some(&bearer(&issued.text))).await.unwrap(), Err(AuthFailure::Revoked));
    }

    #[tokio::test]
    async fn everything_else_is_refused() {
        let store = MemoryStore::new();
        let issued = issue(AccountId(1), UserId(1), ContactScope::All).unwrap();
        store.put_token(issued.record.clone()).await.unwrap();
        let mut wrong_secret = issued.text.clone();
        wrong_secret.pop();
        wrong_secret.push(if issued.text.ends_with('a') { 'b' } else { 'a' });
        let other = issue(AccountId(1), UserId(1), ContactScope::All).unwrap();

        assert_eq!(authenticate(&store, None).await.unwrap(), Err(AuthFailure::Missing));
        for (header, want) in [
            (HeaderValue::from_static("Basic abc"), AuthFailure::Malformed),
            (bearer("nonsense"), AuthFailure::Malformed),
            (HeaderValue::from_str(&issued.text).unwrap(), AuthFailure::Malformed),
            (bearer(&wrong_secret), AuthFailure::Unknown),
            (bearer(&other.text), AuthFailure::Unknown),
        ] {
            assert_eq!(authenticate(&store, Some(&header)).await.unwrap(), Err(want), "{header:?}");
        }
    }
}
