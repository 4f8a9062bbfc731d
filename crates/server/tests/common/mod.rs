//! Test helpers: a real server on a real socket over a real sled directory, and a small client.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // each test file uses a different part

use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use shortlinks_server::config::SettingsLayer;
use shortlinks_server::server;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// A server running in this process on 127.0.0.1:0.
pub struct TestServer {
    pub addr: SocketAddr,
    pub token: String,
    pub base: String,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(SettingsLayer::default()).await
    }

    pub async fn start_with(layer: SettingsLayer) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let base = SettingsLayer {
            data_dir: Some(dir.path().into()),
            listen: Some("127.0.0.1:0".into()),
            ..Default::default()
        };
        let started = server::start(layer.over(base).resolve().unwrap()).await.unwrap();
        let (addr, token, url) =
            (started.addr, started.first_token.clone().unwrap(), started.public_url().as_str().to_owned());
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            started
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self { addr, token, base: url, dir, stop: Some(stop), task: Some(task) }
    }

    /// Graceful shutdown; returns the data directory for inspection.
    pub async fn stop(mut self) -> tempfile::TempDir {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
        self.dir
    }

    pub async fn post_links(&self, token: &str, body: &str) -> Reply {
        send(
            self.addr,
            Method::POST,
            "/api/v4/short_links",
            &[("authorization", &format!("Bearer {token}")), ("content-type", "application/json")],
            body.as_bytes().to_vec(),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Reply {
        send(self.addr, Method::GET, path, &[], Vec::new()).await
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }

    pub fn content_type(&self) -> &str {
        self.headers.get("content-type").map(|v| v.to_str().unwrap()).unwrap_or("")
    }

    /// Asserts a problem+json answer with this status, and returns its body.
    pub fn problem(&self, status: u16) -> serde_json::Value {
        assert_eq!(self.status.as_u16(), status, "{:?}", self.body);
        assert_eq!(self.content_type(), "application/problem+json");
        let body = self.json();
        assert_eq!(body["status"], status);
        assert_eq!(body["type"], format!("https://httpstatus.es/{status}"));
        assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
        assert!(body["detail"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
        body
    }
}

/// One request on a fresh connection.
pub async fn send(addr: SocketAddr, method: Method, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut request = Request::builder().method(method).uri(path).header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender.send_request(request.body(Full::new(Bytes::from(body))).unwrap()).await.unwrap();
    let (parts, body) = response.into_parts();
    Reply { status: parts.status, headers: parts.headers, body: body.collect().await.unwrap().to_bytes() }
}

pub fn item(url: &str, contact: u64) -> serde_json::Value {
    serde_json::json!({"url": url, "metadata": {"entity_type": "contacts", "entity_id": contact}})
}

pub fn code_of(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

pub fn shortlinks_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_shortlinks"))
}
