//! The access log's lines (`access_log`): one per API request, and with `all`, one per
//! redirect, whoever answered it (hyper or the redirect lane). Each carries the request's id.

use std::time::Instant;

/// A redirect's line.
pub(crate) fn redirect(request_id: &str, method: &str, path: &str, status: u16, started: Instant) {
    tracing::info!(request_id, %method, path, status, micros = started.elapsed().as_micros() as u64, "redirect");
}

/// An API request's line: the path without its query, which may carry ids, and the id of
/// the token used, if any.
pub(crate) fn api(request_id: &str, method: &str, path: &str, status: u16, token: Option<&str>, started: Instant) {
    tracing::info!(
        request_id,
        %method,
        path,
        status,
        token = token.unwrap_or("-"),
        micros = started.elapsed().as_micros() as u64,
        "api"
    );
}
