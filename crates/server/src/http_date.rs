//! The `Date` of responses the server writes itself (the redirect lane's), formatted once
//! a second per thread, as hyper does its own.

use std::cell::Cell;
use std::time::{Duration, UNIX_EPOCH};

use shortlinks_core::Timestamp;

/// An IMF-fixdate is always this long: `Sun, 06 Nov 1994 08:49:37 GMT`.
const LEN: usize = 29;

thread_local! {
    /// The second last formatted on this thread, and its text.
    static LAST: Cell<(u64, [u8; LEN])> = const { Cell::new((u64::MAX, [0; LEN])) };
}

/// Appends `at`, to the second, as an HTTP date.
pub(crate) fn write(out: &mut Vec<u8>, at: Timestamp) {
    let second = at.as_secs();
    let (last, mut text) = LAST.get();
    if last != second {
        let formatted = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(second));
        // Four-digit years only: the text is the same length until the year 10000.
        if formatted.len() != LEN {
            out.extend_from_slice(formatted.as_bytes());
            return;
        }
        text.copy_from_slice(formatted.as_bytes());
        LAST.set((second, text));
    }
    out.extend_from_slice(&text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_imf_fixdates_of_their_second() {
        let mut out = Vec::new();
        write(&mut out, Timestamp(784_111_777_000));
        write(&mut out, Timestamp(784_111_777_999)); // the same second: the thread's copy
        write(&mut out, Timestamp(784_111_778_000));
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "Sun, 06 Nov 1994 08:49:37 GMTSun, 06 Nov 1994 08:49:37 GMTSun, 06 Nov 1994 08:49:38 GMT"
        );
        let now = Timestamp::now();
        out.clear();
        write(&mut out, now);
        let parsed = httpdate::parse_http_date(std::str::from_utf8(&out).unwrap()).unwrap();
        assert_eq!(parsed, UNIX_EPOCH + Duration::from_secs(now.as_secs()));
    }
}
