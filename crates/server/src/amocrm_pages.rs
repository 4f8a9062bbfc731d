//! amoCRM's two calls to the integration, served on the public listener:
//! - the Redirect URI (`GET ?code=…&referer=…&state=…`), where amoCRM sends the person who
//!   granted access: answered with a short page saying the account is connected, or why not;
//! - the uninstall hook (`GET ?account_id=…&client_uuid=…&signature=…`).
//!
//! The checks and the exchange are [`AmoConnections`]'; this module reads the query and
//! words the answer.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use shortlinks_core::Store;
use shortlinks_notes::sink::amocrm::AmoConnections;

use crate::problem::Body;

/// The install flow's routes, when it is on.
pub(crate) struct AmoCrmPages<S> {
    /// The connections it adds to.
    pub connections: Arc<AmoConnections<S>>,
    /// The Redirect URI's path, if it is served here.
    pub redirect_path: Option<String>,
    /// The uninstall hook's path.
    pub uninstall_path: String,
}

impl<S: Store> AmoCrmPages<S> {
    /// Whether `path` is one of the two.
    pub(crate) fn serves(&self, path: &str) -> bool {
        self.redirect_path.as_deref() == Some(path) || path == self.uninstall_path
    }

    /// The answer to `GET path?query`, `path` being one of the two.
    pub(crate) async fn answer(&self, path: &str, query: Option<&str>) -> Response<Body> {
        let param = |name: &str| {
            url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.into_owned())
                .unwrap_or_default()
        };
        if self.redirect_path.as_deref() == Some(path) {
            let installed = self.connections.install(&param("state"), &param("code"), &param("referer")).await;
            return match installed {
                Ok(done) => {
                    let amocrm = done.connection.subdomain.as_deref().unwrap_or(&done.connection.base);
                    page(
                        StatusCode::OK,
                        "Connected",
                        &format!(
                            "amoCRM account {amocrm} now receives the visits of shortlinks account {}.",
                            done.account.0
                        ),
                    )
                }
                Err(e) => {
                    tracing::warn!(error = %e, "an amoCRM install was refused");
                    page(StatusCode::BAD_REQUEST, "Not connected", &e.to_string())
                }
            };
        }
        let uninstalled =
            self.connections.uninstall(&param("account_id"), &param("client_uuid"), &param("signature")).await;
        match uninstalled {
            Ok(_) => crate::problem::text(StatusCode::OK, "ok\n"),
            Err(shortlinks_notes::Error::Store(e)) => crate::problem::store_failure(&e, "recording an uninstall"),
            Err(e) => {
                tracing::warn!(error = %e, "an amoCRM uninstall hook was refused");
                crate::problem::text(StatusCode::FORBIDDEN, "refused\n")
            }
        }
    }
}

/// A short page for a person, with `message` escaped.
fn page(status: StatusCode, title: &str, message: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width\"><title>{title}</title></head><body><h1>{title}</h1><p>{}</p></body></html>\n",
        escape(message)
    );
    let mut response = Response::new(Full::new(Bytes::from(html)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
