//! From a click to a note: classification, deduplication, the notes API, and the webhook
//! sink against a real local receiver (amoCRM has tests of its own: `amocrm.rs`). Real
//! sockets, a real sled directory.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{all_notes, click, code_of, item, metric, send, until_settled, Answer, Receiver, TestServer, BROWSER};
use hyper::Method;
use serde_json::json;
use shortlinks_core::ContactScope;
use shortlinks_notes::classify::samples::NOT_VISITS;
use shortlinks_notes::sink::signature;
use shortlinks_server::admin::{self, AdminReply, AdminRequest};
use shortlinks_server::config::{SettingsLayer, StorageSettings};

/// Creates one link per (url, contact) and returns their codes.
async fn links(server: &TestServer, items: &[(&str, u64)]) -> Vec<String> {
    let body = json!(items.iter().map(|(url, c)| item(url, *c)).collect::<Vec<_>>()).to_string();
    let reply = server.post_links(&server.token, &body).await;
    assert_eq!(reply.status, 200);
    reply.json()["_embedded"]["short_links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| code_of(l["url"].as_str().unwrap()).to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_click_makes_exactly_one_note_with_the_original_url() {
    let server = TestServer::start().await;
    let code = links(&server, &[("https://original.example/offer?id=7", 42)]).await.remove(0);
    let reply = click(server.addr, &code, &[("user-agent", BROWSER), ("referer", "https://mail.example/")]).await;
    assert_eq!(reply.status, 302);
    until_settled(server.addr, 1).await;

    for path in [
        "/api/v4/contacts/42/notes",
        "/api/v4/contacts/notes",
        "/api/v4/contacts/notes?filter[entity_id]=42&filter[note_type]=link_followed",
    ] {
        let auth = format!("Bearer {}", server.token);
        let reply = send(server.addr, Method::GET, path, &[("authorization", &auth)], Vec::new()).await;
        assert_eq!(reply.status, 200, "{path}");
        let text = String::from_utf8(reply.body.to_vec()).unwrap();
        assert!(!text.contains(&code), "no notes API response contains the code: {text}");
        assert!(!text.contains(&server.base), "nor the short URL: {text}");
        let body = reply.json();
        assert_eq!(body["_page"], 1);
        assert!(body["_links"]["self"]["href"].as_str().unwrap().starts_with(path.split('?').next().unwrap()));
        let notes = body["_embedded"]["notes"].as_array().unwrap();
        assert_eq!(notes.len(), 1, "{path}");
        let note = &notes[0];
        assert_eq!(note["note_type"], "link_followed");
        assert_eq!(note["params"], json!({"url": "https://original.example/offer?id=7"}));
        assert_eq!((note["entity_id"].as_u64(), note["account_id"].as_u64()), (Some(42), Some(1)));
        for field in ["id", "created_by", "updated_by", "created_at", "updated_at", "responsible_user_id", "group_id"] {
            assert!(note[field].is_u64(), "{field} in {note}");
        }
    }
    assert_eq!(metric(server.addr, "shortlinks_notes_written_total").await, 1);

    let auth = format!("Bearer {}", server.token);
    for path in ["/api/v4/contacts/43/notes", "/api/v4/contacts/notes?filter[note_type]=common"] {
        let reply = send(server.addr, Method::GET, path, &[("authorization", &auth)], Vec::new()).await;
        assert_eq!(reply.status, 204, "{path}");
        assert!(reply.body.is_empty());
    }
    let reply =
        send(server.addr, Method::GET, "/api/v4/contacts/notes?limit=251", &[("authorization", &auth)], Vec::new())
            .await;
    reply.problem(400);
    send(server.addr, Method::GET, "/api/v4/contacts/notes", &[], Vec::new()).await.problem(401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previews_scanners_bots_prefetches_and_head_make_no_note_but_still_redirect() {
    let server = TestServer::start().await;
    let code = links(&server, &[("https://original.example/", 1)]).await.remove(0);
    let mut made = 0;
    for (agent, _) in NOT_VISITS {
        assert_eq!(click(server.addr, &code, &[("user-agent", agent)]).await.status, 302, "{agent}");
        made += 1;
    }
    for hint in [
        ("purpose", "prefetch"),
        ("sec-purpose", "prefetch;prerender"),
        ("sec-purpose", "prefetch"),
        ("x-moz", "prefetch"),
    ] {
        assert_eq!(click(server.addr, &code, &[("user-agent", BROWSER), hint]).await.status, 302);
        made += 1;
    }
    let head = send(server.addr, Method::HEAD, &format!("/{code}"), &[("user-agent", BROWSER)], Vec::new()).await;
    assert_eq!(head.status, 302);
    assert_eq!(click(server.addr, &code, &[]).await.status, 302, "no User-Agent");
    made += 2;

    until_settled(server.addr, made).await;
    assert!(all_notes(server.addr, &server.token, "/api/v4/contacts/notes").await.is_empty(), "not one note");
    assert_eq!(metric(server.addr, "shortlinks_notes_written_total").await, 0);
    let text =
        String::from_utf8(send(server.addr, Method::GET, "/metrics", &[], Vec::new()).await.body.to_vec()).unwrap();
    let counted: u64 = text
        .lines()
        .filter(|l| l.starts_with("shortlinks_not_visits_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(counted, made, "every non-visit is counted");
    assert_eq!(metric(server.addr, "shortlinks_clicks_persisted_total").await, 0, "and none is written");
    assert!(text.contains("shortlinks_not_visits_total{reason=\"head\"} 1"), "{text}");
    assert!(text.contains("shortlinks_not_visits_total{reason=\"prefetch\"} 4"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeat_visits_within_the_window_make_one_note() {
    let layer = SettingsLayer {
        dedup_window_secs: Some(1),
        client_ip_header: Some("X-Forwarded-For".into()),
        ..Default::default()
    };
    let server = TestServer::start_with(layer).await;
    let code = links(&server, &[("https://original.example/", 5)]).await.remove(0);
    let alice = [("user-agent", BROWSER), ("x-forwarded-for", "203.0.113.7")];
    let bob = [("user-agent", BROWSER), ("x-forwarded-for", "198.51.100.1, 203.0.113.9")];

    click(server.addr, &code, &alice).await;
    click(server.addr, &code, &alice).await;
    until_settled(server.addr, 2).await;
    assert_eq!(
        all_notes(server.addr, &server.token, "/api/v4/contacts/5/notes").await.len(),
        1,
        "two clicks inside the window: one note"
    );

    click(server.addr, &code, &bob).await;
    until_settled(server.addr, 3).await;
    assert_eq!(
        all_notes(server.addr, &server.token, "/api/v4/contacts/5/notes").await.len(),
        2,
        "another client: its own note"
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    click(server.addr, &code, &alice).await;
    until_settled(server.addr, 4).await;
    assert_eq!(
        all_notes(server.addr, &server.token, "/api/v4/contacts/5/notes").await.len(),
        3,
        "after the window: a second note"
    );
    assert_eq!(metric(server.addr, "shortlinks_visits_deduplicated_total").await, 1);
}

/// One address posing as fifty clients (fifty User-Agents) on one link: the default cap
/// of five notes per link per window holds, the rest are counted under their own reason,
/// and the contact's other link is not held back by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_clients_on_one_link_makes_at_most_five_notes() {
    let server = TestServer::start().await;
    let codes = links(&server, &[("https://flooded.example/", 8), ("https://other.example/", 8)]).await;
    for n in 0..50 {
        let agent = format!("{BROWSER} Flood/{n}");
        let headers = [[("user-agent", agent.as_str())].as_slice(), &common::NAVIGATION].concat();
        assert_eq!(click(server.addr, &codes[0], &headers).await.status, 302);
    }
    click(server.addr, &codes[1], &[("user-agent", BROWSER)]).await;
    until_settled(server.addr, 51).await;
    let notes = all_notes(server.addr, &server.token, "/api/v4/contacts/8/notes").await;
    let on = |url: &str| notes.iter().filter(|n| n["params"]["url"].as_str().is_some_and(|u| u.contains(url))).count();
    assert_eq!((on("flooded.example"), on("other.example")), (5, 1), "{notes:?}");
    assert_eq!(metric(server.addr, "shortlinks_not_visits_total{reason=\"link_cap\"}").await, 45);
    assert_eq!(metric(server.addr, "shortlinks_notes_written_total").await, 6);
}

/// Once a visit is claimed, its repeats are settled by the writer's screen: counted, never
/// written to the outbox nor read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_of_a_claimed_visit_is_never_written() {
    let server = TestServer::start().await;
    let code = links(&server, &[("https://original.example/", 5)]).await.remove(0);
    click(server.addr, &code, &[("user-agent", BROWSER)]).await;
    until_settled(server.addr, 1).await;
    for _ in 0..3 {
        click(server.addr, &code, &[("user-agent", BROWSER)]).await;
    }
    until_settled(server.addr, 4).await;
    assert_eq!(metric(server.addr, "shortlinks_clicks_persisted_total").await, 1, "only the first visit");
    assert_eq!(metric(server.addr, "shortlinks_clicks_screened_total").await, 3);
    assert_eq!(metric(server.addr, "shortlinks_visits_deduplicated_total").await, 3);
    assert_eq!(all_notes(server.addr, &server.token, "/api/v4/contacts/5/notes").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_are_isolated_by_account_and_scoped_by_contact_rights() {
    let server = TestServer::start().await;
    let codes = links(&server, &[("https://a.example/", 1), ("https://b.example/", 2)]).await;
    for code in &codes {
        click(server.addr, code, &[("user-agent", BROWSER)]).await;
    }
    until_settled(server.addr, 2).await;
    assert_eq!(all_notes(server.addr, &server.token, "/api/v4/contacts/notes").await.len(), 2);

    async fn token(dir: &std::path::Path, account: u64, scope: ContactScope) -> String {
        let request = AdminRequest::TokenCreate { account, user: 9, scope };
        let AdminReply::Token { token } = admin::command(&StorageSettings::Sled, dir, request).await.unwrap() else {
            panic!()
        };
        token
    }
    let other_account = token(server.dir.path(), 2, ContactScope::All).await;
    for path in ["/api/v4/contacts/notes", "/api/v4/contacts/1/notes", "/api/v4/contacts/notes?filter[entity_id]=1,2"] {
        assert!(
            all_notes(server.addr, &other_account, path).await.is_empty(),
            "account 2 sees nothing of account 1: {path}"
        );
    }
    let only_two = token(server.dir.path(), 1, ContactScope::only(vec![2])).await;
    let seen = all_notes(server.addr, &only_two, "/api/v4/contacts/notes").await;
    assert_eq!(seen.iter().map(|n| n["entity_id"].as_u64().unwrap()).collect::<Vec<_>>(), vec![2]);
    assert!(all_notes(server.addr, &only_two, "/api/v4/contacts/1/notes").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_follows_next_links() {
    // Seven visitors on one link: with no cap per link (0), each makes its note.
    let layer = SettingsLayer {
        client_ip_header: Some("X-Forwarded-For".into()),
        notes_per_link: Some(0),
        ..Default::default()
    };
    let server = TestServer::start_with(layer).await;
    let code = links(&server, &[("https://a.example/", 1)]).await.remove(0);
    for i in 0..7 {
        let ip = format!("192.0.2.{i}");
        click(server.addr, &code, &[("user-agent", BROWSER), ("x-forwarded-for", &ip)]).await;
    }
    until_settled(server.addr, 7).await;
    let notes = all_notes(server.addr, &server.token, "/api/v4/contacts/notes?limit=3").await;
    assert_eq!(notes.len(), 7);
    assert_eq!(notes.iter().map(|n| n["id"].as_u64().unwrap()).collect::<HashSet<_>>().len(), 7);
    let times: Vec<u64> = notes.iter().map(|n| n["created_at"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "time order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_gets_every_note_through_failures_and_timeouts() {
    // 500 three times, then two requests left hanging past the 1 s timeout, then 200s.
    let receiver = Receiver::start(|n| match n {
        0..=2 => Answer::Status(500, "down"),
        3..=4 => Answer::Stall(Duration::from_secs(3)),
        _ => Answer::Status(200, "ok"),
    })
    .await;
    let layer = SettingsLayer {
        webhook_url: Some(format!("{}/hook", receiver.url)),
        webhook_secret: Some("s3cret".into()),
        sink_timeout_secs: Some(1),
        sink_retry_max_ms: Some(200),
        client_ip_header: Some("X-Forwarded-For".into()),
        ..Default::default()
    };
    let server = TestServer::start_with(layer).await;
    let codes =
        links(&server, &[("https://a.example/", 1), ("https://b.example/", 2), ("https://c.example/", 3)]).await;
    for (i, code) in codes.iter().enumerate() {
        let ip = format!("192.0.2.{i}");
        assert_eq!(click(server.addr, code, &[("user-agent", BROWSER), ("x-forwarded-for", &ip)]).await.status, 302);
    }
    until_settled(server.addr, 3).await;
    let journal = all_notes(server.addr, &server.token, "/api/v4/contacts/notes").await;
    let want: HashSet<u64> = journal.iter().map(|n| n["id"].as_u64().unwrap()).collect();
    assert_eq!(want.len(), 3);

    let accepted = |log: &[common::Received]| {
        log.iter()
            .filter(|r| r.answered == 200)
            .map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["id"].as_u64().unwrap())
            .collect::<HashSet<_>>()
    };
    receiver.until("every note accepted", |log| accepted(log) == want).await;

    let log = receiver.received();
    assert!(log.iter().any(|r| r.answered == 500) && log.iter().any(|r| r.answered == 0), "the failures happened");
    let mut keys: HashMap<u64, HashSet<String>> = HashMap::new();
    for request in &log {
        assert_eq!(request.path, "/hook");
        assert_eq!(request.headers["content-type"], "application/json");
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(request.headers["x-shortlinks-signature"], signature(b"s3cret", &request.body).as_str(), "signed");
        let key = request.headers["idempotency-key"].to_str().unwrap().to_owned();
        assert_eq!(key, body["id"].to_string(), "the idempotency key is the note id");
        keys.entry(body["id"].as_u64().unwrap()).or_default().insert(key);
        assert_eq!(body["note_type"], "link_followed");
        assert!(!String::from_utf8_lossy(&request.body).contains(&server.base), "no short URL leaves the service");
    }
    assert!(keys.values().all(|k| k.len() == 1), "retries of one note carry one key");
    assert!(log.len() > 3, "retries were made");
}
