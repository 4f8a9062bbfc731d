//! Target URL validation: what a short link may point to.
//!
//! The stored form is the WHATWG serialization of the URL, which is printable ASCII only,
//! so it can always go into a `Location` header as it is.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest accepted target, before and after normalization.
pub const MAX_TARGET_LEN: usize = 2048;

/// A validated, normalized absolute `http` or `https` URL.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TargetUrl(String);

/// Why a target URL was refused; its `Display` is meant for a 400 response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UrlProblem {
    /// The string is empty.
    Empty,
    /// The URL is longer than [`MAX_TARGET_LEN`] bytes.
    TooLong,
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
            Self::TooLong => write!(f, "url is longer than {MAX_TARGET_LEN} bytes"),
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
        if input.len() > MAX_TARGET_LEN {
            return Err(UrlProblem::TooLong);
        }
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
        if normalized.len() > MAX_TARGET_LEN {
            return Err(UrlProblem::TooLong);
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
        if s.len() > MAX_TARGET_LEN {
            return Err(UrlProblem::TooLong);
        }
        let reparsed = Self::parse(&s)?;
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
    fn length_limit_applies_to_the_stored_form() {
        let at_limit = format!("https://example.com/{}", "a".repeat(MAX_TARGET_LEN - 20));
        assert_eq!(at_limit.len(), MAX_TARGET_LEN);
        assert!(TargetUrl::parse(&at_limit).is_ok());
        assert_eq!(TargetUrl::parse(&format!("{at_limit}a")).unwrap_err(), UrlProblem::TooLong);
        // Short input whose percent-encoding grows past the limit.
        let grows = format!("https://example.com/{}", "ä".repeat(700));
        assert!(grows.len() <= MAX_TARGET_LEN);
        assert_eq!(TargetUrl::parse(&grows).unwrap_err(), UrlProblem::TooLong);
    }
}
