//! The application: shared state and the router. One `handle` per request, no framework.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use hyper::body::Body as HttpBody;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode, Version};
use shortlinks_core::{CodeLength, LinkCache, Shortener, Store};
use shortlinks_notes::stats::Stats;
use shortlinks_notes::{ClickHeaders, ClickRecorder, Pipeline, PipelineBuilder, PipelineConfig};

use crate::access_log;
use crate::amocrm_pages::AmoCrmPages;
use crate::auth::{authenticate, Caller};
use crate::config::{Limits, PublicUrl};
use crate::http_metrics::HttpMetrics;
use crate::problem::{self, method_not_allowed, Body};
use crate::request_id::{self, RequestId, X_REQUEST_ID};

/// What every request handler shares.
pub struct App<S: Store> {
    pub(crate) engine: Shortener<S>,
    /// The engine's store, for what the engine does not do: tokens, notes, flushing.
    pub(crate) store: S,
    pub(crate) public_url: PublicUrl,
    pub(crate) limits: Limits,
    pub(crate) clicks: ClickRecorder,
    pub(crate) stats: Arc<Stats>,
    /// Request latency histograms, on `stats`' registry.
    pub(crate) http_metrics: HttpMetrics,
    pub(crate) client_ip_header: Option<HeaderName>,
    /// Whether redirects are logged too (`access_log = "all"`), not only API requests.
    pub(crate) log_redirects: bool,
    /// amoCRM's Redirect URI and uninstall hook, when the install flow is on.
    pub(crate) amocrm: Option<AmoCrmPages<S>>,
}

/// What an [`App`] is built with, beyond its store.
#[derive(Clone, Debug)]
pub struct AppSettings {
    /// The base of issued links.
    pub public_url: PublicUrl,
    /// Request size and time limits.
    pub limits: Limits,
    /// Characters in new codes.
    pub code_length: CodeLength,
    /// How many links the read cache holds.
    pub cached_links: usize,
    /// How clicks become notes.
    pub pipeline: PipelineConfig,
    /// A trusted proxy's client-address header; `None` trusts no header. With one, the
    /// proxy's `X-Request-Id` is trusted too.
    pub client_ip_header: Option<HeaderName>,
    /// Whether redirects are logged too, one line each; API requests always are.
    pub log_redirects: bool,
}

impl AppSettings {
    /// The defaults, issuing links under `public_url`.
    pub fn new(public_url: PublicUrl) -> Self {
        Self {
            public_url,
            limits: Limits::DEFAULT,
            code_length: CodeLength::DEFAULT,
            cached_links: LinkCache::DEFAULT_CAPACITY,
            pipeline: PipelineConfig::default(),
            client_ip_header: None,
            log_redirects: false,
        }
    }
}

impl<S: Store> App<S> {
    /// The engine and the click pipeline on one store, sharing one link cache (what the
    /// redirect reads, the dispatcher finds) and the store's installation secret.
    /// `sinks` adds the note sinks to the pipeline before it starts.
    pub async fn start(
        store: S,
        settings: AppSettings,
        sinks: impl FnOnce(PipelineBuilder<S>) -> PipelineBuilder<S>,
    ) -> Result<(Self, Pipeline), shortlinks_core::Error> {
        let secret = store.load_or_create_secret().await?;
        let cache = LinkCache::new(settings.cached_links);
        let engine =
            Shortener::builder(store.clone()).code_length(settings.code_length).cache(cache.clone()).build().await?;
        let pipeline = sinks(PipelineBuilder::new(store.clone(), cache, &secret, settings.pipeline)).start();
        let app = Self {
            engine,
            store,
            public_url: settings.public_url,
            limits: settings.limits,
            clicks: pipeline.recorder().clone(),
            stats: pipeline.stats().clone(),
            http_metrics: HttpMetrics::new(pipeline.stats().registry()),
            client_ip_header: settings.client_ip_header,
            log_redirects: settings.log_redirects,
            amocrm: None,
        };
        Ok((app, pipeline))
    }
}

impl<S: Store> App<S> {
    /// The engine, for embedding.
    pub fn engine(&self) -> &Shortener<S> {
        &self.engine
    }

    /// The store: tokens, notes, and the flush at shutdown.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The base URL of issued links.
    pub fn public_url(&self) -> &PublicUrl {
        &self.public_url
    }

    /// Answers one request from `peer`. Generic over the body, so benches and tests can call
    /// it without a socket. Every answer carries the request's id (see [`request_id`]).
    ///
    /// Not an `async fn` (nor an `async` block awaiting the answer), which would hold the
    /// request twice in its state: hyper moves this future for every request.
    pub fn handle<'a, B>(
        &'a self,
        request: Request<B>,
        peer: Option<IpAddr>,
    ) -> impl Future<Output = Response<Body>> + 'a
    where
        B: HttpBody + 'a,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let id = self.request_id(request.headers());
        request_id::scope(id.clone(), self.route(request, peer)).map(move |mut response| {
            response.headers_mut().insert(X_REQUEST_ID, id.header_value());
            response
        })
    }

    /// The request's id: the `X-Request-Id` of a trusted proxy (one whose client-address
    /// header is trusted), else a new one. Read by hyper's requests and the lane's alike.
    pub(crate) fn request_id<H: ClickHeaders + ?Sized>(&self, headers: &H) -> RequestId {
        let trusted = self.client_ip_header.is_some().then(|| headers.first(&X_REQUEST_ID)).flatten();
        request_id::assign(trusted)
    }

    async fn route<B>(&self, request: Request<B>, peer: Option<IpAddr>) -> Response<Body>
    where
        B: HttpBody,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // RFC 9112, 3.2: without Host (HTTP/1.1), with several, or with an invalid one: 400.
        let hosts = request.headers().get_all(HOST).into_iter().map(HeaderValue::as_bytes);
        if let Some(why) = crate::host::problem(hosts, request.version() == Version::HTTP_11) {
            return problem::problem(StatusCode::BAD_REQUEST, why);
        }
        let path = request.uri().path();
        // The hot path first: a single segment that is not an API path.
        if let Some(code) = code_of(path) {
            return match *request.method() {
                Method::GET | Method::HEAD if self.log_redirects => {
                    Box::pin(self.logged_redirect(code, &request, peer)).await
                }
                Method::GET | Method::HEAD => self.redirect(code, &request, peer).await,
                _ => method_not_allowed("GET, HEAD"),
            };
        }
        // Everything else is boxed, so that the redirect's future stays small: hyper moves
        // it for every request, and inline these would make it several times larger.
        if path == "/api" || path.starts_with("/api/") {
            return Box::pin(self.api(request)).await;
        }
        match path {
            "/healthz" | "/readyz" | "/metrics" if !matches!(*request.method(), Method::GET | Method::HEAD) => {
                method_not_allowed("GET, HEAD")
            }
            "/healthz" => problem::text(StatusCode::OK, "ok\n"),
            "/readyz" => Box::pin(self.readiness()).await,
            "/metrics" => Box::pin(self.metrics()).await,
            _ if Self::is_contact_deleted(path) => match *request.method() {
                Method::POST => Box::pin(self.contact_deleted(request)).await,
                _ => method_not_allowed("POST"),
            },
            _ => match &self.amocrm {
                // GET only: a HEAD (a link checker's) must not spend a person's code.
                Some(pages) if pages.serves(path) => match *request.method() {
                    Method::GET => Box::pin(pages.answer(path, request.uri().query())).await,
                    _ => method_not_allowed("GET"),
                },
                _ => problem::not_found_page(),
            },
        }
    }

    /// Every API route: the caller is authenticated before anything else is answered, so
    /// that nothing (not even which paths exist) is told to a caller without a token; then
    /// its token's rate limit is taken, as amoCRM limits an integration.
    async fn api<B>(&self, request: Request<B>) -> Response<Body>
    where
        B: HttpBody,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let (method, path) = (request.method().clone(), request.uri().path().to_owned());
        let (response, token) = self.authenticated_api(request).await;
        let status = response.status().as_u16();
        self.http_metrics.api(&path, status, started);
        access_log::api(&request_id::for_log(), method.as_str(), &path, status, token.as_deref(), started);
        response
    }

    /// [`App::api`] less its log line; also says which token the caller used, if any.
    async fn authenticated_api<B>(&self, request: Request<B>) -> (Response<Body>, Option<String>)
    where
        B: HttpBody,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let caller = match authenticate(&self.store, request.headers().get(AUTHORIZATION)).await {
            Ok(Ok(caller)) => caller,
            Ok(Err(failure)) => return (problem::problem(StatusCode::UNAUTHORIZED, failure.detail()), None),
            Err(e) => return (problem::store_failure(&e, "reading the token"), None),
        };
        let token = Some(caller.token_id.clone());
        (self.api_as(request, caller).await, token)
    }

    async fn api_as<B>(&self, request: Request<B>, caller: Caller) -> Response<Body>
    where
        B: HttpBody,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match self.store.take(&format!("api:{}", caller.token_id), self.limits.api_rate).await {
            Ok(None) => {}
            Ok(Some(wait)) => return problem::too_many_requests(wait),
            Err(e) => return problem::store_failure(&e, "checking the rate limit"),
        }
        let who = caller.principal;
        let path = request.uri().path();
        if path == "/api/v4/short_links" {
            return match *request.method() {
                Method::POST => self.create_links(request, who).await,
                _ => method_not_allowed("POST"),
            };
        }
        if path.starts_with("/api/v4/contacts/") {
            return match *request.method() {
                Method::GET => self.list_notes(&request, &who).await,
                _ => method_not_allowed("GET"),
            };
        }
        problem::problem(StatusCode::NOT_FOUND, "There is no such API endpoint")
    }

    /// The redirect with its log line (`access_log = "all"`).
    async fn logged_redirect<B>(&self, code: &str, request: &Request<B>, peer: Option<IpAddr>) -> Response<Body> {
        let started = Instant::now();
        let response = self.redirect(code, request, peer).await;
        let status = response.status().as_u16();
        access_log::redirect(&request_id::for_log(), request.method().as_str(), request.uri().path(), status, started);
        response
    }

    /// Ready when the store answers a read.
    /// Ready when the store answers a read; the body also says how each sink stands, which
    /// concerns the operator, not this node's readiness.
    async fn readiness(&self) -> Response<Body> {
        match self.engine.resolve("readyzprobe0").await {
            Ok(_) => {
                let mut body = String::from("ready\n");
                for line in self.stats.sink_states() {
                    body.push_str("sink ");
                    body.push_str(&line);
                    body.push('\n');
                }
                let mut response = problem::text(StatusCode::OK, "");
                *response.body_mut() = Body::from(body);
                response
            }
            Err(e) => {
                tracing::warn!(error = %e, "readiness check failed");
                problem::text(StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
            }
        }
    }

    /// Every metric, in Prometheus' text format, with the backlog read from the store.
    async fn metrics(&self) -> Response<Body> {
        shortlinks_notes::backlog::read(&self.store, &self.stats).await;
        let mut response = Response::new(Body::from(self.stats.render()));
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
        response
    }
}

/// Single-segment paths that are never codes.
pub(crate) fn is_reserved(segment: &str) -> bool {
    matches!(segment, "" | "api" | "healthz" | "readyz" | "metrics")
}

/// The code a path asks for: a single segment that is not reserved.
pub(crate) fn code_of(path: &str) -> Option<&str> {
    path.strip_prefix('/').filter(|rest| !rest.contains('/') && !is_reserved(rest))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::Empty;
    use shortlinks_core::SledStore;

    use super::*;

    fn size_of<F>(_: &F) -> usize {
        std::mem::size_of::<F>()
    }

    /// hyper moves each request's future into place: the redirect's must stay small, so the
    /// other routes and the pipeline's waiting paths are boxed.
    #[tokio::test]
    async fn the_request_future_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let settings = AppSettings::new(PublicUrl::from_bound(([127, 0, 0, 1], 80).into()));
        let (app, _pipeline) = App::start(store, settings, |sinks| sinks).await.unwrap();
        let handle = app.handle(Request::new(Empty::<Bytes>::new()), None);
        assert!(size_of(&handle) <= 1024, "App::handle's future grew to {} bytes", size_of(&handle));
        let request = Request::new(Empty::<Bytes>::new());
        let redirect = app.redirect("AAAAAAAAAAAA", &request, None);
        assert!(size_of(&redirect) <= 512, "the redirect's future grew to {} bytes", size_of(&redirect));
    }
}
