//! Erasing a contact, end to end on the embedded store: `shortlinks erase` through a running
//! server's admin socket, then what a visitor, the API and a restart after kill -9 see.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::path::Path;

use common::{all_notes, click, code_of, item, until_settled, Process, BROWSER};
use serde_json::json;

/// `shortlinks erase` on `dir`; its standard output.
async fn erase(dir: &Path, account: u64, contact: u64) -> String {
    let (account, contact) = (account.to_string(), contact.to_string());
    common::shortlinks(&["erase", "--account", &account, "--contact", &contact], Some(dir), &[]).await
}

fn codes(reply: &serde_json::Value) -> Vec<String> {
    let links = reply["_embedded"]["short_links"].as_array().unwrap();
    links.iter().map(|l| code_of(l["url"].as_str().unwrap()).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_contact_is_gone_for_good_and_its_codes_answer_410_even_after_kill_9() {
    let dir = common::private_tempdir();
    let server = Process::serve(dir.path(), &[], &[]).await;
    let token = common::first_token(dir.path());
    let (url, other_url) = ("https://erase.example/only-for-7", "https://erase.example/for-8");
    let items = json!([item(url, 7), item(other_url, 7), item(url, 8)]);
    let first = codes(&server.post(&token, &items).await.json());
    for (i, code) in first.iter().enumerate() {
        let ip = format!("10.9.0.{i}");
        let reply = click(server.addr, code, &[("user-agent", BROWSER), ("x-forwarded-for", &ip)]).await;
        assert_eq!(reply.status, 302);
    }
    until_settled(server.addr, 3).await;
    let notes = |contact: u64| {
        let (addr, token) = (server.addr, token.clone());
        async move { all_notes(addr, &token, &format!("/api/v4/contacts/{contact}/notes")).await }
    };
    assert_eq!(notes(7).await.len(), 2);

    let said = erase(dir.path(), 1, 7).await;
    assert!(said.contains("erased contact 7 of account 1: 2 links"), "{said}");
    assert!(said.contains("2 notes"), "{said}");
    for code in &first[..2] {
        let reply = click(server.addr, code, &[("user-agent", BROWSER)]).await;
        assert_eq!(reply.status, 410, "{code} was erased");
        assert!(reply.text().contains("Link removed"), "{}", reply.text());
        assert_eq!(reply.header("cache-control").as_deref(), Some("no-store"));
    }
    assert_eq!(click(server.addr, &first[2], &[("user-agent", BROWSER)]).await.status, 302, "another contact's");
    assert_eq!(click(server.addr, "NeverIssued01", &[]).await.status, 404, "a code never issued is not gone");
    assert!(notes(7).await.is_empty(), "the contact's notes are erased");
    assert_eq!(notes(8).await.len(), 1, "another contact keeps its note");
    let listed = all_notes(server.addr, &token, "/api/v4/contacts/notes").await;
    assert!(listed.iter().all(|n| n["entity_id"] != 7), "{listed:?}");

    // The same request again: contact 7 gets new codes, never the erased ones.
    let again = codes(&server.post(&token, &items).await.json());
    assert!(again[..2].iter().all(|code| !first.contains(code)), "{again:?} reissued one of {first:?}");
    assert_eq!(again[2], first[2], "a link not erased is the same link");
    assert_eq!(click(server.addr, &again[0], &[("user-agent", BROWSER)]).await.status, 302);
    // The three first clicks, the repeat of the other contact's link, the new link's click.
    until_settled(server.addr, 5).await;
    let new_note = notes(7).await;
    assert_eq!(new_note.len(), 1, "a link made after the erasure notes its visit: {new_note:?}");

    server.kill9().await;
    let server = Process::serve(dir.path(), &[], &[]).await;
    for code in &first[..2] {
        assert_eq!(click(server.addr, code, &[("user-agent", BROWSER)]).await.status, 410, "{code} after kill -9");
    }
    assert_eq!(click(server.addr, &first[2], &[("user-agent", BROWSER)]).await.status, 302);
    assert_eq!(click(server.addr, &again[0], &[("user-agent", BROWSER)]).await.status, 302);
    let notes = all_notes(server.addr, &token, "/api/v4/contacts/7/notes").await;
    assert_eq!(notes, new_note, "after kill -9, only the note made after the erasure");
    assert_eq!(server.terminate().await, 0);

    // With no server running, the command opens the data directory itself.
    let said = erase(dir.path(), 1, 8).await;
    assert!(said.contains("erased contact 8 of account 1: 1 links"), "{said}");
    let server = Process::serve(dir.path(), &[], &[]).await;
    assert_eq!(click(server.addr, &first[2], &[("user-agent", BROWSER)]).await.status, 410);
    assert_eq!(server.terminate().await, 0);
}

/// Every file under `dir`, read whole (the admin socket is no file to read).
fn every_file(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let kind = std::fs::symlink_metadata(&path).unwrap().file_type();
        if kind.is_dir() {
            files.extend(every_file(&path));
        } else if kind.is_file() {
            files.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    files
}

/// Where in the data directory `needle` is found.
fn found_in(files: &[(std::path::PathBuf, Vec<u8>)], needle: &[u8]) -> Vec<String> {
    let hit = |bytes: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    files.iter().filter(|(_, bytes)| hit(bytes)).map(|(path, _)| path.display().to_string()).collect()
}

/// `shortlinks compact` on `dir`.
async fn compact(dir: &Path) -> String {
    common::shortlinks(&["compact"], Some(dir), &[]).await
}

/// postcard's varint of `n`: how records hold integers.
fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_erasure_and_a_compaction_no_byte_of_the_contact_is_left_in_the_data_directory() {
    let dir = common::private_tempdir();
    let server = Process::serve(dir.path(), &[], &[]).await;
    let token = common::first_token(dir.path());
    let contact: u64 = 7_345_912_018_273;
    let (url, kept_url) = ("https://scan.example/only-for-this-contact-8f3a2c71e9", "https://scan.example/kept-5d1b");
    let reply = server.post(&token, &json!([item(url, contact), item(kept_url, 12)])).await;
    let [code, kept]: [String; 2] = codes(&reply.json()).try_into().unwrap();
    for c in [&code, &kept] {
        assert_eq!(click(server.addr, c, &[("user-agent", BROWSER)]).await.status, 302);
    }
    until_settled(server.addr, 2).await;
    let path = format!("/api/v4/contacts/{contact}/notes");
    assert_eq!(all_notes(server.addr, &token, &path).await.len(), 1);

    let needles: Vec<(&str, Vec<u8>)> = vec![
        ("the URL", url.as_bytes().to_vec()),
        ("the code", code.as_bytes().to_vec()),
        ("the contact id in text", contact.to_string().into_bytes()),
        ("the contact id, big-endian", contact.to_be_bytes().to_vec()),
        ("the contact id, little-endian", contact.to_le_bytes().to_vec()),
        ("the contact id, as a varint", varint(contact)),
    ];
    let before = every_file(dir.path());
    // The test can fail: before the erasure the URL and the code are in the files.
    for (what, needle) in &needles[..2] {
        assert!(!found_in(&before, needle).is_empty(), "{what} was written somewhere");
    }
    erase(dir.path(), 1, contact).await;
    let said = compact(dir.path()).await;
    assert!(said.starts_with("compacted: "), "{said}");

    let after = every_file(dir.path());
    for (what, needle) in &needles {
        assert!(found_in(&after, needle).is_empty(), "{what} is still in {:?}", found_in(&after, needle));
    }
    assert!(
        !found_in(&after, kept_url.as_bytes()).is_empty(),
        "the scan reads the files: another contact's URL is there"
    );
    assert!(!found_in(&after, kept.as_bytes()).is_empty());
    assert_eq!(click(server.addr, &code, &[("user-agent", BROWSER)]).await.status, 410, "still gone");
    assert_eq!(click(server.addr, &kept, &[("user-agent", BROWSER)]).await.status, 302);
    server.kill9().await;
    let server = Process::serve(dir.path(), &[], &[]).await;
    assert_eq!(click(server.addr, &code, &[("user-agent", BROWSER)]).await.status, 410, "after kill -9");
    assert_eq!(click(server.addr, &kept, &[("user-agent", BROWSER)]).await.status, 302);
    assert_eq!(server.terminate().await, 0);
}

/// kill -9 with the compacted copy written and not yet in place, then kill -9 just after a
/// compaction: either way every link, note and erasure is as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_compaction_loses_nothing() {
    let dir = common::private_tempdir();
    let pause = [("SHORTLINKS_TEST_PAUSE_BEFORE_RENAME_MS", "60000")];
    let server = Process::serve(dir.path(), &[], &pause).await;
    let token = common::first_token(dir.path());
    let mut all = Vec::new();
    for contact in 1..=8u64 {
        let items: Vec<_> = (0..100).map(|i| item(&format!("https://many.example/{contact}/{i}"), contact)).collect();
        all.extend(codes(&server.post(&token, &serde_json::Value::Array(items)).await.json()));
    }
    let code = all[0].clone();
    assert_eq!(click(server.addr, &code, &[("user-agent", BROWSER)]).await.status, 302);
    until_settled(server.addr, 1).await;
    erase(dir.path(), 1, 2).await;
    let (erased, kept) = (all[100..200].to_vec(), [&all[..100], &all[200..]].concat());

    // The compaction stops before putting its copy in place; kill the server there.
    let compacting = tokio::spawn(compact_in_background(dir.path().to_owned()));
    let copy = dir.path().join("links.log.compact");
    common::until(std::time::Duration::from_secs(30), "the copy written", || async {
        std::fs::metadata(&copy).is_ok_and(|m| m.len() > 0)
    })
    .await;
    server.kill9().await;
    let _ = compacting.await;
    let server = Process::serve(dir.path(), &[], &[]).await;
    assert!(!copy.exists(), "the copy cut short is deleted on open");
    verify(&server, &token, &kept, &erased).await;

    // Without the pause: compacted, then killed.
    let said = compact(dir.path()).await;
    assert!(said.starts_with("compacted: "), "{said}");
    server.kill9().await;
    let server = Process::serve(dir.path(), &[], &[]).await;
    verify(&server, &token, &kept, &erased).await;
    assert_eq!(server.terminate().await, 0);
}

async fn compact_in_background(dir: std::path::PathBuf) {
    // Killed with the server it talks to: its answer never comes.
    let _ = tokio::process::Command::new(common::shortlinks_binary())
        .args(["compact", "--data-dir"])
        .arg(dir)
        .output()
        .await;
}

/// Every kept link redirects, every erased one answers 410, the note is there.
async fn verify(server: &Process, token: &str, kept: &[String], erased: &[String]) {
    for code in kept {
        assert_eq!(click(server.addr, code, &[]).await.status, 302, "{code}");
    }
    for code in erased {
        assert_eq!(click(server.addr, code, &[]).await.status, 410, "{code}");
    }
    assert_eq!(all_notes(server.addr, token, "/api/v4/contacts/1/notes").await.len(), 1);
}
