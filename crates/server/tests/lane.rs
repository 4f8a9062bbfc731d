//! The redirect lane over a real socket: plain redirects are answered by the server's own
//! writer, anything else by hyper from the same connection, and a client cannot tell
//! which answered.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{code_of, item, metric, TestServer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One response off a raw connection: status, headers by lowercase name, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Answer {
    /// The header names, with the values that are the same on every answer of its kind.
    fn shape(&self) -> Vec<(String, Option<String>)> {
        let varies = ["x-request-id", "date"];
        self.headers.iter().map(|(k, v)| (k.clone(), (!varies.contains(&k.as_str())).then(|| v.clone()))).collect()
    }
}

/// Splits everything a connection sent until it closed into answers; `bodiless` marks
/// answers to HEAD, whose `content-length` has no body behind it.
fn answers(mut bytes: &[u8], bodiless: &[bool]) -> Vec<Answer> {
    let mut out = Vec::new();
    for &head_only in bodiless {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head") + 4;
        let head = std::str::from_utf8(&bytes[..end]).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers: BTreeMap<String, String> = lines
            .filter(|l| !l.is_empty())
            .map(|l| l.split_once(": ").unwrap())
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
            .collect();
        let length = if head_only { 0 } else { headers["content-length"].parse::<usize>().unwrap() };
        out.push(Answer { status, headers, body: bytes[end..end + length].to_vec() });
        bytes = &bytes[end + length..];
    }
    assert!(bytes.is_empty(), "more than expected: {:?}", String::from_utf8_lossy(bytes));
    out
}

async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut all)).await.expect("closed").unwrap();
    all
}

async fn link(server: &TestServer, url: &str, contact: u64) -> String {
    let reply = server.post_links(&server.token, &json!([item(url, contact)]).to_string()).await;
    code_of(reply.json()["_embedded"]["short_links"][0]["url"].as_str().unwrap()).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_moves_to_hyper_mid_pipeline_and_every_answer_has_the_same_shape() {
    let server = TestServer::start().await;
    let code = link(&server, "https://example.com/page?x=1", 5).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // One write: the lane answers the first request; the second has body framing, so it and
    // everything after it are hyper's, including a plain redirect and an API call.
    let requests = format!(
        "GET /{code}?utm_source=mail HTTP/1.1\r\nHost: sho.rt\r\nUser-Agent: test\r\n\r\n\
         GET /{code} HTTP/1.1\r\nHost: sho.rt\r\nContent-Length: 0\r\n\r\n\
         GET /{code} HTTP/1.1\r\nHost: sho.rt\r\n\r\n\
         GET /healthz HTTP/1.1\r\nHost: sho.rt\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(requests.as_bytes()).await.unwrap();
    let all = answers(&read_until_closed(&mut stream).await, &[false; 4]);
    let (lane, hyper) = (&all[0], &all[1]);
    assert_eq!((lane.status, hyper.status, all[2].status, all[3].status), (302, 302, 302, 200));
    assert_eq!(lane.headers["location"], "https://example.com/page?x=1");
    assert_eq!(lane.shape(), hyper.shape(), "the lane's 302 is hyper's");
    assert_eq!(all[3].body, b"ok\n");
    assert_eq!(all[3].headers["connection"], "close");
    let ids: std::collections::BTreeSet<_> = all.iter().map(|a| &a.headers["x-request-id"]).collect();
    assert_eq!(ids.len(), 4, "every answer has an id of its own");
    for answer in &all {
        httpdate_parses(&answer.headers["date"]);
    }
    // The three redirects are three clicks, whoever answered them.
    common::until_settled(server.addr, 3).await;
    assert_eq!(metric(server.addr, "shortlinks_clicks_recorded_total").await, 3);
}

fn httpdate_parses(date: &str) {
    // IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
    let parts: Vec<&str> = date.split(' ').collect();
    assert_eq!((date.len(), parts.len(), parts[5]), (29, 6, "GMT"), "{date:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_in_pieces_is_answered_and_a_missing_link_is_the_404_page_from_either_side() {
    let server = TestServer::start().await;
    let code = link(&server, "https://example.com/other", 6).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    for piece in ["GET /", &code[..3], &code[3..], " HTTP/1.1\r\nHo", "st: sho.rt\r\n", "\r\n"] {
        stream.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut first = vec![0u8; 4096];
    let n = stream.read(&mut first).await.unwrap();
    let found = answers(&first[..n], &[false]);
    assert_eq!((found[0].status, found[0].headers["location"].as_str()), (302, "https://example.com/other"));
    // The same missing link asked of the lane (GET, HEAD) and of hyper (HTTP/1.0 is hyper's).
    stream
        .write_all(
            b"GET /AAAAAAAAAAAA HTTP/1.1\r\nHost: a\r\n\r\n\
              HEAD /AAAAAAAAAAAA HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let lane = answers(&read_until_closed(&mut stream).await, &[false, true]);
    let mut old = TcpStream::connect(server.addr).await.unwrap();
    old.write_all(b"GET /AAAAAAAAAAAA HTTP/1.0\r\nHost: a\r\n\r\n").await.unwrap();
    let hyper = answers(&read_until_closed(&mut old).await, &[false]);
    assert_eq!((lane[0].status, lane[1].status, hyper[0].status), (404, 404, 404));
    assert_eq!(lane[0].body, hyper[0].body);
    assert!(lane[0].body.starts_with(b"<!doctype html>"));
    assert!(lane[1].body.is_empty(), "HEAD has no body");
    assert_eq!(lane[1].headers["content-length"], lane[0].body.len().to_string());
    assert_eq!(lane[1].headers["connection"], "close");
    assert_eq!(lane[0].shape(), hyper[0].shape(), "the lane's 404 is hyper's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heads_on_the_lane_get_hypers_answers() {
    let server = TestServer::start().await;
    for (request, status) in [
        ("GET /AAAAAAAAAAAA HTTP/1.1\r\nConnection: close\r\n\r\n", 400), // no Host
        ("GET /AAAAAAAAAAAA HTTP/1.1\r\nHost a\r\n\r\n", 400),            // no colon
        ("POST /AAAAAAAAAAAA HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 405),
        (
            "GET /AAAAAAAAAAAA HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            404,
        ),
        ("GET /AAAAAAAAAAAA HTTP/1.1\r\nHost: a\r\nConnection: close, upgrade\r\nUpgrade: h2c\r\n\r\n", 404),
    ] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let all = read_until_closed(&mut stream).await;
        let head = String::from_utf8_lossy(&all);
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{request:?}: {head}");
    }
}

/// RFC 9112, 3.2: two `Host` lines, or a `Host` that is no host, is a 400 whoever would have
/// answered (the lane for a plain redirect, hyper for the rest and for HTTP/1.0); one valid
/// `Host` is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_or_invalid_host_is_refused_on_both_paths() {
    let server = TestServer::start().await;
    let code = link(&server, "https://example.com/host", 7).await;
    let hosts = [
        ("Host: sho.rt\r\nHost: sho.rt\r\n", 400),
        ("Host: sho.rt\r\nHost: evil.example\r\n", 400),
        ("Host: sho rt\r\n", 400),
        ("Host: sho.rt:80:80\r\n", 400),
        ("Host: sho.rt/x\r\n", 400),
        ("Host: [::1\r\n", 400),
        ("Host: sho.rt:8080\r\n", 0),
        ("Host: [::1]:8080\r\n", 0),
    ];
    for (path, version, served) in
        [(format!("/{code}"), "1.1", 302), ("/healthz".into(), "1.1", 200), (format!("/{code}"), "1.0", 302)]
    {
        for (host, status) in hosts {
            let status = if status == 0 { served } else { status };
            let mut stream = TcpStream::connect(server.addr).await.unwrap();
            let request = format!("GET {path} HTTP/{version}\r\n{host}Connection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let all = read_until_closed(&mut stream).await;
            let head = String::from_utf8_lossy(&all);
            assert_eq!(head.split(' ').nth(1), Some(status.to_string().as_str()), "{request:?}: {head}");
            if status == 400 {
                assert!(head.contains("Host"), "the answer says why: {head}");
            }
        }
    }
    assert_eq!(metric(server.addr, "shortlinks_clicks_recorded_total").await, 4, "only the served redirects");
}

/// Writes `chunk` again and again without reading, until the server resets the
/// connection; how long that took once the server stopped reading. Panics after `limit`.
async fn write_until_reset(stream: &TcpStream, chunk: &[u8], limit: Duration) -> Duration {
    let started = std::time::Instant::now();
    let mut blocked_since = None;
    loop {
        assert!(started.elapsed() < limit, "still open after {limit:?} of answers nobody read");
        // Woken by room to write, by the reset, or after a while to look again.
        let _ = tokio::time::timeout(Duration::from_millis(100), stream.writable()).await;
        match stream.try_write(chunk) {
            Ok(_) => blocked_since = None,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                blocked_since.get_or_insert_with(std::time::Instant::now);
            }
            Err(e) => {
                let kind = e.kind();
                assert!(matches!(kind, std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe), "{e}");
                return blocked_since.map_or(Duration::ZERO, |since| since.elapsed());
            }
        }
    }
}

/// A client that sends requests and never reads the answers: once an answer has waited
/// the send timeout the server closes the connection, on the lane and on hyper's path.
/// The header read timeout is set far away, so that only the send timeout can close it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_after_the_send_timeout_on_both_paths() {
    let layer = shortlinks_server::config::SettingsLayer {
        send_timeout_secs: Some(1),
        header_read_timeout_secs: Some(600),
        ..Default::default()
    };
    let server = TestServer::start_with(layer).await;
    let code = link(&server, "https://example.com/unread", 8).await;
    for path in [format!("/{code}"), "/healthz".to_owned()] {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap(); // the server's answers back up sooner
        let stream = socket.connect(server.addr).await.unwrap();
        let chunk = format!("GET {path} HTTP/1.1\r\nHost: sho.rt\r\n\r\n").repeat(64);
        let waited = write_until_reset(&stream, chunk.as_bytes(), Duration::from_secs(60)).await;
        eprintln!("{path}: reset {waited:?} after the client's writes blocked");
    }
    // The server still serves everyone else.
    assert_eq!(server.get("/healthz").await.status, 200);
}

/// On `Connection: close` with more input behind it, the server closes gracefully: FIN
/// after the answer, then it reads what is left. Closing a socket with unread input makes
/// the kernel reset it and drop what it has not sent yet: here, most of an answer too long
/// for a client that has not read yet (a 12 KB `Location`, a small receive buffer). On
/// both paths the client reads the whole answer and a clean end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_with_unread_input_lingers_and_the_answer_arrives_whole_on_both_paths() {
    let server = TestServer::start().await;
    let long = format!("https://example.com/{}", "\u{44f}".repeat(2000));
    let code = link(&server, &long, 9).await;
    // The lane's, and one it hands to hyper (a connection option it does not know).
    for (n, option) in [(1, ""), (2, ", x-other")] {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(2048).unwrap();
        let mut stream = socket.connect(server.addr).await.unwrap();
        let head = format!("GET /{code} HTTP/1.1\r\nHost: sho.rt\r\nConnection: close{option}\r\n\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice("GET /unanswered HTTP/1.1\r\nHost: sho.rt\r\n\r\n".repeat(2000).as_bytes());
        stream.write_all(&bytes).await.unwrap();
        // Read only once the server has answered, and closed.
        common::until(Duration::from_secs(10), "the redirect is answered", || async {
            metric(server.addr, "shortlinks_clicks_recorded_total").await >= n
        })
        .await;
        let all = read_until_closed(&mut stream).await;
        let answer = &answers(&all, &[false])[0];
        assert_eq!(answer.status, 302, "{option}");
        assert!(answer.headers["location"].len() > 12_000, "{option}");
        assert_eq!(answer.headers["connection"], "close", "{option}");
    }
}
