//! The application: shared state and the router. One `handle` per request, no framework.

use hyper::body::Body as HttpBody;
use hyper::{Method, Request, Response, StatusCode};
use shortlinks_core::{Shortener, Store};

use crate::config::{Limits, PublicUrl};
use crate::problem::{self, method_not_allowed, Body};

/// What every request handler shares.
pub struct App<S: Store> {
    pub(crate) engine: Shortener<S>,
    pub(crate) public_url: PublicUrl,
    pub(crate) limits: Limits,
}

impl<S: Store> App<S> {
    /// An application over an engine, issuing links under `public_url`.
    pub fn new(engine: Shortener<S>, public_url: PublicUrl, limits: Limits) -> Self {
        Self { engine, public_url, limits }
    }

    /// The engine, for the binary's shutdown (flush) and for embedding.
    pub fn engine(&self) -> &Shortener<S> {
        &self.engine
    }

    /// The base URL of issued links.
    pub fn public_url(&self) -> &PublicUrl {
        &self.public_url
    }

    /// Answers one request. Generic over the body, so benches and tests can call it
    /// without a socket.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Body>
    where
        B: HttpBody,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = request.uri().path();
        // The hot path first: a single segment that is not an API path.
        if let Some(code) = path.strip_prefix('/').filter(|rest| !rest.contains('/') && !is_reserved(rest)) {
            return match *request.method() {
                Method::GET => self.redirect(code, false).await,
                Method::HEAD => self.redirect(code, true).await,
                _ => method_not_allowed("GET, HEAD"),
            };
        }
        match path {
            "/api/v4/short_links" => match *request.method() {
                Method::POST => self.create_links(request).await,
                _ => method_not_allowed("POST"),
            },
            "/healthz" | "/readyz" if !matches!(*request.method(), Method::GET | Method::HEAD) => {
                method_not_allowed("GET, HEAD")
            }
            "/healthz" => problem::text(StatusCode::OK, "ok\n"),
            "/readyz" => self.readiness().await,
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
}

/// Single-segment paths that are never codes.
fn is_reserved(segment: &str) -> bool {
    matches!(segment, "" | "api" | "healthz" | "readyz")
}
