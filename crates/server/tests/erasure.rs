//! Erasing a contact, end to end on the embedded store: `shortlinks erase` through a running
//! server's admin socket, then what a visitor, the API and a restart after kill -9 see.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::path::Path;

use common::{all_notes, click, code_of, item, until_settled, Process, BROWSER};
use serde_json::json;

/// `shortlinks erase` on `dir`; its standard output.
async fn erase(dir: &Path, account: u64, contact: u64, env: &[(&str, &str)]) -> String {
    let output = tokio::process::Command::new(common::shortlinks_binary())
        .args(["erase", "--account", &account.to_string(), "--contact", &contact.to_string(), "--data-dir"])
        .arg(dir)
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
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

    let said = erase(dir.path(), 1, 7, &[]).await;
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
    let said = erase(dir.path(), 1, 8, &[]).await;
    assert!(said.contains("erased contact 8 of account 1: 1 links"), "{said}");
    let server = Process::serve(dir.path(), &[], &[]).await;
    assert_eq!(click(server.addr, &first[2], &[("user-agent", BROWSER)]).await.status, 410);
    assert_eq!(server.terminate().await, 0);
}
