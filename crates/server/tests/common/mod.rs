//! Test helpers: a real server on a real socket over a real sled directory, and a small client.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // each test file uses a different part

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use shortlinks_server::config::SettingsLayer;
use shortlinks_server::server;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::oneshot;

/// A server running in this process on 127.0.0.1:0.
pub struct TestServer {
    pub addr: SocketAddr,
    pub token: String,
    pub base: String,
    pub dir: tempfile::TempDir,
    /// The operator console's address, when the settings turn it on.
    pub console: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(SettingsLayer::default()).await
    }

    pub async fn start_with(layer: SettingsLayer) -> Self {
        let dir = private_tempdir();
        let base = SettingsLayer {
            data_dir: Some(dir.path().into()),
            listen: Some("127.0.0.1:0".into()),
            // Tests post back to back: only the rate limit's own test keeps a real limit.
            api_rate_per_sec: Some(UNLIMITED),
            api_rate_burst: Some(UNLIMITED),
            // Notes at once, and many contacts from one test address: the hold and the
            // address rule have tests of their own, which turn them on.
            note_hold_secs: Some(0),
            address_rule_contacts: Some(0),
            ..Default::default()
        };
        let started = server::start(layer.over(base).resolve().unwrap()).await.unwrap();
        let (addr, token, url) =
            (started.addr, started.first_token.clone().unwrap(), started.public_url().as_str().to_owned());
        let console = started.console_addr;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            started
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self { addr, token, base: url, dir, console, stop: Some(stop), task: Some(task) }
    }

    /// Graceful shutdown; returns the data directory for inspection.
    pub async fn stop(mut self) -> tempfile::TempDir {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
        self.dir
    }

    /// Posts a batch. Every 200 is held to the official amoCRM PHP client's rule, so no
    /// test can pass with an answer that client would throw on.
    pub async fn post_links(&self, token: &str, body: &str) -> Reply {
        let reply = self.post_links_to("/api/v4/short_links", token, body).await;
        if reply.status == StatusCode::OK {
            assert_official_client_accepts(body, &reply.json());
        }
        reply
    }

    /// Posts a batch to `path` (such as with a query), with no check of the answer.
    pub async fn post_links_to(&self, path: &str, token: &str, body: &str) -> Reply {
        send(
            self.addr,
            Method::POST,
            path,
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

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value, if sent.
    #[allow(dead_code)] // not every test file reads headers
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_owned())
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
    try_send(addr, method, path, headers, body).await.expect("the server answers")
}

/// One request, or `None` if the server is gone (refused, or closed mid-answer).
pub async fn try_send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Option<Reply> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    let mut request = Request::builder().method(method).uri(path).header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    // `BROWSER` is a browser: it navigates with a browser's headers, unless the test says
    // otherwise (an `accept` of its own).
    let browser = headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("user-agent") && *v == BROWSER);
    if browser && !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("accept")) {
        for (name, value) in NAVIGATION {
            request = request.header(name, value);
        }
    }
    let response = sender.send_request(request.body(Full::new(Bytes::from(body))).unwrap()).await.ok()?;
    let (parts, body) = response.into_parts();
    Some(Reply { status: parts.status, headers: parts.headers, body: body.collect().await.ok()?.to_bytes() })
}

/// What `amocrm/amocrm-api-php` (`ShortLinks::add`, then `processAction`) requires of a 200:
/// the keys of `_embedded.short_links` are exactly the request's keys (for a JSON array,
/// one item per request item), and it copies `url` into its models by position, so each
/// position must be that request item's link.
pub fn assert_official_client_accepts(request: &str, response: &serde_json::Value) {
    let request: serde_json::Value = serde_json::from_str(request).unwrap();
    let (sent, got) = (request.as_array().unwrap(), response["_embedded"]["short_links"].as_array().unwrap());
    assert_eq!(got.len(), sent.len(), "the client throws CollectionAndResponseKeysNotIndenticalException");
    for (index, (sent, got)) in sent.iter().zip(got).enumerate() {
        // An id the client spelled `7.0` or `7e0` comes back as `7`: compared as numbers
        // (the tests read JSON floats correctly rounded, `float_roundtrip`).
        let (got_id, sent_id) = (&got["metadata"]["entity_id"], &sent["metadata"]["entity_id"]);
        let same_id = got_id == sent_id || got_id.as_f64().is_some_and(|g| sent_id.as_f64() == Some(g));
        assert!(same_id, "position {index} holds another item's link: {got_id} for {sent_id}");
        assert_eq!(got["metadata"]["entity_type"], sent["metadata"]["entity_type"], "position {index}");
        assert!(got["url"].as_str().is_some_and(|u| u.starts_with("http")), "position {index}: {got}");
    }
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

/// A temporary directory as the server wants its data directory: private (0700), whatever
/// the process's umask was when it was made.
/// `shortlinks <args>` (with `--data-dir dir` when given) and `env`; its standard output,
/// once it succeeded.
pub async fn shortlinks(args: &[&str], dir: Option<&Path>, env: &[(&str, &str)]) -> String {
    let mut command = tokio::process::Command::new(shortlinks_binary());
    command.args(args).envs(env.iter().copied());
    if let Some(dir) = dir {
        command.arg("--data-dir").arg(dir);
    }
    let output = command.output().await.unwrap();
    assert!(output.status.success(), "shortlinks {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

pub fn private_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// An API rate high enough that no test meets it by accident.
pub const UNLIMITED: u32 = 1_000_000;

/// The first token of a server started without a terminal: in the data directory.
pub fn first_token(dir: &Path) -> String {
    let path = dir.join(shortlinks_server::data_dir::FIRST_TOKEN_FILE);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_owned()
}

/// A `shortlinks serve` process.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    /// Lines printed before "listening on".
    pub banner: Vec<String>,
    _stdout: Lines<BufReader<ChildStdout>>,
    /// Every line of its log (stderr) so far.
    log: Arc<Mutex<Vec<String>>>,
}

impl Process {
    pub async fn serve(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::serve_with_descriptors(dir, extra, env, None).await
    }

    /// As `serve`, with the soft and hard descriptor limits set to `descriptors` (by a
    /// shell's `ulimit`, so that the server itself raises nothing above it).
    pub async fn serve_with_descriptors(
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        descriptors: Option<u32>,
    ) -> Self {
        let mut command = match descriptors {
            None => Command::new(shortlinks_binary()),
            Some(n) => {
                let mut shell = Command::new("sh");
                shell.arg("-c").arg(format!("ulimit -n {n} && exec \"$0\" \"$@\"")).arg(shortlinks_binary());
                shell
            }
        };
        command.arg("serve").arg("--data-dir").arg(dir).args(extra).stdout(Stdio::piped()).stderr(Stdio::piped());
        command.env_remove("SHORTLINKS_LISTEN").env_remove("SHORTLINKS_PUBLIC_URL").env_remove("SHORTLINKS_CONFIG");
        if !extra.contains(&"--listen") {
            command.env("SHORTLINKS_LISTEN", "127.0.0.1:0");
        }
        command.env("SHORTLINKS_API_RATE_PER_SEC", UNLIMITED.to_string());
        command.env("SHORTLINKS_API_RATE_BURST", UNLIMITED.to_string());
        command.env("SHORTLINKS_NOTE_HOLD_SECS", "0").env("SHORTLINKS_ADDRESS_RULE_CONTACTS", "0");
        command.envs(env.iter().copied()).kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn({
            let log = log.clone();
            async move {
                while let Ok(Some(line)) = stderr.next_line().await {
                    log.lock().unwrap().push(line);
                }
            }
        });
        let mut banner = Vec::new();
        let addr = loop {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap();
            let line = line.expect("the server exited before listening");
            if let Some(rest) = line.strip_prefix("listening on http://") {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
            banner.push(line);
        };
        Self { child, addr, banner, _stdout: lines, log }
    }

    /// The first log line that contains every one of `texts`, once it is written (the log
    /// is read as the process writes it); panics after 10 s without one.
    pub async fn logged(&self, texts: &[&str]) -> String {
        let find = || self.log.lock().unwrap().iter().find(|line| texts.iter().all(|t| line.contains(t))).cloned();
        until(Duration::from_secs(10), &format!("a log line with {texts:?}"), || async { find().is_some() }).await;
        find().unwrap()
    }

    /// SIGTERM, without waiting for the exit.
    pub fn signal_terminate(&self) {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    }

    /// SIGTERM, and the exit code.
    pub async fn terminate(mut self) -> i32 {
        self.signal_terminate();
        self.exit_code().await
    }

    /// Waits for the process to exit; its exit code.
    pub async fn exit_code(&mut self) -> i32 {
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.unwrap().unwrap();
        status.code().unwrap_or(-1)
    }

    pub async fn post(&self, token: &str, body: &serde_json::Value) -> Reply {
        let auth = format!("Bearer {token}");
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        send(self.addr, Method::POST, "/api/v4/short_links", &headers, body.to_string().into_bytes()).await
    }

    /// SIGKILL: no shutdown at all.
    pub async fn kill9(mut self) {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.unwrap();
    }
}

/// A GET of a short link as a browser would send it.
pub async fn click(addr: SocketAddr, code: &str, headers: &[(&str, &str)]) -> Reply {
    send(addr, Method::GET, &format!("/{code}"), headers, Vec::new()).await
}

/// What a browser adds to `BROWSER` when a person follows a link (Chrome's values).
pub const NAVIGATION: [(&str, &str); 4] = [
    ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"),
    ("accept-language", "en-US,en;q=0.9"),
    ("sec-fetch-mode", "navigate"),
    ("sec-fetch-dest", "document"),
];

pub const BROWSER: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";

/// Reads one counter from `/metrics`.
pub async fn metric(addr: SocketAddr, name: &str) -> u64 {
    try_metric(addr, name).await.expect("the server answers")
}

/// `/metrics`, parsed by a strict parser of Prometheus' text format (a grammar of its own,
/// not ours): a page it refuses fails the test.
pub async fn try_scrape(addr: SocketAddr) -> Option<Exposition> {
    let body = try_send(addr, Method::GET, "/metrics", &[], Vec::new()).await?.body;
    let text = String::from_utf8(body.to_vec()).unwrap();
    Some(openmetrics_parser::prometheus::parse_prometheus(&text).unwrap_or_else(|e| panic!("{e:?} in {text}")))
}

/// What [`try_scrape`] parses.
pub type Exposition =
    openmetrics_parser::MetricsExposition<openmetrics_parser::PrometheusType, openmetrics_parser::PrometheusValue>;

/// The value of one sample, chosen as `name` or `name{label="value",…}`: labels in any
/// order, and a label the selector leaves out must be empty on the sample.
pub fn sample<'e>(metrics: &'e Exposition, selector: &str) -> Option<&'e openmetrics_parser::PrometheusValue> {
    let (name, wanted) = match selector.split_once('{') {
        None => (selector, Vec::new()),
        Some((name, labels)) => {
            let labels = labels.strip_suffix('}').expect("a selector's labels end with }");
            let pairs = labels.split("\",").filter(|p| !p.is_empty()).map(|pair| {
                let (label, value) = pair.split_once("=\"").expect("label=\"value\"");
                (label.to_owned(), value.trim_end_matches('"').to_owned())
            });
            (name, pairs.collect())
        }
    };
    let family = metrics.families.get(name)?;
    family.iter_samples().map(|s| (s, s.get_labelset().expect("labels"))).find_map(|(sample, set)| {
        let every_wanted = wanted.iter().all(|(l, v)| set.get_label_value(l) == Some(v.as_str()));
        let no_other = set.iter().all(|(l, v)| v.is_empty() || wanted.iter().any(|(w, _)| w == l));
        (every_wanted && no_other).then_some(&sample.value)
    })
}

/// Reads one counter or gauge (see [`sample`]), or `None` if the server is gone.
pub async fn try_metric(addr: SocketAddr, name: &str) -> Option<u64> {
    use openmetrics_parser::PrometheusValue;
    let metrics = try_scrape(addr).await?;
    let value = match sample(&metrics, name) {
        Some(PrometheusValue::Counter(c)) => c.value.as_f64(),
        Some(PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n)) => n.as_f64(),
        other => panic!("no counter or gauge {name} on /metrics: {other:?}"),
    };
    Some(value as u64)
}

/// How many observations one histogram (see [`sample`]) holds: 0 before its first (a
/// family with no series yet is not on the page).
pub async fn observations(addr: SocketAddr, name: &str) -> u64 {
    let metrics = try_scrape(addr).await.expect("the server answers");
    match sample(&metrics, name) {
        None => 0,
        Some(openmetrics_parser::PrometheusValue::Histogram(h)) => h.count.expect("a histogram's count"),
        Some(other) => panic!("{name} is no histogram: {other:?}"),
    }
}

pub use shortlinks_core::testing::until;

/// Waits until the pipeline has settled `n` clicks (it is asynchronous): screened out by the
/// writer (not visits, remembered repeats) or finished by the dispatcher.
pub async fn until_settled(addr: SocketAddr, n: u64) {
    let settled = || async {
        metric(addr, "shortlinks_clicks_screened_total").await
            + metric(addr, "shortlinks_clicks_dispatched_total").await
    };
    until(Duration::from_secs(30), &format!("{n} clicks settled"), || async { settled().await >= n }).await;
    assert_eq!(settled().await, n, "more clicks were settled than were made");
}

/// Every note the token can see, following `_links.next`.
pub async fn all_notes(addr: SocketAddr, token: &str, path: &str) -> Vec<serde_json::Value> {
    let auth = format!("Bearer {token}");
    let mut notes = Vec::new();
    let mut next = Some(path.to_owned());
    while let Some(path) = next.take() {
        let reply = send(addr, Method::GET, &path, &[("authorization", &auth)], Vec::new()).await;
        if reply.status == 204 {
            break;
        }
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(reply.content_type(), "application/hal+json");
        let body = reply.json();
        notes.extend(body["_embedded"]["notes"].as_array().unwrap().iter().cloned());
        next = body["_links"]["next"]["href"].as_str().map(str::to_owned);
    }
    notes
}

/// One request a [`Receiver`] got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// What the receiver answered (0: it stalled past the client's timeout).
    pub answered: u16,
}

/// A local HTTP endpoint standing in for a webhook receiver or amoCRM. `script` says what
/// to do with the n-th request: answer a status (with optional body), or stall.
pub struct Receiver {
    pub url: String,
    pub log: Arc<Mutex<Vec<Received>>>,
}

#[derive(Clone)]
pub enum Answer {
    Status(u16, &'static str),
    Stall(Duration),
}

impl Receiver {
    pub async fn start(script: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let log2 = log.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (log, script, seen) = (log2.clone(), script.clone(), seen.clone());
                let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let (log, script, seen) = (log.clone(), script.clone(), seen.clone());
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let answer = script(n);
                        let answered = match &answer {
                            Answer::Status(s, _) => *s,
                            Answer::Stall(_) => 0,
                        };
                        log.lock().unwrap().push(Received {
                            path: parts.uri.path().to_owned(),
                            headers: parts.headers,
                            body,
                            answered,
                        });
                        let (status, text) = match answer {
                            Answer::Status(status, text) => (status, text),
                            Answer::Stall(d) => {
                                tokio::time::sleep(d).await;
                                (200, "")
                            }
                        };
                        let mut response = hyper::Response::new(Full::new(Bytes::from_static(text.as_bytes())));
                        *response.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Self { url, log }
    }

    pub fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until `done` holds of what was received.
    pub async fn until(&self, what: &str, done: impl Fn(&[Received]) -> bool) {
        until(Duration::from_secs(30), what, || async { done(&self.received()) }).await;
    }
}

/// Creates one link per contact, `{url_prefix}{contact}` each, in batches of 250; the codes.
pub async fn links_for(addr: SocketAddr, token: &str, url_prefix: &str, contacts: &[u64]) -> Vec<String> {
    let mut codes = Vec::new();
    for chunk in contacts.chunks(250) {
        let body = serde_json::json!(chunk.iter().map(|c| item(&format!("{url_prefix}{c}"), *c)).collect::<Vec<_>>());
        let auth = format!("Bearer {token}");
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        let reply = send(addr, Method::POST, "/api/v4/short_links", &headers, body.to_string().into_bytes()).await;
        assert_eq!(reply.status, 200);
        let links = reply.json()["_embedded"]["short_links"].as_array().unwrap().clone();
        codes.extend(links.iter().map(|l| code_of(l["url"].as_str().unwrap()).to_owned()));
    }
    codes
}
