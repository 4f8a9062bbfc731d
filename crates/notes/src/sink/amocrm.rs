//! The amoCRM sink: each note created in a real amoCRM account through its API.
//!
//! amoCRM's API cannot create `link_followed` notes, so the note is `common`, with a text
//! that carries the ORIGINAL URL. `request_id` is the note id, for deduplication on our side.

use hyper::header::{HeaderValue, AUTHORIZATION};
use hyper::Uri;
use serde_json::json;
use shortlinks_core::model::{Note, NoteBody};

use super::http::{judge, HttpAnswer, HttpClient};
use super::{NoteSink, SinkError};

/// Creates notes in one amoCRM account.
pub struct AmoCrmSink {
    client: HttpClient,
    url: Uri,
    authorization: HeaderValue,
}

impl AmoCrmSink {
    /// A sink for `base` (`https://{subdomain}.amocrm.ru`, or a stand-in in tests) with a
    /// long-lived token or an OAuth access token.
    pub fn new(client: HttpClient, base: &str, token: &str) -> Result<Self, String> {
        let url = format!("{}/api/v4/contacts/notes", base.trim_end_matches('/'))
            .parse()
            .map_err(|e| format!("amoCRM base URL {base:?}: {e}"))?;
        let mut authorization = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "amoCRM token is not a valid header value".to_string())?;
        authorization.set_sensitive(true);
        Ok(Self { client, url, authorization })
    }

    /// The note's text: what the manager reads in amoCRM.
    pub fn text(note: &Note) -> String {
        let NoteBody::LinkFollowed { url } = &note.body;
        format!("visited {url}")
    }
}

impl NoteSink for AmoCrmSink {
    fn name(&self) -> &'static str {
        "amocrm"
    }

    async fn deliver(&self, note: &Note) -> Result<(), SinkError> {
        let body = json!([{
            "entity_id": note.entity.id,
            "created_by": note.created_by.0,
            "created_at": note.created_at.as_secs(),
            "note_type": "common",
            "params": {"text": Self::text(note)},
            "request_id": note.id.to_string(),
        }]);
        let headers = [(AUTHORIZATION, self.authorization.clone())];
        let answer = self.client.post_json(&self.url, &headers, body.to_string().into_bytes()).await?;
        judge(&with_body_retry_after(answer))
    }
}

/// amoCRM may say how long to wait in the body (`retry_after`) as well as in the header.
fn with_body_retry_after(mut answer: HttpAnswer) -> HttpAnswer {
    if answer.retry_after.is_none() && answer.status.as_u16() == 429 {
        answer.retry_after = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| v.get("retry_after")?.as_u64())
            .map(std::time::Duration::from_secs);
    }
    answer
}
