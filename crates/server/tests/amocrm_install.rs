//! amoCRM's install flow end to end over real HTTP, against amoCRM stand-ins (one per amoCRM
//! account, each its own host): `shortlinks amocrm connect-url` → the stand-in's
//! authorization page → the server's Redirect URI → the code exchanged at the account's
//! host → `/api/v4/account`. Then what must be refused with nothing changed, and amoCRM's
//! uninstall hook holding the notes until the account is connected again.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{metric, send, try_metric, Reply, TestServer, BROWSER};
use hyper::Method;
use shortlinks_notes::sink::amocrm::install::uninstall_signature;
use shortlinks_notes::stand_in::{AmoCrmStandIn, StandInOptions};
use shortlinks_server::admin::{self, AdminReply, AdminRequest};
use shortlinks_server::config::{SettingsLayer, StorageSettings};

const CLIENT_ID: &str = "integration-1";
const CLIENT_SECRET: &str = "integration-secret";
const REDIRECT_URI: &str = "https://shortlinks.example/amocrm/oauth";

/// Stand-ins for amoCRM accounts `31001`, `31002`, …, one per shortlinks account.
async fn stand_ins(n: u64) -> Vec<AmoCrmStandIn> {
    let mut all = Vec::new();
    for i in 1..=n {
        let options = StandInOptions {
            oauth: Some((CLIENT_ID.into(), CLIENT_SECRET.into(), format!("unused-{i}"))),
            account_id: 31_000 + i,
            ..Default::default()
        };
        all.push(AmoCrmStandIn::start(options).await.unwrap());
    }
    all
}

/// A server with the integration's settings, taking the stand-ins as amoCRM hosts, and the
/// stand-ins sending people to its Redirect URI.
async fn server_for(stand_ins: &[AmoCrmStandIn]) -> TestServer {
    let bases: Vec<&str> = stand_ins.iter().map(|s| s.url.as_str()).collect();
    let server = TestServer::start_with(SettingsLayer {
        amocrm_client_id: Some(CLIENT_ID.into()),
        amocrm_client_secret: Some(CLIENT_SECRET.into()),
        amocrm_redirect_uri: Some(REDIRECT_URI.into()),
        amocrm_allowed_bases: Some(bases.join(",")),
        client_ip_header: Some("X-Forwarded-For".into()),
        sink_retry_max_ms: Some(200),
        ..Default::default()
    })
    .await;
    for stand_in in stand_ins {
        stand_in.set_redirect_uri(&format!("http://{}/amocrm/oauth", server.addr));
    }
    server
}

/// `shortlinks amocrm connect-url --account N`, pointed at `stand_in`'s authorization page.
async fn connect_url(server: &TestServer, stand_in: &AmoCrmStandIn, account: u64) -> String {
    let output = tokio::process::Command::new(common::shortlinks_binary())
        .args(["amocrm", "connect-url", "--account", &account.to_string(), "--data-dir"])
        .arg(server.dir.path())
        .env("SHORTLINKS_AMOCRM_CLIENT_ID", CLIENT_ID)
        .env("SHORTLINKS_AMOCRM_CLIENT_SECRET", CLIENT_SECRET)
        .env("SHORTLINKS_AMOCRM_REDIRECT_URI", REDIRECT_URI)
        .env("SHORTLINKS_AMOCRM_AUTHORIZE_URL", format!("{}/oauth", stand_in.url))
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let url = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(url.starts_with(&format!("{}/oauth?client_id={CLIENT_ID}&state=", stand_in.url)), "{url}");
    url
}

/// `shortlinks amocrm status`, through the running server; its lines.
async fn status(server: &TestServer) -> Vec<String> {
    let output = tokio::process::Command::new(common::shortlinks_binary())
        .args(["amocrm", "status", "--data-dir"])
        .arg(server.dir.path())
        .env("SHORTLINKS_AMOCRM_CLIENT_ID", CLIENT_ID)
        .env("SHORTLINKS_AMOCRM_CLIENT_SECRET", CLIENT_SECRET)
        .env("SHORTLINKS_AMOCRM_REDIRECT_URI", REDIRECT_URI)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    eprintln!("shortlinks amocrm status:\n{text}");
    text.lines().map(str::to_owned).collect()
}

/// The person opens `url` and grants access: where amoCRM sends them (the Redirect URI
/// with a new code, `referer` and `state`).
async fn grant(stand_in: &AmoCrmStandIn, url: &str) -> String {
    let addr: SocketAddr = stand_in.url.trim_start_matches("http://").parse().unwrap();
    let path = url.strip_prefix(&stand_in.url).unwrap();
    let reply = send(addr, Method::GET, path, &[], Vec::new()).await;
    assert_eq!(reply.status, 302, "{}", reply.text());
    reply.header("location").unwrap()
}

/// The person's browser following amoCRM's redirect to the server.
async fn arrive(server: &TestServer, location: &str) -> Reply {
    let path = location.strip_prefix(&format!("http://{}", server.addr)).unwrap();
    server.get(path).await
}

/// The whole flow for `account`; the page the person sees.
async fn install(server: &TestServer, stand_in: &AmoCrmStandIn, account: u64) -> Reply {
    let url = connect_url(server, stand_in, account).await;
    arrive(server, &grant(stand_in, &url).await).await
}

async fn token_for(server: &TestServer, account: u64) -> String {
    let request = AdminRequest::TokenCreate { account, user: 1, scope: shortlinks_core::ContactScope::All };
    match admin::command(&StorageSettings::Sled, server.dir.path(), request).await.unwrap() {
        AdminReply::Token { token } => token,
        other => panic!("{other:?}"),
    }
}

/// One browser visit per code, each from an address of its own (`first` on).
async fn visit_all(addr: SocketAddr, codes: &[String], first: usize) {
    for (i, code) in codes.iter().enumerate() {
        let ip = format!("10.2.{}.{}", (first + i) / 250, (first + i) % 250);
        let headers = [("user-agent", BROWSER), ("x-forwarded-for", ip.as_str())];
        let reply = common::click(addr, code, &headers).await;
        assert_eq!(reply.status, 302);
    }
}

/// A counter on `/metrics`, 0 while the server has none (a sink it has not started).
async fn metric_or_zero(addr: SocketAddr, name: &str) -> u64 {
    let metrics = common::try_scrape(addr).await.expect("the server answers");
    match common::sample(&metrics, name) {
        Some(openmetrics_parser::PrometheusValue::Counter(c)) => c.value.as_f64() as u64,
        _ => 0,
    }
}

fn state(account: u64, state: &str) -> String {
    format!("shortlinks_sink_state{{sink=\"amocrm\",account=\"{account}\",state=\"{state}\"}}")
}

fn delivered(account: u64) -> String {
    format!("shortlinks_sink_delivered_total{{sink=\"amocrm\",account=\"{account}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_accounts_connected_through_the_install_flow_each_get_only_their_own_clicks() {
    let stand_ins = stand_ins(3).await;
    let server = server_for(&stand_ins).await;
    for (i, stand_in) in stand_ins.iter().enumerate() {
        let account = i as u64 + 1;
        let page = install(&server, stand_in, account).await;
        assert_eq!(page.status, 200, "{}", page.text());
        assert!(page.text().contains("Connected") && page.text().contains(&format!("account {account}")));
        assert_eq!(page.header("content-type").as_deref(), Some("text/html; charset=utf-8"));
    }
    let mut first = 0;
    for account in 1..=3u64 {
        let token = if account == 1 { server.token.clone() } else { token_for(&server, account).await };
        let url = format!("https://account{account}.example/offer/");
        let codes = common::links_for(server.addr, &token, &url, &[1, 2, 3]).await;
        visit_all(server.addr, &codes, first).await;
        first += codes.len();
    }
    for account in 1..=3u64 {
        common::until(Duration::from_secs(60), "each account's notes delivered", || async {
            try_metric(server.addr, &delivered(account)).await.unwrap_or(0) >= 3
        })
        .await;
    }
    for (i, stand_in) in stand_ins.iter().enumerate() {
        let notes = stand_in.notes();
        assert_eq!(notes.len(), 3, "account {}'s three notes, once each", i + 1);
        let own = format!("account{}.example", i + 1);
        assert!(notes.iter().all(|n| n.params["text"].as_str().unwrap().contains(&own)), "{notes:?}");
    }
    let lines = status(&server).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (i, line) in lines.iter().enumerate() {
        let base = &stand_ins[i].url;
        assert!(line.starts_with(&format!("account {}  stand-in ({base})  connected since ", i + 1)), "{line}");
        assert!(line.contains("backlog 0  delivered 3  dead letters 0  token expires 1"), "{line}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_used_or_foreign_installs_and_bad_uninstall_signatures_change_nothing() {
    let stand_ins = stand_ins(2).await;
    let (amocrm, another) = (&stand_ins[0], &stand_ins[1]);
    let server = server_for(&stand_ins).await;

    // A state made for account 1 but altered to say account 2.
    let url = connect_url(&server, amocrm, 1).await;
    let location = grant(amocrm, &url).await;
    // A link checker's HEAD of the Redirect URI spends nothing.
    let path = location.strip_prefix(&format!("http://{}", server.addr)).unwrap();
    let head = send(server.addr, Method::HEAD, path, &[], Vec::new()).await;
    assert_eq!((head.status.as_u16(), head.header("allow").as_deref()), (405, Some("GET")));
    let forged = location.replace("&state=1.", "&state=2.");
    assert_ne!(forged, location);
    let page = arrive(&server, &forged).await;
    assert_eq!(page.status, 400);
    assert!(page.text().contains("not one this server made"), "{}", page.text());
    // A referer outside amoCRM's domains: its code is never sent anywhere.
    let foreign =
        location.replace(&format!("referer={}", amocrm.url.trim_start_matches("http://")), "referer=evil.example");
    assert_ne!(foreign, location);
    let page = arrive(&server, &foreign).await;
    assert_eq!(page.status, 400);
    assert!(page.text().contains("not an amoCRM account"), "{}", page.text());
    assert_eq!(amocrm.pairs_issued(), 0, "no code was exchanged");
    let metrics = server.get("/metrics").await.text();
    assert!(!metrics.contains("sink=\"amocrm\""), "no connection was made: {metrics}");

    // The genuine one connects; the same link again does not.
    assert_eq!(arrive(&server, &location).await.status, 200);
    assert_eq!(amocrm.pairs_issued(), 1);
    let again = arrive(&server, &arrive_again(amocrm, &url).await).await;
    assert_eq!(again.status, 400);
    assert!(again.text().contains("used already"), "{}", again.text());
    assert_eq!(amocrm.pairs_issued(), 1, "the second code was not exchanged");
    // Another amoCRM account for the same shortlinks account: its notes stay where they go.
    let elsewhere = arrive(&server, &grant(another, &connect_url(&server, another, 1).await).await).await;
    assert_eq!(elsewhere.status, 400);
    assert!(elsewhere.text().contains("one shortlinks account has one amoCRM account"), "{}", elsewhere.text());
    assert_eq!(another.pairs_issued(), 0);

    // An uninstall hook not signed with the integration's secret.
    let bad = format!("/amocrm/uninstall?account_id=31001&client_uuid={CLIENT_ID}&signature={}", "ab".repeat(32));
    assert_eq!(server.get(&bad).await.status, 403);
    let other_integration = uninstall_signature(CLIENT_SECRET, "31001", "integration-2");
    let bad = format!("/amocrm/uninstall?account_id=31001&client_uuid=integration-2&signature={other_integration}");
    assert_eq!(server.get(&bad).await.status, 403);
    // Still connected: a click becomes a note in amoCRM.
    let codes = common::links_for(server.addr, &server.token, "https://still.example/", &[5]).await;
    visit_all(server.addr, &codes, 0).await;
    assert!(amocrm.until(Duration::from_secs(30), |n| n.len() == 1).await, "still delivering");
    assert_eq!(metric(server.addr, &state(1, "connected")).await, 1);
    server.stop().await;
}

/// The same authorization link opened again: amoCRM gives a new code, with the same state.
async fn arrive_again(stand_in: &AmoCrmStandIn, url: &str) -> String {
    grant(stand_in, url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uninstalled_account_holds_its_notes_until_connected_again_then_each_arrives_once() {
    let stand_ins = stand_ins(2).await;
    let server = server_for(&stand_ins).await;
    for (i, stand_in) in stand_ins.iter().enumerate() {
        assert_eq!(install(&server, stand_in, i as u64 + 1).await.status, 200);
    }
    let second = token_for(&server, 2).await;

    // amoCRM calls the hook when account 31001 uninstalls the integration, and revokes its tokens.
    let signature = uninstall_signature(CLIENT_SECRET, "31001", CLIENT_ID);
    let hook = format!("/amocrm/uninstall?account_id=31001&client_uuid={CLIENT_ID}&signature={signature}");
    assert_eq!(server.get(&hook).await.status, 200);
    stand_ins[0].revoke_tokens();
    common::until(Duration::from_secs(30), "account 1 shown as disconnected", || async {
        metric(server.addr, &state(1, "disconnected")).await == 1
    })
    .await;
    let ready = server.get("/readyz").await;
    assert!(ready.text().contains("account=\"1\": disconnected"), "{}", ready.text());

    // Clicks go on: account 1's wait, account 2's arrive.
    let held = common::links_for(server.addr, &server.token, "https://held.example/", &[1, 2, 3]).await;
    visit_all(server.addr, &held, 0).await;
    let flowing = common::links_for(server.addr, &second, "https://flowing.example/", &[1, 2]).await;
    visit_all(server.addr, &flowing, 10).await;
    assert!(stand_ins[1].until(Duration::from_secs(30), |n| n.len() == 2).await, "account 2 delivers");
    common::until(Duration::from_secs(30), "account 1's notes written", || async {
        metric(server.addr, "shortlinks_notes_written_total").await >= 5
    })
    .await;
    assert!(stand_ins[0].notes().is_empty(), "nothing sent to an uninstalled account");
    assert_eq!(metric(server.addr, "shortlinks_sink_dead_lettered_total{sink=\"amocrm\",account=\"1\"}").await, 0);
    let lines = status(&server).await;
    assert!(lines[0].starts_with("account 1  stand-in (") && lines[0].contains("  disconnected since "), "{lines:?}");
    assert!(lines[0].ends_with("backlog 3  delivered 0  dead letters 0  token expires -"), "{lines:?}");
    assert!(lines[1].contains("connected since") && lines[1].contains("backlog 0  delivered 2"), "{lines:?}");

    // Installed again: the held notes arrive, each once, without a restart.
    assert_eq!(install(&server, &stand_ins[0], 1).await.status, 200);
    assert!(stand_ins[0].until(Duration::from_secs(30), |n| n.len() >= 3).await, "the held notes arrive");
    common::until(Duration::from_secs(30), "account 1 connected again", || async {
        metric(server.addr, &state(1, "connected")).await == 1 && metric(server.addr, &delivered(1)).await >= 3
    })
    .await;
    let notes = stand_ins[0].notes();
    let mut ids: Vec<_> = notes.iter().map(|n| n.request_id.clone().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!((notes.len(), ids.len()), (3, 3), "each held note once");
    assert!(notes.iter().all(|n| n.params["text"].as_str().unwrap().contains("held.example")));
    server.stop().await;
}

/// On Redis, an account connected through one node is delivered for by every node: a note
/// that another node dispatches right after the connection (long before that node's
/// periodic look at the store) still goes to the account's amoCRM, not only to the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_a_connection_made_through_one_node_takes_what_another_node_dispatches() {
    if !shortlinks_redis::testing::available() {
        return;
    }
    let redis = shortlinks_redis::testing::RedisServer::standalone().unwrap();
    let stand_ins = stand_ins(1).await;
    let amocrm = &stand_ins[0];
    let url = redis.url();
    let env = [
        ("SHORTLINKS_STORAGE", "redis"),
        ("SHORTLINKS_REDIS_URL", url.as_str()),
        ("SHORTLINKS_REDIS_KEY_PREFIX", "install"),
        ("SHORTLINKS_CLIENT_IP_HEADER", "X-Forwarded-For"),
        ("SHORTLINKS_NOTE_HOLD_SECS", "0"),
        ("SHORTLINKS_ADDRESS_RULE_CONTACTS", "0"),
        ("SHORTLINKS_API_RATE_PER_SEC", "1000000"),
        ("SHORTLINKS_API_RATE_BURST", "1000000"),
        ("SHORTLINKS_SINK_RETRY_MAX_MS", "200"),
        ("SHORTLINKS_AMOCRM_CLIENT_ID", CLIENT_ID),
        ("SHORTLINKS_AMOCRM_CLIENT_SECRET", CLIENT_SECRET),
        ("SHORTLINKS_AMOCRM_REDIRECT_URI", REDIRECT_URI),
        ("SHORTLINKS_AMOCRM_ALLOWED_BASES", amocrm.url.as_str()),
    ];
    let (dir_a, dir_b) = (common::private_tempdir(), common::private_tempdir());
    let a = common::Process::serve(dir_a.path(), &[], &env).await;
    let token = common::first_token(dir_a.path());
    let b = common::Process::serve(dir_b.path(), &[], &env).await;
    let contacts: Vec<u64> = (1..=40).collect();
    let codes = common::links_for(a.addr, &token, "https://redis.example/", &contacts).await;

    // Connected through node a (its Redirect URI), with node b already running.
    amocrm.set_redirect_uri(&format!("http://{}/amocrm/oauth", a.addr));
    let output = tokio::process::Command::new(common::shortlinks_binary())
        .args(["amocrm", "connect-url", "--account", "1"])
        .envs(env)
        .env("SHORTLINKS_AMOCRM_AUTHORIZE_URL", format!("{}/oauth", amocrm.url))
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let location = grant(amocrm, String::from_utf8(output.stdout).unwrap().trim()).await;
    let path = location.strip_prefix(&format!("http://{}", a.addr)).unwrap();
    let page = send(a.addr, Method::GET, path, &[], Vec::new()).await;
    assert_eq!(page.status, 200, "{}", page.text());

    // Every click through node b, whose dispatcher and a's share the outbox.
    visit_all(b.addr, &codes, 0).await;
    assert!(amocrm.until(Duration::from_secs(60), |n| n.len() >= 40).await, "only {} notes", amocrm.note_count());
    // Every note the two nodes wrote handed on: nothing more can come.
    let counted =
        |name: &'static str| async move { metric_or_zero(a.addr, name).await + metric_or_zero(b.addr, name).await };
    common::until(Duration::from_secs(30), "the notes handed on", || async {
        let written = counted("shortlinks_notes_written_total").await;
        written == 40 && counted("shortlinks_sink_delivered_total{sink=\"amocrm\",account=\"1\"}").await >= written
    })
    .await;
    let mut ids: Vec<String> = amocrm.notes().into_iter().filter_map(|n| n.request_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!((amocrm.note_count(), ids.len()), (40, 40), "each note once");
    assert_eq!(a.terminate().await, 0);
    assert_eq!(b.terminate().await, 0);
}

/// `shortlinks amocrm contact-deleted-url --account N [more]`; what it printed.
async fn contact_deleted_url(server: &TestServer, account: u64, more: &[&str]) -> String {
    let account = account.to_string();
    let args = [&["amocrm", "contact-deleted-url", "--account", &account][..], more].concat();
    let public_url = format!("http://{}", server.addr);
    let env = [("SHORTLINKS_PUBLIC_URL", public_url.as_str())];
    common::shortlinks(&args, Some(server.dir.path()), &env).await.trim().to_owned()
}

/// The webhook turned on for `account`: its path on the server.
async fn contact_deleted_path(server: &TestServer, account: u64) -> String {
    let url = contact_deleted_url(server, account, &[]).await;
    let prefix = format!("http://{}/amocrm/contact-deleted/{account}/", server.addr);
    assert!(url.starts_with(&prefix), "{url}");
    url.strip_prefix(&format!("http://{}", server.addr)).unwrap().to_owned()
}

/// amoCRM's call: contacts deleted in amoCRM account `amo_account`, form-encoded.
async fn contacts_deleted(server: &TestServer, path: &str, amo_account: u64, contacts: &[u64]) -> Reply {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    for (i, id) in contacts.iter().enumerate() {
        form.append_pair(&format!("contacts[delete][{i}][id]"), &id.to_string());
        form.append_pair(&format!("contacts[delete][{i}][type]"), "contact");
    }
    form.append_pair("account[id]", &amo_account.to_string()).append_pair("account[subdomain]", "example");
    let headers = [("content-type", "application/x-www-form-urlencoded")];
    send(server.addr, Method::POST, path, &headers, form.finish().into_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_deleted_in_the_connected_amocrm_account_are_erased_and_no_other_call_erases_anything() {
    let stand_ins = stand_ins(2).await;
    let server = server_for(&stand_ins).await;
    for (i, stand_in) in stand_ins.iter().enumerate() {
        assert_eq!(install(&server, stand_in, i as u64 + 1).await.status, 200);
    }
    let codes = common::links_for(server.addr, &server.token, "https://deleted.example/", &[5, 6, 7]).await;
    let second = token_for(&server, 2).await;
    let theirs = common::links_for(server.addr, &second, "https://deleted.example/", &[5]).await;
    let status =
        |code: String| async move { common::click(server.addr, &code, &[("user-agent", BROWSER)]).await.status };

    // Off until turned on: no secret opens it.
    let guessed = "/amocrm/contact-deleted/1/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    assert_eq!(contacts_deleted(&server, guessed, 31_001, &[5]).await.status, 403);
    let old = contact_deleted_path(&server, 1).await;
    let path = contact_deleted_path(&server, 1).await;
    assert_ne!(old, path, "a new secret each time");
    assert_eq!(contacts_deleted(&server, &old, 31_001, &[5]).await.status, 403, "the earlier URL no longer works");
    // The right URL, but amoCRM account 31002 (connected to account 2) calling it.
    assert_eq!(contacts_deleted(&server, &path, 31_002, &[5]).await.status, 403);
    let get = send(server.addr, Method::GET, &path, &[], Vec::new()).await;
    assert_eq!((get.status.as_u16(), get.header("allow").as_deref()), (405, Some("POST")));
    for code in codes.iter().chain(&theirs) {
        assert_eq!(status(code.clone()).await, 302, "nothing was erased yet");
    }

    let reply = contacts_deleted(&server, &path, 31_001, &[5, 7]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(status(codes[0].clone()).await, 410);
    assert_eq!(status(codes[1].clone()).await, 302, "contact 6 was not deleted");
    assert_eq!(status(codes[2].clone()).await, 410);
    assert_eq!(status(theirs[0].clone()).await, 302, "account 2's contact 5 is another contact");

    // Turned off: the URL stops working.
    let said = contact_deleted_url(&server, 1, &["--off"]).await;
    assert_eq!(said, "the contact-deleted webhook of account 1 is off");
    assert_eq!(contacts_deleted(&server, &path, 31_001, &[6]).await.status, 403);
    assert_eq!(status(codes[1].clone()).await, 302);
    server.stop().await;
}
