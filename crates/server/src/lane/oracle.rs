//! The lane held to hyper on any bytes, for the lane's property test and the fuzz target
//! `lane_vs_hyper`.
//!
//! A connection is served by the lane while its requests are plain redirects, then by
//! hyper from the first byte the lane did not take. [`check`] requires that this pair
//! reads the same requests from a connection's bytes as hyper alone would, whatever the
//! bytes and however they are cut into reads: the same method, path, version and headers,
//! no body, in the same order, and nothing after a request that asks to close. So no
//! request can mean one thing to the lane and another to hyper, or hide inside another.

use std::cell::RefCell;
use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use http_body_util::Empty;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use shortlinks_core::model::ClickMethod;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{classify, header_slots, Head};

/// The head limit the check runs with: the server's default.
const MAX_HEAD: usize = 16 << 10;

/// One request as a server read it.
#[derive(Clone, PartialEq, Eq)]
pub struct Seen {
    method: String,
    path: String,
    version: String,
    /// Every header, by lowercase name, each name's values in the order sent.
    headers: Vec<(String, Vec<u8>)>,
    /// No body, and the connection to close after it.
    bodiless: bool,
    close: bool,
}

impl fmt::Debug for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<_> =
            self.headers.iter().map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v))).collect();
        let Self { method, path, version, bodiless, close, .. } = self;
        write!(f, "{method} {path} {version} {headers:?} bodiless={bodiless} close={close}")
    }
}

/// Headers sorted by name, keeping each name's values in order: how both sides compare.
fn sorted(mut headers: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    headers
}

/// `bytes` in reads of the sizes `cuts` gives, in turn (at least one byte each).
fn pieces<'b>(bytes: &'b [u8], cuts: &[u8]) -> Vec<&'b [u8]> {
    let (mut out, mut at, mut turn) = (Vec::new(), 0, 0);
    while at < bytes.len() {
        let size = cuts.get(turn % cuts.len().max(1)).map_or(bytes.len(), |&c| usize::from(c) + 1);
        let end = (at + size).min(bytes.len());
        out.push(&bytes[at..end]);
        (at, turn) = (end, turn + 1);
    }
    out
}

/// What the lane takes from `bytes` arriving in `pieces`, and the offset of the first byte
/// it did not take: where hyper starts, or where the lane stopped (a close, the end).
pub fn lane_takes(pieces: &[&[u8]]) -> (Vec<Seen>, usize) {
    let (mut buf, mut taken, mut offset) = (BytesMut::new(), Vec::new(), 0);
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            let mut slots = header_slots();
            match classify(&buf, &mut slots, MAX_HEAD) {
                Head::Redirect(request) => {
                    let headers = request.headers.headers.iter();
                    let headers = headers.map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec())).collect();
                    let method = if request.method == ClickMethod::Head { "HEAD" } else { "GET" };
                    taken.push(Seen {
                        method: method.to_owned(),
                        path: format!("/{}", request.code),
                        version: "HTTP/1.1".to_owned(),
                        headers: sorted(headers),
                        bodiless: true,
                        close: request.close,
                    });
                    let (len, close) = (request.len, request.close);
                    let _ = buf.split_to(len);
                    offset += len;
                    if close {
                        return (taken, offset);
                    }
                }
                Head::Incomplete => break,
                Head::HandOff => return (taken, offset),
            }
        }
    }
    (taken, offset)
}

thread_local! {
    /// One runtime per thread: the fuzzer calls [`check`] millions of times.
    static RUNTIME: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
}

/// The requests hyper's server reads from `pieces`, sent as separate writes, then the end.
pub fn hyper_reads(pieces: &[&[u8]]) -> Vec<Seen> {
    RUNTIME.with(|runtime| {
        let mut runtime = runtime.borrow_mut();
        #[allow(clippy::expect_used)] // no runtime, no check: the harness cannot go on
        let runtime = runtime.get_or_insert_with(|| {
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
        });
        runtime.block_on(read_with_hyper(pieces))
    })
}

async fn read_with_hyper(pieces: &[&[u8]]) -> Vec<Seen> {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let service = service_fn({
        let seen = seen.clone();
        move |request: Request<hyper::body::Incoming>| {
            use hyper::body::Body as _;
            let headers = request.headers().iter();
            let headers = headers.map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect();
            let close = request.headers().get_all(hyper::header::CONNECTION).iter().any(|v| {
                v.as_bytes().split(|&b| b == b',').any(|option| option.trim_ascii().eq_ignore_ascii_case(b"close"))
            });
            seen.lock().unwrap_or_else(|e| e.into_inner()).push(Seen {
                method: request.method().as_str().to_owned(),
                path: request.uri().path().to_owned(),
                version: format!("{:?}", request.version()),
                headers: sorted(headers),
                bodiless: request.body().is_end_stream(),
                close,
            });
            async { Ok::<_, std::convert::Infallible>(Response::new(Empty::<bytes::Bytes>::new())) }
        }
    });
    let connection = tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(server), service));
    let (mut reading, mut writing) = tokio::io::split(&mut client);
    let write = async {
        for piece in pieces {
            if writing.write_all(piece).await.is_err() {
                break;
            }
            tokio::task::yield_now().await; // hyper reads each piece on its own
        }
        let _ = writing.shutdown().await;
    };
    let read = async {
        let mut sink = Vec::new();
        let _ = reading.read_to_end(&mut sink).await;
    };
    tokio::join!(write, read);
    let _ = connection.await;
    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));
    seen
}

/// Panics unless the lane and hyper together read from `bytes`, cut into reads by `cuts`,
/// what hyper alone reads (see the module's header). Returns how many requests the lane
/// took.
pub fn check(bytes: &[u8], cuts: &[u8]) -> usize {
    let pieces = pieces(bytes, cuts);
    let (taken, offset) = lane_takes(&pieces);
    let alone = hyper_reads(&pieces);
    let lane_took = taken.len();
    let stopped = taken.last().is_some_and(|r| r.close);
    let mut together = taken;
    if !stopped {
        together.extend(hyper_reads(&self::pieces(&bytes[offset..], cuts)));
    }
    assert_eq!(
        together,
        alone,
        "the lane, then hyper, read otherwise than hyper alone: {:?}",
        String::from_utf8_lossy(bytes)
    );
    lane_took
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_bytes_in_the_sizes_given() {
        assert_eq!(pieces(b"abcdef", &[0, 1]), vec![&b"a"[..], b"bc", b"d", b"ef"]);
        assert_eq!(pieces(b"abc", &[]), vec![&b"abc"[..]]);
        assert!(pieces(b"", &[3]).is_empty());
    }

    #[test]
    fn a_plain_pipeline_is_the_lanes_and_reads_the_same_cut_anywhere() {
        let bytes = b"GET /abc HTTP/1.1\r\nHost: a\r\nUser-Agent: x\r\n\r\nGET /def?q=1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /api HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi";
        for cuts in [&[255u8][..], &[0], &[6, 1, 30]] {
            assert_eq!(check(bytes, cuts), 2, "{cuts:?}");
        }
    }
}
