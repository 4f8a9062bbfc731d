//! Click truth: scanners that look like browsers make no note, and people still do. Real
//! sockets, real sled directories; a real headless Chromium where one is installed.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{all_notes, click, metric, Process, TestServer, BROWSER, NAVIGATION};
use shortlinks_notes::classify::samples::{BORROWED_AGENTS, BROWSER_HEADERS};
use shortlinks_server::config::SettingsLayer;

/// Notes on, with the given hold, the address rule at its defaults, addresses from
/// `X-Forwarded-For`.
fn layer(hold_secs: u64) -> SettingsLayer {
    SettingsLayer {
        note_hold_secs: Some(hold_secs),
        address_rule_contacts: Some(3),
        client_ip_header: Some("X-Forwarded-For".into()),
        ..Default::default()
    }
}

/// One link per contact; the codes.
async fn links(addr: SocketAddr, token: &str, contacts: &[u64]) -> Vec<String> {
    common::links_for(addr, token, "https://original.example/mail/", contacts).await
}

/// A browser's click (Chrome's agent and navigation headers) from `ip`.
async fn browser_click(addr: SocketAddr, code: &str, ip: &str) {
    let headers = [[("user-agent", BROWSER), ("x-forwarded-for", ip)].as_slice(), &NAVIGATION].concat();
    assert_eq!(click(addr, code, &headers).await.status, 302);
}

/// Waits until the dispatcher has settled `n` clicks (screened or dispatched): past the hold.
async fn until_dispatched(addr: SocketAddr, n: u64, limit: Duration) {
    common::until(limit, "the clicks settled", || async {
        let screened = metric(addr, "shortlinks_clicks_screened_total").await;
        screened + metric(addr, "shortlinks_clicks_dispatched_total").await >= n
    })
    .await;
}

async fn notes_on(server: &TestServer) -> Vec<serde_json::Value> {
    all_notes(server.addr, &server.token, "/api/v4/contacts/notes").await
}

fn reason(name: &str) -> String {
    format!("shortlinks_not_visits_total{{reason=\"{name}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_following_five_contacts_links_makes_no_note() {
    let hold = Duration::from_secs(4);
    let server = TestServer::start_with(layer(hold.as_secs())).await;
    let codes = links(server.addr, &server.token, &[1, 2, 3, 4, 5]).await;
    let started = Instant::now();
    let mut third_at = Duration::ZERO;
    for (n, code) in codes.iter().enumerate() {
        browser_click(server.addr, code, "198.51.100.200").await;
        if n == 2 {
            third_at = started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The premise, not the finding: the rule's third contact came while the first was held.
    assert!(third_at < hold, "the third contact's click came {third_at:?} after the first");
    until_dispatched(server.addr, 5, Duration::from_secs(30)).await;
    assert!(notes_on(&server).await.is_empty(), "not one note, the first clicks' included");
    assert_eq!(metric(server.addr, &reason("many_contacts")).await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_from_published_scanner_networks_make_no_note() {
    let server =
        TestServer::start_with(SettingsLayer { scanner_networks: Some("192.0.2.0/24".into()), ..layer(0) }).await;
    let codes = links(server.addr, &server.token, &[11, 12, 13, 14]).await;
    // Microsoft's Exchange Online Protection, Mimecast, an IPv6 EOP address, an operator's own.
    for (code, ip) in codes.iter().zip(["40.92.10.20", "205.139.110.5", "2a01:111:f400:7c00::99", "192.0.2.8"]) {
        browser_click(server.addr, code, ip).await;
    }
    until_dispatched(server.addr, 4, Duration::from_secs(30)).await;
    assert!(notes_on(&server).await.is_empty());
    assert_eq!(metric(server.addr, &reason("scanner_network")).await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persons_click_makes_one_note_after_the_hold_and_not_before() {
    let server = TestServer::start_with(layer(3)).await;
    let code = links(server.addr, &server.token, &[21]).await.remove(0);
    let clicked = Instant::now();
    browser_click(server.addr, &code, "203.0.113.50").await;
    common::until(Duration::from_secs(30), "the held click is counted", || async {
        metric(server.addr, "shortlinks_clicks_waiting").await == 1
    })
    .await;
    if clicked.elapsed() < Duration::from_secs(3) {
        assert!(notes_on(&server).await.is_empty(), "held: no note yet");
    }
    until_dispatched(server.addr, 1, Duration::from_secs(30)).await;
    let notes = notes_on(&server).await;
    assert!(clicked.elapsed() >= Duration::from_secs(3));
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0]["params"]["url"], "https://original.example/mail/21");
    assert_eq!(metric(server.addr, "shortlinks_clicks_waiting").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_keep_their_notes() {
    let server = TestServer::start_with(SettingsLayer { address_rule_window_secs: Some(1), ..layer(2) }).await;
    let codes = links(server.addr, &server.token, &[31, 32, 33, 34, 35]).await;
    // Two people of one company behind one address, their own links, moments apart; a
    // third colleague later, past the window.
    browser_click(server.addr, &codes[0], "203.0.113.77").await;
    browser_click(server.addr, &codes[1], "203.0.113.77").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    browser_click(server.addr, &codes[2], "203.0.113.77").await;
    // One person from a phone, then from a laptop.
    browser_click(server.addr, &codes[3], "198.51.100.10").await;
    let laptop = [("user-agent", "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15"), ("x-forwarded-for", "192.0.2.150")];
    assert_eq!(click(server.addr, &codes[3], &[laptop.as_slice(), &NAVIGATION[..2]].concat()).await.status, 302);
    // Through a corporate proxy, whose header gives the client's address.
    browser_click(server.addr, &codes[4], "10.20.30.40, 198.51.100.99").await;
    until_dispatched(server.addr, 6, Duration::from_secs(30)).await;
    let notes = notes_on(&server).await;
    let contacts: Vec<u64> = notes.iter().map(|n| n["entity_id"].as_u64().unwrap()).collect();
    for contact in [31, 32, 33, 34, 35] {
        assert!(contacts.contains(&contact), "contact {contact} got a note: {contacts:?}");
    }
    assert_eq!(contacts.iter().filter(|&&c| c == 34).count(), 2, "phone and laptop are two visits");
    assert_eq!(metric(server.addr, &reason("many_contacts")).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browsers_agent_without_a_browsers_headers_is_not_a_visit() {
    let server = TestServer::start_with(layer(0)).await;
    let contacts: Vec<u64> = (41..41 + (BROWSER_HEADERS.len() + BORROWED_AGENTS.len()) as u64).collect();
    let codes = links(server.addr, &server.token, &contacts).await;
    let sets = BROWSER_HEADERS.iter().chain(BORROWED_AGENTS);
    for (i, ((_, headers), code)) in sets.zip(&codes).enumerate() {
        let ip = format!("198.18.0.{}", i + 1);
        let headers = [headers.to_vec(), vec![("x-forwarded-for", ip.as_str())]].concat();
        assert_eq!(click(server.addr, code, &headers).await.status, 302);
    }
    until_dispatched(server.addr, codes.len() as u64, Duration::from_secs(30)).await;
    let noted: Vec<u64> = notes_on(&server).await.iter().map(|n| n["entity_id"].as_u64().unwrap()).collect();
    let browsers = &contacts[..BROWSER_HEADERS.len()];
    assert_eq!(noted.len(), browsers.len(), "one note per real browser: {noted:?}");
    assert!(browsers.iter().all(|c| noted.contains(c)), "{noted:?}");
    assert_eq!(metric(server.addr, &reason("no_browser_evidence")).await, BORROWED_AGENTS.len() as u64);
}

/// A server process with a 3 s hold and the address rule at its default, addresses from
/// `X-Forwarded-For`: for the tests that kill it during the hold.
/// Waits until `n` clicks are durably in the outbox: a kill from then on must lose none.
async fn until_persisted(addr: std::net::SocketAddr, n: u64) {
    common::until(Duration::from_secs(30), "clicks in the outbox", || async {
        metric(addr, "shortlinks_clicks_persisted_total").await >= n
    })
    .await;
}

const HELD: [(&str, &str); 3] = [
    ("SHORTLINKS_NOTE_HOLD_SECS", "3"),
    ("SHORTLINKS_CLIENT_IP_HEADER", "X-Forwarded-For"),
    ("SHORTLINKS_ADDRESS_RULE_CONTACTS", "3"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_the_hold_loses_nothing_and_notes_once() {
    let dir = common::private_tempdir();
    let server = Process::serve(dir.path(), &[], &HELD).await;
    let token = common::first_token(dir.path());
    let codes = links(server.addr, &token, &[51, 52]).await;
    browser_click(server.addr, &codes[0], "203.0.113.61").await;
    browser_click(server.addr, &codes[1], "203.0.113.62").await;
    until_persisted(server.addr, 2).await; // written (group commit), still held
    assert!(all_notes(server.addr, &token, "/api/v4/contacts/notes").await.is_empty());
    server.kill9().await;

    // The restarted server dispatches what the outbox held: once both are dispatched, no
    // more notes can come of them.
    let server = Process::serve(dir.path(), &[], &HELD).await;
    until_dispatched(server.addr, 2, Duration::from_secs(30)).await;
    let notes = all_notes(server.addr, &token, "/api/v4/contacts/notes").await;
    assert_eq!(notes.len(), 2, "both held clicks became notes after the restart, once each");
    assert_eq!(server.terminate().await, 0);
}

/// A gateway's clicks before a kill -9 still count after it: the address ledger (on sled,
/// in memory and in files written without a sync) is read back on start, so the held
/// clicks and the one after the restart are seen together, and none is a note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_seen_before_a_kill_9_is_still_seen_after_it() {
    let dir = common::private_tempdir();
    let server = Process::serve(dir.path(), &[], &HELD).await;
    let token = common::first_token(dir.path());
    let codes = links(server.addr, &token, &[61, 62, 63]).await;
    for code in &codes[..2] {
        browser_click(server.addr, code, "198.51.100.7").await;
    }
    until_persisted(server.addr, 2).await; // written (group commit), still held
    server.kill9().await;

    let server = Process::serve(dir.path(), &[], &HELD).await;
    browser_click(server.addr, &codes[2], "198.51.100.7").await;
    until_dispatched(server.addr, 3, Duration::from_secs(30)).await;
    assert_eq!(metric(server.addr, &reason("many_contacts")).await, 3, "all three, the two from before the kill too");
    assert!(all_notes(server.addr, &token, "/api/v4/contacts/notes").await.is_empty());
    assert_eq!(server.terminate().await, 0);
}

/// Debian's Chromium, if installed (`apt-get install chromium`); CI demands it.
fn chromium() -> Option<&'static str> {
    let found =
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().find(|p| std::path::Path::new(p).exists());
    if found.is_none() {
        if std::env::var("SHORTLINKS_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1") {
            panic!("chromium must be installed (SHORTLINKS_REQUIRE_CHROMIUM=1)");
        }
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED a real browser's click: chromium is not installed (apt-get install chromium)"
        );
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_with_a_normal_agent_makes_exactly_one_note_after_the_hold() {
    let Some(chromium) = chromium() else { return };
    let server = TestServer::start_with(SettingsLayer { client_ip_header: None, ..layer(2) }).await;
    let code = links(server.addr, &server.token, &[61]).await.remove(0);
    let profile = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--user-agent=Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36")
        .args(["--dump-dom", &format!("http://{}/{code}", server.addr)])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output).await.unwrap().unwrap();
    assert!(
        metric(server.addr, "shortlinks_clicks_recorded_total").await >= 1,
        "chromium followed the link: {output:?}"
    );
    until_dispatched(
        server.addr,
        metric(server.addr, "shortlinks_clicks_recorded_total").await,
        Duration::from_secs(30),
    )
    .await;
    let notes = notes_on(&server).await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0]["params"]["url"], "https://original.example/mail/61");
    assert_eq!(metric(server.addr, &reason("no_browser_evidence")).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_rule_holds_across_nodes_on_one_redis() {
    if !shortlinks_redis::testing::available() {
        return;
    }
    let redis = shortlinks_redis::testing::RedisServer::standalone().unwrap();
    let url = redis.url();
    let env = [
        ("SHORTLINKS_STORAGE", "redis"),
        ("SHORTLINKS_REDIS_URL", url.as_str()),
        ("SHORTLINKS_REDIS_KEY_PREFIX", "gateway"),
        ("SHORTLINKS_CLIENT_IP_HEADER", "X-Forwarded-For"),
        ("SHORTLINKS_NOTE_HOLD_SECS", "2"),
        ("SHORTLINKS_ADDRESS_RULE_CONTACTS", "3"),
    ];
    let (dir_a, dir_b) = (common::private_tempdir(), common::private_tempdir());
    let a = Process::serve(dir_a.path(), &[], &env).await;
    let token = common::first_token(dir_a.path());
    let b = Process::serve(dir_b.path(), &[], &env).await;
    let codes = links(a.addr, &token, &[71, 72, 73, 74]).await;
    // The gateway's clicks land on two nodes: neither sees three contacts by itself.
    browser_click(a.addr, &codes[0], "198.51.100.33").await;
    browser_click(b.addr, &codes[1], "198.51.100.33").await;
    browser_click(a.addr, &codes[2], "198.51.100.33").await;
    // A person on node b meanwhile.
    browser_click(b.addr, &codes[3], "203.0.113.90").await;
    let vetoed =
        || async { metric(a.addr, &reason("many_contacts")).await + metric(b.addr, &reason("many_contacts")).await };
    common::until(Duration::from_secs(30), "the gateway's clicks vetoed and the person's noted", || async {
        vetoed().await >= 3 && !all_notes(a.addr, &token, "/api/v4/contacts/notes").await.is_empty()
    })
    .await;
    let notes = all_notes(a.addr, &token, "/api/v4/contacts/notes").await;
    assert_eq!(vetoed().await, 3, "every gateway click, on either node");
    assert_eq!(
        notes.iter().map(|n| n["entity_id"].as_u64().unwrap()).collect::<Vec<_>>(),
        vec![74],
        "the person's note only"
    );
    a.terminate().await;
    b.terminate().await;
}
