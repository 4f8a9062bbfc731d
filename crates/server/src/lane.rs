//! The redirect lane: plain `GET|HEAD /{code}` requests answered straight off the socket.
//!
//! Under load, hyper's own work per request (a header map, a URI, a request and a response
//! built and encoded) costs about as much as the redirect itself. The lane parses the head
//! with httparse, the parser hyper uses, reads the few headers a click needs in place, and
//! writes the 302 from one buffer.
//!
//! It takes only requests it understands whole: HTTP/1.1, GET or HEAD, one alphanumeric
//! path segment with at most a plain query, a Host, no body framing (`Content-Length`,
//! `Transfer-Encoding`), no `Expect` or `Upgrade`, `Connection` only `keep-alive` or
//! `close`, a head inside the size limit. At anything else it hands the connection to
//! hyper with every byte it has read and not answered, and hyper serves the rest of the
//! connection. So a malformed, oversized or unusual request meets hyper's checks, never a
//! second parser's rules.

use std::future::{poll_fn, Future};
use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use hyper::header::HeaderName;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Response};
use hyper_util::rt::TokioIo;
use shortlinks_core::model::ClickMethod;
use shortlinks_core::{Store, TargetUrl, Timestamp};
use shortlinks_notes::ClickHeaders;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::access_log;
use crate::app::{code_of, is_reserved, App};
use crate::client_socket::ClientSocket;
use crate::drain::GracefulConnection;
use crate::http_date;
use crate::http_metrics::LaneTimings;
use crate::idle::{Activity, TrackedBody};
use crate::prefixed::Prefixed;
use crate::problem::Body;
use crate::redirect::Redirect;
use crate::request_id::{self, RequestId};

#[cfg(any(test, feature = "fuzzing"))]
#[cfg_attr(not(feature = "fuzzing"), allow(unreachable_pub))] // public for the fuzz target only
pub mod oracle;

/// Headers the lane reads in one head; a head with more goes to hyper (which takes 100).
const MAX_HEADERS: usize = 48;
/// Longer path segments are no code of ours; hyper answers them.
const MAX_SEGMENT: usize = 64;
/// A connection's read buffer starts this large, as hyper's does.
const READ_BUFFER: usize = 8 << 10;
/// Read into the buffer only with at least this much room.
const MIN_READ: usize = 1 << 10;

/// What the lane makes of the bytes at the front of a connection.
#[derive(Debug)]
pub(crate) enum Head<'h, 'b> {
    /// A complete redirect request, for the lane.
    Redirect(PlainGet<'h, 'b>),
    /// The start of a head that may yet be one: read more.
    Incomplete,
    /// Anything else: hyper's.
    HandOff,
}

/// A `GET|HEAD /{code}` request the lane answers.
#[derive(Debug)]
pub(crate) struct PlainGet<'h, 'b> {
    /// The head's length in bytes.
    len: usize,
    method: ClickMethod,
    code: &'b str,
    /// The client asked to close after this answer.
    close: bool,
    headers: ParsedHeaders<'h, 'b>,
}

/// The headers of a head parsed by the lane, read in place.
///
/// A click looks up about ten names, most of them absent (prefetch hints, `Referer`), and
/// a browser sends a dozen headers or more. `lengths` has bit `len % 64` set for the
/// length of every name present, so most absent names are told apart without a scan.
#[derive(Debug)]
pub(crate) struct ParsedHeaders<'h, 'b> {
    headers: &'h [httparse::Header<'b>],
    lengths: u64,
}

impl ParsedHeaders<'_, '_> {
    fn bit(name: &str) -> u64 {
        1 << (name.len() % 64)
    }

    /// Whether a header may be named `name`: no, when no name has its length.
    fn may_have(&self, name: &str) -> bool {
        self.lengths & Self::bit(name) != 0
    }
}

impl ClickHeaders for ParsedHeaders<'_, '_> {
    fn first(&self, name: &HeaderName) -> Option<&[u8]> {
        let name = name.as_str();
        if !self.may_have(name) {
            return None;
        }
        self.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    }

    fn last(&self, name: &HeaderName) -> Option<&[u8]> {
        let name = name.as_str();
        if !self.may_have(name) {
            return None;
        }
        self.headers.iter().rev().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    }
}

/// Room for a head's headers. Left uninitialised: the parser writes each slot it fills,
/// so a zeroed array (1.5 KiB written for every request) would be written twice.
type HeaderSlots<'b> = [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS];

/// Empty room for [`classify`].
const fn header_slots<'b>() -> HeaderSlots<'b> {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// Reads the head at the front of `buf`: the lane's if it is a plain redirect request.
/// `max_head` is the configured header limit; at it, an unfinished head is hyper's (431).
pub(crate) fn classify<'h, 'b>(buf: &'b [u8], headers: &'h mut HeaderSlots<'b>, max_head: usize) -> Head<'h, 'b> {
    let mut request = httparse::Request::new(&mut []);
    let len = match request.parse_with_uninit_headers(buf, headers) {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Partial) if buf.len() < max_head => return Head::Incomplete,
        _ => return Head::HandOff,
    };
    let httparse::Request { method, path, version, headers } = request;
    let method = match method {
        Some("GET") => ClickMethod::Get,
        Some("HEAD") => ClickMethod::Head,
        _ => return Head::HandOff,
    };
    let Some(target) = path.and_then(|path| path.strip_prefix('/')) else { return Head::HandOff };
    let (code, query) = target.split_once('?').unwrap_or((target, ""));
    let plain_code = (1..=MAX_SEGMENT).contains(&code.len())
        && code.bytes().all(|b| b.is_ascii_alphanumeric())
        && !is_reserved(code);
    if version != Some(1) || !plain_code || !query.bytes().all(query_byte) {
        return Head::HandOff;
    }
    // One pass: what makes the request hyper's, and the names' lengths for the lookups.
    let (mut host, mut hosts, mut close, mut lengths) = (&[][..], 0, false, 0);
    for header in headers.iter() {
        let name = header.name;
        lengths |= ParsedHeaders::bit(name);
        if name.eq_ignore_ascii_case("host") {
            (host, hosts) = (header.value, hosts + 1);
        } else if name.eq_ignore_ascii_case("connection") {
            for option in header.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if option.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !option.is_empty() && !option.eq_ignore_ascii_case(b"keep-alive") {
                    return Head::HandOff;
                }
            }
        } else if ["content-length", "transfer-encoding", "expect", "upgrade"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
        {
            return Head::HandOff;
        }
    }
    // RFC 9112, 3.2: hyper's side answers a missing, repeated or invalid Host with 400.
    if hosts != 1 || crate::host::problem([host], true).is_some() {
        return Head::HandOff;
    }
    Head::Redirect(PlainGet { len, method, code, close, headers: ParsedHeaders { headers, lengths } })
}

/// A byte of a query as RFC 3986 spells one (pchar, `/`, `?`, `%`): any other goes to hyper.
fn query_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// One connection: answered by the lane while its requests are plain redirects, then by
/// hyper. Ends when the client closes, asks to close, or the server drains.
pub(crate) struct Connection<F> {
    future: Pin<Box<F>>,
    stopping: Arc<AtomicBool>,
}

impl<F: Future> Future for Connection<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.future.as_mut().poll(cx)
    }
}

impl<F: Future> GracefulConnection for Connection<F> {
    fn graceful_shutdown(self: Pin<&mut Self>) {
        self.stopping.store(true, Release);
    }
}

/// What `serve` needs beside the socket.
pub(crate) struct Connected<S: Store> {
    pub(crate) app: Arc<App<S>>,
    pub(crate) http: Arc<http1::Builder>,
    pub(crate) peer: Option<IpAddr>,
    pub(crate) activity: Arc<Activity>,
}

/// Serves `stream`. The future's poll is where a drain's request to stop is seen (it is
/// polled right after [`GracefulConnection::graceful_shutdown`]).
pub(crate) fn serve<S: Store>(
    stream: TcpStream,
    connected: Connected<S>,
) -> Connection<impl Future<Output = io::Result<()>> + Send> {
    let stopping = Arc::new(AtomicBool::new(false));
    let future = Box::pin(run(stream, connected, stopping.clone()));
    Connection { future, stopping }
}

async fn run<S: Store>(stream: TcpStream, connected: Connected<S>, stopping: Arc<AtomicBool>) -> io::Result<()> {
    let app = &connected.app;
    let max_head = app.limits.max_header_bytes;
    let mut stream = ClientSocket::new(stream, connected.activity.clone());
    let mut buf = BytesMut::with_capacity(READ_BUFFER);
    let mut out = Vec::with_capacity(512);
    let mut timings = app.http_metrics.lane_timings();
    loop {
        // Every complete request the buffer holds (a client may send several at once),
        // until the server stops: as hyper, no request is read after that.
        while !stopping.load(Acquire) {
            let mut headers = header_slots();
            let request = match classify(&buf, &mut headers, max_head) {
                Head::Redirect(request) => request,
                Head::Incomplete => break,
                Head::HandOff => {
                    drop(timings); // hyper times what follows
                    return hand_off(stream, buf, connected, stopping).await;
                }
            };
            let in_flight = connected.activity.begin();
            let close = answer(app, &request, connected.peer, &stopping, &mut out, &mut timings).await;
            buf.advance(request.len);
            stream.write_all(&out).await?;
            drop(in_flight);
            if close {
                return stream.shutdown().await;
            }
        }
        if stopping.load(Acquire) {
            break;
        }
        if buf.capacity() - buf.len() < MIN_READ {
            buf.reserve(READ_BUFFER);
        }
        // A drain's request to stop ends the wait for the next request. `read_buf` polls
        // the socket's `poll_read`, which takes a short read as the socket drained: no
        // second read that would only say it would block.
        let mut reading = std::pin::pin!(stream.read_buf(&mut buf));
        let read =
            poll_fn(|cx| if stopping.load(Acquire) { Poll::Ready(Ok(0)) } else { reading.as_mut().poll(cx) }).await?;
        if read == 0 {
            break;
        }
    }
    // The server closes gracefully (FIN, then a lingering read); a client that closed
    // needs nothing more.
    if stopping.load(Acquire) {
        stream.shutdown().await
    } else {
        Ok(())
    }
}

/// The answer to `request`, written into `out`; says whether the connection closes after
/// it: the client asked to, or the server began to stop while it was being answered (then
/// the answer says `connection: close`, as hyper's does).
async fn answer<S: Store>(
    app: &App<S>,
    request: &PlainGet<'_, '_>,
    peer: Option<IpAddr>,
    stopping: &AtomicBool,
    out: &mut Vec<u8>,
    timings: &mut LaneTimings,
) -> bool {
    let started = Instant::now();
    let id = app.request_id(&request.headers);
    out.clear();
    // A `TargetUrl` is printable ASCII (its constructors check, decoding included): a
    // header value as it is.
    let location = |target: &TargetUrl| {
        out.extend_from_slice(b"HTTP/1.1 302 Found\r\nlocation: ");
        out.extend_from_slice(target.as_str().as_bytes());
        Some(())
    };
    // In the request's scope, as on hyper's path: what it logs and any problem body carry its id.
    let redirect = app.redirect_with(request.code, request.method, &request.headers, peer, location);
    let redirect = request_id::scope(id.clone(), redirect).await;
    let close = request.close || stopping.load(Acquire);
    let status = match redirect {
        Redirect::Found { location: (), at } => {
            out.extend_from_slice(b"\r\ncache-control: private, no-store");
            end_head(out, &id, 0, close, at);
            302
        }
        Redirect::Page(page) => {
            let head = request.method == ClickMethod::Head;
            write_page(out, page, head, &id, close, Timestamp::now()).await
        }
    };
    timings.observe(started);
    if app.log_redirects {
        let method = if request.method == ClickMethod::Head { "HEAD" } else { "GET" };
        access_log::redirect(id.as_str(), method, &format!("/{}", request.code), status, started);
    }
    close
}

/// Writes any other answer (the 404 page, an error) as hyper would; returns its status.
async fn write_page(
    out: &mut Vec<u8>,
    page: Response<Body>,
    head: bool,
    id: &RequestId,
    close: bool,
    at: Timestamp,
) -> u16 {
    let (parts, body) = page.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    for (name, value) in &parts.headers {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
    }
    end_head(out, id, body.len(), close, at);
    if !head {
        out.extend_from_slice(&body);
    }
    parts.status.as_u16()
}

/// The headers every answer ends with, and the blank line; the date is `at`'s.
fn end_head(out: &mut Vec<u8>, id: &RequestId, content_length: usize, close: bool, at: Timestamp) {
    out.extend_from_slice(b"\r\nx-request-id: ");
    out.extend_from_slice(id.as_bytes());
    if content_length == 0 {
        out.extend_from_slice(b"\r\ncontent-length: 0");
    } else {
        // Writing to a Vec cannot fail.
        let _ = write!(out, "\r\ncontent-length: {content_length}");
    }
    if close {
        out.extend_from_slice(b"\r\nconnection: close");
    }
    out.extend_from_slice(b"\r\ndate: ");
    http_date::write(out, at);
    out.extend_from_slice(b"\r\n\r\n");
}

/// hyper serves the rest of the connection, reading `unanswered` first.
async fn hand_off<S: Store>(
    stream: ClientSocket,
    unanswered: BytesMut,
    connected: Connected<S>,
    stopping: Arc<AtomicBool>,
) -> io::Result<()> {
    let Connected { app, http, peer, activity } = connected;
    let service = service_fn(move |request| {
        let app = app.clone();
        let in_flight = activity.begin();
        async move {
            // Timed here rather than inside `App::handle`, whose future must stay small.
            let started = Instant::now();
            let redirect =
                matches!(*request.method(), Method::GET | Method::HEAD) && code_of(request.uri().path()).is_some();
            let response = app.handle(request, peer).await;
            if redirect {
                app.http_metrics.hyper_redirect(started);
            }
            Ok::<_, std::convert::Infallible>(response.map(|body| TrackedBody::new(body, in_flight)))
        }
    });
    let io = TokioIo::new(Prefixed::new(unanswered.freeze(), stream));
    let mut connection = std::pin::pin!(http.serve_connection(io, service));
    let mut told = false;
    poll_fn(|cx| {
        if !told && stopping.load(Acquire) {
            told = true;
            connection.as_mut().graceful_shutdown();
        }
        connection.as_mut().poll(cx)
    })
    .await
    .map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(head: &str) -> Option<(ClickMethod, String, bool, usize)> {
        let mut headers = header_slots();
        match classify(head.as_bytes(), &mut headers, 16 << 10) {
            Head::Redirect(r) => Some((r.method, r.code.to_owned(), r.close, r.len)),
            Head::Incomplete | Head::HandOff => None,
        }
    }

    fn verdict(head: &str) -> &'static str {
        let mut headers = header_slots();
        match classify(head.as_bytes(), &mut headers, 16 << 10) {
            Head::Redirect(_) => "lane",
            Head::Incomplete => "incomplete",
            Head::HandOff => "hyper",
        }
    }

    #[test]
    fn plain_redirect_requests_are_the_lanes() {
        let head = "GET /AbC123xyz789?utm_source=mail&x=%20 HTTP/1.1\r\nHost: sho.rt\r\nConnection: keep-alive\r\n\r\nGET /next";
        let (method, code, close, len) = lane(head).unwrap();
        assert_eq!((method, code.as_str(), close), (ClickMethod::Get, "AbC123xyz789", false));
        assert_eq!(&head[len..], "GET /next", "the head ends where the next request starts");
        let (method, _, close, _) = lane("HEAD /abc HTTP/1.1\r\nhost: a\r\nconnection: Close\r\n\r\n").unwrap();
        assert_eq!((method, close), (ClickMethod::Head, true));
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        for head in [
            "POST /abc HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /abc HTTP/1.0\r\nHost: a\r\n\r\n",
            "GET /abc HTTP/1.1\r\n\r\n",
            "GET /api HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /a/b HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /a-b HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /abc?q=\"x\" HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET http://a/abc HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /abc HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            "GET /abc HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /abc HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            "GET /abc HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            "GET /abc HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
            "GET /abc HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n",
        ] {
            assert_eq!(verdict(head), "hyper", "{head:?}");
        }
        let many: String = (0..MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(verdict(&format!("GET /abc HTTP/1.1\r\nHost: a\r\n{many}\r\n")), "hyper");
        let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(MAX_SEGMENT + 1));
        assert_eq!(verdict(&long), "hyper");
    }

    #[test]
    fn an_unfinished_head_waits_for_more_up_to_the_limit() {
        assert_eq!(verdict("GET /abc HTTP/1.1\r\nHost: a\r\n"), "incomplete");
        assert_eq!(verdict("GE"), "incomplete");
        let big = format!("GET /abc HTTP/1.1\r\nHost: a\r\nX: {}", "v".repeat(16 << 10));
        assert_eq!(verdict(&big), "hyper", "at the limit hyper answers 431");
        let mut headers = header_slots();
        let complete_but_over = format!("GET /abc HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "v".repeat(100));
        assert!(matches!(classify(complete_but_over.as_bytes(), &mut headers, 64), Head::HandOff));
    }

    #[test]
    fn headers_are_found_by_lowercase_name_first_and_last() {
        let head = "GET /abc HTTP/1.1\r\nHost: a\r\nUser-Agent: one\r\nX-Forwarded-For: 1.1.1.1\r\nx-forwarded-for: 2.2.2.2\r\n\r\n";
        let mut headers = header_slots();
        let Head::Redirect(request) = classify(head.as_bytes(), &mut headers, 16 << 10) else { panic!() };
        let xff = HeaderName::from_static("x-forwarded-for");
        assert_eq!(request.headers.first(&hyper::header::USER_AGENT), Some(&b"one"[..]));
        assert_eq!(request.headers.first(&xff), Some(&b"1.1.1.1"[..]));
        assert_eq!(request.headers.last(&xff), Some(&b"2.2.2.2"[..]));
        assert_eq!(request.headers.first(&hyper::header::REFERER), None);
        // 64 apart: the same bit, so the scan runs and still tells the names apart.
        let long = HeaderName::from_bytes(&[b'x'; 74]).unwrap();
        assert_eq!(request.headers.first(&long), None);
    }

    mod against_hyper {
        //! Whatever the lane takes, hyper reads the same way (`oracle`): on heads near the
        //! lane's edge, cut into reads anywhere, with a request after each.

        use proptest::prelude::*;

        const FOLLOWING: &[u8] = b"GET /following HTTP/1.1\r\nHost: a\r\n\r\n";

        /// Heads near the lane's edge: mostly plain redirects, with what would make one
        /// hyper's mixed in, and now and then a byte overwritten anywhere.
        fn head() -> impl Strategy<Value = Vec<u8>> {
            let method = prop_oneof![6 => Just("GET"), 2 => Just("HEAD"), 1 => Just("POST"), 1 => Just("get")];
            let target = prop_oneof![
                4 => "/[A-Za-z0-9]{1,14}",
                4 => "/[A-Za-z0-9]{1,14}\\?[a-z0-9=&%_.~:@/?!$'()*+,;-]{0,20}",
                1 => "/[A-Za-z0-9]{1,6}[\"{}|\\\\^`#<>\\[\\] ][a-z]{0,4}",
                1 => "/api|/metrics|/|//x|/a/b|\\*|http://a/b",
            ];
            let version = prop_oneof![8 => Just("HTTP/1.1"), 1 => Just("HTTP/1.0"), 1 => Just("HTTP/2.0")];
            let plain = prop_oneof![
                Just("Connection: close"),
                Just("Connection: keep-alive"),
                Just("connection: Keep-Alive, close"),
                Just("User-Agent: Mozilla/5.0 (X11)"),
                Just("user-agent: second"),
                Just("Accept: text/html"),
                Just("X-Forwarded-For: 1.2.3.4, 5.6.7.8"),
                Just("x-forwarded-for: 9.9.9.9"),
                Just("X-Empty:"),
                Just("X-Tab: a\tb"),
                Just("X-Obs: caf\u{e9}"),
            ]
            .prop_map(str::to_owned);
            let hyper_only = prop_oneof![
                Just("Connection: upgrade"),
                Just("Upgrade: websocket"),
                Just("Content-Length: 0"),
                Just("Content-Length: 4"),
                Just("Transfer-Encoding: chunked"),
                Just("Expect: 100-continue"),
                Just(" Folded: x"),
                Just("Bad Name: x"),
                Just("X-Nul: a\0b"),
            ]
            .prop_map(str::to_owned);
            let header = prop_oneof![8 => plain, 1 => hyper_only, 3 => "[A-Za-z-]{1,12}: [ -~]{0,16}"];
            let host = prop_oneof![9 => Just(true), 1 => Just(false)];
            let mutation =
                prop_oneof![3 => Just(None), 1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(Some)];
            (method, target, version, prop::collection::vec(header, 0..7), host, any::<prop::sample::Index>(), mutation)
                .prop_map(|(method, target, version, mut headers, host, at, mutation)| {
                    if host {
                        headers.insert(at.index(headers.len() + 1), "Host: sho.rt".to_owned());
                    }
                    let mut bytes = format!("{method} {target} {version}\r\n").into_bytes();
                    for header in headers {
                        bytes.extend_from_slice(header.as_bytes());
                        bytes.extend_from_slice(b"\r\n");
                    }
                    bytes.extend_from_slice(b"\r\n");
                    if let Some((at, byte)) = mutation {
                        let at = at.index(bytes.len());
                        bytes[at] = byte;
                    }
                    bytes
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn the_lane_then_hyper_read_what_hyper_alone_reads(
                head in head(),
                cuts in prop::collection::vec(any::<u8>(), 0..4),
            ) {
                let mut bytes = head;
                bytes.extend_from_slice(FOLLOWING);
                super::super::oracle::check(&bytes, &cuts);
            }
        }
    }
}
