//! The amoCRM sink against the amoCRM stand-in (`shortlinks_notes::stand_in`): batches,
//! pacing, partial refusals, restriction, OAuth with rotating refresh tokens, and the
//! shared allowance of nodes on one Redis. Real sockets, real sled directories, real
//! `shortlinks` processes where a kill or a second node is needed.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{metric, send, try_metric, Process, TestServer, BROWSER};
use hyper::Method;
use serde_json::json;
use shortlinks_notes::stand_in::{AmoCrmStandIn, Fault, StandInOptions, TakenNote};
use shortlinks_server::config::SettingsLayer;

/// Creates one link per contact in `contacts`; the codes.
async fn links_for(addr: SocketAddr, token: &str, contacts: &[u64]) -> Vec<String> {
    common::links_for(addr, token, "https://original.example/offer/", contacts).await
}

/// One browser visit per code, each from an address of its own.
async fn visit_all(addr: SocketAddr, codes: &[String]) {
    for (i, code) in codes.iter().enumerate() {
        let ip = format!("10.1.{}.{}", i / 250, i % 250);
        let reply = send(
            addr,
            Method::GET,
            &format!("/{code}"),
            &[("user-agent", BROWSER), ("x-forwarded-for", &ip)],
            Vec::new(),
        )
        .await;
        assert_eq!(reply.status, 302);
    }
}

fn amocrm_layer(stand_in: &AmoCrmStandIn) -> SettingsLayer {
    SettingsLayer {
        amocrm_base_url: Some(stand_in.url.clone()),
        amocrm_token: Some("amo-token".into()),
        client_ip_header: Some("X-Forwarded-For".into()),
        sink_retry_max_ms: Some(200),
        ..Default::default()
    }
}

async fn stand_in_with_token() -> AmoCrmStandIn {
    AmoCrmStandIn::start(StandInOptions { token: Some("amo-token".into()), ..Default::default() }).await.unwrap()
}

fn by_request_id(notes: &[TakenNote]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for note in notes {
        *counts.entry(note.request_id.clone().unwrap()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_visits_becomes_exactly_that_many_notes_in_paced_batches() {
    let stand_in = stand_in_with_token().await;
    let server = TestServer::start_with(amocrm_layer(&stand_in)).await;
    let contacts: Vec<u64> = (1..=400).collect();
    let codes = links_for(server.addr, &server.token, &contacts).await;
    visit_all(server.addr, &codes).await;
    assert!(stand_in.until(Duration::from_secs(60), |n| n.len() >= 400).await, "only {} notes", stand_in.notes().len());
    until_handed_on(server.addr, 400, 0).await; // nothing more comes

    let notes = stand_in.notes();
    assert_eq!(notes.len(), 400, "no note lost, none twice");
    assert_eq!(notes.iter().map(|n| n.entity_id).collect::<HashSet<_>>(), contacts.iter().copied().collect());
    assert!(by_request_id(&notes).values().all(|&n| n == 1), "one request_id per note");
    for note in &notes {
        assert_eq!(note.note_type, "service_message");
        assert_eq!(note.params["service"], "shortlinks");
        assert_eq!(note.params["text"], format!("visited https://original.example/offer/{}", note.entity_id));
        assert!(!note.params.to_string().contains(&server.base), "no short URL reaches the manager");
    }
    let arrivals = stand_in.arrivals();
    assert!(arrivals.len() <= 20, "batched: {} requests for 400 notes", arrivals.len());
    assert!(arrivals.iter().all(|a| a.notes <= 50), "at most amocrm_batch (50) a request");
    assert_eq!(stand_in.too_many(), 0, "paced before amoCRM's limit, never by its 429");
    let most = stand_in.most_in_one_second();
    assert!(most <= 5, "at most the configured 5 requests in any second, saw {most}");
    assert_eq!(metric(server.addr, "shortlinks_sink_delivered_total{sink=\"amocrm\",account=\"1\"}").await, 400);
    eprintln!("400 notes in {} requests, at most {most} in one second", arrivals.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_and_only_a_lost_answer_duplicates() {
    let stand_in = stand_in_with_token().await;
    // A 500, a 429 from amoCRM's side, then a request taken but answered after the
    // client's 1 s timeout: its notes are sent again, the rest exactly once.
    stand_in.inject(&[Fault::Status(500), Fault::LateAnswer(Duration::from_secs(2))]);
    let layer = SettingsLayer { sink_timeout_secs: Some(1), amocrm_batch: Some(10), ..amocrm_layer(&stand_in) };
    let server = TestServer::start_with(layer).await;
    let contacts: Vec<u64> = (100..130).collect();
    let codes = links_for(server.addr, &server.token, &contacts).await;
    visit_all(server.addr, &codes).await;
    assert!(stand_in.until(Duration::from_secs(60), |n| by_request_id(n).len() >= 30).await);
    until_handed_on(server.addr, 30, 0).await; // the retry of the lost answer included

    let notes = stand_in.notes();
    let counts = by_request_id(&notes);
    assert_eq!(counts.len(), 30, "every note arrived");
    let arrivals = stand_in.arrivals();
    assert_eq!(arrivals[0].status, 500);
    let late_batch = arrivals[1].notes;
    let twice = counts.values().filter(|&&n| n == 2).count();
    assert_eq!(twice, late_batch, "exactly the notes of the request whose answer was lost came twice");
    assert!(counts.values().all(|&n| n <= 2));
    assert!(metric(server.addr, "shortlinks_sink_failed_attempts_total{sink=\"amocrm\",account=\"1\"}").await >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_contact_dead_letters_only_its_own_note_which_the_operator_lists_replays_and_purges() {
    let stand_in = AmoCrmStandIn::start(StandInOptions {
        token: Some("amo-token".into()),
        unknown_contacts: HashSet::from([13, 16]),
        ..Default::default()
    })
    .await
    .unwrap();
    let server = TestServer::start_with(SettingsLayer { amocrm_linger_ms: Some(500), ..amocrm_layer(&stand_in) }).await;
    let contacts = [11, 12, 13, 14, 15];
    let codes = links_for(server.addr, &server.token, &contacts).await;
    visit_all(server.addr, &codes).await;
    assert!(stand_in.until(Duration::from_secs(30), |n| n.len() >= 4).await);
    until_handed_on(server.addr, 4, 1).await;
    let dead = metric(server.addr, "shortlinks_sink_dead_lettered_total{sink=\"amocrm\",account=\"1\"}").await;
    let taken: Vec<u64> = stand_in.notes().iter().map(|n| n.entity_id).collect();
    assert_eq!(taken.iter().copied().collect::<HashSet<_>>(), HashSet::from([11, 12, 14, 15]));
    assert_eq!(taken.len(), 4, "the others once each");
    assert_eq!(dead, 1, "only the unknown contact's note is set aside");
    let arrivals = stand_in.arrivals();
    assert_eq!(arrivals[0].status, 400, "{arrivals:?}");
    assert_eq!(arrivals[0].notes, 5, "one batch, refused for one note");
    assert_eq!(metric(server.addr, "shortlinks_sink_delivered_total{sink=\"amocrm\",account=\"1\"}").await, 4);

    // The operator sees the contact, the ORIGINAL URL, when and why; never the short one.
    let listed = dead_letters(server.dir.path(), &["list", "--account", "1"]).await;
    assert!(listed.starts_with("1 dead letters of account 1 in amocrm"), "{listed}");
    assert!(listed.contains("contact 13") && listed.contains("https://original.example/offer/13"), "{listed}");
    assert!(listed.contains("reason: amoCRM refused the note") && listed.contains("NotValid"), "{listed}");
    assert!(!listed.contains(&codes[2]), "no short code: {listed}");
    assert!(dead_letters(server.dir.path(), &["list", "--account", "2"]).await.starts_with("0 dead letters"));

    // The contact now exists in amoCRM: replayed, its note arrives, once.
    stand_in.create_contact(13);
    let replayed = dead_letters(server.dir.path(), &["replay", "--account", "1"]).await;
    assert!(replayed.starts_with("1 notes of account 1 are back"), "{replayed}");
    until_handed_on(server.addr, 5, 1).await;
    let taken: Vec<u64> = stand_in.notes().iter().map(|n| n.entity_id).collect();
    assert_eq!(taken.iter().filter(|&&c| c == 13).count(), 1, "{taken:?}");
    assert!(dead_letters(server.dir.path(), &["list", "--account", "1"]).await.starts_with("0 dead letters"));

    // Another refused note, purged: the count first, then only with that count confirmed.
    let more = links_for(server.addr, &server.token, &[16]).await;
    common::click(server.addr, &more[0], &[("user-agent", BROWSER), ("x-forwarded-for", "10.9.9.9")]).await;
    until_handed_on(server.addr, 5, 2).await;
    let asked = dead_letters(server.dir.path(), &["purge", "--account", "1"]).await;
    assert!(asked.contains("run again with --confirm 1"), "{asked}");
    let wrong = dead_letters(server.dir.path(), &["purge", "--account", "1", "--confirm", "2"]).await;
    assert!(wrong.contains("--confirm 1"), "a wrong count purges nothing: {wrong}");
    assert!(dead_letters(server.dir.path(), &["list", "--account", "1"]).await.starts_with("1 dead letters"));
    let purged = dead_letters(server.dir.path(), &["purge", "--account", "1", "--confirm", "1"]).await;
    assert!(purged.starts_with("purged 1 dead letters"), "{purged}");
    assert!(dead_letters(server.dir.path(), &["list", "--account", "1"]).await.starts_with("0 dead letters"));
    assert!(!stand_in.notes().iter().any(|n| n.entity_id == 16), "a purged note is never sent");
}

/// `shortlinks dead-letters <args> --data-dir <dir>`; its standard output.
async fn dead_letters(dir: &Path, args: &[&str]) -> String {
    common::shortlinks(&[&["dead-letters"][..], args].concat(), Some(dir), &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_integration_pauses_and_drops_nothing() {
    let stand_in = stand_in_with_token().await;
    stand_in.inject(&[Fault::Status(403)]);
    let layer = SettingsLayer {
        amocrm_restricted_pause_secs: Some(2),
        amocrm_note_type: Some(shortlinks_notes::sink::AmoNoteType::Common),
        ..amocrm_layer(&stand_in)
    };
    let server = TestServer::start_with(layer).await;
    let codes = links_for(server.addr, &server.token, &[21, 22]).await;
    visit_all(server.addr, &codes).await;
    assert!(stand_in.until(Duration::from_secs(30), |n| n.len() >= 2).await);
    let arrivals = stand_in.arrivals();
    assert_eq!(arrivals[0].status, 403);
    let paused = arrivals[1].at.duration_since(arrivals[0].at);
    assert!(
        paused >= Duration::from_secs(2),
        "the sink paused for the configured time, not a retry's backoff: {paused:?}"
    );
    assert_eq!(metric(server.addr, "shortlinks_sink_restricted_total{sink=\"amocrm\",account=\"1\"}").await, 1);
    assert_eq!(metric(server.addr, "shortlinks_sink_dead_lettered_total{sink=\"amocrm\",account=\"1\"}").await, 0);
    for note in stand_in.notes() {
        assert_eq!(note.note_type, "common", "the configured note type");
        assert_eq!(note.params, json!({"text": format!("visited https://original.example/offer/{}", note.entity_id)}));
    }
}

/// amoCRM refusing the account rather than a note (a 402 when its subscription ends, a 400
/// naming no note): the connection pauses and tries again; no note is dead-lettered, and
/// each arrives once the account is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_level_refusal_pauses_and_dead_letters_nothing() {
    let stand_in = stand_in_with_token().await;
    stand_in.inject(&[Fault::Status(402), Fault::Status(400), Fault::Status(402)]);
    let layer = SettingsLayer { amocrm_restricted_pause_secs: Some(1), ..amocrm_layer(&stand_in) };
    let server = TestServer::start_with(layer).await;
    let codes = links_for(server.addr, &server.token, &[51, 52, 53]).await;
    visit_all(server.addr, &codes).await;
    assert!(stand_in.until(Duration::from_secs(30), |n| n.len() >= 3).await, "the notes arrive once taken again");
    let counts = by_request_id(&stand_in.notes());
    assert!(counts.len() == 3 && counts.values().all(|&n| n == 1), "each note once: {counts:?}");
    let statuses: Vec<u16> = stand_in.arrivals().iter().map(|a| a.status).collect();
    assert_eq!(statuses[..3], [402, 400, 402], "the whole batch each time, never one by one");
    let labels = "{sink=\"amocrm\",account=\"1\"}";
    assert_eq!(metric(server.addr, &format!("shortlinks_sink_account_refused_total{labels}")).await, 3);
    assert_eq!(metric(server.addr, &format!("shortlinks_sink_dead_lettered_total{labels}")).await, 0);
}

const OAUTH: [(&str, &str); 3] = [
    ("SHORTLINKS_AMOCRM_CLIENT_ID", "integration-1"),
    ("SHORTLINKS_AMOCRM_CLIENT_SECRET", "integration-secret"),
    ("SHORTLINKS_AMOCRM_REDIRECT_URI", "https://shortlinks.example/amocrm"),
];

fn oauth_stand_in_options() -> StandInOptions {
    StandInOptions {
        oauth: Some(("integration-1".into(), "integration-secret".into(), "the-code".into())),
        ..Default::default()
    }
}

/// `shortlinks amocrm connect --code …` with the OAuth settings in its environment.
async fn connect(dir: &Path, stand_in: &AmoCrmStandIn, code: &str) -> std::process::Output {
    tokio::process::Command::new(common::shortlinks_binary())
        .args(["amocrm", "connect", "--code", code, "--data-dir"])
        .arg(dir)
        .env("SHORTLINKS_AMOCRM_BASE_URL", &stand_in.url)
        .envs(OAUTH)
        .output()
        .await
        .unwrap()
}

/// Waits until the server at `addr` counts `n` notes delivered to account 1's amoCRM.
async fn until_delivered(addr: SocketAddr, n: u64) {
    until_handed_on(addr, n, 0).await;
}

/// Waits until the server at `addr` counts at least `delivered` notes taken by account 1's
/// amoCRM and `dead` set aside: once every note written is one or the other, its worker
/// has nothing left to send, so nothing more can arrive.
async fn until_handed_on(addr: SocketAddr, delivered: u64, dead: u64) {
    let counter = |name: &str| format!("shortlinks_sink_{name}_total{{sink=\"amocrm\",account=\"1\"}}");
    let (taken, aside) = (counter("delivered"), counter("dead_lettered"));
    common::until(Duration::from_secs(60), "the notes handed on", || async {
        try_metric(addr, &taken).await.unwrap_or(0) >= delivered && try_metric(addr, &aside).await.unwrap_or(0) >= dead
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_connects_refreshes_and_a_rotation_survives_kill_9_between_refresh_and_use() {
    let stand_in = AmoCrmStandIn::start(oauth_stand_in_options()).await.unwrap();
    let dir = common::private_tempdir();
    let env: Vec<(&str, &str)> = OAUTH
        .iter()
        .copied()
        .chain([
            ("SHORTLINKS_AMOCRM_BASE_URL", stand_in.url.as_str()),
            ("SHORTLINKS_CLIENT_IP_HEADER", "X-Forwarded-For"),
        ])
        .collect();

    // Connected with the code while no server runs (the store opened directly); a wrong
    // code is refused with a message, and without printing any token.
    let wrong = connect(dir.path(), &stand_in, "not-the-code").await;
    assert!(!wrong.status.success());
    let connected = connect(dir.path(), &stand_in, "the-code").await;
    assert!(connected.status.success(), "{}", String::from_utf8_lossy(&connected.stderr));
    let said = String::from_utf8_lossy(&connected.stdout).to_string() + &String::from_utf8_lossy(&connected.stderr);
    assert!(said.contains("connected") && !said.contains("access-1") && !said.contains("refresh-1"), "{said}");

    let server = Process::serve(dir.path(), &[], &env).await;
    let token = common::first_token(dir.path());
    let codes = links_for(server.addr, &token, &[31, 32, 33]).await;
    visit_all(server.addr, &codes[..1]).await;
    until_delivered(server.addr, 1).await;
    assert_eq!(stand_in.refreshes(), 0, "the first access token was still good");

    // amoCRM expires the access token: the next delivery is refused 401, the server
    // refreshes (amoCRM rotates the refresh token), stores the new pair, then uses it.
    // The stand-in holds that use unanswered, and the server is killed right there.
    stand_in.expire_access_tokens();
    stand_in.hold_after_refresh();
    visit_all(server.addr, &codes[1..2]).await;
    common::until(Duration::from_secs(15), "the refresh made and its use held", || async {
        stand_in.refreshes() == 1 && stand_in.waiting() > 0
    })
    .await;
    server.kill9().await;
    stand_in.hold(false);

    // On restart the old refresh token is worthless (amoCRM retired it). Expiring the
    // access tokens again forces a second refresh, which only the stored new refresh
    // token can make.
    stand_in.expire_access_tokens();
    let server = Process::serve(dir.path(), &[], &env).await;
    visit_all(server.addr, &codes[2..3]).await;
    assert!(
        stand_in
            .until(Duration::from_secs(30), |n| n.iter().map(|n| n.entity_id).collect::<HashSet<_>>().len() == 3)
            .await,
        "every contact's note arrived after the restart: {:?}",
        stand_in.notes()
    );
    assert_eq!(stand_in.refreshes(), 2, "refreshed once more, with the rotated token from the store");
    assert_eq!(server.terminate().await, 0);
}

/// A node's settings on the Redis at `url` (keys under `prefix`), with addresses from
/// `X-Forwarded-For`, delivering into the stand-in in batches of four without linger;
/// `more` added.
fn on_redis_into_amocrm<'a>(
    url: &'a str,
    prefix: &'a str,
    stand_in: &'a AmoCrmStandIn,
    more: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("SHORTLINKS_STORAGE", "redis"),
        ("SHORTLINKS_REDIS_URL", url),
        ("SHORTLINKS_REDIS_KEY_PREFIX", prefix),
        ("SHORTLINKS_CLIENT_IP_HEADER", "X-Forwarded-For"),
        ("SHORTLINKS_AMOCRM_BASE_URL", stand_in.url.as_str()),
        ("SHORTLINKS_AMOCRM_TOKEN", "amo-token"),
        ("SHORTLINKS_AMOCRM_BATCH", "4"),
        ("SHORTLINKS_AMOCRM_LINGER_MS", "0"),
    ];
    env.extend_from_slice(more);
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_redis_share_one_allowance() {
    if !shortlinks_redis::testing::available() {
        return;
    }
    let redis = shortlinks_redis::testing::RedisServer::standalone().unwrap();
    let stand_in = stand_in_with_token().await;
    let url = redis.url();
    // Small batches and no linger: many requests, so both nodes send at once.
    let env = on_redis_into_amocrm(&url, "paced", &stand_in, &[]);
    let (dir_a, dir_b) = (common::private_tempdir(), common::private_tempdir());
    let a = Process::serve(dir_a.path(), &[], &env).await;
    let token = common::first_token(dir_a.path());
    let b = Process::serve(dir_b.path(), &[], &env).await;
    let contacts: Vec<u64> = (1..=160).collect();
    let codes = links_for(a.addr, &token, &contacts).await;
    // Half the visits through each node: both dispatchers feed the one sink queue, and
    // both sink workers lease from it.
    let (left, right) = codes.split_at(80);
    tokio::join!(visit_all(a.addr, left), visit_all(b.addr, right));
    assert!(stand_in.until(Duration::from_secs(60), |n| n.len() >= 160).await, "only {}", stand_in.notes().len());

    let delivered_a = metric(a.addr, "shortlinks_sink_delivered_total{sink=\"amocrm\",account=\"1\"}").await;
    let delivered_b = metric(b.addr, "shortlinks_sink_delivered_total{sink=\"amocrm\",account=\"1\"}").await;
    assert_eq!(delivered_a + delivered_b, 160);
    assert!(delivered_a > 0 && delivered_b > 0, "both nodes delivered: {delivered_a} and {delivered_b}");
    assert_eq!(stand_in.too_many(), 0);
    let most = stand_in.most_in_one_second();
    assert!(most <= 5, "the two nodes together stayed within the shared 5 a second: {most}");
    eprintln!("two nodes: {delivered_a} + {delivered_b} notes, at most {most} requests in one second");
    a.terminate().await;
    b.terminate().await;
}

/// A Redis that stops taking writes for a while (here: paused) carries out every timed-out
/// write when it resumes, so the writer's retried appends leave copies of one group of
/// clicks in the outbox: amoCRM, which does not deduplicate, still gets each note once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_left_by_a_hanging_redis_reach_amocrm_once() {
    if !shortlinks_redis::testing::available() {
        return;
    }
    const PAUSE: Duration = Duration::from_secs(7);
    let redis = shortlinks_redis::testing::RedisServer::standalone().unwrap();
    let stand_in = stand_in_with_token().await;
    let url = redis.url();
    // Clicks are answered and held in memory while Redis takes no writes; small batches, so
    // that copies land in batches of their own.
    let env = on_redis_into_amocrm(&url, "copies", &stand_in, &[("SHORTLINKS_DURABILITY", "group")]);
    let dir = common::private_tempdir();
    let server = Process::serve(dir.path(), &[], &env).await;
    let token = common::first_token(dir.path());
    let contacts: Vec<u64> = (1..=24).collect();
    let codes = links_for(server.addr, &token, &contacts).await;
    visit_all(server.addr, &codes).await; // a first visitor each, and the links are cached

    let millis = PAUSE.as_millis().to_string();
    shortlinks_redis::testing::cli(redis.port(), &["CLIENT", "PAUSE", millis.as_str(), "WRITE"]).unwrap();
    // A second visitor each: the clicks are held, every answer a 302.
    for (i, code) in codes.iter().enumerate() {
        let ip = format!("10.2.0.{i}");
        let headers = [("user-agent", BROWSER), ("x-forwarded-for", ip.as_str())];
        assert_eq!(send(server.addr, Method::GET, &format!("/{code}"), &headers, Vec::new()).await.status, 302);
    }
    let expected = 2 * contacts.len();
    let retried = stand_in.until(PAUSE * 6, |n| by_request_id(n).len() >= expected).await;
    assert!(retried, "only {} of {expected} notes", by_request_id(&stand_in.notes()).len());
    // The copies queue behind: wait until nothing has come for 3 s (a paced sink sends
    // several requests a second while it has notes).
    let mut taken = stand_in.notes().len();
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = stand_in.notes().len();
        if now == taken {
            break;
        }
        taken = now;
    }

    let counts = by_request_id(&stand_in.notes());
    let twice: Vec<_> = counts.values().filter(|&&n| n > 1).collect();
    assert!(twice.is_empty(), "{} of {} notes came more than once", twice.len(), counts.len());
    // Copies met in one lease are dropped; one in a later lease is dispatched again. A
    // batch whose notes went out but whose removal timed out in the pause is counted when
    // the dispatcher, backing off up to 5 s, takes it again.
    let dispatched = || metric(server.addr, "shortlinks_clicks_dispatched_total");
    common::until(Duration::from_secs(30), "every click counted as dispatched", || async {
        dispatched().await >= expected as u64
    })
    .await;
    let dropped = metric(server.addr, "shortlinks_clicks_copies_dropped_total").await;
    let again = dispatched().await - expected as u64;
    let skipped = metric(server.addr, "shortlinks_sink_copies_skipped_total{sink=\"amocrm\",account=\"1\"}").await;
    eprintln!("copies of clicks: {dropped} dropped, {again} dispatched again; {skipped} notes skipped by the sink");
    assert!(dropped + again > 0, "the pause left no copy in the outbox: the test proves nothing");
    assert_eq!(server.terminate().await, 0);
}

/// One server delivers for many accounts: each account's connection has its own amoCRM
/// account (here a stand-in each, which takes only its own token), its own queue and its
/// own pace, and an account's notes reach its own amoCRM only, even for contacts with the
/// same ids in other accounts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_accounts_clicks_reach_only_its_own_amocrm() {
    use shortlinks_server::admin::{self, AdminReply, AdminRequest};
    use shortlinks_server::config::{AmoCrmConnection, StorageSettings};

    const ACCOUNTS: [u64; 3] = [1, 2, 3];
    let mut stand_ins = Vec::new();
    for account in ACCOUNTS {
        let options = StandInOptions { token: Some(format!("amo-token-{account}")), ..Default::default() };
        stand_ins.push(AmoCrmStandIn::start(options).await.unwrap());
    }
    let connections = ACCOUNTS
        .iter()
        .zip(&stand_ins)
        .map(|(&account, stand_in)| AmoCrmConnection {
            account,
            base_url: Some(stand_in.url.clone()),
            token: Some(format!("amo-token-{account}")),
            ..Default::default()
        })
        .collect();
    let layer = SettingsLayer {
        amocrm_connections: Some(connections),
        client_ip_header: Some("X-Forwarded-For".into()),
        sink_retry_max_ms: Some(200),
        ..Default::default()
    };
    let server = TestServer::start_with(layer).await;
    for account in ACCOUNTS {
        let token = match account {
            1 => server.token.clone(),
            _ => {
                let request = AdminRequest::TokenCreate { account, user: 1, scope: shortlinks_core::ContactScope::All };
                let reply = admin::command(&StorageSettings::Sled, server.dir.path(), request).await.unwrap();
                let AdminReply::Token { token } = reply else { panic!("{reply:?}") };
                token
            }
        };
        let prefix = format!("https://account{account}.example/offer/");
        let codes = common::links_for(server.addr, &token, &prefix, &[5, 6, 10 * account]).await;
        visit_all(server.addr, &codes).await;
    }
    for (&account, stand_in) in ACCOUNTS.iter().zip(&stand_ins) {
        assert!(stand_in.until(Duration::from_secs(30), |n| n.len() >= 3).await, "account {account}'s notes");
        let notes = stand_in.notes();
        let mut contacts: Vec<u64> = notes.iter().map(|n| n.entity_id).collect();
        contacts.sort_unstable();
        assert_eq!(contacts, [5, 6, 10 * account], "account {account}'s contacts, each once");
        for note in &notes {
            let text = note.params["text"].as_str().unwrap();
            let expected = format!("visited https://account{account}.example/offer/{}", note.entity_id);
            assert_eq!(text, expected, "account {account}'s amoCRM got only account {account}'s notes");
        }
        // Counted once the sink has read amoCRM's answer, a moment after the stand-in took it.
        let delivered = format!("shortlinks_sink_delivered_total{{sink=\"amocrm\",account=\"{account}\"}}");
        common::until(Duration::from_secs(10), "the notes counted as delivered", || async {
            metric(server.addr, &delivered).await >= 3
        })
        .await;
        assert_eq!(metric(server.addr, &delivered).await, 3);
        assert_eq!(stand_in.too_many(), 0);
    }
}

/// A connection with no clicks still refreshes its access token before it expires (and
/// with it the refresh token, which would otherwise lapse unseen). And a refreshed pair
/// that the store cannot take (Redis dies while amoCRM answers the refresh, after amoCRM
/// has retired the old refresh token) is kept in memory, used, and stored once the store
/// is back, never dropped: the notes keep arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_connection_refreshes_and_a_pair_the_store_refused_is_kept() {
    if !shortlinks_redis::testing::available() {
        return;
    }
    let mut redis = shortlinks_redis::testing::RedisServer::standalone_with(&["--appendfsync", "always"]).unwrap();
    let url = redis.url();
    // Access tokens of 200 s: inside the five minutes before expiry in which they are
    // refreshed, so the first upkeep refreshes. amoCRM answers a refresh 2 s late.
    let options = StandInOptions {
        access_ttl: Some(Duration::from_secs(200)),
        token_delay: Some(Duration::from_secs(2)),
        ..oauth_stand_in_options()
    };
    let stand_in = AmoCrmStandIn::start(options).await.unwrap();
    let env: Vec<(&str, &str)> = OAUTH
        .iter()
        .copied()
        .chain([
            ("SHORTLINKS_STORAGE", "redis"),
            ("SHORTLINKS_REDIS_URL", url.as_str()),
            ("SHORTLINKS_AMOCRM_BASE_URL", stand_in.url.as_str()),
            ("SHORTLINKS_CLIENT_IP_HEADER", "X-Forwarded-For"),
        ])
        .collect();
    let dir = common::private_tempdir();
    let connected = tokio::process::Command::new(common::shortlinks_binary())
        .args(["amocrm", "connect", "--code", "the-code", "--data-dir"])
        .arg(dir.path())
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    assert!(connected.status.success(), "{}", String::from_utf8_lossy(&connected.stderr));

    let server = Process::serve(dir.path(), &[], &env).await;
    let token = common::first_token(dir.path());
    let codes = links_for(server.addr, &token, &[41]).await;
    // No click: the sink's upkeep asks amoCRM for a new pair. Redis dies while amoCRM
    // takes its time to answer.
    common::until(Duration::from_secs(30), "a refresh with no click", || async { stand_in.refreshes() == 1 }).await;
    redis.kill();
    server.logged(&["cannot store the refreshed amoCRM token pair"]).await;
    redis.restart().unwrap();

    // Back: a click's note goes out with the kept pair, which is stored first.
    let path = format!("/{}", codes[0]);
    common::until(Duration::from_secs(30), "a redirect once Redis is back", || async {
        let headers = [("user-agent", BROWSER), ("x-forwarded-for", "10.4.4.4")];
        let reply = common::try_send(server.addr, Method::GET, &path, &headers, Vec::new()).await;
        reply.is_some_and(|r| r.status == 302)
    })
    .await;
    assert!(stand_in.until(Duration::from_secs(30), |n| !n.is_empty()).await, "the note arrived");
    server.logged(&["stored the amoCRM token pair that the store had refused"]).await;
    // Tokens of 200 s are refreshed at every use; each refresh took the pair before it (a
    // dropped pair would have left only the retired `refresh-1`, which amoCRM refuses).
    let latest = format!("refresh-{}", stand_in.refreshes() + 1);
    let stored = shortlinks_redis::testing::cli(redis.port(), &["GET", "sl:credential:amocrm.oauth:1"]).unwrap();
    assert!(stored.contains(&latest), "the store holds the latest pair, {latest}: {stored:?}");
    assert_eq!(server.terminate().await, 0);
}

/// One account's connection that amoCRM does not authorize (its token was revoked) needs
/// to be connected again, and says so on `/metrics` and in `/readyz`, while the other
/// two accounts keep delivering; its notes wait, and once it is connected again (here: the
/// right token, and a restart) each arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_needing_reconnect_waits_while_the_others_deliver() {
    use shortlinks_server::admin::{self, AdminReply, AdminRequest};
    use shortlinks_server::config::StorageSettings;

    let mut stand_ins = Vec::new();
    for account in [1, 2, 3] {
        let options = StandInOptions { token: Some(format!("token-{account}")), ..Default::default() };
        stand_ins.push(AmoCrmStandIn::start(options).await.unwrap());
    }
    let dir = common::private_tempdir();
    let config = dir.path().join("connections.toml");
    let write_config = |second_token: &str| {
        let text = format!(
            "[[amocrm_connections]]\naccount = 1\nbase_url = \"{}\"\ntoken = \"token-1\"\n\n\
             [[amocrm_connections]]\naccount = 2\nbase_url = \"{}\"\ntoken = \"{second_token}\"\n\n\
             [[amocrm_connections]]\naccount = 3\nbase_url = \"{}\"\ntoken = \"token-3\"\n",
            stand_ins[0].url, stand_ins[1].url, stand_ins[2].url
        );
        std::fs::write(&config, text).unwrap();
    };
    write_config("revoked");
    let env = [("SHORTLINKS_CLIENT_IP_HEADER", "X-Forwarded-For"), ("SHORTLINKS_SINK_RETRY_MAX_MS", "200")];
    let args = ["--config", config.to_str().unwrap()];
    let server = Process::serve(dir.path(), &args, &env).await;
    let first = common::first_token(dir.path());
    let mut tokens = Vec::new();
    for account in [2, 3] {
        let request = AdminRequest::TokenCreate { account, user: 1, scope: shortlinks_core::ContactScope::All };
        let AdminReply::Token { token } = admin::command(&StorageSettings::Sled, dir.path(), request).await.unwrap()
        else {
            panic!()
        };
        tokens.push(token);
    }
    let (second, third) = (&tokens[0], &tokens[1]);
    visit_all(server.addr, &common::links_for(server.addr, &first, "https://one.example/", &[1, 2]).await).await;
    visit_all(server.addr, &common::links_for(server.addr, second, "https://two.example/", &[1, 2]).await).await;
    visit_all(server.addr, &common::links_for(server.addr, third, "https://three.example/", &[1, 2]).await).await;

    assert!(stand_ins[0].until(Duration::from_secs(30), |n| n.len() >= 2).await, "account 1 delivers");
    assert!(stand_ins[2].until(Duration::from_secs(30), |n| n.len() >= 2).await, "account 3 delivers");
    let state = |account: u64, state: &str| {
        format!("shortlinks_sink_state{{sink=\"amocrm\",account=\"{account}\",state=\"{state}\"}}")
    };
    common::until(Duration::from_secs(30), "account 2 shown as needing to be connected again", || async {
        metric(server.addr, &state(2, "needs_reconnect")).await == 1
    })
    .await;
    assert_eq!(metric(server.addr, &state(1, "connected")).await, 1);
    assert_eq!(metric(server.addr, &state(3, "connected")).await, 1);
    let ready = send(server.addr, Method::GET, "/readyz", &[], Vec::new()).await;
    let body = String::from_utf8_lossy(&ready.body).to_string();
    assert_eq!(ready.status, 200, "readiness is about this node: {body}");
    assert!(body.contains("account=\"2\": needs_reconnect") && body.contains("account=\"1\": connected"), "{body}");
    assert!(stand_ins[1].notes().is_empty(), "account 2's notes wait");
    assert_eq!(metric(server.addr, "shortlinks_sink_dead_lettered_total{sink=\"amocrm\",account=\"2\"}").await, 0);
    assert_eq!(server.terminate().await, 0);

    // Connected again: its held notes arrive, once each.
    write_config("token-2");
    let server = Process::serve(dir.path(), &args, &env).await;
    assert!(stand_ins[1].until(Duration::from_secs(30), |n| n.len() >= 2).await, "account 2's notes arrive");
    common::until(Duration::from_secs(30), "account 2 connected", || async {
        metric(server.addr, &state(2, "connected")).await == 1
    })
    .await;
    let counts = by_request_id(&stand_ins[1].notes());
    assert!(counts.len() == 2 && counts.values().all(|&n| n == 1), "{counts:?}");
    assert!(stand_ins[1].notes().iter().all(|n| n.params["text"].as_str().unwrap().contains("two.example")));
    assert_eq!(stand_ins[0].notes().len(), 2, "account 1's notes, once");
    assert_eq!(stand_ins[2].notes().len(), 2, "account 3's notes, once");
    assert!(stand_ins[2].notes().iter().all(|n| n.params["text"].as_str().unwrap().contains("three.example")));
    assert_eq!(server.terminate().await, 0);
}
