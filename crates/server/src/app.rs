//! The application: shared state and the router. One `handle` per request, no framework.

use std::net::IpAddr;
use std::sync::Arc;

use hyper::body::Body as HttpBody;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use shortlinks_core::{Shortener, Store};
use shortlinks_notes::stats::Stats;
use shortlinks_notes::ClickRecorder;

use crate::config::{Limits, PublicUrl};
use crate::problem::{self, method_not_allowed, Body};

/// What every request handler shares.
pub struct App<S: Store> {
    pub(crate) engine: Shortener<S>,
    pub(crate) public_url: PublicUrl,
    pub(crate) limits: Limits,
    pub(crate) clicks: ClickRecorder,
    pub(crate) stats: Arc<Stats>,
    pub(crate) client_ip_header: Option<HeaderName>,
}

/// How the front end hands clicks over, and where it reads the client's address.
pub struct ClickCapture {
    /// The pipeline's recorder.
    pub recorder: ClickRecorder,
    /// The pipeline's counters, served on `/metrics`.
    pub stats: Arc<Stats>,
    /// A trusted proxy's client-address header; `None` trusts no header.
    pub client_ip_header: Option<HeaderName>,
}

impl<S: Store> App<S> {
    /// An application over an engine, issuing links under `public_url`.
    pub fn new(engine: Shortener<S>, public_url: PublicUrl, limits: Limits, capture: ClickCapture) -> Self {
        Self {
            engine,
            public_url,
            limits,
            clicks: capture.recorder,
            stats: capture.stats,
            client_ip_header: capture.client_ip_header,
        }
    }

    /// The engine, for the binary's shutdown (flush) and for embedding.
    pub fn engine(&self) -> &Shortener<S> {
        &self.engine
    }

    /// The base URL of issued links.
    pub fn public_url(&self) -> &PublicUrl {
        &self.public_url
    }

    /// Answers one request from `peer`. Generic over the body, so benches and tests can call
    /// it without a socket.
    pub async fn handle<B>(&self, request: Request<B>, peer: Option<IpAddr>) -> Response<Body>
    where
        B: HttpBody,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = request.uri().path();
        // The hot path first: a single segment that is not an API path.
        if let Some(code) = path.strip_prefix('/').filter(|rest| !rest.contains('/') && !is_reserved(rest)) {
            return match *request.method() {
                Method::GET | Method::HEAD => self.redirect(code, &request, peer).await,
                _ => method_not_allowed("GET, HEAD"),
            };
        }
        // Everything else is boxed, so that the redirect's future stays small: hyper moves
        // it for every request, and inline these would make it several times larger.
        match path {
            "/api/v4/short_links" => match *request.method() {
                Method::POST => Box::pin(self.create_links(request)).await,
                _ => method_not_allowed("POST"),
            },
            "/healthz" | "/readyz" | "/metrics" if !matches!(*request.method(), Method::GET | Method::HEAD) => {
                method_not_allowed("GET, HEAD")
            }
            "/healthz" => problem::text(StatusCode::OK, "ok\n"),
            "/readyz" => Box::pin(self.readiness()).await,
            "/metrics" => self.metrics(),
            p if p.starts_with("/api/v4/contacts/") => match *request.method() {
                Method::GET => Box::pin(self.list_notes(&request)).await,
                _ => method_not_allowed("GET"),
            },
            p if p == "/api" || p.starts_with("/api/") => {
                problem::problem(StatusCode::NOT_FOUND, "There is no such API endpoint")
            }
            _ => problem::not_found_page(),
        }
    }

    /// Ready when the store answers a read.
    async fn readiness(&self) -> Response<Body> {
        match self.engine.resolve("readyzprobe0").await {
            Ok(_) => problem::text(StatusCode::OK, "ready\n"),
            Err(e) => {
                tracing::warn!(error = %e, "readiness check failed");
                problem::text(StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
            }
        }
    }

    /// The pipeline's counters, in Prometheus' text format.
    fn metrics(&self) -> Response<Body> {
        let mut response = Response::new(Body::from(self.stats.render()));
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
        response
    }
}

/// Single-segment paths that are never codes.
fn is_reserved(segment: &str) -> bool {
    matches!(segment, "" | "api" | "healthz" | "readyz" | "metrics")
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::Empty;
    use shortlinks_core::{Config, Shortener};
    use shortlinks_notes::PipelineBuilder;

    use super::*;
    use crate::config::Limits;

    fn size_of<F>(_: &F) -> usize {
        std::mem::size_of::<F>()
    }

    /// hyper moves each request's future into place: the redirect's must stay small, so the
    /// other routes and the pipeline's waiting paths are boxed. (It was 1464 bytes before.)
    #[tokio::test]
    async fn the_request_future_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Shortener::open(Config::new(dir.path())).await.unwrap();
        let pipeline = PipelineBuilder::new(&engine, Default::default()).start();
        let capture = ClickCapture {
            recorder: pipeline.recorder().clone(),
            stats: pipeline.stats().clone(),
            client_ip_header: None,
        };
        let app = App::new(engine, PublicUrl::from_bound(([127, 0, 0, 1], 80).into()), Limits::DEFAULT, capture);
        let handle = app.handle(Request::new(Empty::<Bytes>::new()), None);
        assert!(size_of(&handle) <= 1024, "App::handle's future grew to {} bytes", size_of(&handle));
        let request = Request::new(Empty::<Bytes>::new());
        let redirect = app.redirect("AAAAAAAAAAAA", &request, None);
        assert!(size_of(&redirect) <= 512, "the redirect's future grew to {} bytes", size_of(&redirect));
    }
}
