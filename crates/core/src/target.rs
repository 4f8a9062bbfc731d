//! Target URL validation: what a short link may point to.
//!
//! The stored form is the WHATWG serialization of the URL, which is printable ASCII only,
//! so it can always go into a `Location` header as it is.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest accepted target, in characters (Unicode scalar values) as given: the unit
/// a person and a JSON Schema's `maxLength` count in.
pub const MAX_TARGET_CHARS: usize = 2048;

/// The longest stored (normalized) target, in bytes. Normalization percent-encodes or
/// punycodes what is not ASCII, up to 12 bytes for one character, so no accepted input
/// reaches this; it bounds what a record holds and what a stored record may claim.
pub const MAX_NORMALIZED_BYTES: usize = 12 * MAX_TARGET_CHARS;

/// A validated, normalized absolute `http` or `https` URL.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TargetUrl(String);

/// Why a target URL was refused; its `Display` is meant for a 400 response.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UrlProblem {
    /// The string is empty.
    Empty,
    /// The URL is longer than [`MAX_TARGET_CHARS`] characters.
    TooLong,
    /// The normalized URL is longer than [`MAX_NORMALIZED_BYTES`] bytes.
    TooLongNormalized,
    /// A control or whitespace character, which could split headers or hide the real target.
    ControlOrWhitespace,
    /// Not a parseable absolute URL.
    Malformed(url::ParseError),
    /// A scheme other than http or https (`javascript:`, `data:`, `file:` and the like).
    UnsupportedScheme(String),
    /// No host to redirect to.
    MissingHost,
    /// A user name or password in the URL, which would be stored and shown to people.
    Credentials,
}

impl fmt::Display for UrlProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("url is empty"),
            Self::TooLong => write!(f, "url is longer than {MAX_TARGET_CHARS} characters"),
            Self::TooLongNormalized => {
                write!(f, "url is longer than {MAX_NORMALIZED_BYTES} bytes once normalized (percent-encoded)")
            }
            Self::ControlOrWhitespace => f.write_str("url contains whitespace or control characters"),
            Self::Malformed(e) => write!(f, "url is not a valid absolute URL: {e}"),
            Self::UnsupportedScheme(s) => write!(f, "url scheme {s:?} is not allowed; use http or https"),
            Self::MissingHost => f.write_str("url has no host"),
            Self::Credentials => f.write_str("url must not contain a user name or password"),
        }
    }
}

impl std::error::Error for UrlProblem {}

impl TargetUrl {
    /// Validates and normalizes a target from untrusted input.
    pub fn parse(input: &str) -> Result<Self, UrlProblem> {
        if input.is_empty() {
            return Err(UrlProblem::Empty);
        }
        // Bytes bound characters from above: only a long input needs counting.
        if input.len() > MAX_TARGET_CHARS && input.chars().count() > MAX_TARGET_CHARS {
            return Err(UrlProblem::TooLong);
        }
        Self::normalize(input)
    }

    fn normalize(input: &str) -> Result<Self, UrlProblem> {
        // The URL parser would silently strip these; we refuse them instead.
        if input.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(UrlProblem::ControlOrWhitespace);
        }
        let url = url::Url::parse(input).map_err(UrlProblem::Malformed)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UrlProblem::UnsupportedScheme(url.scheme().to_owned()));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(UrlProblem::MissingHost);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlProblem::Credentials);
        }
        let normalized = String::from(url);
        if normalized.len() > MAX_NORMALIZED_BYTES {
            return Err(UrlProblem::TooLongNormalized);
        }
        Self::from_normalized(normalized)
    }

    /// The last line of defence for the `Location` header: printable ASCII only.
    fn from_normalized(s: String) -> Result<Self, UrlProblem> {
        if s.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(Self(s))
        } else {
            Err(UrlProblem::ControlOrWhitespace)
        }
    }

    /// The normalized URL.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TargetUrl({})", self.0)
    }
}

impl fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for TargetUrl {
    type Error = UrlProblem;

    /// Used when decoding stored records: a stored target is re-checked, never trusted.
    fn try_from(s: String) -> Result<Self, UrlProblem> {
        if s.len() > MAX_NORMALIZED_BYTES {
            return Err(UrlProblem::TooLongNormalized);
        }
        let reparsed = Self::normalize(&s)?;
        if reparsed.0 == s {
            Ok(reparsed)
        } else {
            Err(UrlProblem::Malformed(url::ParseError::InvalidDomainCharacter))
        }
    }
}

impl From<TargetUrl> for String {
    fn from(t: TargetUrl) -> String {
        t.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_normalizes_http_and_https() {
        assert_eq!(TargetUrl::parse("https://www.yandex.ru").unwrap().as_str(), "https://www.yandex.ru/");
        assert_eq!(TargetUrl::parse("HTTP://Example.COM/a?b=c#d").unwrap().as_str(), "http://example.com/a?b=c#d");
        // Non-ASCII is percent-encoded or punycoded, so the stored form is header-safe.
        let t = TargetUrl::parse("https://пример.рф/путь?q=ä").unwrap();
        assert!(t.as_str().is_ascii(), "{t}");
        assert!(t.as_str().starts_with("https://xn--"), "{t}");
    }

    #[test]
    fn refuses_with_a_reason() {
        let cases: &[(&str, UrlProblem)] = &[
            ("", UrlProblem::Empty),
            ("javascript:alert(1)", UrlProblem::UnsupportedScheme("javascript".into())),
            ("ftp://example.com/", UrlProblem::UnsupportedScheme("ftp".into())),
            ("data:text/html,hi", UrlProblem::UnsupportedScheme("data".into())),
            ("https://example.com/a b", UrlProblem::ControlOrWhitespace),
            ("https://example.com/\r\nSet-Cookie: x=1", UrlProblem::ControlOrWhitespace),
            (" https://example.com/", UrlProblem::ControlOrWhitespace),
            ("https://example.com/\u{a0}", UrlProblem::ControlOrWhitespace),
            ("https://user:pw@example.com/", UrlProblem::Credentials),
            ("https://google.com@evil.example/", UrlProblem::Credentials),
        ];
        for (input, want) in cases {
            assert_eq!(TargetUrl::parse(input).unwrap_err(), *want, "{input:?}");
        }
        assert!(matches!(TargetUrl::parse("/relative"), Err(UrlProblem::Malformed(_))));
        assert!(matches!(TargetUrl::parse("https://"), Err(UrlProblem::Malformed(_))));
        assert!(!UrlProblem::TooLong.to_string().is_empty());
    }

    #[test]
    fn the_length_limit_counts_characters_as_given() {
        let at_limit = |tail: &str| {
            let head = "https://example.com/";
            format!("{head}{}", tail.repeat(MAX_TARGET_CHARS - head.len()))
        };
        for tail in ["a", "é", "<", "😀"] {
            let url = at_limit(tail);
            assert_eq!(url.chars().count(), MAX_TARGET_CHARS);
            let stored = TargetUrl::parse(&url).unwrap_or_else(|e| panic!("{tail}: {e}"));
            assert!(stored.as_str().len() <= MAX_NORMALIZED_BYTES);
            assert_eq!(TargetUrl::try_from(stored.as_str().to_owned()), Ok(stored), "a stored target reads back");
            assert_eq!(TargetUrl::parse(&format!("{url}{tail}")).unwrap_err(), UrlProblem::TooLong, "{tail}");
        }
        // A host-only URL gains a `/` in normalization: still within the limit.
        let host_only = format!("https://{}.example", "a".repeat(MAX_TARGET_CHARS - 16));
        assert_eq!(host_only.chars().count(), MAX_TARGET_CHARS);
        assert!(TargetUrl::parse(&host_only).is_ok());
        assert!(UrlProblem::TooLong.to_string().contains("2048 characters"));
        assert!(TargetUrl::try_from("x".repeat(MAX_NORMALIZED_BYTES + 1)).is_err());
    }
}
