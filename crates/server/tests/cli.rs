//! The `shortlinks` binary as operators use it: real processes, real signals, a real sled directory.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::time::Duration;

use common::{code_of, item, shortlinks_binary, try_send, Process};
use hyper::Method;
use serde_json::json;
use shortlinks_core::store::LinkStore;
use shortlinks_core::{ShortCode, SledStore};
use tokio::process::Command;

/// Runs a CLI command to completion: (exit success, stdout, stderr).
async fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(shortlinks_binary()).args(args).env_remove("SHORTLINKS_DATA_DIR").output().await.unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

fn dir_arg(dir: &tempfile::TempDir) -> &str {
    dir.path().to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_commands_work_with_and_without_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir_arg(&dir);

    // No server: the command opens the data directory itself.
    let (ok, out, err) =
        cli(&["token", "create", "--data-dir", d, "--account", "3", "--user", "4", "--contacts", "10,11"]).await;
    assert!(ok, "{err}");
    let offline_token = out.trim().to_owned();
    assert_eq!(out.lines().count(), 1, "the token alone on stdout: {out:?}");
    assert!(offline_token.starts_with("sl_"));

    let server = Process::serve(dir.path(), &[], &[]).await;
    assert!(server.banner.is_empty(), "a token exists, so none is made on start: {:?}", server.banner);
    let reply =
        server.post(&offline_token, &json!([item("https://a.example/", 10), item("https://a.example/", 12)])).await;
    assert_eq!(reply.status, 200);
    let body = reply.json();
    assert_eq!(body["_embedded"]["short_links"][0]["account_id"], 3);
    assert_eq!(body["skipped"][0]["request_id"], "1", "contact 12 is outside the token's scope");
    let code = code_of(body["_embedded"]["short_links"][0]["url"].as_str().unwrap()).to_owned();

    // A server holds the sled lock: commands go through its admin socket.
    let (ok, out, err) = cli(&["token", "create", "--data-dir", d, "--account", "3", "--user", "5"]).await;
    assert!(ok, "{err}");
    let online_token = out.trim().to_owned();
    assert_eq!(server.post(&online_token, &json!([item("https://b.example/", 99)])).await.status, 200);

    let id = offline_token.split('_').nth(1).unwrap();
    let (ok, out, err) = cli(&["token", "revoke", id, "--data-dir", d]).await;
    assert!(ok && out.contains(id), "{out} {err}");
    server.post(&offline_token, &json!([item("https://a.example/", 10)])).await.problem(401);

    let (ok, out, _) = cli(&["token", "list", "--data-dir", d]).await;
    assert!(ok);
    assert!(out.lines().any(|l| l.starts_with(id) && l.contains("revoked")), "{out}");
    assert!(!out.contains(&offline_token[14..]), "secrets are never listed");

    let (ok, out, _) = cli(&["resolve", &code, "--data-dir", d]).await;
    assert!(ok && out.contains("target:     https://a.example/") && out.contains("contacts 10"), "{out}");

    assert_eq!(server.terminate().await, 0);

    // And without a server again.
    let (ok, out, _) = cli(&["resolve", &code, "--data-dir", d]).await;
    assert!(ok && out.contains("https://a.example/"), "{out}");
    let (ok, _, err) = cli(&["resolve", "AAAAAAAAAAAA", "--data-dir", d]).await;
    assert!(!ok && err.contains("no such link"), "{err}");
    let (ok, _, err) =
        cli(&["token", "create", "--data-dir", d, "--account", "1", "--user", "1", "--contacts", "x"]).await;
    assert!(!ok && err.contains("--contacts"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_start_prints_a_working_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Process::serve(dir.path(), &[], &[]).await;
    assert!(server.banner[0].contains("first API token"), "{:?}", server.banner);
    let token = server.banner[1].trim().to_owned();
    assert!(server.banner[2].contains("curl") && server.banner[2].contains(&token));
    let reply = server.post(&token, &json!([item("https://example.com/", 1)])).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["_embedded"]["short_links"][0]["account_id"], 1);
    assert_eq!(server.terminate().await, 0);

    let again = Process::serve(dir.path(), &[], &[]).await;
    assert!(again.banner.is_empty(), "shown only once: {:?}", again.banner);
    assert_eq!(again.post(&token, &json!([item("https://example.com/", 1)])).await.status, 200);
    assert_eq!(again.terminate().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_beat_env_and_env_beats_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("shortlinks.toml");
    std::fs::write(&config, "public_url = \"https://file.example\"\ncode_length = 9\n").unwrap();
    let config = config.to_str().unwrap();
    let data = dir.path().join("data");

    let link_url = |server: Process| async move {
        let token = server.banner.get(1).map(|t| t.trim().to_owned());
        (server, token)
    };
    let (server, token) = link_url(Process::serve(&data, &["--config", config], &[]).await).await;
    let token = token.unwrap();
    let url_of = |reply: common::Reply| reply.json()["_embedded"]["short_links"][0]["url"].as_str().unwrap().to_owned();
    let url = url_of(server.post(&token, &json!([item("https://x.example/", 1)])).await);
    assert!(url.starts_with("https://file.example/") && code_of(&url).len() == 9, "{url}");
    assert_eq!(server.terminate().await, 0);

    let server =
        Process::serve(&data, &["--config", config], &[("SHORTLINKS_PUBLIC_URL", "https://env.example")]).await;
    let url = url_of(server.post(&token, &json!([item("https://x.example/", 1)])).await);
    assert!(url.starts_with("https://env.example/"), "{url}");
    assert_eq!(server.terminate().await, 0);

    let server = Process::serve(
        &data,
        &["--config", config, "--public-url", "https://flag.example/"],
        &[("SHORTLINKS_PUBLIC_URL", "https://env.example")],
    )
    .await;
    let url = url_of(server.post(&token, &json!([item("https://x.example/", 1)])).await);
    assert!(url.starts_with("https://flag.example/") && !url.contains("example//"), "{url}");
    assert_eq!(server.terminate().await, 0);

    std::fs::write(dir.path().join("bad.toml"), "lisen = \"x\"\n").unwrap();
    let bad = dir.path().join("bad.toml");
    let (ok, _, err) = cli(&["serve", "--config", bad.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]).await;
    assert!(!ok && err.contains("lisen"), "a typo in the file is reported: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_loses_no_created_link() {
    let dir = tempfile::tempdir().unwrap();
    let server = Process::serve(dir.path(), &[], &[]).await;
    let token = server.banner[1].trim().to_owned();
    let addr = server.addr;

    // Four clients create links as fast as they can while the server is told to stop.
    let mut clients = Vec::new();
    for client in 0..4u64 {
        let token = token.clone();
        clients.push(tokio::spawn(async move {
            let mut created = Vec::new();
            for batch in 0..10_000u64 {
                let items: Vec<_> =
                    (0..20).map(|i| item(&format!("https://x.example/{client}/{batch}/{i}"), 1 + i)).collect();
                let body = json!(items).to_string().into_bytes();
                let auth = format!("Bearer {token}");
                let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
                match try_send(addr, Method::POST, "/api/v4/short_links", &headers, body).await {
                    Some(reply) if reply.status == 200 => created.push(reply.json()),
                    _ => break, // the server has stopped accepting
                }
            }
            created
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(server.terminate().await, 0, "a graceful stop exits 0");

    let mut answered = Vec::new();
    for client in clients {
        answered.extend(client.await.unwrap());
    }
    assert!(answered.len() > 4, "the test must create links before the stop, got {}", answered.len());
    let store = SledStore::open(dir.path()).unwrap();
    let mut checked = 0;
    for body in &answered {
        for link in body["_embedded"]["short_links"].as_array().unwrap() {
            let code = ShortCode::parse(code_of(link["url"].as_str().unwrap())).unwrap();
            let stored = store.get_link(&code).await.unwrap();
            assert!(stored.is_some(), "a link answered with 200 was lost: {code}");
            checked += 1;
        }
    }
    assert_eq!(checked, answered.len() * 20);
}
