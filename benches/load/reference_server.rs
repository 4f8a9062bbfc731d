//! The ceiling for this stack: hyper 1.x answering `GET /{code}` with a 302 from an
//! in-memory `HashMap`, nothing else. Loads `code target` lines from a file.
//!
//! `reference-server LINKS_FILE [ADDR]`; prints `listening on http://ADDR`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, LOCATION};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;

/// The same allocator as the `shortlinks` binary: the ceiling is for the same stack.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let file = args.next().ok_or_else(|| anyhow::anyhow!("usage: reference-server LINKS_FILE [ADDR]"))?;
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let mut links = HashMap::new();
    for line in std::fs::read_to_string(file)?.lines() {
        if let Some((code, target)) = line.split_once(' ') {
            links.insert(code.to_owned(), HeaderValue::from_str(target)?);
        }
    }
    let links = Arc::new(links);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let links = links.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let links = links.clone();
                async move {
                    let mut response = Response::new(Full::new(Bytes::new()));
                    match links.get(request.uri().path().trim_start_matches('/')) {
                        Some(target) => {
                            *response.status_mut() = StatusCode::FOUND;
                            response.headers_mut().insert(LOCATION, target.clone());
                            response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
                        }
                        None => *response.status_mut() = StatusCode::NOT_FOUND,
                    }
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
