//! The operator console: server-rendered pages on a listener of its own.
//!
//! Off unless `console_listen` is set, and never on the public listener. Pages: the
//! overview (a day per minute as a chart, the not-visit reasons, the backlog, the amoCRM
//! connections), look-up (by code, contact or URL: links, notes and where each note stands),
//! delivery (each sink, its last errors, dead letters to replay or delete) and tokens
//! (make, list, revoke). Everything is compiled into the binary: templates (minijinja,
//! HTML-escaped), one stylesheet, charts drawn as inline SVG; no page runs a script or
//! loads anything from elsewhere, and the `Content-Security-Policy` says so.
//!
//! What the console changes, it changes through [`admin::execute`], as the command line
//! does. Signing in and forms: see [`session`].

mod chart;
mod history;
mod pages;
mod session;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use shortlinks_core::Store;
use tokio::net::TcpListener;

use crate::app::App;
use crate::config::ConsolePassword;
use crate::problem::Body;
use history::History;
use session::Sessions;

/// A form's body is at most this long.
const MOST_FORM_BYTES: usize = 16 << 10;
/// A connection must send a request's head within this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The console of one server.
pub(crate) struct Console<S: Store> {
    app: Arc<App<S>>,
    password: ConsolePassword,
    sessions: Sessions,
    history: Arc<History>,
    pages: pages::Pages,
}

/// A signed-in operator's session: its id and its CSRF token.
struct Signed {
    id: String,
    csrf: String,
}

impl<S: Store> Console<S> {
    pub(crate) fn new(app: Arc<App<S>>, password: ConsolePassword) -> Self {
        Self { app, password, sessions: Sessions::default(), history: Arc::default(), pages: pages::Pages::new() }
    }

    /// Serves `listener` (and keeps the per-minute history) until the task is dropped.
    pub(crate) async fn serve(self: Arc<Self>, listener: TcpListener) {
        let history = tokio::spawn(self.history.clone().run(self.app.stats.clone()));
        let _stop_history = AbortOnDrop(history);
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "the console cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let console = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let console = console.clone();
                    async move { Ok::<_, std::convert::Infallible>(console.handle(request, peer.ip()).await) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEAD_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!(error = %e, "a console connection ended badly");
                }
            });
        }
    }

    async fn handle(&self, request: Request<Incoming>, peer: IpAddr) -> Response<Body> {
        let mut response = self.route(request, peer).await;
        let headers = response.headers_mut();
        for (name, value) in [
            (
                "content-security-policy",
                "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
            ("cache-control", "no-store"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        response
    }

    async fn route(&self, request: Request<Incoming>, peer: IpAddr) -> Response<Body> {
        let now = Instant::now();
        let (method, path) = (request.method().clone(), request.uri().path().to_owned());
        let query = request.uri().query().unwrap_or_default().to_owned();
        // Behind a proxy that terminates TLS the cookie must not travel in the clear.
        let secure = request.headers().get("x-forwarded-proto").is_some_and(|v| v.as_bytes() == b"https");
        let signed = session::session_id(request.headers().get_all(COOKIE).iter())
            .and_then(|id| self.sessions.csrf(&id, now).map(|csrf| Signed { id, csrf }));
        match (&method, path.as_str(), signed) {
            (&Method::GET, "/style.css", _) => stylesheet(),
            (&Method::GET, "/login", None) => self.pages.login(None),
            (&Method::GET, "/login", Some(_)) => see_other("/"),
            (&Method::POST, "/login", _) => {
                let form = match read_form(request).await {
                    Ok(form) => form,
                    Err(response) => return response,
                };
                self.sign_in(field(&form, "password").unwrap_or_default(), peer, secure, now)
            }
            (_, _, None) => see_other("/login"),
            (&Method::POST, _, Some(signed)) => {
                let form = match read_form(request).await {
                    Ok(form) => form,
                    Err(response) => return response,
                };
                if !Sessions::csrf_matches(&signed.csrf, field(&form, "csrf")) {
                    tracing::warn!(%peer, %path, "a console form came without its CSRF token; refused");
                    return self.pages.refused(&signed.csrf);
                }
                match path.as_str() {
                    "/logout" => {
                        self.sessions.close(&signed.id);
                        let mut response = see_other("/login");
                        set_cookie(&mut response, &session::cleared_cookie());
                        response
                    }
                    "/delivery/replay" => pages::replay(self, &form).await,
                    "/delivery/purge" => pages::purge(self, &form).await,
                    "/tokens" => pages::create_token(self, &signed.csrf, &form).await,
                    "/tokens/revoke" => pages::revoke_token(self, &form).await,
                    _ => self.pages.not_found(&signed.csrf),
                }
            }
            (&Method::GET | &Method::HEAD, _, Some(signed)) => {
                let query: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
                match path.as_str() {
                    "/" => pages::overview(self, &signed.csrf).await,
                    "/lookup" => pages::lookup(self, &signed.csrf, &query).await,
                    "/delivery" => pages::delivery(self, &signed.csrf, &query).await,
                    "/tokens" => pages::tokens(self, &signed.csrf, &query, None).await,
                    _ => self.pages.not_found(&signed.csrf),
                }
            }
            _ => crate::problem::method_not_allowed("GET, HEAD, POST"),
        }
    }

    /// Checks the password; a session and its cookie if it is right.
    fn sign_in(&self, attempt: &str, peer: IpAddr, secure: bool, now: Instant) -> Response<Body> {
        if let Some(wait) = self.sessions.locked_out(peer, now) {
            tracing::warn!(%peer, "console sign-in refused: too many failures");
            let minutes = wait.as_secs().div_ceil(60);
            let problem = format!("Too many failed sign-ins. Try again in {minutes} min.");
            let mut response = self.pages.login(Some(&problem));
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            return response;
        }
        if !self.password.matches(attempt) {
            self.sessions.failed(peer, now);
            tracing::warn!(%peer, "console sign-in failed: wrong password");
            let mut response = self.pages.login(Some("That is not the console's password."));
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            return response;
        }
        let (id, _) = self.sessions.open(now);
        tracing::info!(%peer, "an operator signed in to the console");
        let mut response = see_other("/");
        set_cookie(&mut response, &session::cookie(&id, secure));
        response
    }
}

/// Aborts a task when dropped: the history lives as long as the console serves.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A form's fields, or the answer to a body too large or unreadable.
async fn read_form(request: Request<Incoming>) -> Result<Vec<(String, String)>, Response<Body>> {
    let bytes = match Limited::new(request.into_body(), MOST_FORM_BYTES).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return Err(crate::problem::text(StatusCode::PAYLOAD_TOO_LARGE, "form too large\n")),
    };
    Ok(url::form_urlencoded::parse(&bytes).into_owned().collect())
}

/// The first value of `name` in a form or query.
fn field<'f>(form: &'f [(String, String)], name: &str) -> Option<&'f str> {
    form.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
}

fn see_other(location: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

fn set_cookie(response: &mut Response<Body>, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(SET_COOKIE, value);
    }
}

fn stylesheet() -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(include_bytes!("templates/style.css"))));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8"));
    response
}
