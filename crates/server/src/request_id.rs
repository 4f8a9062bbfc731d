//! Request ids: every request gets one, echoed in `X-Request-Id` and in problem+json
//! bodies, and carried in log lines, so a client's report can be found in the logs.
//!
//! The id of a trusted proxy (one whose client-address header the server trusts) is kept;
//! otherwise the server makes one. Making one writes nothing shared: each thread counts
//! on its own, behind a random prefix of its own.

use std::cell::Cell;

use hyper::header::{HeaderName, HeaderValue};

/// The header that carries the id, both ways.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request's id. One the server made is held inline, so that handing it around (to the
/// task-local, to the response) copies bytes and allocates nothing, except the response
/// header itself.
#[derive(Clone)]
pub(crate) enum RequestId {
    /// Made here: `prefix-count` in hex.
    Made { text: [u8; 25], len: u8 },
    /// A trusted proxy's, copied out of the request (holding the request's own value
    /// would keep hyper's read buffer alive).
    Given(HeaderValue),
}

impl RequestId {
    /// The id as text.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Self::Made { text, len } => std::str::from_utf8(&text[..usize::from(*len)]).unwrap_or("-"),
            Self::Given(value) => value.to_str().unwrap_or("-"),
        }
    }

    /// The id as bytes, for a response head written by hand.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Made { text, len } => &text[..usize::from(*len)],
            Self::Given(value) => value.as_bytes(),
        }
    }

    /// The response header's value.
    pub(crate) fn header_value(&self) -> HeaderValue {
        match self {
            Self::Made { text, len } => {
                HeaderValue::from_bytes(&text[..usize::from(*len)]).unwrap_or_else(|_| HeaderValue::from_static("-"))
            }
            Self::Given(value) => value.clone(),
        }
    }
}

tokio::task_local! {
    /// The id of the request being answered, for problem bodies and log lines.
    static CURRENT: RequestId;
}

thread_local! {
    /// This thread's random prefix and its count of ids made.
    static NEXT: Cell<(u32, u64)> = const { Cell::new((0, 0)) };
}

/// The request's id: `trusted`, the `X-Request-Id` a trusted proxy sent, if it is well
/// formed; else a new one.
pub(crate) fn assign(trusted: Option<&[u8]>) -> RequestId {
    if let Some(id) = trusted.filter(|id| well_formed(id)).and_then(|id| HeaderValue::from_bytes(id).ok()) {
        return RequestId::Given(id);
    }
    let (prefix, count) = NEXT.with(|next| {
        let (mut prefix, count) = next.get();
        if prefix == 0 {
            let mut bytes = [0u8; 4];
            // Without the random source, ids are still unique per thread, just guessable.
            let _ = getrandom::getrandom(&mut bytes);
            prefix = u32::from_le_bytes(bytes) | 1;
        }
        next.set((prefix, count + 1));
        (prefix, count)
    });
    let mut text = [0u8; 25];
    hex(u64::from(prefix), 8, &mut text[..8]);
    text[8] = b'-';
    let digits = 16 - (count.leading_zeros() as usize / 4).min(15);
    hex(count, digits, &mut text[9..9 + digits]);
    RequestId::Made { text, len: (9 + digits) as u8 }
}

/// `answer`, run with `id` as the current request's. Not an `async fn`: that would hold
/// `answer` twice in its state, and hyper moves this future for every request.
pub(crate) fn scope<F: std::future::Future>(id: RequestId, answer: F) -> impl std::future::Future<Output = F::Output> {
    CURRENT.scope(id, answer)
}

/// The current request's id, if there is one.
pub(crate) fn current() -> Option<String> {
    CURRENT.try_with(|id| id.as_str().to_owned()).ok()
}

/// The current request's id for a log line: `-` outside a request.
pub(crate) fn for_log() -> String {
    current().unwrap_or_else(|| "-".to_owned())
}

/// 1 to 128 of `A-Z a-z 0-9 - _ . :`: an id that is safe in logs and headers.
fn well_formed(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Writes `value`'s low `digits` hex digits into `out`.
fn hex(value: u64, digits: usize, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in out[..digits].iter_mut().enumerate() {
        *byte = DIGITS[((value >> (4 * (digits - 1 - i))) & 0xf) as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_made_unique_or_taken_from_a_trusted_proxy() {
        let (a, b) = (assign(None), assign(None));
        assert_ne!(a.as_str(), b.as_str());
        assert!(well_formed(a.as_str().as_bytes()) && a.as_str().len() >= 10, "{}", a.as_str());
        assert_eq!(a.header_value(), a.as_str());
        assert_eq!(a.as_bytes(), a.as_str().as_bytes());
        assert_eq!(assign(Some(b"proxy-42")).as_str(), "proxy-42");
        assert_ne!(assign(Some(b"bad id\\")).as_str(), "bad id\\", "a malformed id is replaced");
    }
}
