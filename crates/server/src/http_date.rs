//! The `Date` of responses the server writes itself (the redirect lane's), made once a
//! second per thread, as hyper makes its own.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

/// An IMF-fixdate is always this long: `Sun, 06 Nov 1994 08:49:37 GMT`.
const LEN: usize = 29;

thread_local! {
    /// The second last formatted on this thread, and its text.
    static LAST: Cell<(u64, [u8; LEN])> = const { Cell::new((u64::MAX, [0; LEN])) };
}

/// Appends the current time as an HTTP date.
pub(crate) fn write_now(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (last, mut text) = LAST.get();
    if last != second {
        let formatted = httpdate::fmt_http_date(now);
        // Four-digit years only: the text is the same length until the year 10000.
        if formatted.len() == LEN {
            text.copy_from_slice(formatted.as_bytes());
            LAST.set((second, text));
        } else {
            out.extend_from_slice(formatted.as_bytes());
            return;
        }
    }
    out.extend_from_slice(&text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_date_is_now_and_parses_back() {
        let mut out = Vec::new();
        write_now(&mut out);
        write_now(&mut out); // the second call is served from the thread's copy
        assert_eq!(out.len(), 2 * LEN);
        let date = httpdate::parse_http_date(std::str::from_utf8(&out[..LEN]).unwrap()).unwrap();
        let off = SystemTime::now().duration_since(date).unwrap();
        assert!(off.as_secs() < 60, "{off:?}");
    }
}
