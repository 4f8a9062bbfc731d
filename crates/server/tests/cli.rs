//! The `shortlinks` binary as operators use it: real processes, real signals, a real sled directory.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::time::Duration;

use common::{code_of, item, send, shortlinks_binary, try_send, Process};
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
    let dir = common::private_tempdir();
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
    let outside =
        server.post(&offline_token, &json!([item("https://a.example/", 10), item("https://a.example/", 12)])).await;
    let refused = outside.problem(400);
    assert_eq!(refused["validation-errors"][0]["request_id"], "1", "contact 12 is outside the token's scope");
    let reply = server.post(&offline_token, &json!([item("https://a.example/", 10)])).await;
    assert_eq!(reply.status, 200);
    let body = reply.json();
    assert_eq!(body["_embedded"]["short_links"][0]["account_id"], 3);
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
async fn the_first_start_writes_a_working_token_once_to_a_private_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = common::private_tempdir();
    let data = dir.path().join("data");
    // stdout is a pipe here, as under a service manager: the token must not go there.
    let server = Process::serve(&data, &[], &[]).await;
    let token = common::first_token(&data);
    assert!(
        server.banner[0].contains("first API token") && server.banner[0].contains("first-token"),
        "{:?}",
        server.banner
    );
    assert!(server.banner.iter().all(|line| !line.contains(&token)), "the token was printed: {:?}", server.banner);
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data.join("first-token")), 0o600);
    let reply = server.post(&token, &json!([item("https://example.com/", 1)])).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["_embedded"]["short_links"][0]["account_id"], 1);

    // Every file the server made is private, and so is the directory.
    assert_eq!(mode(&data), 0o700);
    let mut pending = vec![data.clone()];
    while let Some(path) = pending.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                assert_eq!(mode(&path), 0o700, "{}", path.display());
                pending.push(path);
            } else {
                assert_eq!(mode(&path) & 0o077, 0, "{} is open to others", path.display());
            }
        }
    }
    assert_eq!(server.terminate().await, 0);

    std::fs::remove_file(data.join("first-token")).unwrap();
    let again = Process::serve(&data, &[], &[]).await;
    assert!(again.banner.is_empty(), "made only once: {:?}", again.banner);
    assert!(!data.join("first-token").exists());
    assert_eq!(again.post(&token, &json!([item("https://example.com/", 1)])).await.status, 200);
    assert_eq!(again.terminate().await, 0);
}

/// A data directory others can read is refused with a reason, unless allowed; a start that
/// fails for its port leaves no token and no admin socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_data_directory_and_a_taken_port_are_refused_cleanly() {
    use std::os::unix::fs::PermissionsExt;
    let dir = common::private_tempdir();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (ok, _, err) = cli(&["serve", "--data-dir", data.to_str().unwrap(), "--listen", "127.0.0.1:0"]).await;
    assert!(!ok && err.contains("mode 755") && err.contains("chmod 700"), "{err}");

    let server = Process::serve(&data, &["--allow-open-permissions"], &[]).await;
    assert_eq!(server.terminate().await, 0);

    let fresh = dir.path().join("fresh");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let (ok, _, err) = cli(&["serve", "--data-dir", fresh.to_str().unwrap(), "--listen", &port]).await;
    assert!(!ok && err.contains("binding"), "{err}");
    assert!(!fresh.join("admin.sock").exists(), "a stale admin socket was left");
    let (ok, out, err) = cli(&["token", "list", "--data-dir", fresh.to_str().unwrap()]).await;
    assert!(ok, "{err}");
    assert!(!out.contains("active"), "a failed start made a token nobody saw: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_beat_env_and_env_beats_the_file() {
    let dir = common::private_tempdir();
    let config = dir.path().join("shortlinks.toml");
    std::fs::write(&config, "public_url = \"https://file.example\"\ncode_length = 9\n").unwrap();
    let config = config.to_str().unwrap();
    let data = dir.path().join("data");

    let server = Process::serve(&data, &["--config", config], &[]).await;
    let token = common::first_token(&data);
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
    let dir = common::private_tempdir();
    let server = Process::serve(dir.path(), &[], &[]).await;
    let token = common::first_token(dir.path());
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

/// With the server at 256 descriptors and one client holding every connection it can, a
/// new client's redirect is still answered at once: idle connections make room. (Without
/// the caps, accept fails with EMFILE and the newcomer waits for an idle timeout, ~12 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_greedy_client_cannot_lock_others_out() {
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = common::private_tempdir();
    let server = Process::serve_with_descriptors(dir.path(), &[], &[], Some(256)).await;
    let token = common::first_token(dir.path());
    let reply = server.post(&token, &json!([item("https://original.example/", 1)])).await;
    let code = code_of(reply.json()["_embedded"]["short_links"][0]["url"].as_str().unwrap()).to_owned();
    let request = format!("GET /{code} HTTP/1.1\r\nHost: x\r\n\r\n");

    // The greedy client opens connections until one is not served at once (up to 400),
    // each served once and then kept alive, idle.
    let mut held = Vec::new();
    for _ in 0..400 {
        let Ok(mut stream) = tokio::net::TcpStream::connect(server.addr).await else { break };
        let mut head = [0u8; 12];
        let served = async {
            stream.write_all(request.as_bytes()).await?;
            stream.read_exact(&mut head).await
        };
        match tokio::time::timeout(Duration::from_millis(500), served).await {
            Ok(Ok(_)) if &head[9..12] == b"302" => held.push(stream),
            _ => break,
        }
    }
    assert_eq!(held.len(), 400, "the greedy client was served {} times: idle connections make room", held.len());

    let started = Instant::now();
    let reply = send(server.addr, Method::GET, &format!("/{code}"), &[], Vec::new()).await;
    let waited = started.elapsed();
    assert_eq!(reply.status, 302);
    eprintln!("a new client's redirect with 400 greedy connections open: {waited:?}");
    assert!(waited < Duration::from_secs(2), "the newcomer waited {waited:?}");
    drop(held);
    assert_eq!(server.terminate().await, 0);
}

/// One log line per API request (method, path without its query, status, token id,
/// duration, request id); redirects are not logged unless `access_log = "all"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requests_are_logged_one_line_each() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    for access_log in ["api", "all"] {
        let dir = common::private_tempdir();
        let token = {
            let (ok, out, err) =
                cli(&["token", "create", "--data-dir", dir.path().to_str().unwrap(), "--account", "1", "--user", "1"])
                    .await;
            assert!(ok, "{err}");
            out.trim().to_owned()
        };
        let mut child = Command::new(shortlinks_binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--access-log", access_log, "--data-dir"])
            .arg(dir.path())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr: std::net::SocketAddr = loop {
            let line = stdout.next_line().await.unwrap().expect("the server exited");
            if let Some(rest) = line.strip_prefix("listening on http://") {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        let auth = format!("Bearer {token}");
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        let body = json!([item("https://x.example/", 1)]).to_string().into_bytes();
        let reply = send(addr, Method::POST, "/api/v4/short_links?partial=false", &headers, body).await;
        let id = reply.headers["x-request-id"].to_str().unwrap().to_owned();
        let code = code_of(reply.json()["_embedded"]["short_links"][0]["url"].as_str().unwrap()).to_owned();
        assert_eq!(send(addr, Method::GET, &format!("/{code}"), &[], Vec::new()).await.status, 302);
        let pid = child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut log = Vec::new();
        while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(10), stderr.next_line()).await.unwrap() {
            log.push(line);
        }
        let api: Vec<&String> = log.iter().filter(|l| l.contains(" api ")).collect();
        assert_eq!(api.len(), 1, "{log:#?}");
        let token_id = token.split('_').nth(1).unwrap();
        for field in [
            &format!("request_id=\"{id}\"")[..],
            "method=POST",
            "path=\"/api/v4/short_links\"",
            "status=200",
            &format!("token=\"{token_id}\""),
        ] {
            assert!(api[0].contains(field), "{field} missing: {}", api[0]);
        }
        assert!(!api[0].contains("partial"), "the query was logged: {}", api[0]);
        assert!(!log.iter().any(|l| l.contains(&token[14..])), "a token's secret reached the log");
        let redirects = log.iter().filter(|l| l.contains(" redirect ")).count();
        assert_eq!(redirects, usize::from(access_log == "all"), "{access_log}: {log:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_replay_prints_each_verdict_with_its_reason() {
    let dir = common::private_tempdir();
    let d = dir_arg(&dir);
    let server = Process::serve(dir.path(), &[], &[]).await;
    let token = common::first_token(dir.path());
    let items: Vec<_> = (1..=4).map(|c| item(&format!("https://mail.example/{c}"), c)).collect();
    let reply = server.post(&token, &json!(items)).await;
    let codes: Vec<String> = reply.json()["_embedded"]["short_links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| code_of(l["url"].as_str().unwrap()).to_owned())
        .collect();
    let chrome = r#""user-agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36""#;
    let browser = format!(r#"{chrome}, "accept": "text/html", "accept-language": "ru""#);
    let line = |time: u32, address: &str, code: &str, headers: &str| {
        format!(r#"{{"time": {time}, "address": "{address}", "code": "{code}", "headers": {{{headers}}}}}"#)
    };
    let file = dir.path().join("clicks.jsonl");
    let lines = [
        line(1000, "203.0.113.5", &codes[0], &browser),
        line(1001, "40.107.3.3", &codes[1], &browser),
        line(1002, "198.51.100.1", &codes[2], chrome),
        // One address on three contacts within seconds.
        line(2000, "192.0.2.9", &codes[0], &browser),
        line(2001, "192.0.2.9", &codes[1], &browser),
        line(2002, "192.0.2.9", &codes[3], &browser),
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let expected = [
        "visit",
        "not a visit: scanner_network",
        "not a visit: no_browser_evidence",
        "not a visit: many_contacts",
        "not a visit: many_contacts",
        "not a visit: many_contacts",
    ];
    let path = file.to_str().unwrap();
    let args = ["clicks", "replay", path, "--data-dir", d];
    let replay = || cli(&args);
    // With a server running (codes looked up through its admin socket), then without.
    let (ok, out, err) = replay().await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().map(|l| l.rsplit('\t').next().unwrap()).collect::<Vec<_>>(), expected, "{out}");
    assert!(out.starts_with(&format!("1\t{}\t203.0.113.5\t", codes[0])), "{out}");
    assert!(err.contains("many_contacts"), "a tally on stderr: {err}");
    assert_eq!(server.terminate().await, 0);
    let (ok, offline, err) = replay().await;
    assert!(ok, "{err}");
    assert_eq!(offline, out, "the same verdicts from the data directory itself");
}
