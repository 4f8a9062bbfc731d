//! The `Host` rule of RFC 9112 §3.2, in one place for both the redirect lane and hyper's
//! side: a request carries exactly one `Host` field line (an HTTP/1.0 request may carry
//! none), and its value is an RFC 3986 `host [ ":" port ]`. Anything else is answered
//! 400, since a server and a proxy in front of it could read such a request differently.

/// Why a request's `Host` is refused, as said in its 400 answer.
pub(crate) fn problem<'a>(values: impl IntoIterator<Item = &'a [u8]>, http_1_1: bool) -> Option<&'static str> {
    let mut values = values.into_iter();
    match (values.next(), values.next()) {
        (None, _) if http_1_1 => Some("An HTTP/1.1 request must carry a Host header"),
        (None, _) => None,
        (Some(_), Some(_)) => Some("A request must carry one Host header, not several"),
        (Some(value), None) if !valid(value) => Some("The Host header must be a host name or address and a port"),
        (Some(_), None) => None,
    }
}

/// `host [ ":" port ]`: an IP literal in brackets, or a name of unreserved characters,
/// percent-escapes and sub-delimiters (which covers IPv4 addresses); the port is digits.
fn valid(value: &[u8]) -> bool {
    let (host, port) = match value.strip_prefix(b"[") {
        Some(rest) => match rest.iter().position(|&b| b == b']') {
            Some(end) => {
                let literal = &rest[..end];
                let ip = !literal.is_empty() && literal.iter().all(|&b| b.is_ascii_hexdigit() || b":.".contains(&b));
                if !ip {
                    return false;
                }
                (&[][..], &rest[end + 1..])
            }
            None => return false,
        },
        None => match value.iter().rposition(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &[][..]),
        },
    };
    let port_ok = port.is_empty() || (port[0] == b':' && port[1..].iter().all(u8::is_ascii_digit));
    port_ok && reg_name(host)
}

fn reg_name(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'%' => {
                if !name.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b) => i += 1,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(value: &str) -> Option<&'static str> {
        problem([value.as_bytes()], true)
    }

    #[test]
    fn one_valid_host_passes_and_anything_else_is_named() {
        for good in [
            "sho.rt",
            "sho.rt:8080",
            "127.0.0.1:80",
            "[::1]:8080",
            "[2001:db8::1]",
            "xn--d1acufc.xn--p1ai",
            "a%41b",
            "",
        ] {
            assert_eq!(one(good), None, "{good:?}");
        }
        for bad in
            ["sho rt", "sho.rt:80:80", "sho.rt:8o", "[::1", "[::1]x", "[]", "a/b", "a@b", "a%4", "a\tb", "é.example"]
        {
            assert!(one(bad).is_some(), "{bad:?}");
        }
        assert!(problem([&b"a"[..], &b"a"[..]], true).unwrap().contains("not several"));
        assert!(problem([], true).unwrap().contains("must carry"));
        assert_eq!(problem([], false), None, "HTTP/1.0 may leave it out");
        assert!(problem([&b"a b"[..]], false).is_some(), "but what it sends must be valid");
    }
}
