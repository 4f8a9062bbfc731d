//! Is a click a visit by a person? The rules are data: one table, easy to extend.
//!
//! Everything that is not a visit still gets its redirect (previews must keep working);
//! it is only counted, and writes no note.

use std::collections::HashMap;
use std::sync::OnceLock;

use aho_corasick::AhoCorasick;
use parking_lot::Mutex;
use shortlinks_core::model::{Click, ClickMethod};

use crate::networks::ScannerNetworks;

/// Why a click is not a visit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NotVisit {
    /// A HEAD request: a machine checking the link.
    Head,
    /// A browser's prefetch or prerender (`Purpose`, `Sec-Purpose` and the like).
    Prefetch,
    /// No `User-Agent` at all: a script.
    NoUserAgent,
    /// A messenger or social network fetching a preview.
    Preview,
    /// A mail security scanner or safe-link checker.
    Scanner,
    /// A search engine, crawler or HTTP library.
    Crawler,
    /// A visit beyond its link's cap of notes within the window: a link is one contact's,
    /// so this is a flood (one address posing as many clients) or a mail forwarded widely.
    OverLinkCap,
    /// From a network that a mail-security gateway or mail provider publishes for its
    /// systems (`networks`).
    ScannerNetwork,
    /// A browser's `User-Agent` without any of a browser's navigation headers.
    NoBrowserEvidence,
    /// From an address that followed links of several contacts within a short time: a
    /// gateway or scanner, not a person (decided at dispatch, with the store).
    ManyContacts,
}

impl NotVisit {
    /// Every kind, for counters.
    pub const ALL: [NotVisit; 10] = [
        Self::Head,
        Self::Prefetch,
        Self::NoUserAgent,
        Self::Preview,
        Self::Scanner,
        Self::Crawler,
        Self::OverLinkCap,
        Self::ScannerNetwork,
        Self::NoBrowserEvidence,
        Self::ManyContacts,
    ];

    /// A stable lowercase name, for metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Head => "head",
            Self::Prefetch => "prefetch",
            Self::NoUserAgent => "no_user_agent",
            Self::Preview => "preview",
            Self::Scanner => "scanner",
            Self::Crawler => "crawler",
            Self::OverLinkCap => "link_cap",
            Self::ScannerNetwork => "scanner_network",
            Self::NoBrowserEvidence => "no_browser_evidence",
            Self::ManyContacts => "many_contacts",
        }
    }
}

/// One rule: a lowercase substring of the `User-Agent`, what it means, and who sends it.
#[derive(Clone, Copy, Debug)]
pub struct UserAgentRule {
    /// Matched case-insensitively anywhere in the `User-Agent`.
    pub contains: &'static str,
    /// What a match means.
    pub kind: NotVisit,
    /// Who sends it, for people reading the table.
    pub who: &'static str,
    /// Match only agents that are not full browsers (no `mozilla/`): for apps whose in-app
    /// browser, used by people, carries the same name as their preview fetcher.
    pub bare_only: bool,
}

const fn rule(contains: &'static str, kind: NotVisit, who: &'static str) -> UserAgentRule {
    UserAgentRule { contains, kind, who, bare_only: false }
}

const fn bare(contains: &'static str, kind: NotVisit, who: &'static str) -> UserAgentRule {
    UserAgentRule { contains, kind, who, bare_only: true }
}

use NotVisit::{Crawler, Preview, Scanner};

/// The `User-Agent` rules. Patterns are specific on purpose: a bare "bot" would also match
/// phones such as the Cubot brand.
pub const USER_AGENT_RULES: &[UserAgentRule] = &[
    // Link-preview unfurlers.
    rule("slackbot", Preview, "Slack"),
    rule("slack-imgproxy", Preview, "Slack"),
    rule("telegrambot", Preview, "Telegram"),
    bare("whatsapp", Preview, "WhatsApp"),
    rule("facebookexternalhit", Preview, "Facebook, Messenger, iMessage"),
    rule("facebot", Preview, "Facebook"),
    rule("facebookcatalog", Preview, "Facebook"),
    rule("twitterbot", Preview, "Twitter/X, iMessage"),
    rule("linkedinbot", Preview, "LinkedIn"),
    rule("discordbot", Preview, "Discord"),
    rule("skypeuripreview", Preview, "Skype, Microsoft Teams"),
    rule("microsoftpreview", Preview, "Microsoft Teams, Outlook"),
    rule("teams/", Preview, "Microsoft Teams"),
    bare("viber", Preview, "Viber"),
    rule("vkshare", Preview, "VK"),
    rule("vk.com/dev/share", Preview, "VK"),
    rule("vkbot", Preview, "VK"),
    bare("pinterest", Preview, "Pinterest"),
    rule("redditbot", Preview, "Reddit"),
    rule("embedly", Preview, "Embedly"),
    rule("iframely", Preview, "Iframely"),
    rule("mastodon", Preview, "Mastodon"),
    bare("snapchat", Preview, "Snapchat"),
    rule("line-poker", Preview, "LINE"),
    rule("kakaotalk-scrap", Preview, "KakaoTalk"),
    rule("google-pagerenderer", Preview, "Google preview"),
    rule("bingpreview", Preview, "Bing, Outlook"),
    // Mail security scanners and safe-link checkers.
    rule("safelinks", Scanner, "Microsoft Defender Safe Links"),
    rule("ms-office", Scanner, "Microsoft Office link check"),
    rule("microsoft office", Scanner, "Microsoft Office link check"),
    rule("office 365", Scanner, "Microsoft 365"),
    rule("proofpoint", Scanner, "Proofpoint URL Defense"),
    rule("mimecast", Scanner, "Mimecast"),
    rule("barracuda", Scanner, "Barracuda"),
    rule("symantec", Scanner, "Symantec / Broadcom"),
    rule("forcepoint", Scanner, "Forcepoint"),
    rule("trendmicro", Scanner, "Trend Micro"),
    rule("sophos", Scanner, "Sophos"),
    rule("fortiguard", Scanner, "Fortinet"),
    rule("cisco", Scanner, "Cisco Secure Email"),
    rule("ironport", Scanner, "Cisco IronPort"),
    rule("zscaler", Scanner, "Zscaler"),
    rule("kaspersky", Scanner, "Kaspersky"),
    rule("checkpoint", Scanner, "Check Point"),
    rule("virustotal", Scanner, "VirusTotal"),
    rule("urlscan", Scanner, "urlscan.io"),
    // Search engines, crawlers and HTTP libraries.
    rule("googlebot", Crawler, "Google"),
    rule("google-inspectiontool", Crawler, "Google"),
    rule("adsbot-google", Crawler, "Google Ads"),
    rule("bingbot", Crawler, "Bing"),
    rule("yandexbot", Crawler, "Yandex"),
    rule("yandex.com/bots", Crawler, "Yandex"),
    rule("baiduspider", Crawler, "Baidu"),
    rule("duckduckbot", Crawler, "DuckDuckGo"),
    rule("applebot", Crawler, "Apple"),
    rule("petalbot", Crawler, "Huawei"),
    rule("semrushbot", Crawler, "Semrush"),
    rule("ahrefsbot", Crawler, "Ahrefs"),
    rule("mj12bot", Crawler, "Majestic"),
    rule("dotbot", Crawler, "Moz"),
    rule("bytespider", Crawler, "ByteDance"),
    rule("gptbot", Crawler, "OpenAI"),
    rule("headlesschrome", Crawler, "headless Chrome"),
    rule("phantomjs", Crawler, "PhantomJS"),
    rule("curl/", Crawler, "curl"),
    rule("wget/", Crawler, "wget"),
    rule("python-requests", Crawler, "Python requests"),
    rule("python-urllib", Crawler, "Python urllib"),
    rule("aiohttp", Crawler, "Python aiohttp"),
    rule("go-http-client", Crawler, "Go"),
    rule("okhttp", Crawler, "OkHttp"),
    rule("java/", Crawler, "Java"),
    rule("libwww-perl", Crawler, "Perl"),
    rule("node-fetch", Crawler, "Node.js"),
    rule("axios/", Crawler, "Node.js axios"),
    rule("guzzlehttp", Crawler, "PHP Guzzle"),
    rule("crawler", Crawler, "crawlers"),
    rule("spider", Crawler, "crawlers"),
    rule("bot/", Crawler, "bots that name themselves"),
    rule("+http", Crawler, "bots that link their docs"),
];

/// Prefetch hints, as found in `Purpose`, `Sec-Purpose`, `X-Purpose` and `X-Moz`.
const PREFETCH_WORDS: &[&str] = &["prefetch", "prerender", "preview"];

/// `Some(reason)` if the click is not a visit by a person.
pub fn classify(click: &Click) -> Option<NotVisit> {
    classify_with(click, agent_rule)
}

/// [`classify`], with what the `User-Agent` says looked up by `agent_rule`.
fn classify_with(click: &Click, agent_rule: impl FnOnce(&str) -> Option<NotVisit>) -> Option<NotVisit> {
    if click.method == ClickMethod::Head {
        return Some(NotVisit::Head);
    }
    if let Some(hint) = &click.prefetch {
        let hint = hint.to_ascii_lowercase();
        if PREFETCH_WORDS.iter().any(|w| hint.contains(w)) {
            return Some(NotVisit::Prefetch);
        }
    }
    let Some(agent) = click.user_agent.as_deref().filter(|a| !a.trim().is_empty()) else {
        return Some(NotVisit::NoUserAgent);
    };
    agent_rule(agent)
}

/// Whether an agent claims to be a browser: every browser's starts with `Mozilla/`.
fn claims_browser(agent: &str) -> bool {
    agent.get(..8).is_some_and(|start| start.eq_ignore_ascii_case("mozilla/"))
}

/// What the `User-Agent` table says about an agent.
fn agent_rule(agent: &str) -> Option<NotVisit> {
    let browser = claims_browser(agent);
    // One pass over the agent for the whole table; the first applicable rule wins.
    matcher()
        .find_overlapping_iter(agent)
        .map(|m| m.pattern().as_usize())
        .filter(|&rule| !(USER_AGENT_RULES[rule].bare_only && browser))
        .min()
        .map(|rule| USER_AGENT_RULES[rule].kind)
}

/// [`classify`] for a stream of clicks, and the rules that look past the `User-Agent`:
/// known scanner networks and a browser's navigation headers. It remembers the verdicts
/// on recent agents: people come with a few hundred distinct agents, sent over and over,
/// and one pass of the table over an agent costs about 270 ns; a lookup here, a tenth.
pub struct Classifier {
    verdicts: Mutex<HashMap<Box<str>, Option<NotVisit>, foldhash::fast::RandomState>>,
    networks: ScannerNetworks,
}

impl Default for Classifier {
    /// With the shipped scanner networks only.
    fn default() -> Self {
        Self::new(ScannerNetworks::published_and(&[]))
    }
}

/// The rules past the `User-Agent` table, for a click the table calls a visit.
fn beyond_agent(click: &Click, networks: &ScannerNetworks) -> Option<NotVisit> {
    if click.client_ip.is_some_and(|ip| networks.owner(ip).is_some()) {
        return Some(NotVisit::ScannerNetwork);
    }
    // A browser navigating to a link always sends some of these; a script that only
    // borrowed a browser's agent usually none. Clicks captured before the headers were
    // looked at (`None`) are given the benefit of the doubt.
    let browser = click.user_agent.as_deref().is_some_and(claims_browser);
    if browser && click.evidence.is_some_and(|e| e.is_none()) {
        return Some(NotVisit::NoBrowserEvidence);
    }
    None
}

impl Classifier {
    /// Agents remembered at most: ~2 MB at the 512 bytes an agent is cut to. Past it, all
    /// are forgotten (a flood of made-up agents only costs table passes).
    const LIMIT: usize = 4096;

    /// A classifier that also knows these scanner networks.
    pub fn new(networks: ScannerNetworks) -> Self {
        Self { verdicts: Mutex::default(), networks }
    }

    /// [`classify`]'s answer, then the scanner networks and the browser evidence.
    pub fn classify(&self, click: &Click) -> Option<NotVisit> {
        self.agent_verdict(click).or_else(|| beyond_agent(click, &self.networks))
    }

    fn agent_verdict(&self, click: &Click) -> Option<NotVisit> {
        classify_with(click, |agent| {
            let mut verdicts = self.verdicts.lock();
            if let Some(verdict) = verdicts.get(agent) {
                return *verdict;
            }
            let verdict = agent_rule(agent);
            if verdicts.len() >= Self::LIMIT {
                verdicts.clear();
            }
            verdicts.insert(agent.into(), verdict);
            verdict
        })
    }
}

/// The table as one automaton, built once.
fn matcher() -> &'static AhoCorasick {
    static MATCHER: OnceLock<AhoCorasick> = OnceLock::new();
    MATCHER.get_or_init(|| {
        AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(USER_AGENT_RULES.iter().map(|r| r.contains))
            .unwrap_or_else(|e| unreachable!("the rule table is valid: {e}"))
    })
}

/// Agents as each really sends them: the table's test corpus, shared with the server's
/// end-to-end tests.
#[cfg(any(test, feature = "testing"))]
pub mod samples {
    use super::NotVisit::{self, Crawler, Preview, Scanner};

    /// Real User-Agent strings, as each sends them.
    pub const NOT_VISITS: &[(&str, NotVisit)] = &[
    ("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", Preview),
    ("TelegramBot (like TwitterBot)", Preview),
    ("WhatsApp/2.23.20.0 A", Preview),
    ("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)", Preview),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_11_1) AppleWebKit/601.2.4 (KHTML, like Gecko) Version/9.0.1 Safari/601.2.4 facebookexternalhit/1.1 Facebot Twitterbot/1.0", Preview),
    ("Twitterbot/1.0", Preview),
    ("LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)", Preview),
    ("Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)", Preview),
    ("Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5", Preview),
    ("Viber/13.3.0.5 CFNetwork/1220.1 Darwin/20.3.0", Preview),
    ("Mozilla/5.0 (compatible; vkShare; +http://vk.com/dev/Share)", Preview),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/100.0.4896.127 Safari/537.36 Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.15128; Pro)", Scanner),
    ("Microsoft Office Existence Discovery", Scanner),
    ("Mozilla/5.0 (compatible; Proofpoint URL Defense)", Scanner),
    ("Mimecast Security Scanner", Scanner),
    ("Barracuda Sentinel (EE)", Scanner),
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", Crawler),
    ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", Crawler),
    ("Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)", Crawler),
    ("curl/8.5.0", Crawler),
    ("python-requests/2.31.0", Crawler),
    ("Go-http-client/1.1", Crawler),
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36", Crawler),
];

    /// The headers real browsers send when a person follows a link (the request line and
    /// cookies aside), as captured from each: every set must stay a visit.
    pub const BROWSER_HEADERS: &[(&str, &[(&str, &str)])] = &[
        ("Chrome 124, Windows", &[
            ("user-agent", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"),
            ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"),
            ("accept-language", "ru-RU,ru;q=0.9,en-US;q=0.8,en;q=0.7"),
            ("sec-fetch-dest", "document"), ("sec-fetch-mode", "navigate"), ("sec-fetch-site", "cross-site"), ("sec-fetch-user", "?1"),
            ("upgrade-insecure-requests", "1"),
        ]),
        ("Firefox 125, Linux", &[
            ("user-agent", "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"),
            ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"),
            ("accept-language", "en-US,en;q=0.5"),
            ("sec-fetch-dest", "document"), ("sec-fetch-mode", "navigate"), ("sec-fetch-site", "cross-site"),
        ]),
        ("Safari 17, iOS", &[
            ("user-agent", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"),
            ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
            ("accept-language", "ru"),
            ("sec-fetch-dest", "document"), ("sec-fetch-mode", "navigate"), ("sec-fetch-site", "none"),
        ]),
        ("Safari 15, macOS (before Sec-Fetch)", &[
            ("user-agent", "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/15.6 Safari/605.1.15"),
            ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
            ("accept-language", "en-GB,en;q=0.9"),
        ]),
        ("Chrome 124, Android", &[
            ("user-agent", "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36"),
            ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"),
            ("accept-language", "ru-RU,ru;q=0.9"),
            ("sec-fetch-dest", "document"), ("sec-fetch-mode", "navigate"), ("sec-fetch-site", "none"), ("sec-fetch-user", "?1"),
        ]),
        ("Headless Chromium with a normal User-Agent", &[
            ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36"),
            ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"),
            ("accept-language", "en-US,en;q=0.9"),
            ("sec-fetch-dest", "document"), ("sec-fetch-mode", "navigate"), ("sec-fetch-site", "none"), ("sec-fetch-user", "?1"),
        ]),
        ("Outlook for Android in-app browser", &[
            ("user-agent", "Mozilla/5.0 (Linux; Android 13; SM-S918B Build/TP1A.220624.014; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/124.0.6367.82 Mobile Safari/537.36"),
            ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8"),
            ("accept-language", "de-DE,de;q=0.9,en-US;q=0.8,en;q=0.7"),
            ("x-requested-with", "com.microsoft.office.outlook"),
        ]),
    ];

    /// Scripts and scanners that borrow a browser's `User-Agent` but none of its headers:
    /// every set must not be a visit.
    pub const BORROWED_AGENTS: &[(&str, &[(&str, &str)])] = &[
        ("python-requests with Chrome's agent", &[
            ("user-agent", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"),
            ("accept", "*/*"), ("accept-encoding", "gzip, deflate"), ("connection", "keep-alive"),
        ]),
        ("curl with Firefox's agent", &[
            ("user-agent", "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"),
            ("accept", "*/*"),
        ]),
        ("Go net/http with Safari's agent", &[
            ("user-agent", "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15"),
            ("accept-encoding", "gzip"),
        ]),
    ];

    /// Real browsers, which must stay visits.
    pub const BROWSERS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 10; Cubot X30) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.82 YaBrowser/24.4.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.67",
    // In-app browsers: a person reading in the app.
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Viber/21.6.0",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36 Snapchat/12.85.0.40",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 [Pinterest/iOS]",
];
}

#[cfg(test)]
mod tests {
    use shortlinks_core::store::conformance;

    use super::samples::{BROWSERS, NOT_VISITS};
    use super::*;

    fn with_agent(agent: &str) -> Click {
        Click { user_agent: Some(agent.into()), ..conformance::click("AAAAAAAAAAAA", 1) }
    }

    #[test]
    fn bots_previews_and_scanners_are_not_visits() {
        for (agent, kind) in NOT_VISITS {
            assert_eq!(classify(&with_agent(agent)), Some(*kind), "{agent}");
        }
    }

    /// A click as the redirect would capture it from these headers.
    fn captured(headers: &[(&str, &str)], ip: &str) -> Click {
        let mut map = hyper::HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                hyper::header::HeaderValue::from_str(value).unwrap(),
            );
        }
        let agent = map.get("user-agent").map(|v| v.to_str().unwrap().to_owned());
        Click {
            user_agent: agent,
            client_ip: Some(ip.parse().unwrap()),
            evidence: Some(crate::RawClick::browser_evidence(&map)),
            visit_key: None,
            ..conformance::click("AAAAAAAAAAAA", 1)
        }
    }

    #[test]
    fn browsers_navigation_headers_are_evidence_and_borrowed_agents_lack_it() {
        let classifier = Classifier::default();
        for (who, headers) in samples::BROWSER_HEADERS {
            assert_eq!(classifier.classify(&captured(headers, "198.51.100.7")), None, "{who}");
        }
        for (who, headers) in samples::BORROWED_AGENTS {
            assert_eq!(
                classifier.classify(&captured(headers, "198.51.100.7")),
                Some(NotVisit::NoBrowserEvidence),
                "{who}"
            );
        }
        // Any one of the three headers is evidence; a click from before they were
        // captured is given the benefit of the doubt.
        let agent = ("user-agent", BROWSERS[0]);
        for one in [("accept", "text/html"), ("accept-language", "en"), ("sec-fetch-mode", "navigate")] {
            assert_eq!(classifier.classify(&captured(&[agent, one], "198.51.100.7")), None, "{one:?}");
        }
        assert_eq!(
            classifier.classify(&captured(&[agent, ("sec-fetch-mode", "cors")], "198.51.100.7")),
            Some(NotVisit::NoBrowserEvidence)
        );
        let old = Click { evidence: None, ..captured(&[agent], "198.51.100.7") };
        assert_eq!(classifier.classify(&old), None);
        // A non-browser agent is judged by the table, not by headers.
        assert_eq!(
            classifier.classify(&captured(&[("user-agent", "curl/8.5.0")], "198.51.100.7")),
            Some(NotVisit::Crawler)
        );
    }

    #[test]
    fn a_click_from_a_scanner_network_is_not_a_visit_whatever_it_sends() {
        let classifier = Classifier::default();
        let (_, chrome) = samples::BROWSER_HEADERS[0];
        for ip in ["40.92.4.20", "40.107.22.1", "205.139.110.30", "2a01:111:f403:c00::5", "67.231.149.10"] {
            assert_eq!(classifier.classify(&captured(chrome, ip)), Some(NotVisit::ScannerNetwork), "{ip}");
        }
        assert_eq!(classifier.classify(&captured(chrome, "95.108.213.1")), None, "a person's address");
        let operator =
            Classifier::new(crate::networks::ScannerNetworks::published_and(&["192.0.2.0/24".parse().unwrap()]));
        assert_eq!(
            operator.classify(&captured(chrome, "192.0.2.44")),
            Some(NotVisit::ScannerNetwork),
            "an operator's own range"
        );
    }

    #[test]
    fn browsers_are_visits() {
        for agent in BROWSERS {
            assert_eq!(classify(&with_agent(agent)), None, "{agent}");
        }
    }

    #[test]
    fn the_classifier_answers_as_the_table_does_every_time() {
        let classifier = Classifier::default();
        let agents = NOT_VISITS.iter().map(|(agent, _)| *agent).chain(BROWSERS.iter().copied());
        for agent in agents.clone().chain(agents) {
            let browser = with_agent(agent);
            assert_eq!(classifier.classify(&browser), classify(&browser), "{agent}");
            // Only the agent is remembered: the method and the hints still count.
            let head = Click { method: ClickMethod::Head, ..browser.clone() };
            assert_eq!(classifier.classify(&head), Some(NotVisit::Head), "{agent}");
            let prefetch = Click { prefetch: Some("prefetch".into()), ..browser };
            assert_eq!(classifier.classify(&prefetch), Some(NotVisit::Prefetch), "{agent}");
        }
        // A flood of made-up agents is forgotten in bulk, and answers stay right.
        for n in 0..Classifier::LIMIT + 10 {
            let agent = format!("Mozilla/5.0 (X11) Firefox/{n}");
            assert_eq!(classifier.classify(&with_agent(&agent)), None);
        }
        assert!(classifier.verdicts.lock().len() <= Classifier::LIMIT);
        assert_eq!(classifier.classify(&with_agent("curl/8.5.0")), Some(NotVisit::Crawler));
    }

    #[test]
    fn head_prefetch_and_missing_agents_are_not_visits() {
        let browser = with_agent(BROWSERS[0]);
        assert_eq!(classify(&Click { method: ClickMethod::Head, ..browser.clone() }), Some(NotVisit::Head));
        for hint in ["prefetch", "prefetch;prerender", "Prefetch", "preview"] {
            let click = Click { prefetch: Some(hint.into()), ..browser.clone() };
            assert_eq!(classify(&click), Some(NotVisit::Prefetch), "{hint}");
        }
        assert_eq!(classify(&Click { user_agent: None, ..browser.clone() }), Some(NotVisit::NoUserAgent));
        assert_eq!(classify(&Click { user_agent: Some("  ".into()), ..browser }), Some(NotVisit::NoUserAgent));
    }

    #[test]
    fn the_first_applicable_rule_in_table_order_wins() {
        // Matches "facebookexternalhit" (preview) and "+http" (crawler): the table says preview.
        let agent = "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)";
        assert_eq!(classify(&with_agent(agent)), Some(NotVisit::Preview));
        assert_eq!(classify(&with_agent("CURL/8.0")), Some(NotVisit::Crawler), "case does not matter");
        // A browser with "Viber" skips the bare-only Viber rule, but a later rule still applies.
        let agent = "Mozilla/5.0 (X11) Viber/1.0 Googlebot/2.1";
        assert_eq!(classify(&with_agent(agent)), Some(NotVisit::Crawler));
    }

    #[test]
    fn every_rule_is_lowercase_and_nonempty() {
        for r in USER_AGENT_RULES {
            assert!(!r.contains.is_empty() && r.contains == r.contains.to_ascii_lowercase(), "{r:?}");
        }
    }
}
