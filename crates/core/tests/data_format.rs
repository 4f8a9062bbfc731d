//! A data directory written by an earlier build keeps opening, with its data, in every
//! later one: `fixtures/data-v<N>` is a directory of format N, written once by the build
//! that introduced it with `write_the_current_fixture` (ignored; it only ever runs by
//! hand, for a new format). Format 1 has no file headers; format 2 has them; format 3
//! keeps in `state.log` what the first two kept in sled's trees.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};

use shortlinks_core::model::{ApiToken, Note};
use shortlinks_core::store::{conformance, LinkStore, NotesJournal, NotesQuery, Queues, TokenStore};
use shortlinks_core::{
    AccountId, CodeDeriver, CodeLength, ContactScope, EntityRef, EntityType, NewLink, Outcome, Principal, Resolved,
    SecretStore, Shortener, SledStore, Store, TargetUrl, Timestamp, UserId,
};

const ACCOUNT: AccountId = AccountId(7);
/// The format this build writes.
const CURRENT: u32 = 3;

fn fixture(format: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/data-v{format}"))
}

fn items() -> Vec<NewLink> {
    (1..=3)
        .map(|id| NewLink {
            target: TargetUrl::parse(&format!("https://fixture.example/{id}?utm_source=crm")).unwrap(),
            entity: EntityRef::contact(id),
        })
        .collect()
}

fn notes() -> Vec<Note> {
    vec![conformance::note(71, 7, 1, 1_700_000_000_000), conformance::note(72, 7, 1, 1_700_000_060_000)]
}

fn token() -> ApiToken {
    ApiToken {
        id: "fixture".into(),
        hash: [7; 32],
        account: ACCOUNT,
        user: UserId(3),
        scope: ContactScope::All,
        created_at: Timestamp(1_700_000_000_000),
        revoked_at: None,
    }
}

async fn codes(engine: &Shortener<SledStore>) -> Vec<String> {
    let outcomes = engine.create(&Principal::all_contacts(ACCOUNT, UserId(3)), &items()).await.unwrap();
    outcomes
        .into_iter()
        .map(|o| match o {
            Outcome::Linked(link) => link.code.as_str().to_owned(),
            other => panic!("{other:?}"),
        })
        .collect()
}

/// Writes `fixtures/data-v<CURRENT>` with this build: three links (one contact's erased),
/// two notes, a token and a queue with one entry left. Run by hand when a format is added.
#[tokio::test]
#[ignore = "writes the fixture; run by hand for a new format only"]
async fn write_the_current_fixture() {
    let dir = fixture(CURRENT);
    let _ = std::fs::remove_dir_all(&dir);
    let store = SledStore::open(&dir).unwrap();
    let engine = Shortener::builder(store.clone()).build().await.unwrap();
    codes(&engine).await;
    engine.erase(ACCOUNT, EntityRef::contact(3)).await.unwrap();
    store.append_notes(notes()).await.unwrap();
    store.put_token(token()).await.unwrap();
    store.push("fixture", vec![b"handled".to_vec(), b"waiting".to_vec()]).await.unwrap();
    let leased = store.lease("fixture", 1).await.unwrap();
    store.remove("fixture", leased.into_iter().map(|(id, _)| id).collect()).await.unwrap();
    store.flush().await.unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_format_1_opens_with_its_data() {
    opens_with_its_data(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_format_2_opens_with_its_data() {
    opens_with_its_data(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_format_3_opens_with_its_data() {
    opens_with_its_data(3).await;
}

/// sled's files are what the first open of formats 1 and 2 imports into `state.log`.
const SLED_FILES: [&str; 2] = ["db", "conf"];

/// The import deletes sled's files only once `state.log` is in place: a crash before that
/// leaves sled's files to import again (with a stray copy), after it only files to delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_cut_short_by_a_crash_is_finished_by_the_next_open() {
    for crash in ["before the rename", "after the rename"] {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&fixture(2), dir.path());
        if crash == "before the rename" {
            std::fs::write(dir.path().join("state.log.compact"), b"half a copy").unwrap();
        } else {
            // What the import writes, made on the side, then sled's files put back.
            let side = tempfile::tempdir().unwrap();
            copy_dir(&fixture(2), side.path());
            drop(SledStore::open(side.path()).unwrap());
            std::fs::copy(side.path().join("state.log"), dir.path().join("state.log")).unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.get_token("fixture").await.unwrap(), Some(token()), "{crash}");
        for name in SLED_FILES {
            assert!(!dir.path().join(name).exists(), "{crash}: sled's {name} is deleted");
        }
        assert!(!dir.path().join("state.log.compact").exists(), "{crash}");
    }
}

/// An older server still running on a directory of format 2 holds sled's lock: a newer
/// build's open fails, and leaves the directory of format 2 with sled's files, so the
/// older server can go on and start again; once it has stopped, the newer build imports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_server_still_running_keeps_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture(2), dir.path());
    let older = sled::open(dir.path()).unwrap();
    let refused = SledStore::open(dir.path()).err().expect("sled's lock is held");
    assert!(!refused.to_string().is_empty());
    let format = std::fs::read_to_string(dir.path().join("FORMAT")).unwrap();
    assert_eq!(format, "shortlinks data directory\nformat 2\n", "the format is left as it was");
    assert!(!dir.path().join("state.log").exists());
    drop(older);
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.get_token("fixture").await.unwrap(), Some(token()));
    let format = std::fs::read_to_string(dir.path().join("FORMAT")).unwrap();
    assert_eq!(format, format!("shortlinks data directory\nformat {CURRENT}\n"));
    for name in SLED_FILES {
        assert!(!dir.path().join(name).exists(), "sled's {name} is deleted once imported");
    }
}

/// The fixture of `format` (copied: opening raises the format) holds what the writer put
/// in it, and takes more.
async fn opens_with_its_data(format: u32) {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture(format), dir.path());
    let store = SledStore::open(dir.path()).unwrap();
    let engine = Shortener::builder(store.clone()).build().await.unwrap();
    if format < 3 {
        for name in SLED_FILES {
            assert!(!dir.path().join(name).exists(), "sled's {name} is deleted once imported");
        }
    }
    // The erased contact's first code is still buried: 410, and no link is listed.
    let secret = store.load_or_create_secret().await.unwrap();
    let erased =
        CodeDeriver::new(secret, CodeLength::default()).derive(ACCOUNT, items()[2].entity, &items()[2].target, 0);
    assert_eq!(engine.resolve_with(erased.as_str(), |_| ()).await.unwrap(), Resolved::Erased);
    assert!(store.links_of(ACCOUNT, EntityRef::contact(3)).await.unwrap().is_empty());
    let query =
        NotesQuery { account: ACCOUNT, entity_type: EntityType::Contacts, entity_ids: None, offset: 0, limit: 10 };
    assert_eq!(store.list_notes(query).await.unwrap(), notes());
    assert_eq!(store.get_token("fixture").await.unwrap(), Some(token()));
    let waiting: Vec<Vec<u8>> = store.peek("fixture", 10).await.unwrap().into_iter().map(|(_, r)| r).collect();
    assert_eq!(waiting, [b"waiting".to_vec()]);
    // The same secret: the same items get the same codes, which are the stored links; the
    // erased contact gets a new one.
    let codes = codes(&engine).await;
    for (code, id) in codes.iter().zip(1..=2) {
        let target = engine.resolve(code).await.unwrap().unwrap().target.as_str().to_owned();
        assert_eq!(target, format!("https://fixture.example/{id}?utm_source=crm"));
    }
    assert_eq!(store.links_of(ACCOUNT, EntityRef::contact(1)).await.unwrap().len(), 1);
    assert_ne!(codes[2], erased.as_str());
    let raised = std::fs::read_to_string(dir.path().join("FORMAT")).unwrap();
    assert_eq!(raised, format!("shortlinks data directory\nformat {CURRENT}\n"), "raised to this build's");
    store.flush().await.unwrap();
    drop((engine, store));
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.links_of(ACCOUNT, EntityRef::contact(3)).await.unwrap().len(), 1, "the new link, after a reopen");
}

#[test]
fn a_directory_of_a_newer_format_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture(CURRENT), dir.path());
    let newer = CURRENT + 1;
    std::fs::write(dir.path().join("FORMAT"), format!("shortlinks data directory\nformat {newer}\n")).unwrap();
    let before = std::fs::read(dir.path().join("links.log")).unwrap();
    let refused = SledStore::open(dir.path()).err().expect("a newer format is refused");
    let said = refused.to_string();
    assert!(said.contains("newer shortlinks") && said.contains(&format!("format {newer}")), "{refused}");
    assert_eq!(std::fs::read(dir.path().join("links.log")).unwrap(), before);
}
