//! The records shortlinks keeps: links, clicks, notes and API tokens.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::code::ShortCode;
pub use crate::ids::{AccountId, EntityRef, EntityType, UserId};
use crate::target::TargetUrl;

/// Milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        Self(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// Whole seconds, as amoCRM reports times.
    pub fn as_secs(self) -> u64 {
        self.0 / 1000
    }
}

/// A short link: one code for one entity and one target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The code in the short URL.
    pub code: ShortCode,
    /// The account that owns the link.
    pub account: AccountId,
    /// The entity the link was made for.
    pub entity: EntityRef,
    /// Where the link redirects.
    pub target: TargetUrl,
    /// When it was first created.
    pub created_at: Timestamp,
    /// Who first created it.
    pub created_by: UserId,
}

impl Link {
    /// Whether two links are the same link: same account, entity and target.
    /// Creation time and author do not count, so a retry finds the original.
    pub fn same_identity(&self, other: &Link) -> bool {
        self.account == other.account && self.entity == other.entity && self.target == other.target
    }
}

/// The HTTP method of a click; HEAD is never a visit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClickMethod {
    /// A GET: possibly a person.
    Get,
    /// A HEAD: a machine checking the link.
    Head,
}

/// One request to a short link, as captured on the hot path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Click {
    /// The code that was requested.
    pub code: ShortCode,
    /// When the request arrived.
    pub at: Timestamp,
    /// GET or HEAD.
    pub method: ClickMethod,
    /// The `User-Agent` header, if any.
    pub user_agent: Option<String>,
    /// The `Referer` header, if any.
    pub referer: Option<String>,
    /// Prefetch hints (`Purpose`, `Sec-Purpose` and the like), joined, if any.
    pub prefetch: Option<String>,
    /// The client's address.
    pub client_ip: Option<IpAddr>,
    /// Tells this click from any other, even one from the same client in the same
    /// millisecond; kept with the click, so that a redelivered click is still the same one.
    pub nonce: u64,
    /// The navigation headers a browser sends; `None` for a click captured by a release
    /// that did not look (the outbox may still hold some after an upgrade).
    pub evidence: Option<BrowserEvidence>,
    /// The visit key, set by the writer that found the click a possible visit before it
    /// went into the outbox: the dispatcher then only checks it against the visits it
    /// remembers, without classifying and hashing the click again. `None` for a click
    /// not screened so (captured by an earlier release).
    pub visit_key: Option<[u8; 16]>,
}

/// Which of a browser's navigation headers a request carried, one bit each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrowserEvidence(pub u8);

impl BrowserEvidence {
    /// `Accept` naming `text/html`.
    pub const ACCEPTS_HTML: u8 = 1;
    /// `Accept-Language`, not empty.
    pub const ACCEPT_LANGUAGE: u8 = 2;
    /// `Sec-Fetch-Mode: navigate`.
    pub const NAVIGATE: u8 = 4;

    /// Whether the request carried none of the three.
    pub fn is_none(self) -> bool {
        self.0 & (Self::ACCEPTS_HTML | Self::ACCEPT_LANGUAGE | Self::NAVIGATE) == 0
    }
}

/// A click as releases before [`Click::visit_key`] wrote it: read, never written (but by
/// the test that writes one as they did). postcard writes a struct as its fields one after
/// another, so the earlier shape nested here reads the same bytes as its fields inline.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct ClickV2 {
    v1: ClickV1,
    evidence: Option<BrowserEvidence>,
}

/// A click as releases before [`Click::evidence`] wrote it: read, never written (but
/// by the test that writes one as they did).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct ClickV1 {
    code: ShortCode,
    at: Timestamp,
    method: ClickMethod,
    user_agent: Option<String>,
    referer: Option<String>,
    prefetch: Option<String>,
    client_ip: Option<IpAddr>,
    nonce: u64,
}

impl ClickV1 {
    /// The click, with what its shape did not record.
    fn into_click(self, evidence: Option<BrowserEvidence>) -> Click {
        Click {
            code: self.code,
            at: self.at,
            method: self.method,
            user_agent: self.user_agent,
            referer: self.referer,
            prefetch: self.prefetch,
            client_ip: self.client_ip,
            nonce: self.nonce,
            evidence,
            visit_key: None,
        }
    }
}

impl Click {
    /// Reads one outbox record (a group of clicks), in the current shape or an earlier
    /// one. A record of one shape never reads as another: each later shape adds an
    /// `Option` after the nonce, whose tag (0 or 1) an earlier shape would have to read as
    /// the next click's code length, and codes are longer than one character.
    pub fn decode_group(bytes: &[u8]) -> Result<Vec<Click>, crate::Error> {
        let current = match crate::codec::decode::<Vec<Click>>(bytes) {
            Ok(clicks) => return Ok(clicks),
            Err(e) => e,
        };
        if let Ok(v2) = crate::codec::decode::<Vec<ClickV2>>(bytes) {
            return Ok(v2.into_iter().map(|c| c.v1.into_click(c.evidence)).collect());
        }
        let v1 = crate::codec::decode::<Vec<ClickV1>>(bytes).map_err(|_| current)?;
        Ok(v1.into_iter().map(|c| c.into_click(None)).collect())
    }
}

/// Where an entry sits in a durable queue. Ordered; opaque to callers beyond that.
///
/// 128 bits, so that backends with two-part ids (a Redis stream's `ms-seq`) fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntryId(pub u128);

/// The last visit that became a note, per (link, client): what deduplication remembers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisitMark {
    /// When that visit happened.
    pub at: Timestamp,
    /// The note it became.
    pub note_id: u64,
}

/// A note on an entity, as kept in the notes journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// Stable id, derived from what caused the note, so that redelivery is idempotent.
    pub id: u64,
    /// The account the entity belongs to.
    pub account: AccountId,
    /// The entity the note is on.
    pub entity: EntityRef,
    /// The author: for a followed link, the link's creator.
    pub created_by: UserId,
    /// When the noted event happened.
    pub created_at: Timestamp,
    /// What the note says.
    pub body: NoteBody,
}

/// The content of a note.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoteBody {
    /// A person followed a link; `url` is the ORIGINAL target, never the short link.
    LinkFollowed {
        /// The original URL.
        url: TargetUrl,
    },
}

/// Which contacts a caller may make links for and read notes of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContactScope {
    /// Every contact of the account.
    All,
    /// Only these contacts.
    Only(ContactIds),
}

impl ContactScope {
    /// A scope of exactly these contacts, in any order.
    pub fn only(ids: Vec<u64>) -> Self {
        Self::Only(ContactIds::from(ids))
    }

    /// Whether the entity is inside the scope.
    pub fn allows(&self, entity: EntityRef) -> bool {
        match self {
            Self::All => true,
            Self::Only(ids) => entity.kind == EntityType::Contacts && ids.contains(entity.id),
        }
    }
}

/// Contact ids, sorted and without duplicates however they were given (a stored scope
/// too is sorted as it is read), so a lookup can search them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<u64>")]
pub struct ContactIds(Vec<u64>);

impl ContactIds {
    /// Whether `id` is one of them.
    pub fn contains(&self, id: u64) -> bool {
        self.0.binary_search(&id).is_ok()
    }

    /// The ids, ascending.
    pub fn as_slice(&self) -> &[u64] {
        &self.0
    }
}

impl From<Vec<u64>> for ContactIds {
    fn from(mut ids: Vec<u64>) -> Self {
        ids.sort_unstable();
        ids.dedup();
        Self(ids)
    }
}

/// Who is acting: an account, a user, and the contacts they have rights to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The account acted in.
    pub account: AccountId,
    /// The acting user.
    pub user: UserId,
    /// The user's rights.
    pub scope: ContactScope,
}

impl Principal {
    /// A principal with rights to every contact, for embedding hosts that check rights themselves.
    pub fn all_contacts(account: AccountId, user: UserId) -> Self {
        Self { account, user, scope: ContactScope::All }
    }
}

/// An API token as stored: never the token itself, only its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Public id, part of the token text, used to find the record and to revoke it.
    pub id: String,
    /// A hash of the whole token text.
    pub hash: [u8; 32],
    /// The principal the token acts as.
    pub account: AccountId,
    /// The user the token acts as.
    pub user: UserId,
    /// The token's rights.
    pub scope: ContactScope,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was revoked, if it was.
    pub revoked_at: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_records_of_the_earlier_shapes_are_still_read() {
        let code = ShortCode::from_key(b"AbCdEfGh1234").unwrap();
        let old = vec![ClickV1 {
            code,
            at: Timestamp(5),
            method: ClickMethod::Get,
            user_agent: Some("Mozilla/5.0".into()),
            referer: None,
            prefetch: None,
            client_ip: Some([192, 0, 2, 1].into()),
            nonce: 9,
        }];
        let clicks = Click::decode_group(&crate::codec::encode(&old).unwrap()).unwrap();
        assert_eq!(clicks.len(), 1);
        assert_eq!((clicks[0].nonce, clicks[0].evidence), (9, None), "evidence unknown, not absent");

        let evidence = Some(BrowserEvidence(BrowserEvidence::NAVIGATE));
        let v2: Vec<ClickV2> = ["AbCdEfGh1234", "ZyXwVu987654"]
            .iter()
            .map(|code| ClickV2 {
                v1: ClickV1 {
                    code: ShortCode::from_key(code.as_bytes()).unwrap(),
                    at: Timestamp(6),
                    method: ClickMethod::Get,
                    user_agent: Some("Mozilla/5.0".into()),
                    referer: None,
                    prefetch: None,
                    client_ip: None,
                    nonce: 10,
                },
                evidence,
            })
            .collect();
        let clicks = Click::decode_group(&crate::codec::encode(&v2).unwrap()).unwrap();
        assert_eq!(clicks.len(), 2);
        // As the release before wrote it: its fields inline, not nested.
        #[derive(Serialize)]
        struct Flat<'a>(ShortCode, Timestamp, ClickMethod, &'a Option<String>, None3, u64, Option<BrowserEvidence>);
        type None3 = (Option<u8>, Option<u8>, Option<u8>); // referer, prefetch, address: none
        let flat: Vec<Flat> = clicks
            .iter()
            .map(|c| Flat(c.code, c.at, c.method, &c.user_agent, (None, None, None), c.nonce, c.evidence))
            .collect();
        let mut bytes = crate::codec::encode(&flat).unwrap();
        assert_eq!(Click::decode_group(&bytes).unwrap(), clicks, "the nested shape reads the inline one");
        bytes.truncate(bytes.len() - 1);
        assert!(Click::decode_group(&bytes).is_err());
        assert!(clicks.iter().all(|c| c.evidence == evidence && c.visit_key.is_none()), "not screened: {clicks:?}");
        assert_eq!(clicks[1].code.as_str(), "ZyXwVu987654");

        let current: Vec<Click> =
            clicks.iter().enumerate().map(|(i, c)| Click { visit_key: Some([i as u8; 16]), ..c.clone() }).collect();
        assert_eq!(Click::decode_group(&crate::codec::encode(&current).unwrap()).unwrap(), current);
        assert!(Click::decode_group(&[1, 2, 3]).is_err(), "garbage is still an error");
    }
}
