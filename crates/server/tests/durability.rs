//! What survives a kill -9 and a SIGTERM while clicks are flowing: real processes, real
//! signals, a real sled directory. See docs/clicks.md for the promises tested here.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{all_notes, code_of, item, try_metric, try_send, Process, BROWSER};
use hyper::Method;
use serde_json::json;

/// Each click from an address of its own is a visitor of its own, and each makes its note:
/// these tests count notes against clicks on one link, so the cap per link is off.
const VISITORS: [&str; 4] = ["--client-ip-header", "X-Forwarded-For", "--notes-per-link", "0"];

/// Clicks one after another, each from a new address (so none is deduplicated), until the
/// server stops answering. Returns when each acknowledged click (a 302) was answered.
/// Waits until the clicker has had `n` clicks answered: the server is then in the middle
/// of taking them, which is where a kill is to land.
async fn until_acked(acked: &Mutex<Vec<Instant>>, n: usize) {
    common::until(Duration::from_secs(30), "clicks answered", || async { acked.lock().unwrap().len() >= n }).await;
}

fn start_clicking(addr: SocketAddr, code: String) -> (Arc<Mutex<Vec<Instant>>>, tokio::task::JoinHandle<()>) {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let log = acked.clone();
    let task = tokio::spawn(async move {
        for i in 0u32.. {
            let ip = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
            let headers = [("user-agent", BROWSER), ("x-forwarded-for", ip.as_str())];
            match try_send(addr, Method::GET, &format!("/{code}"), &headers, Vec::new()).await {
                Some(reply) if reply.status == 302 => log.lock().unwrap().push(Instant::now()),
                _ => break,
            }
        }
    });
    (acked, task)
}

/// Reads `shortlinks_clicks_persisted_total` every 10 ms until the server stops answering.
/// Each reading is a promise: that many clicks were on disk when it was read.
fn watch_persisted(addr: SocketAddr) -> (Arc<Mutex<Vec<u64>>>, tokio::task::JoinHandle<()>) {
    let readings = Arc::new(Mutex::new(Vec::new()));
    let log = readings.clone();
    let task = tokio::spawn(async move {
        while let Some(value) = try_metric(addr, "shortlinks_clicks_persisted_total").await {
            log.lock().unwrap().push(value);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    (readings, task)
}

/// Starts a server, makes a link, and returns (server, token, code).
async fn server_with_link(dir: &Path, extra: &[&str]) -> (Process, String, String) {
    let server = Process::serve(dir, extra, &[]).await;
    let token = common::first_token(dir);
    let reply = server.post(&token, &json!([item("https://original.example/", 1)])).await;
    let code = code_of(reply.json()["_embedded"]["short_links"][0]["url"].as_str().unwrap()).to_owned();
    (server, token, code)
}

/// Restarts on the same directory and counts notes once the dispatcher has caught up.
async fn notes_after_restart(dir: &Path, token: &str, at_least: usize) -> usize {
    let server = Process::serve(dir, &VISITORS, &[]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut count, mut stable_since) = (usize::MAX, Instant::now());
    loop {
        let now = all_notes(server.addr, token, "/api/v4/contacts/notes?limit=250").await.len();
        if now != count {
            (count, stable_since) = (now, Instant::now());
        }
        // Done when everything expected is there, or nothing has changed for a while.
        if count >= at_least || stable_since.elapsed() > Duration::from_secs(3) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.terminate().await, 0);
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_sync_mode_loses_no_acknowledged_click() {
    let dir = common::private_tempdir();
    let (server, token, code) =
        server_with_link(dir.path(), &[&["--durability", "sync"][..], &VISITORS].concat()).await;
    let (acked, clicker) = start_clicking(server.addr, code);
    until_acked(&acked, 200).await;
    server.kill9().await;
    clicker.await.unwrap();
    let acked = acked.lock().unwrap().len();
    assert!(acked > 5, "the test must click before the kill, got {acked}");

    let notes = notes_after_restart(dir.path(), &token, acked).await;
    eprintln!("sync: acknowledged {acked}, notes {notes}");
    assert!(notes >= acked, "an acknowledged click was lost: {acked} acknowledged, {notes} notes");
    assert!(notes <= acked + 1, "at most the one click in flight may be extra: {acked} vs {notes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_group_mode_loses_only_clicks_not_yet_flushed() {
    let dir = common::private_tempdir();
    let (server, token, code) = server_with_link(dir.path(), &VISITORS).await;
    let (readings, watcher) = watch_persisted(server.addr);
    let (acked, clicker) = start_clicking(server.addr, code);
    until_acked(&acked, 200).await;
    let killed_at = Instant::now();
    server.kill9().await;
    clicker.await.unwrap();
    watcher.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 5, "the test must click before the kill, got {}", acked.len());
    let readings = readings.lock().unwrap().clone();
    let promised = readings.last().copied().unwrap_or(0);
    let mut flushes = readings.clone();
    flushes.dedup();
    // The group commit runs while clicks come, not only when the server stops.
    assert!(flushes.iter().filter(|&&n| n > 0).count() >= 2, "persisted readings: {readings:?}");

    let notes = notes_after_restart(dir.path(), &token, acked.len()).await;
    let lost = acked.len().saturating_sub(notes);
    // Timing varies with the machine (a stalled fsync holds a whole queue of clicks), so
    // it is reported, not asserted: the promise asserted is that no flushed click is lost.
    let recent = acked.iter().filter(|&&t| killed_at.duration_since(t) <= Duration::from_millis(250)).count();
    eprintln!(
        "group: acknowledged {}, persisted by the last reading {promised}, notes {notes}, lost {lost}, \
         acknowledged in the last 250 ms {recent}",
        acked.len()
    );
    assert!(notes as u64 >= promised, "{promised} clicks were reported on disk, {notes} notes came back");
    assert!(notes <= acked.len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_in_group_mode_loses_nothing() {
    let dir = common::private_tempdir();
    let (server, token, code) = server_with_link(dir.path(), &VISITORS).await;
    let (acked, clicker) = start_clicking(server.addr, code);
    until_acked(&acked, 200).await;
    assert_eq!(server.terminate().await, 0);
    clicker.await.unwrap();
    let acked = acked.lock().unwrap().len();
    assert!(acked > 5, "the test must click before the stop, got {acked}");

    let notes = notes_after_restart(dir.path(), &token, acked).await;
    eprintln!("graceful: acknowledged {acked}, notes {notes}");
    assert!(notes >= acked && notes <= acked + 1, "graceful shutdown lost clicks: {acked} acknowledged, {notes} notes");
}

/// The visit ledger survives kill -9 with the notes it made (on sled both are in
/// `notes.log`, the marks written with their notes): after a restart a visitor's repeat
/// within the window makes no second note, a visitor at the link's cap is refused, and a
/// new visitor still makes one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_visit_ledger_survives_kill_9_with_its_notes() {
    let dir = common::private_tempdir();
    let limits = ["--client-ip-header", "X-Forwarded-For", "--notes-per-link", "2"];
    let (server, token, code) = server_with_link(dir.path(), &limits).await;
    let from = |ip: &'static str| [("user-agent", BROWSER), ("x-forwarded-for", ip)];
    for ip in ["10.0.0.1", "10.0.0.2"] {
        assert_eq!(common::click(server.addr, &code, &from(ip)).await.status, 302);
    }
    common::until_settled(server.addr, 2).await;
    server.kill9().await;

    let server = Process::serve(dir.path(), &limits, &[]).await;
    for ip in ["10.0.0.1", "10.0.0.3"] {
        assert_eq!(common::click(server.addr, &code, &from(ip)).await.status, 302);
    }
    // The clicks before the kill may come again (their removal from the outbox was not
    // flushed): they are redeliveries, which make no second note. So wait for the two new
    // clicks' outcomes rather than for a number of settled clicks.
    let metric = |name| common::metric(server.addr, name);
    let outcomes = || async {
        (
            metric("shortlinks_visits_deduplicated_total").await,
            metric("shortlinks_not_visits_total{reason=\"link_cap\"}").await,
        )
    };
    common::until(Duration::from_secs(30), "the two new clicks' outcomes", || async { outcomes().await >= (1, 1) })
        .await;
    let (repeats, capped) = outcomes().await;
    assert_eq!(repeats, 1, "the first visitor's repeat");
    assert_eq!(capped, 1, "a third visitor, at the cap");
    let notes = all_notes(server.addr, &token, "/api/v4/contacts/notes?limit=250").await;
    assert_eq!(notes.len(), 2, "the two visits before the kill, once each: {notes:?}");
    assert_eq!(server.terminate().await, 0);

    // With the cap lifted, a new visitor is still a note: the ledger is live, not frozen.
    let server = Process::serve(dir.path(), &["--client-ip-header", "X-Forwarded-For"], &[]).await;
    assert_eq!(common::click(server.addr, &code, &from("10.0.0.4")).await.status, 302);
    common::until_settled(server.addr, 1).await;
    assert_eq!(all_notes(server.addr, &token, "/api/v4/contacts/notes?limit=250").await.len(), 3);
    assert_eq!(server.terminate().await, 0);
}

/// Each acknowledged batch of a create: its items, and the codes of its links.
type Created = Vec<(serde_json::Value, Vec<String>)>;

/// The codes of a create's answer, in order.
fn codes(reply: &common::Reply) -> Vec<String> {
    let links = reply.json()["_embedded"]["short_links"].as_array().unwrap().clone();
    links.iter().map(|l| code_of(l["url"].as_str().unwrap()).to_owned()).collect()
}

/// Creates batches of 250 links, each for new contacts, from batch `first` on, until the
/// server stops answering.
fn start_creating(addr: SocketAddr, token: String, first: u64) -> (Arc<Mutex<Created>>, tokio::task::JoinHandle<()>) {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let log = acked.clone();
    let task = tokio::spawn(async move {
        let auth = format!("Bearer {token}");
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        for batch in first.. {
            let items: Vec<_> =
                (0..250).map(|i| item(&format!("https://original.example/{batch}/{i}"), batch * 250 + i + 1)).collect();
            let items = serde_json::Value::Array(items);
            let body = items.to_string().into_bytes();
            match try_send(addr, Method::POST, "/api/v4/short_links", &headers, body).await {
                Some(reply) if reply.status == 200 => log.lock().unwrap().push((items, codes(&reply))),
                _ => break,
            }
        }
    });
    (acked, task)
}

/// Every created link a `200` answered must redirect after kill -9 and a restart (the link
/// log may end in a torn insert, which the restart cuts off), and creating it again must
/// return the same link. The first links are made before a SIGTERM, which leaves a
/// checkpoint of the links' index: the last start reads it and then the log's tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_creating_links_loses_no_acknowledged_link() {
    let dir = common::private_tempdir();
    let server = Process::serve(dir.path(), &[], &[]).await;
    let token = common::first_token(dir.path());
    let (before, creator) = start_creating(server.addr, token.clone(), 0);
    common::until(Duration::from_secs(30), "links acknowledged", || async { before.lock().unwrap().len() >= 4 }).await;
    assert_eq!(server.terminate().await, 0);
    creator.await.unwrap();
    let checkpoint = dir.path().join("links.index");
    assert!(checkpoint.exists(), "a shutdown leaves the index's checkpoint");
    let written = std::fs::read(&checkpoint).unwrap();

    let server = Process::serve(dir.path(), &[], &[]).await;
    let (acked, creator) = start_creating(server.addr, token.clone(), 10_000);
    common::until(Duration::from_secs(30), "eight links acknowledged", || async { acked.lock().unwrap().len() >= 8 })
        .await;
    server.kill9().await;
    creator.await.unwrap();
    assert_eq!(std::fs::read(&checkpoint).unwrap(), written, "the kill came before any other checkpoint");
    let acked = [before.lock().unwrap().clone(), acked.lock().unwrap().clone()].concat();
    assert!(acked.len() >= 12, "the test must create before the kill, got {} batches", acked.len());

    let server = Process::serve(dir.path(), &[], &[]).await;
    for (_, links) in &acked {
        for code in links {
            let reply = try_send(server.addr, Method::GET, &format!("/{code}"), &[], Vec::new()).await.unwrap();
            assert_eq!(reply.status, 302, "an acknowledged link was lost: {code}");
        }
    }
    let (items, links) = &acked[acked.len() - 1];
    assert_eq!(&codes(&server.post(&token, items).await), links, "a retry returns the same links");
    eprintln!("links: {} batches of 250 acknowledged before the kill, all found after it", acked.len());
    assert_eq!(server.terminate().await, 0);
}
