//! An amoCRM stand-in for tests and benchmarks (the `testing` feature; never in the binary):
//! a local HTTP server that checks notes requests as amoCRM does and keeps what it took.
//!
//! - `POST /api/v4/contacts/notes`: a JSON array of 1 to 250 notes, each with a positive
//!   `entity_id`, a known `note_type` and the `params` it needs; one bad item refuses the
//!   whole request with a 400 whose `validation-errors` name it by `request_id`. A contact
//!   the stand-in is told does not exist is such an item.
//! - At most 7 requests in any second (every request counts, as at amoCRM); beyond that a
//!   429 with `retry_after` in the body.
//! - `Authorization: Bearer` with the static token or an unexpired OAuth access token,
//!   else 401.
//! - `POST /oauth2/access_token`: each authorization code once, then `refresh_token` with
//!   the latest refresh token only (each refresh rotates it).
//! - `GET /oauth?client_id=…&state=…`: the person granting access; answered with a redirect
//!   to the integration's Redirect URI carrying a new code, `referer` (the stand-in's own
//!   host) and `state`, as amoCRM's authorization page does.
//! - `GET /api/v4/account`: the account's id and subdomain.
//! - Faults on demand: the next requests answered with a status, or taken and then
//!   answered too late (the client times out; its notes exist); or every notes request
//!   held unanswered until released.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use parking_lot::Mutex;
use serde_json::{json, Value};

/// amoCRM's limit.
const PER_SECOND: usize = 7;
/// The note types amoCRM's notes API knows.
const NOTE_TYPES: [&str; 10] = [
    "common",
    "call_in",
    "call_out",
    "service_message",
    "extended_service_message",
    "message_cashier",
    "geolocation",
    "sms_in",
    "sms_out",
    "attachment",
];

/// What the stand-in accepts.
#[derive(Clone, Debug, Default)]
pub struct StandInOptions {
    /// A long-lived token it takes.
    pub token: Option<String>,
    /// Contacts that do not exist: notes on them are refused (400 naming them).
    pub unknown_contacts: HashSet<u64>,
    /// OAuth: the integration's id and secret, and the one authorization code.
    pub oauth: Option<(String, String, String)>,
    /// How long an OAuth access token lives (default: a day).
    pub access_ttl: Option<Duration>,
    /// How long the token endpoint takes to answer, after it has made its tokens.
    pub token_delay: Option<Duration>,
    /// amoCRM's id of the account (`/api/v4/account`).
    pub account_id: u64,
}

/// A fault to inject into the next notes request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status (a 5xx, or 403 for a restricted integration).
    Status(u16),
    /// Take the notes, then answer only after this long.
    LateAnswer(Duration),
}

/// A note the stand-in took.
#[derive(Clone, Debug, PartialEq)]
pub struct TakenNote {
    /// The contact.
    pub entity_id: u64,
    /// `note_type` as sent.
    pub note_type: String,
    /// `params` as sent.
    pub params: Value,
    /// `request_id` as sent.
    pub request_id: Option<String>,
}

/// One notes request, as it arrived.
#[derive(Clone, Debug)]
pub struct Arrival {
    /// When.
    pub at: Instant,
    /// What it was answered.
    pub status: u16,
    /// How many notes it carried.
    pub notes: usize,
}

#[derive(Default)]
struct State {
    options: StandInOptions,
    notes: Vec<TakenNote>,
    arrivals: Vec<Arrival>,
    recent: VecDeque<Instant>,
    faults: VecDeque<Fault>,
    access: Vec<(String, Instant)>,
    refresh: Option<String>,
    /// Codes used already (the first is the options' code).
    codes_used: HashSet<String>,
    /// Codes `/oauth` gave.
    codes_given: Vec<String>,
    /// The integration's Redirect URI, where `/oauth` sends the person.
    redirect_uri: Option<String>,
    issued: u64,
    refreshes: usize,
    held: bool,
    hold_after_refresh: bool,
    waiting: usize,
}

/// The running stand-in; stops when dropped.
pub struct AmoCrmStandIn {
    /// `http://127.0.0.1:<port>`: the base URL to configure.
    pub url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AmoCrmStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AmoCrmStandIn {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start(options: StandInOptions) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(Mutex::new(State { options, ..State::default() }));
        let shared = state.clone();
        let host = url.trim_start_matches("http://").to_owned();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (state, host) = (shared.clone(), host.clone());
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |request| answer(state.clone(), host.clone(), request));
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        Ok(Self { url, state, task })
    }

    /// Sets the integration's Redirect URI, where `/oauth` sends the person (known once the
    /// integration's server listens).
    pub fn set_redirect_uri(&self, uri: &str) {
        self.state.lock().redirect_uri = Some(uri.to_owned());
    }

    /// How many token pairs it gave, for codes and refreshes.
    pub fn pairs_issued(&self) -> u64 {
        self.state.lock().issued
    }

    /// Makes an unknown contact known (it was created in amoCRM meanwhile).
    pub fn create_contact(&self, contact: u64) {
        self.state.lock().options.unknown_contacts.remove(&contact);
    }

    /// Takes back every token it gave, as amoCRM does when the integration is uninstalled.
    pub fn revoke_tokens(&self) {
        let mut state = self.state.lock();
        state.access.clear();
        state.refresh = None;
    }

    /// Every note taken, in order.
    pub fn notes(&self) -> Vec<TakenNote> {
        self.state.lock().notes.clone()
    }

    /// How many notes it has taken (without copying them).
    pub fn note_count(&self) -> usize {
        self.state.lock().notes.len()
    }

    /// Every notes request, in order of arrival.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.state.lock().arrivals.clone()
    }

    /// How many notes requests were answered 429.
    pub fn too_many(&self) -> usize {
        self.state.lock().arrivals.iter().filter(|a| a.status == 429).count()
    }

    /// The most notes requests that arrived within any one second.
    pub fn most_in_one_second(&self) -> usize {
        let times: Vec<Instant> = self.state.lock().arrivals.iter().map(|a| a.at).collect();
        let mut most = 0;
        let mut start = 0;
        for end in 0..times.len() {
            while times[end].duration_since(times[start]) >= Duration::from_secs(1) {
                start += 1;
            }
            most = most.max(end - start + 1);
        }
        most
    }

    /// The next notes requests meet these faults, in order.
    pub fn inject(&self, faults: &[Fault]) {
        self.state.lock().faults.extend(faults.iter().copied());
    }

    /// Every OAuth access token issued so far expires now.
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        for (_, expires) in &mut self.state.lock().access {
            *expires = now;
        }
    }

    /// While held, notes requests wait unanswered (and uncounted).
    pub fn hold(&self, held: bool) {
        self.state.lock().held = held;
    }

    /// Holds notes requests from the next refresh on: a test can then act between a
    /// client's refresh and its use of the new token.
    pub fn hold_after_refresh(&self) {
        self.state.lock().hold_after_refresh = true;
    }

    /// How many notes requests are waiting on the hold.
    pub fn waiting(&self) -> usize {
        self.state.lock().waiting
    }

    /// How many refreshes amoCRM made.
    pub fn refreshes(&self) -> usize {
        self.state.lock().refreshes
    }

    /// Waits until `done` holds of the notes taken, for at most `limit`.
    pub async fn until(&self, limit: Duration, done: impl Fn(&[TakenNote]) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if done(&self.state.lock().notes) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn answer(
    state: Arc<Mutex<State>>,
    host: String,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let authorization =
        parts.headers.get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (status, json, late) = match parts.uri.path() {
        "/api/v4/contacts/notes" => {
            state.lock().waiting += 1;
            while state.lock().held {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut state = state.lock();
            state.waiting -= 1;
            state.notes_request(authorization.as_deref(), &body)
        }
        "/oauth2/access_token" => {
            let mut state = state.lock();
            let (status, json) = state.token_request(&body);
            (status, json, state.options.token_delay)
        }
        "/oauth" => return Ok(state.lock().authorize(&host, parts.uri.query().unwrap_or(""))),
        "/api/v4/account" => {
            let state = state.lock();
            match state.authorized(authorization.as_deref(), Instant::now()) {
                true => (200, json!({"id": state.options.account_id, "subdomain": "stand-in", "name": host}), None),
                false => (401, problem(401, "Unauthorized"), None),
            }
        }
        _ => (404, json!({"title": "Not Found", "status": 404}), None),
    };
    if let Some(late) = late {
        tokio::time::sleep(late).await;
    }
    let mut response = Response::new(Full::new(Bytes::from(json.to_string())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/hal+json"));
    Ok(response)
}

fn problem(status: u16, detail: &str) -> Value {
    json!({"title": "error", "status": status, "detail": detail})
}

impl State {
    /// Whether `authorization` carries the static token or an unexpired access token.
    fn authorized(&self, authorization: Option<&str>, now: Instant) -> bool {
        let token = authorization.and_then(|a| a.strip_prefix("Bearer "));
        token.is_some_and(|t| {
            self.options.token.as_deref() == Some(t) || self.access.iter().any(|(a, expires)| a == t && *expires > now)
        })
    }

    /// The person granted access: off to the Redirect URI with a new code.
    fn authorize(&mut self, host: &str, query: &str) -> Response<Full<Bytes>> {
        let param = |name: &str| url_param(query, name).unwrap_or_default();
        let client_ok = self.options.oauth.as_ref().is_some_and(|(id, _, _)| *id == param("client_id"));
        let (Some(redirect), true) = (self.redirect_uri.clone(), client_ok) else {
            let mut response = Response::new(Full::new(Bytes::from_static(b"unknown integration")));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            return response;
        };
        let code = format!("code-{}", self.codes_given.len() + 1);
        self.codes_given.push(code.clone());
        let location = format!("{redirect}?code={code}&referer={host}&state={}&from_widget=0", param("state"));
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::FOUND;
        if let Ok(value) = hyper::header::HeaderValue::from_str(&location) {
            response.headers_mut().insert(hyper::header::LOCATION, value);
        }
        response
    }

    fn notes_request(&mut self, authorization: Option<&str>, body: &[u8]) -> (u16, Value, Option<Duration>) {
        let now = Instant::now();
        let count = serde_json::from_slice::<Value>(body).ok().and_then(|v| v.as_array().map(Vec::len)).unwrap_or(0);
        let (status, json, late) = self.judge_notes(now, authorization, body);
        self.arrivals.push(Arrival { at: now, status, notes: count });
        (status, json, late)
    }

    fn judge_notes(
        &mut self,
        now: Instant,
        authorization: Option<&str>,
        body: &[u8],
    ) -> (u16, Value, Option<Duration>) {
        while self.recent.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1)) {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        if self.recent.len() > PER_SECOND {
            return (429, json!({"title": "Too Many Requests", "status": 429, "retry_after": 1}), None);
        }
        if !self.authorized(authorization, now) {
            return (401, problem(401, "Unauthorized"), None);
        }
        let late = match self.faults.pop_front() {
            Some(Fault::Status(status)) => return (status, problem(status, "injected"), None),
            Some(Fault::LateAnswer(after)) => Some(after),
            None => None,
        };
        let Some(items) = serde_json::from_slice::<Value>(body).ok().and_then(|v| v.as_array().cloned()) else {
            return (400, problem(400, "the body must be a JSON array"), None);
        };
        if items.is_empty() || items.len() > 250 {
            return (400, problem(400, "1 to 250 notes a request"), None);
        }
        let mut taken = Vec::new();
        let mut refused = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let request_id = item.get("request_id").and_then(Value::as_str).map(str::to_owned);
            match self.check(item) {
                Ok(note) => taken.push(note),
                Err((path, detail)) => refused.push(json!({
                    "request_id": request_id.unwrap_or_else(|| i.to_string()),
                    "errors": [{"code": "NotValid", "path": path, "detail": detail}],
                })),
            }
        }
        if !refused.is_empty() {
            let body = json!({"title": "Bad Request", "status": 400, "detail": "Request validation failed", "validation-errors": refused});
            return (400, body, None);
        }
        let ids: Vec<Value> = taken
            .iter()
            .enumerate()
            .map(|(i, n)| json!({"id": self.notes.len() + i + 1, "entity_id": n.entity_id, "request_id": n.request_id}))
            .collect();
        self.notes.extend(taken);
        (200, json!({"_embedded": {"notes": ids}}), late)
    }

    fn check(&self, item: &Value) -> Result<TakenNote, (&'static str, &'static str)> {
        let entity_id = item
            .get("entity_id")
            .and_then(Value::as_u64)
            .filter(|&id| id > 0)
            .ok_or(("entity_id", "must be a positive integer"))?;
        if self.options.unknown_contacts.contains(&entity_id) {
            return Err(("entity_id", "no such contact"));
        }
        let note_type = item
            .get("note_type")
            .and_then(Value::as_str)
            .filter(|t| NOTE_TYPES.contains(t))
            .ok_or(("note_type", "unknown note type"))?;
        let params = item.get("params").filter(|p| p.is_object()).ok_or(("params", "must be an object"))?;
        let text = |key: &str| params.get(key).and_then(Value::as_str).is_some_and(|t| !t.is_empty());
        match note_type {
            "common" if !text("text") => return Err(("params.text", "required")),
            "service_message" if !text("text") || !text("service") => {
                return Err(("params", "service and text required"))
            }
            _ => {}
        }
        if item.get("request_id").is_some_and(|r| !r.is_string()) {
            return Err(("request_id", "must be a string"));
        }
        Ok(TakenNote {
            entity_id,
            note_type: note_type.to_owned(),
            params: params.clone(),
            request_id: item.get("request_id").and_then(Value::as_str).map(str::to_owned),
        })
    }

    fn token_request(&mut self, body: &[u8]) -> (u16, Value) {
        let Some((client_id, client_secret, code)) = self.options.oauth.clone() else {
            return (404, problem(404, "no OAuth here"));
        };
        let Ok(form) = serde_json::from_slice::<Value>(body) else { return (400, problem(400, "not JSON")) };
        let field = |key: &str| form.get(key).and_then(Value::as_str).unwrap_or("");
        if field("client_id") != client_id || field("client_secret") != client_secret {
            return (401, problem(401, "client authentication failed"));
        }
        match field("grant_type") {
            "authorization_code"
                if (field("code") == code || self.codes_given.iter().any(|c| c == field("code")))
                    && self.codes_used.insert(field("code").to_owned()) => {}
            "refresh_token" if self.refresh.as_deref() == Some(field("refresh_token")) => {
                self.refreshes += 1;
                self.held |= std::mem::take(&mut self.hold_after_refresh);
            }
            _ => return (400, json!({"hint": "Token has been revoked", "title": "Bad Request", "status": 400})),
        }
        self.issued += 1;
        let (access, refresh) = (format!("access-{}", self.issued), format!("refresh-{}", self.issued));
        let ttl = self.options.access_ttl.unwrap_or(Duration::from_secs(86_400));
        self.access.push((access.clone(), Instant::now() + ttl));
        self.refresh = Some(refresh.clone());
        (
            200,
            json!({"token_type": "Bearer", "expires_in": ttl.as_secs(), "access_token": access, "refresh_token": refresh}),
        )
    }
}

/// A query parameter's value: state values and codes are plain (no escapes needed).
fn url_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')).map(str::to_owned)
}
