//! The webhook sink: each note, as amoCRM-shaped JSON, POSTed to a URL, signed.
//!
//! Headers: `X-Shortlinks-Signature: sha256=<hex HMAC-SHA256(secret, body)>` and
//! `Idempotency-Key: <note id>` (also `X-Shortlinks-Note-Id`), so that a receiver can both
//! trust and deduplicate what it gets.

use hmac::{Hmac, Mac};
use hyper::header::{HeaderName, HeaderValue};
use hyper::Uri;
use sha2::Sha256;
use shortlinks_core::model::Note;

use super::http::{judge, HttpClient};
use super::{NoteSink, SinkError};
use crate::note::AmoNote;

/// Posts notes to one URL.
pub struct WebhookSink {
    client: HttpClient,
    url: Uri,
    secret: Vec<u8>,
}

impl WebhookSink {
    /// A sink posting to `url`, signing with `secret`.
    pub fn new(client: HttpClient, url: Uri, secret: impl Into<Vec<u8>>) -> Self {
        Self { client, url, secret: secret.into() }
    }
}

/// `sha256=<hex>` of the body under the secret.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256=");
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

impl NoteSink for WebhookSink {
    fn name(&self) -> &'static str {
        "webhook"
    }

    async fn deliver(&self, notes: &[Note]) -> Result<(), SinkError> {
        let [note] = notes else { return Err(SinkError::Permanent("the webhook takes one note at a time".into())) };
        let body = serde_json::to_vec(&AmoNote::of(note)).map_err(|e| SinkError::Permanent(e.to_string()))?;
        let signature =
            HeaderValue::from_str(&signature(&self.secret, &body)).map_err(|e| SinkError::Permanent(e.to_string()))?;
        let id = HeaderValue::from(note.id);
        let headers = [
            (HeaderName::from_static("x-shortlinks-signature"), signature),
            (HeaderName::from_static("idempotency-key"), id.clone()),
            (HeaderName::from_static("x-shortlinks-note-id"), id),
        ];
        judge(&self.client.post_json(&self.url, &headers, body).await?)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_is_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            super::signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
