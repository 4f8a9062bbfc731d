//! Replaying clicks through the rules offline: an operator's own traffic, one JSON object
//! per line, each given a verdict and its reason, so that the rules can be checked against
//! real clicks before they decide real notes.
//!
//! A line: `{"time": 1732900000.25, "address": "203.0.113.7", "code": "AbCdEfGh1234",
//! "headers": {"user-agent": "…", "accept": "…"}}` (`time` in Unix seconds, `method`
//! optional, GET by default). The classifier's rules and the address rule are applied as
//! the server applies them; deduplication and the cap per link, which depend on the
//! store's history, are not.

use std::collections::HashMap;
use std::net::IpAddr;

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use shortlinks_core::model::{Click, ClickMethod};
use shortlinks_core::store::AddressTally;
use shortlinks_core::{ShortCode, Timestamp};

use crate::classify::{Classifier, NotVisit};
use crate::gateway::AddressRule;
use crate::raw_click::RawClick;

/// One line of the input.
#[derive(Debug, Deserialize)]
struct Line {
    time: f64,
    address: Option<IpAddr>,
    code: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: HashMap<String, String>,
}

/// What the rules made of one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A visit: it would become a note (unless a repeat or over the link's cap).
    Visit,
    /// Not a visit, and why.
    NotVisit(NotVisit),
    /// The code is no link of this installation.
    UnknownLink,
    /// The line could not be read.
    Unreadable(String),
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Visit => f.write_str("visit"),
            Verdict::NotVisit(why) => write!(f, "not a visit: {}", why.name()),
            Verdict::UnknownLink => f.write_str("unknown link"),
            Verdict::Unreadable(why) => write!(f, "unreadable line: {why}"),
        }
    }
}

/// A replayed line: where it was, what it said, and the verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replayed {
    /// 1-based line number.
    pub line: usize,
    /// The code it names (as written).
    pub code: String,
    /// The address, if any.
    pub address: Option<IpAddr>,
    /// The verdict.
    pub verdict: Verdict,
}

/// The codes a file names, for the caller to look up (each once).
pub fn codes(text: &str) -> Vec<String> {
    let mut codes: Vec<String> =
        text.lines().filter_map(|l| serde_json::from_str::<Line>(l).ok()).map(|l| l.code).collect();
    codes.sort();
    codes.dedup();
    codes
}

/// Replays `text` (JSON lines). `contact_of` gives a code's contact key (see
/// [`crate::gateway::contact_key`]), or `None` for a code that is no link.
pub fn replay(
    text: &str,
    classifier: &Classifier,
    rule: AddressRule,
    contact_of: impl Fn(&str) -> Option<u64>,
) -> Vec<Replayed> {
    let mut out = Vec::new();
    // Visits so far, with their address and contact, for the address rule.
    let mut visits: Vec<(usize, IpAddr, u64, Timestamp)> = Vec::new();
    for (n, text) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let line: Line = match serde_json::from_str(text) {
            Ok(line) => line,
            Err(e) => {
                out.push(Replayed {
                    line: n + 1,
                    code: String::new(),
                    address: None,
                    verdict: Verdict::Unreadable(e.to_string()),
                });
                continue;
            }
        };
        let (code, address) = (line.code.clone(), line.address);
        let verdict = match judge(line, &contact_of) {
            Ok((click, contact)) => match classifier.classify(&click) {
                Some(why) => Verdict::NotVisit(why),
                None => {
                    if let Some(ip) = click.client_ip {
                        visits.push((out.len(), ip, contact, click.at));
                    }
                    Verdict::Visit
                }
            },
            Err(verdict) => verdict,
        };
        out.push(Replayed { line: n + 1, code, address, verdict });
    }
    // The address rule sees every click around each one, later ones included (the hold):
    // each address's clicks are counted in time order, and a span a click marks covers the
    // clicks before it back to the span's start (spans start later as time goes on).
    let mut by_address: HashMap<IpAddr, Vec<(Timestamp, u64, usize)>> = HashMap::new();
    for &(at_index, ip, contact, at) in &visits {
        by_address.entry(ip).or_default().push((at, contact, at_index));
    }
    for clicks in by_address.values_mut() {
        clicks.sort_unstable();
        let (mut tally, mut unmarked) = (AddressTally::default(), 0);
        for (n, &(at, contact, _)) in clicks.iter().enumerate() {
            let Some(span) = tally.sight(contact, at, rule) else { continue };
            let first = unmarked.max(clicks.partition_point(|&(at, _, _)| at < span.from));
            for &(_, _, at_index) in &clicks[first..=n] {
                out[at_index].verdict = Verdict::NotVisit(NotVisit::ManyContacts);
            }
            unmarked = n + 1;
        }
    }
    out
}

/// The click a line describes and its contact, or why there is none.
fn judge(line: Line, contact_of: &impl Fn(&str) -> Option<u64>) -> Result<(Click, u64), Verdict> {
    let code =
        ShortCode::parse(&line.code).ok_or_else(|| Verdict::Unreadable(format!("{:?} is not a code", line.code)))?;
    let contact = contact_of(&line.code).ok_or(Verdict::UnknownLink)?;
    if !(line.time.is_finite() && line.time >= 0.0) {
        return Err(Verdict::Unreadable("time must be Unix seconds".into()));
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &line.headers {
        let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map_err(|_| Verdict::Unreadable(format!("header name {name:?}")))?;
        let value = HeaderValue::from_str(value).map_err(|_| Verdict::Unreadable(format!("header {name} value")))?;
        headers.append(name, value);
    }
    let method = match line.method.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("GET") => ClickMethod::Get,
        Some("HEAD") => ClickMethod::Head,
        Some(other) => return Err(Verdict::Unreadable(format!("method {other}"))),
    };
    let text = |name: &str| headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let prefetch: Vec<String> =
        ["purpose", "sec-purpose", "x-purpose", "x-moz"].iter().filter_map(|h| text(h)).collect();
    let click = Click {
        code,
        at: Timestamp((line.time * 1000.0) as u64),
        method,
        user_agent: text("user-agent"),
        referer: text("referer"),
        prefetch: (!prefetch.is_empty()).then(|| prefetch.join(",")),
        client_ip: line.address,
        nonce: 0,
        evidence: Some(RawClick::browser_evidence(&headers)),
        visit_key: None,
    };
    Ok((click, contact))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME: &str = r#""user-agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36""#;

    fn line(time: f64, address: &str, code: &str, headers: &str) -> String {
        format!(r#"{{"time": {time}, "address": "{address}", "code": "{code}", "headers": {{{headers}}}}}"#)
    }

    #[test]
    fn each_line_gets_the_servers_verdict_and_its_reason() {
        let navigation = format!(r#"{CHROME}, "accept": "text/html", "accept-language": "en""#);
        let lines = [
            line(100.0, "203.0.113.5", "AAAAAAAAAAA1", &navigation), // a person
            line(100.5, "40.92.1.1", "AAAAAAAAAAA2", &navigation),   // Microsoft EOP
            line(101.0, "198.51.100.9", "AAAAAAAAAAA3", CHROME),     // no navigation headers
            line(101.5, "198.51.100.20", "AAAAAAAAAAA4", r#""user-agent": "curl/8.5.0""#), // a script
            // A gateway: three contacts in two seconds, the first included.
            line(200.0, "192.0.2.77", "AAAAAAAAAAA5", &navigation),
            line(201.0, "192.0.2.77", "AAAAAAAAAAA6", &navigation),
            line(202.0, "192.0.2.77", "AAAAAAAAAAA7", &navigation),
            line(203.0, "203.0.113.5", "NOSUCHLINK00", &navigation),
            "not json".to_owned(),
        ]
        .join("\n");
        let contact = |code: &str| code.strip_prefix("AAAAAAAAAAA").and_then(|n| n.parse().ok());
        let replayed = replay(&lines, &Classifier::default(), AddressRule::default(), contact);
        let verdicts: Vec<String> = replayed.iter().map(|r| r.verdict.to_string()).collect();
        assert_eq!(
            verdicts[..8],
            [
                "visit",
                "not a visit: scanner_network",
                "not a visit: no_browser_evidence",
                "not a visit: crawler",
                "not a visit: many_contacts",
                "not a visit: many_contacts",
                "not a visit: many_contacts",
                "unknown link",
            ]
        );
        assert!(verdicts[8].starts_with("unreadable line"), "{verdicts:?}");
        assert_eq!(replayed[8].line, 9);
        assert_eq!(codes(&lines).len(), 8);
    }
}
