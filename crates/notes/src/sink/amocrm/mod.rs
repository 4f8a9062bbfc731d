//! The amoCRM sink: notes created in a real amoCRM account, in batches, inside its limits.
//!
//! - One request carries up to [`AmoCrmConfig::batching`] notes (`POST
//!   /api/v4/contacts/notes` takes an array), each with `request_id` = the note id, so that
//!   an answer maps back to its notes.
//! - Requests are paced before amoCRM would answer 429 (7 a second per integration): by
//!   default 5 a second, drawn from the store's rate limiter, so nodes sharing a store
//!   share the allowance. A 429 still pauses for its `retry_after`.
//! - A 400 naming notes in `validation-errors` sets exactly those aside; the others are
//!   sent again (amoCRM creates none of a batch it refuses).
//! - A 403 is amoCRM restricting the integration: a long pause, loudly, nothing dropped.
//! - Any other refusal that names no note (a 400 without `validation-errors`, which amoCRM
//!   answers when the account's rights or subscription end; a 402; a 404) is about the
//!   account: the same pause, and no note is set aside.
//! - amoCRM's API cannot create `link_followed` notes: the note is a `service_message`
//!   (or `common`) whose text carries the ORIGINAL URL, never the short one.
//! - amoCRM does not deduplicate by `request_id`: a request whose answer was lost (a
//!   timeout) is sent again, and its notes may then exist twice. Copies of a note in the
//!   queue are not sent again (`super::delivered`).

use std::time::Duration;

use hyper::header::{HeaderValue, AUTHORIZATION};
use hyper::Uri;
use serde_json::{json, Value};
use shortlinks_core::model::{Note, NoteBody};
use shortlinks_core::store::{CredentialStore, Rate};
use shortlinks_core::AccountId;

use super::http::{HttpAnswer, HttpClient};
use super::{Batching, NoteSink, SinkError};
use oauth::{OAuthApp, OAuthTokens};

pub mod connection;
mod connections;
pub mod install;
pub(super) mod oauth;
pub mod status;

pub use connections::{
    read_account, state_for, store_connection, AmoConnections, Connected, InstallSettings, DISCOVER_EVERY,
};

/// How often a connection amoCRM does not authorize is tried again.
const UNAUTHORIZED_RETRY: Duration = Duration::from_secs(60);
/// How often an uninstalled connection looks whether it was connected again (on another
/// node: this node's own connecting wakes it at once).
const DISCONNECTED_RETRY: Duration = Duration::from_secs(60);

/// How unevenly requests may reach amoCRM, within a second, and still count as paced.
pub const TRANSIT_JITTER: Duration = Duration::from_millis(30);

/// How the sink proves who it is.
#[derive(Clone, PartialEq, Eq)]
pub enum AmoCrmAuth {
    /// A long-lived token.
    Token(String),
    /// OAuth 2.0: the pair is in the store (`shortlinks amocrm connect` puts the first).
    OAuth(OAuthApp),
}

/// Never the token: settings may be printed.
impl std::fmt::Debug for AmoCrmAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token(…)"),
            Self::OAuth(app) => f.debug_tuple("OAuth").field(app).finish(),
        }
    }
}

/// The kind of note the manager sees; in settings, `service_message` or `common`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AmoNoteType {
    /// A service message from "shortlinks" (the default).
    #[default]
    ServiceMessage,
    /// An ordinary text note.
    Common,
}

impl std::str::FromStr for AmoNoteType {
    type Err = crate::Error;

    fn from_str(name: &str) -> Result<Self, crate::Error> {
        match name {
            "service_message" => Ok(Self::ServiceMessage),
            "common" => Ok(Self::Common),
            other => Err(crate::Error::Sink(format!("no note type {other:?}: service_message or common"))),
        }
    }
}

/// How the sink talks to one amoCRM account: a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmoCrmConfig {
    /// The shortlinks account whose notes go there, and only its.
    pub account: AccountId,
    /// `https://{subdomain}.amocrm.ru`, or a stand-in in tests.
    pub base: String,
    /// Token or OAuth.
    pub auth: AmoCrmAuth,
    /// The kind of note.
    pub note_type: AmoNoteType,
    /// Notes per request (at most 250, amoCRM's limit) and the linger of a short batch.
    pub batching: Batching,
    /// Requests a second, shared by the nodes of one store.
    pub rate: Rate,
    /// The pause after a 403, or a refusal of the account (see [`SinkError::AccountRefused`]).
    pub restricted_pause: Duration,
}

impl AmoCrmConfig {
    /// amoCRM's own limit of requests a second per integration.
    pub const AMOCRM_LIMIT_PER_SEC: u32 = 7;
    /// The most notes amoCRM takes in one request.
    pub const MAX_BATCH: usize = 250;
    /// The defaults: 50 notes a request, 200 ms linger, 5 requests a second, one at a
    /// time (no burst), a 15-minute pause after a 403.
    pub fn new(account: AccountId, base: String, auth: AmoCrmAuth) -> Self {
        Self {
            account,
            base,
            auth,
            note_type: AmoNoteType::default(),
            batching: Batching { max: 50, linger: Duration::from_millis(200) },
            rate: Rate::new(5, 1),
            restricted_pause: Duration::from_secs(900),
        }
    }
}

/// Credentials in the form each request needs.
enum Authorizer<S> {
    Token(HeaderValue),
    OAuth(Box<OAuthTokens<S>>),
}

/// Creates notes in one amoCRM account.
pub struct AmoCrmSink<S> {
    client: HttpClient,
    url: Uri,
    config: AmoCrmConfig,
    auth: Authorizer<S>,
    /// Where the connection's record is: read before each request, so that an uninstall
    /// seen by any node stops this one.
    store: S,
}

fn bearer(token: &str) -> Result<HeaderValue, SinkError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| SinkError::Permanent("the amoCRM token is not a valid header value".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

impl<S: CredentialStore + Clone> AmoCrmSink<S> {
    /// A sink for `config`; with OAuth, its pair is read from and written to `store`.
    pub fn new(client: HttpClient, config: AmoCrmConfig, store: S) -> Result<Self, crate::Error> {
        let base = &config.base;
        let url = format!("{}/api/v4/contacts/notes", base.trim_end_matches('/'))
            .parse()
            .map_err(|e| crate::Error::Sink(format!("amoCRM base URL {base:?}: {e}")))?;
        if config.batching.max == 0 || config.batching.max > AmoCrmConfig::MAX_BATCH {
            return Err(crate::Error::Sink(format!("amoCRM takes 1 to {} notes a request", AmoCrmConfig::MAX_BATCH)));
        }
        let auth = match &config.auth {
            AmoCrmAuth::Token(token) => {
                Authorizer::Token(bearer(token).map_err(|e| crate::Error::Sink(e.to_string()))?)
            }
            AmoCrmAuth::OAuth(app) => {
                let tokens = OAuthTokens::new(store.clone(), client.clone(), base, app.clone(), config.account)?;
                Authorizer::OAuth(Box::new(tokens))
            }
        };
        Ok(Self { client, url, config, auth, store })
    }

    /// Refuses to go on if amoCRM said the integration was uninstalled from the account.
    async fn installed(&self) -> Result<(), SinkError> {
        let stored = connection::load(&self.store, self.config.account)
            .await
            .map_err(|e| SinkError::Retry { reason: format!("the store: {e}"), after: None })?;
        match stored {
            Some(c) if !c.installed() => Err(SinkError::Disconnected {
                reason: format!("the integration was uninstalled from {}; connect it again", c.base),
                after: DISCONNECTED_RETRY,
            }),
            _ => Ok(()),
        }
    }

    /// The shortlinks account whose notes this sink takes.
    pub fn account(&self) -> AccountId {
        self.config.account
    }

    /// The note's text: what the manager reads in amoCRM.
    pub fn text(note: &Note) -> String {
        let NoteBody::LinkFollowed { url } = &note.body;
        format!("visited {url}")
    }

    /// One note as amoCRM's API takes it.
    fn item(&self, note: &Note) -> Value {
        let text = Self::text(note);
        let (note_type, params) = match self.config.note_type {
            AmoNoteType::ServiceMessage => ("service_message", json!({"service": "shortlinks", "text": text})),
            AmoNoteType::Common => ("common", json!({"text": text})),
        };
        json!({
            "entity_id": note.entity.id,
            "created_by": note.created_by.0,
            "created_at": note.created_at.as_secs(),
            "note_type": note_type,
            "params": params,
            "request_id": note.id.to_string(),
        })
    }

    async fn post(&self, body: &[u8], token: &HeaderValue) -> Result<HttpAnswer, SinkError> {
        let headers = [(AUTHORIZATION, token.clone())];
        self.client.post_json(&self.url, &headers, body.to_vec()).await
    }
}

impl<S: CredentialStore + Clone> NoteSink for AmoCrmSink<S> {
    fn name(&self) -> &'static str {
        "amocrm"
    }

    fn batching(&self) -> Batching {
        self.config.batching
    }

    /// amoCRM counts requests as they reach it, after a trip across the internet: the
    /// intervals leave room for [`TRANSIT_JITTER`] per second, so that amoCRM still sees
    /// at most `rate` in any second.
    fn pace(&self) -> Option<Rate> {
        let rate = self.config.rate;
        Some(Rate { headroom: TRANSIT_JITTER / rate.per_second.max(1), ..rate })
    }

    /// With OAuth: the access token is refreshed before it expires even when no note is
    /// sent, and with it the refresh token, which amoCRM rotates on every refresh and which
    /// would otherwise lapse after three months without a click.
    async fn upkeep(&self) -> Result<(), SinkError> {
        self.installed().await?;
        match &self.auth {
            Authorizer::Token(_) => Ok(()),
            Authorizer::OAuth(tokens) => tokens.access_token().await.map(drop),
        }
    }

    async fn deliver(&self, notes: &[Note]) -> Result<(), SinkError> {
        self.installed().await?;
        let body = Value::Array(notes.iter().map(|n| self.item(n)).collect()).to_string().into_bytes();
        let answer = match &self.auth {
            Authorizer::Token(token) => self.post(&body, token).await?,
            Authorizer::OAuth(tokens) => {
                let token = tokens.access_token().await?;
                let answer = self.post(&body, &bearer(&token)?).await?;
                if answer.status.as_u16() == 401 {
                    let renewed = tokens.after_rejection(&token).await?;
                    self.post(&body, &bearer(&renewed)?).await?
                } else {
                    answer
                }
            }
        };
        judge(answer, notes, self.config.restricted_pause)
    }
}

/// What amoCRM's answer means for the batch.
fn judge(answer: HttpAnswer, notes: &[Note], restricted_pause: Duration) -> Result<(), SinkError> {
    let status = answer.status;
    if status.is_success() {
        return Ok(());
    }
    let reason = format!("{status}: {}", String::from_utf8_lossy(&answer.body[..answer.body.len().min(300)]));
    let body: Option<Value> = serde_json::from_slice(&answer.body).ok();
    match status.as_u16() {
        // Only a 400 whose `validation-errors` name notes is about those notes.
        400 => match refused_notes(body.as_ref(), notes) {
            Some(refused) => Err(SinkError::Refused(refused)),
            None => Err(SinkError::AccountRefused { reason, pause: restricted_pause }),
        },
        403 => Err(SinkError::Restricted { reason, pause: restricted_pause }),
        429 => {
            let after =
                answer.retry_after.or_else(|| Some(Duration::from_secs(body.as_ref()?.get("retry_after")?.as_u64()?)));
            Err(SinkError::Retry { reason, after })
        }
        // 401: a token amoCRM no longer takes (after a refresh, for OAuth): the
        // connection must be made again; tried again meanwhile.
        401 => Err(SinkError::Unauthorized { reason, after: UNAUTHORIZED_RETRY }),
        408 | 425 => Err(SinkError::Retry { reason, after: None }),
        _ if status.is_server_error() => Err(SinkError::Retry { reason, after: None }),
        // Anything else (a 402, a 404 from a wrong address) names no note either: the
        // connection is at fault, and its notes wait for it.
        _ => Err(SinkError::AccountRefused { reason, pause: restricted_pause }),
    }
}

/// The notes a 400's `validation-errors` name by `request_id`, with amoCRM's words; `None`
/// if it names none of them (then the batch as a whole was refused).
fn refused_notes(body: Option<&Value>, notes: &[Note]) -> Option<Vec<(usize, String)>> {
    let errors = body?.get("validation-errors")?.as_array()?;
    let mut refused = Vec::new();
    for entry in errors {
        let Some(request_id) = entry.get("request_id").and_then(Value::as_str) else { continue };
        let Some(at) = notes.iter().position(|n| n.id.to_string() == request_id) else { continue };
        refused.push((at, format!("amoCRM refused the note: {}", entry.get("errors").unwrap_or(&Value::Null))));
    }
    (!refused.is_empty()).then_some(refused)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use hyper::StatusCode;
    use shortlinks_core::model::{AccountId, EntityRef, UserId};
    use shortlinks_core::{EntityType, Timestamp};

    use super::*;

    fn note(id: u64) -> Note {
        Note {
            id,
            account: AccountId(1),
            entity: EntityRef { kind: EntityType::Contacts, id },
            created_by: UserId(0),
            created_at: Timestamp(1_700_000_000_000),
            body: NoteBody::LinkFollowed {
                url: shortlinks_core::TargetUrl::parse("https://original.example/").unwrap(),
            },
        }
    }

    fn answer(status: u16, body: &str, retry_after: Option<u64>) -> HttpAnswer {
        HttpAnswer {
            status: StatusCode::from_u16(status).unwrap(),
            retry_after: retry_after.map(Duration::from_secs),
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn answers_map_to_what_the_worker_does() {
        let notes = [note(11), note(22), note(33)];
        let pause = Duration::from_secs(900);
        assert!(judge(answer(200, "{}", None), &notes, pause).is_ok());
        let named = r#"{"validation-errors":[{"request_id":"22","errors":[{"code":"NotFound","path":"entity_id"}]}]}"#;
        match judge(answer(400, named, None), &notes, pause) {
            Err(SinkError::Refused(refused)) => {
                assert_eq!(refused.len(), 1);
                assert_eq!(refused[0].0, 1);
                assert!(refused[0].1.contains("NotFound"), "{refused:?}");
            }
            other => panic!("{other:?}"),
        }
        let unknown = r#"{"validation-errors":[{"request_id":"99","errors":[]}]}"#;
        for (status, body) in [(400, unknown), (400, "not json"), (400, "{}"), (402, "{}"), (404, "")] {
            assert!(
                matches!(judge(answer(status, body, None), &notes, pause), Err(SinkError::AccountRefused { pause: p, .. }) if p == pause),
                "{status} {body}: the account, not a note"
            );
        }
        assert!(matches!(
            judge(answer(403, "{}", None), &notes, pause),
            Err(SinkError::Restricted { pause: p, .. }) if p == pause
        ));
        assert!(matches!(
            judge(answer(429, r#"{"retry_after":3}"#, None), &notes, pause),
            Err(SinkError::Retry { after: Some(d), .. }) if d == Duration::from_secs(3)
        ));
        assert!(matches!(
            judge(answer(429, r#"{"retry_after":3}"#, Some(5)), &notes, pause),
            Err(SinkError::Retry { after: Some(d), .. }) if d == Duration::from_secs(5)
        ));
        assert!(matches!(judge(answer(401, "", None), &notes, pause), Err(SinkError::Unauthorized { .. })));
        for status in [500, 502, 504] {
            assert!(matches!(judge(answer(status, "", None), &notes, pause), Err(SinkError::Retry { .. })), "{status}");
        }
    }
}
