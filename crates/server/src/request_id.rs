//! Request ids: every request gets one, echoed in `X-Request-Id` and in problem+json
//! bodies, and carried in log lines, so a client's report can be found in the logs.
//!
//! The id of a trusted proxy (one whose client-address header the server trusts) is kept;
//! otherwise the server makes one. Making one writes nothing shared: each thread counts
//! on its own, behind a random prefix of its own.

use std::cell::Cell;

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

/// The header that carries the id, both ways.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    /// The id of the request being answered, for problem bodies and log lines.
    static CURRENT: HeaderValue;
}

thread_local! {
    /// This thread's random prefix and its count of ids made.
    static NEXT: Cell<(u32, u64)> = const { Cell::new((0, 0)) };
}

/// The request's id: the trusted proxy's, if it sent a well-formed one, else a new one.
pub(crate) fn assign(headers: &HeaderMap, trust_incoming: bool) -> HeaderValue {
    if trust_incoming {
        if let Some(id) = headers.get(X_REQUEST_ID).filter(|id| well_formed(id.as_bytes())) {
            return id.clone();
        }
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
    let len = hex(u64::from(prefix), 8, &mut text[..8]) + 1;
    text[8] = b'-';
    let digits = 16 - (count.leading_zeros() as usize / 4).min(15);
    let len = len + hex(count, digits, &mut text[9..9 + digits]);
    HeaderValue::from_bytes(&text[..len]).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// `answer`, run with `id` as the current request's. Not an `async fn`: that would hold
/// `answer` twice in its state, and hyper moves this future for every request.
pub(crate) fn scope<F: std::future::Future>(
    id: HeaderValue,
    answer: F,
) -> impl std::future::Future<Output = F::Output> {
    CURRENT.scope(id, answer)
}

/// The current request's id, if there is one.
pub(crate) fn current() -> Option<String> {
    CURRENT.try_with(|id| id.to_str().unwrap_or("-").to_owned()).ok()
}

/// 1 to 128 of `A-Z a-z 0-9 - _ . :`: an id that is safe in logs and headers.
fn well_formed(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Writes `value`'s low `digits` hex digits into `out`; returns `digits`.
fn hex(value: u64, digits: usize, out: &mut [u8]) -> usize {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in out[..digits].iter_mut().enumerate() {
        *byte = DIGITS[((value >> (4 * (digits - 1 - i))) & 0xf) as usize];
    }
    digits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_made_unique_or_taken_from_a_trusted_proxy() {
        let empty = HeaderMap::new();
        let (a, b) = (assign(&empty, false), assign(&empty, false));
        assert_ne!(a, b);
        assert!(well_formed(a.as_bytes()) && a.len() >= 10, "{a:?}");
        let mut sent = HeaderMap::new();
        sent.insert(X_REQUEST_ID, HeaderValue::from_static("proxy-42"));
        assert_eq!(assign(&sent, true), "proxy-42");
        assert_ne!(assign(&sent, false), "proxy-42", "an untrusted client's id is not taken");
        sent.insert(X_REQUEST_ID, HeaderValue::from_static("bad id\\"));
        assert_ne!(assign(&sent, true), "bad id\\", "a malformed id is replaced");
    }
}
