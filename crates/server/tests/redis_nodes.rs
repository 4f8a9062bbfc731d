//! Several `shortlinks` processes on one Redis: real processes, a real 3-master Redis
//! Cluster and a real standalone `redis-server`, all on loopback.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{all_notes, click, code_of, item, send, try_send, Process, BROWSER};
use hyper::Method;
use serde_json::json;
use shortlinks_redis::testing::{cli, RedisCluster, RedisServer};

/// A node on Redis. `sync` durability, so that an acknowledged click is already in Redis.
async fn node(dir: &Path, storage: (&str, &str), prefix: &str) -> Process {
    let env = [
        ("SHORTLINKS_STORAGE", "redis"),
        storage,
        ("SHORTLINKS_REDIS_KEY_PREFIX", prefix),
        ("SHORTLINKS_REDIS_CLAIM_AFTER_MS", "1500"),
        ("SHORTLINKS_DURABILITY", "sync"),
        ("SHORTLINKS_CLIENT_IP_HEADER", "X-Forwarded-For"),
        // Many visitors of one link, each to make its note.
        ("SHORTLINKS_NOTES_PER_LINK", "0"),
    ];
    Process::serve(dir, &[], &env).await
}

/// One browser click from a distinct address, so that no two are one visit.
async fn visit(addr: SocketAddr, code: &str, n: u32) -> Option<u16> {
    let ip = format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255);
    let headers = [("user-agent", BROWSER), ("x-forwarded-for", ip.as_str())];
    try_send(addr, Method::GET, &format!("/{code}"), &headers, Vec::new()).await.map(|r| r.status.as_u16())
}

/// Notes of one contact, once there are `expected` and their number has stopped changing
/// (extras would show), or whatever there are at the deadline. No shorter wait: a debug
/// build on a busy machine takes seconds over one lease of 8 000 clicks, and its notes land
/// together at the end of it.
async fn settled_notes(addr: SocketAddr, token: &str, contact: u64, expected: usize) -> Vec<serde_json::Value> {
    let path = format!("/api/v4/contacts/{contact}/notes?limit=250");
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut notes, mut stable_since) = (Vec::new(), Instant::now());
    loop {
        let now = all_notes(addr, token, &path).await;
        if now.len() != notes.len() {
            stable_since = Instant::now();
        }
        notes = now;
        if notes.len() >= expected && stable_since.elapsed() > Duration::from_millis(500) || Instant::now() > deadline {
            return notes;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_distinct(notes: &[serde_json::Value], url: &str) {
    let ids: HashSet<u64> = notes.iter().map(|n| n["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), notes.len(), "no note is there twice");
    assert!(notes.iter().all(|n| n["params"]["url"] == url), "every note names the original URL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_a_redis_cluster_and_lose_no_click_when_one_dies() {
    if !shortlinks_redis::testing::available() {
        return;
    }
    let cluster = RedisCluster::start(3).unwrap();
    let nodes = cluster.urls().join(",");
    let storage = ("SHORTLINKS_REDIS_NODES", nodes.as_str());
    let (dir_a, dir_b) = (common::private_tempdir(), common::private_tempdir());
    let a = node(dir_a.path(), storage, "multi").await;
    let token = common::first_token(dir_a.path());
    let b = node(dir_b.path(), storage, "multi").await;
    assert!(b.banner.is_empty(), "b found a's token in Redis and made none: {:?}", b.banner);
    assert!(!dir_b.path().join(shortlinks_server::data_dir::FIRST_TOKEN_FILE).exists());

    // A link made on one node redirects on the other.
    let (first, second) = ("https://original.example/first", "https://original.example/second");
    let reply = a.post(&token, &json!([item(first, 1), item(second, 2)])).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let body = reply.json();
    let codes: Vec<String> =
        (0..2).map(|i| code_of(body["_embedded"]["short_links"][i]["url"].as_str().unwrap()).to_owned()).collect();
    let on_b = click(b.addr, &codes[0], &[("user-agent", BROWSER)]).await;
    assert_eq!((on_b.status.as_u16(), on_b.headers["location"].to_str().unwrap()), (302, first));

    // Clicks on both nodes become notes exactly once, whichever node dispatches them.
    for n in 1..=20 {
        assert_eq!(visit(a.addr, &codes[1], n).await, Some(302));
        assert_eq!(visit(b.addr, &codes[1], 1000 + n).await, Some(302));
    }
    let notes = settled_notes(b.addr, &token, 2, 40).await;
    assert_eq!(notes.len(), 40, "40 visits, 40 notes");
    assert_distinct(&notes, second);
    assert_eq!(settled_notes(a.addr, &token, 1, 1).await.len(), 1, "the click on b of the first link");

    // Kill a while it is taking clicks: what it acknowledged, b turns into notes.
    let acked = Arc::new(Mutex::new(0usize));
    let (log, addr, code) = (acked.clone(), a.addr, codes[0].clone());
    let clicking = tokio::spawn(async move {
        for n in 10_000.. {
            match visit(addr, &code, n).await {
                Some(302) => *log.lock().unwrap() += 1,
                _ => break,
            }
        }
    });
    common::until(Duration::from_secs(30), "a taking clicks", || async { *acked.lock().unwrap() >= 100 }).await;
    a.kill9().await;
    clicking.await.unwrap();
    let port = cluster.nodes()[0].port();
    let pending = || {
        let out = cli(port, &["-c", "XPENDING", "multi:queue:clicks", "shortlinks"]).unwrap();
        out.lines().next().unwrap_or("0").trim().parse::<u64>().unwrap_or(0)
    };
    eprintln!("outbox entries leased by a when it died: {}", pending());
    let acked = *acked.lock().unwrap();
    assert!(acked > 20, "only {acked} clicks were acknowledged before the kill");
    eprintln!("a acknowledged {acked} clicks before kill -9");
    let notes = settled_notes(b.addr, &token, 1, acked + 1).await;
    // One click may have been stored without its answer reaching the client.
    assert!(
        (acked + 1..=acked + 2).contains(&notes.len()),
        "{acked} acknowledged clicks on a (+1 earlier on b), {} notes",
        notes.len()
    );
    eprintln!("b wrote {} notes for the first link", notes.len());
    // a may have written notes and died before acknowledging their clicks: b takes those
    // entries over once they have been idle for claim_after, handles them (the notes are
    // already there, so nothing changes) and acknowledges them.
    common::until(Duration::from_secs(15), "no entry left leased to the dead node", || async { pending() == 0 }).await;
    assert_eq!(all_notes(b.addr, &token, "/api/v4/contacts/1/notes?limit=250").await.len(), notes.len());
    assert_distinct(&notes, first);
    assert_eq!(b.terminate().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_answer_503_while_redis_is_down_and_recover_without_a_restart() {
    if !shortlinks_redis::testing::available() {
        return;
    }
    let mut redis = RedisServer::standalone_with(&["--appendfsync", "always"]).unwrap();
    let url = redis.url();
    let dir = common::private_tempdir();
    let server = node(dir.path(), ("SHORTLINKS_REDIS_URL", url.as_str()), "outage").await;
    let token = common::first_token(dir.path());
    let reply = server.post(&token, &json!([item("https://original.example/kept", 1)])).await;
    let code = code_of(reply.json()["_embedded"]["short_links"][0]["url"].as_str().unwrap()).to_owned();
    // A code no link has: while Redis is away, the server cannot know that.
    let unknown = "ZZZZZZZZZZZZ";
    assert_eq!(click(server.addr, unknown, &[]).await.status, 404);
    assert_eq!(click(server.addr, &code, &[("user-agent", BROWSER)]).await.status, 302, "now cached");

    redis.kill();
    let reply = click(server.addr, unknown, &[]).await;
    assert_eq!(reply.status, 503, "not a 404 it cannot be sure of");
    // The redirect lane answered: its log line carries the id its answer does.
    let id = |reply: &common::Reply| reply.headers["x-request-id"].to_str().unwrap().to_owned();
    server.logged(&["store read failed on redirect", &id(&reply)]).await;
    // The target is known, but in `sync` mode the click cannot be made durable: no promise.
    let started = Instant::now();
    let reply = click(server.addr, &code, &[("user-agent", BROWSER), ("x-forwarded-for", "10.9.9.9")]).await;
    assert_eq!(reply.status, 503);
    assert!(started.elapsed() < Duration::from_secs(10), "answered without waiting for Redis");
    server.logged(&["the click could not be recorded", &id(&reply)]).await;
    let reply = server.post(&token, &json!([item("https://original.example/new", 2)])).await;
    assert!(reply.status.is_server_error() || reply.status == 401, "{}", reply.status);

    redis.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = click(server.addr, &code, &[("user-agent", BROWSER)]).await;
        if reply.status == 302 {
            assert_eq!(reply.headers["location"], "https://original.example/kept");
            break;
        }
        assert_eq!(reply.status, 503);
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(click(server.addr, unknown, &[]).await.status, 404, "back to knowing");
    let reply = server.post(&token, &json!([item("https://original.example/new", 2)])).await;
    assert_eq!(reply.status, 200, "writes work again");
    assert_eq!(server.terminate().await, 0);
}

/// In `group` mode a redirect does not wait for its click to be stored. While Redis does
/// not take writes (here: paused, so every write hangs until the client's timeout: the
/// outbox's appends, and the dispatcher's reads of the stream, which Redis counts as
/// writes), clicks on a cached link are held in memory and answered while there is room,
/// then refused with 503; no redirect waits for Redis, not even one that was waiting for
/// room when the outbox failed, and `/healthz` answers throughout. Once Redis takes writes
/// again, every answered click becomes a note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_mode_holds_clicks_while_redis_hangs_and_refuses_when_full() {
    if !shortlinks_redis::testing::available() {
        return;
    }
    const PAUSE: Duration = Duration::from_secs(15);
    let redis = RedisServer::standalone_with(&["--appendfsync", "always"]).unwrap();
    let url = redis.url();
    let dir = common::private_tempdir();
    let env = [
        ("SHORTLINKS_STORAGE", "redis"),
        ("SHORTLINKS_REDIS_URL", url.as_str()),
        ("SHORTLINKS_REDIS_KEY_PREFIX", "held"),
        ("SHORTLINKS_DURABILITY", "group"),
        ("SHORTLINKS_CLIENT_IP_HEADER", "X-Forwarded-For"),
        // Many visitors of one link, each to make its note.
        ("SHORTLINKS_NOTES_PER_LINK", "0"),
    ];
    let server = Process::serve(dir.path(), &[], &env).await;
    let token = common::first_token(dir.path());
    let reply = server.post(&token, &json!([item("https://original.example/held", 1)])).await;
    let code = code_of(reply.json()["_embedded"]["short_links"][0]["url"].as_str().unwrap()).to_owned();
    assert_eq!(visit(server.addr, &code, 0).await, Some(302), "cached, and one note");

    let millis = PAUSE.as_millis().to_string();
    cli(redis.port(), &["CLIENT", "PAUSE", millis.as_str(), "WRITE"]).unwrap();
    let paused_at = Instant::now();
    // Health, asked five times a second while the pipeline is stuck: the slowest answer.
    let addr = server.addr;
    let health = tokio::spawn(async move {
        let mut slowest = Duration::ZERO;
        while paused_at.elapsed() < PAUSE - Duration::from_secs(1) {
            let asked = Instant::now();
            let reply = try_send(addr, Method::GET, "/healthz", &[], Vec::new()).await;
            assert_eq!(reply.map(|r| r.status.as_u16()), Some(200), "/healthz while Redis hangs");
            slowest = slowest.max(asked.elapsed());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        slowest
    });
    // 32 visitors at a time until the queue (8192 clicks, plus the group in hand) is full.
    #[derive(Default)]
    struct Tally {
        next: u32,
        answered: u32,
        refused: u32,
        slowest: Duration,
    }
    let tally = Arc::new(Mutex::new(Tally::default()));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (code, tally) = (code.clone(), tally.clone());
            tokio::spawn(async move {
                loop {
                    let n = {
                        let mut tally = tally.lock().unwrap();
                        tally.next += 1;
                        if tally.refused > 0 || tally.next > 20_000 {
                            return;
                        }
                        tally.next
                    };
                    let sent = Instant::now();
                    let status = visit(server.addr, &code, n).await;
                    let mut tally = tally.lock().unwrap();
                    tally.slowest = tally.slowest.max(sent.elapsed());
                    match status {
                        Some(302) => tally.answered += 1,
                        Some(503) => tally.refused += 1,
                        other => panic!("visit {n}: {other:?}"),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let (answered, refused, slowest) = {
        let tally = tally.lock().unwrap();
        (tally.answered, tally.refused, tally.slowest)
    };
    assert!(paused_at.elapsed() < PAUSE, "the flood must end while Redis is still paused");
    assert!(refused > 0, "a full queue refuses rather than grows or waits ({answered} answered)");
    assert!(answered >= 8192, "held while there was room: {answered}");
    assert!(slowest < Duration::from_secs(8), "a redirect waited for Redis: {slowest:?}");
    let health_slowest = health.await.unwrap();
    eprintln!("paused {PAUSE:?}: {answered} answered, {refused} refused, slowest redirect {slowest:?}, slowest /healthz {health_slowest:?}");
    assert!(health_slowest < Duration::from_secs(2), "/healthz waited for Redis: {health_slowest:?}");

    tokio::time::sleep(PAUSE.saturating_sub(paused_at.elapsed())).await;
    let expected = answered as usize + 1;
    let notes = settled_notes(server.addr, &token, 1, expected).await;
    assert_eq!(notes.len(), expected, "every answered click became a note");
    assert_distinct(&notes, "https://original.example/held");
    assert_eq!(server.terminate().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reaches_redis_over_tls_with_a_private_ca() {
    if !shortlinks_redis::testing::tls_available() {
        return;
    }
    let certs = shortlinks_redis::testing::TestCertificates::make().unwrap();
    let (_redis, tls_port) = RedisServer::standalone_tls(&certs, true).unwrap();
    let url = format!("rediss://127.0.0.1:{tls_port}/");
    let (ca, cert, key) = (certs.path("ca.crt"), certs.path("client.crt"), certs.path("client.key"));
    let env = [
        ("SHORTLINKS_STORAGE", "redis"),
        ("SHORTLINKS_REDIS_URL", url.as_str()),
        ("SHORTLINKS_REDIS_TLS_CA_FILE", ca.to_str().unwrap()),
        ("SHORTLINKS_REDIS_TLS_CLIENT_CERT_FILE", cert.to_str().unwrap()),
        ("SHORTLINKS_REDIS_TLS_CLIENT_KEY_FILE", key.to_str().unwrap()),
    ];
    let dir = common::private_tempdir();
    let server = Process::serve(dir.path(), &[], &env).await;
    let token = common::first_token(dir.path());
    let reply = server.post(&token, &json!([item("https://over-tls.example/", 1)])).await;
    let code = code_of(reply.json()["_embedded"]["short_links"][0]["url"].as_str().unwrap()).to_owned();
    let visit = send(server.addr, Method::GET, &format!("/{code}"), &[], Vec::new()).await;
    assert_eq!(
        (visit.status.as_u16(), visit.headers["location"].to_str().unwrap()),
        (302, "https://over-tls.example/")
    );
    assert_eq!(server.terminate().await, 0);
}

/// What a failover did to what one node acknowledged.
#[derive(Debug)]
struct Failover {
    links_acknowledged: usize,
    links_lost: usize,
    clicks_acknowledged: usize,
    clicks_lost: usize,
    refused_meanwhile: usize,
}

/// A cluster of 3 masters with a replica each; a `sync` node creates links and clicks them
/// (one contact per link) while the first master is killed and its replica promoted. Then a
/// fresh node (an empty cache: every read goes to Redis) checks what was acknowledged.
async fn through_a_failover(replicas_ack: &str) -> Failover {
    let mut cluster = RedisCluster::start_with_replicas(3, 1).unwrap();
    for node in &cluster.nodes()[3..] {
        let caught_up =
            || cli(node.port(), &["info", "replication"]).is_some_and(|i| i.contains("master_link_status:up"));
        common::until(Duration::from_secs(20), "a replica caught up", || async { caught_up() }).await;
    }
    let nodes = cluster.urls().join(",");
    let env = [
        ("SHORTLINKS_STORAGE", "redis"),
        ("SHORTLINKS_REDIS_NODES", nodes.as_str()),
        ("SHORTLINKS_REDIS_KEY_PREFIX", "failover"),
        ("SHORTLINKS_DURABILITY", "sync"),
        ("SHORTLINKS_CLIENT_IP_HEADER", "X-Forwarded-For"),
        ("SHORTLINKS_REDIS_REPLICAS_ACK", replicas_ack),
        ("SHORTLINKS_REDIS_CLAIM_AFTER_MS", "1500"),
    ];
    let (dir, check_dir) = (common::private_tempdir(), common::private_tempdir());
    let server = Process::serve(dir.path(), &[], &env).await;
    let token = common::first_token(dir.path());

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (links, clicks, refused) =
        (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(0)));
    let work = {
        let (stop, links, clicks, refused, token, addr) =
            (stop.clone(), links.clone(), clicks.clone(), refused.clone(), token.clone(), server.addr);
        tokio::spawn(async move {
            let mut contact = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                contact += 1;
                let url = format!("https://failover.example/{contact}");
                let auth = format!("Bearer {token}");
                let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
                let body = json!([item(&url, contact)]).to_string().into_bytes();
                let created = tokio::time::timeout(
                    Duration::from_secs(5),
                    try_send(addr, Method::POST, "/api/v4/short_links", &headers, body),
                )
                .await;
                let Ok(Some(reply)) = created else {
                    *refused.lock().unwrap() += 1;
                    continue;
                };
                if reply.status != 200 {
                    *refused.lock().unwrap() += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                let code = code_of(reply.json()["_embedded"]["short_links"][0]["url"].as_str().unwrap()).to_owned();
                links.lock().unwrap().push((code.clone(), url));
                match tokio::time::timeout(Duration::from_secs(5), visit(addr, &code, contact as u32)).await {
                    Ok(Some(302)) => clicks.lock().unwrap().push(contact),
                    _ => *refused.lock().unwrap() += 1,
                }
            }
        })
    };
    common::until(Duration::from_secs(30), "links made and clicked", || async { clicks.lock().unwrap().len() >= 20 })
        .await;
    cluster.nodes_mut()[0].kill();
    // Past the failover (node timeout 2 s, then an election) and some more.
    tokio::time::sleep(Duration::from_secs(6)).await;
    // The killed master comes back as the replica of the one that replaced it: until then
    // that shard has no replica to acknowledge writes.
    cluster.nodes_mut()[0].restart().unwrap();
    let back = cluster.nodes()[0].port();
    let rejoined = || {
        cli(back, &["info", "replication"])
            .is_some_and(|i| i.contains("role:slave") && i.contains("master_link_status:up"))
    };
    common::until(Duration::from_secs(30), "the old master rejoined as a replica", || async { rejoined() }).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    work.await.unwrap();
    let after: Vec<u64> = {
        let n = links.lock().unwrap().len();
        (n as u64 + 1..n as u64 + 4).collect()
    };
    // The node recovered by itself: it creates links again.
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let body = json!(after.iter().map(|c| item("https://failover.example/after", *c)).collect::<Vec<_>>())
        .to_string()
        .into_bytes();
    assert_eq!(
        send(server.addr, Method::POST, "/api/v4/short_links", &headers, body).await.status,
        200,
        "served again without a restart"
    );

    let checker = Process::serve(check_dir.path(), &[], &env).await;
    let links = links.lock().unwrap().clone();
    let mut links_lost = 0;
    for (code, url) in &links {
        let reply = send(checker.addr, Method::GET, &format!("/{code}"), &[], Vec::new()).await;
        if reply.status != 302 || reply.headers["location"] != url.as_str() {
            links_lost += 1;
        }
    }
    let clicks = clicks.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let noted = loop {
        let notes = all_notes(server.addr, &token, "/api/v4/contacts/notes?limit=250").await;
        let noted: HashSet<u64> = notes.iter().map(|n| n["entity_id"].as_u64().unwrap()).collect();
        if clicks.iter().all(|c| noted.contains(c)) || Instant::now() > deadline {
            break noted;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let clicks_lost = clicks.iter().filter(|c| !noted.contains(c)).count();
    let refused_meanwhile = *refused.lock().unwrap();
    server.terminate().await;
    checker.terminate().await;
    Failover {
        links_acknowledged: links.len(),
        links_lost,
        clicks_acknowledged: clicks.len(),
        clicks_lost,
        refused_meanwhile,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_links_and_sync_clicks_survive_a_failover_when_replicas_acknowledge() {
    if !shortlinks_redis::testing::available() {
        return;
    }
    let acked = through_a_failover("1").await;
    eprintln!("with redis_replicas_ack = 1: {acked:?}");
    assert!(acked.links_acknowledged > 10 && acked.clicks_acknowledged > 10, "{acked:?}");
    assert_eq!((acked.links_lost, acked.clicks_lost), (0, 0), "{acked:?}");
    assert!(acked.refused_meanwhile > 0, "the failover was felt (503s while no master owned the slots): {acked:?}");
    let plain = through_a_failover("0").await;
    // Reported, not asserted: without the setting a failover may lose what the replica
    // had not received (docs/scaling.md); on loopback the replica is rarely behind.
    eprintln!("with redis_replicas_ack = 0: {plain:?}");
}

/// A redirect in flight when the server begins to stop is answered with `connection:
/// close`, and the request pipelined behind it is not answered, as hyper does; the close
/// lingers, so the answer arrives whole. In flight, here: in `sync` mode it waits for its
/// click's write, which a paused Redis holds until the stop has begun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_in_flight_when_the_server_stops_says_connection_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if !shortlinks_redis::testing::available() {
        return;
    }
    let redis = RedisServer::standalone().unwrap();
    let url = redis.url();
    let dir = common::private_tempdir();
    let mut server = node(dir.path(), ("SHORTLINKS_REDIS_URL", url.as_str()), "stopping").await;
    let token = common::first_token(dir.path());
    let reply = server.post(&token, &json!([item("https://original.example/last", 1)])).await;
    let code = code_of(reply.json()["_embedded"]["short_links"][0]["url"].as_str().unwrap()).to_owned();
    assert_eq!(visit(server.addr, &code, 1).await, Some(302), "cached");
    let recorded = common::metric(server.addr, "shortlinks_clicks_recorded_total").await;

    cli(redis.port(), &["CLIENT", "PAUSE", "20000", "WRITE"]).unwrap();
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // A person's click (navigation headers, an address of its own): one that must be stored.
    let navigation: String = common::NAVIGATION.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    let request = format!(
        "GET /{code} HTTP/1.1\r\nHost: sho.rt\r\nUser-Agent: {BROWSER}\r\n{navigation}X-Forwarded-For: 10.7.7.7\r\n\r\n"
    );
    stream.write_all(format!("{request}{request}").as_bytes()).await.unwrap();
    // Queued for the outbox, whose write Redis holds: the redirect now waits for it.
    common::until(Duration::from_secs(10), "the click is queued", || async {
        common::metric(server.addr, "shortlinks_clicks_recorded_total").await > recorded
    })
    .await;
    server.signal_terminate();
    // The stop has begun once the listener is closed.
    common::until(Duration::from_secs(10), "the listener closes", || async {
        tokio::net::TcpStream::connect(server.addr).await.is_err()
    })
    .await;
    cli(redis.port(), &["CLIENT", "UNPAUSE"]).unwrap();

    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut all))
        .await
        .expect("closed")
        .expect("closed cleanly, not reset");
    let text = String::from_utf8_lossy(&all);
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "only the request in flight is answered: {text}");
    assert!(text.starts_with("HTTP/1.1 302 "), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "the answer says the connection closes: {text}");
    assert_eq!(server.exit_code().await, 0);
}

/// An erasure made on the store, by neither node, reaches both nodes' caches of links:
/// each had the link cached, and each answers 410 within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_reaches_every_nodes_cache_of_links() {
    if !shortlinks_redis::testing::available() {
        return;
    }
    let redis = RedisServer::standalone().unwrap();
    let url = redis.url();
    let storage = ("SHORTLINKS_REDIS_URL", url.as_str());
    let (dir_a, dir_b) = (common::private_tempdir(), common::private_tempdir());
    let a = node(dir_a.path(), storage, "erase").await;
    let token = common::first_token(dir_a.path());
    let b = node(dir_b.path(), storage, "erase").await;
    let reply = a
        .post(&token, &json!([item("https://erase.example/cached", 70), item("https://erase.example/kept", 71)]))
        .await;
    let links = reply.json()["_embedded"]["short_links"].as_array().unwrap().clone();
    let (gone, kept) = (code_of(links[0]["url"].as_str().unwrap()), code_of(links[1]["url"].as_str().unwrap()));
    for (n, node) in [&a, &b].into_iter().enumerate() {
        for code in [gone, kept] {
            assert_eq!(visit(node.addr, code, n as u32).await, Some(302), "cached on node {n}");
        }
    }

    let env =
        [("SHORTLINKS_STORAGE", "redis"), ("SHORTLINKS_REDIS_URL", &url), ("SHORTLINKS_REDIS_KEY_PREFIX", "erase")];
    let said = common::shortlinks(&["erase", "--account", "1", "--contact", "70"], None, &env).await;
    assert!(said.contains("erased contact 70 of account 1: 1 links"), "{said}");
    // The command waits out the sweep after an erasure (3 s), longer than a node takes to
    // hear of it (1 s): both have dropped the link by now, or within a moment.
    let started = Instant::now();
    for node in [&a, &b] {
        common::until(Duration::from_secs(5), "the erased link answering 410", || async {
            visit(node.addr, gone, 9).await == Some(410)
        })
        .await;
        assert_eq!(visit(node.addr, kept, 9).await, Some(302), "the other link stays");
    }
    eprintln!("both nodes answered 410 within {:?} of the command's end", started.elapsed());
    assert_eq!(a.terminate().await, 0);
    assert_eq!(b.terminate().await, 0);
}

/// Every key under `prefix` and everything each holds, as text (`redis-cli`).
fn keyspace(port: u16, prefix: &str) -> String {
    let cli = |args: &[&str]| shortlinks_redis::testing::cli(port, args).unwrap();
    let pattern = format!("{prefix}:*");
    let keys = cli(&["--scan", "--pattern", &pattern]);
    let mut dump = keys.clone();
    for key in keys.lines() {
        let kind = cli(&["TYPE", key]);
        let value = match kind.trim() {
            "string" => cli(&["GET", key]),
            "zset" => cli(&["ZRANGE", key, "0", "-1", "WITHSCORES"]),
            "hash" => cli(&["HGETALL", key]),
            "set" => cli(&["SMEMBERS", key]),
            "list" => cli(&["LRANGE", key, "0", "-1"]),
            "stream" => cli(&["XRANGE", key, "-", "+"]),
            other => panic!("{key} is a {other}"),
        };
        dump.push_str(&value);
    }
    dump
}

/// After an erasure and `shortlinks compact`, nothing in Redis names the contact: no key,
/// no value, no stream entry holds its URL, its code or its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_erasure_and_a_compaction_redis_holds_nothing_of_the_contact() {
    if !shortlinks_redis::testing::available() {
        return;
    }
    let redis = RedisServer::standalone().unwrap();
    let url = redis.url();
    let dir = common::private_tempdir();
    let server = node(dir.path(), ("SHORTLINKS_REDIS_URL", url.as_str()), "scan").await;
    let token = common::first_token(dir.path());
    let contact: u64 = 7_345_912_018_273;
    let (target, kept_target) =
        ("https://scan.example/only-for-this-contact-8f3a2c71e9", "https://scan.example/kept-5d1b");
    let reply = server.post(&token, &json!([item(target, contact), item(kept_target, 12)])).await;
    let links = reply.json()["_embedded"]["short_links"].as_array().unwrap().clone();
    let code = code_of(links[0]["url"].as_str().unwrap()).to_owned();
    assert_eq!(visit(server.addr, &code, 1).await, Some(302));
    assert_eq!(settled_notes(server.addr, &token, contact, 1).await.len(), 1);
    let needles = [target.to_owned(), code.clone(), contact.to_string(), format!("{contact:016x}")];
    let before = keyspace(redis.port(), "scan");
    assert!(before.contains(target) && before.contains(&code), "the test can fail: they were written");

    let env = [
        ("SHORTLINKS_STORAGE", "redis"),
        ("SHORTLINKS_REDIS_URL", url.as_str()),
        ("SHORTLINKS_REDIS_KEY_PREFIX", "scan"),
    ];
    for args in [&["erase", "--account", "1", "--contact", &contact.to_string()][..], &["compact"][..]] {
        common::shortlinks(args, None, &env).await;
    }
    let after = keyspace(redis.port(), "scan");
    for needle in &needles {
        assert!(!after.contains(needle.as_str()), "{needle} is still in Redis:\n{after}");
    }
    assert!(after.contains(kept_target), "the dump holds the rest");
    assert_eq!(visit(server.addr, &code, 2).await, Some(410));
    assert_eq!(server.terminate().await, 0);
}
