//! Every backend in this crate against the one storage contract.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use shortlinks_core::model::Click;
use shortlinks_core::store::{
    conformance, LinkStore, NotesJournal, NotesQuery, Queues, RecordQueues, TokenStore, CLICK_QUEUE,
};
use shortlinks_core::{
    AccountId, EntityRef, EntityType, MemoryStore, NewLink, Outcome, Principal, Resolved, Shortener, SledStore, Store,
    TargetUrl, UserId,
};

#[tokio::test]
async fn memory_meets_the_contract() {
    conformance::run(&MemoryStore::new()).await;
    conformance::forgets_visits_before(&MemoryStore::new()).await;
    conformance::forgets_sightings_before(&MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    conformance::run(&SledStore::open(dir.path()).unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    conformance::forgets_visits_before(&SledStore::open(dir.path()).unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    conformance::forgets_sightings_before(&SledStore::open(dir.path()).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_forgets_visits_for_good_and_keeps_the_rest() {
    use shortlinks_core::store::{Claimed, VisitClaim, VisitLedger, VisitRules};
    let dir = tempfile::tempdir().unwrap();
    let rules = VisitRules { window_ms: 3_600_000, notes_per_link: 1 };
    let claim = |link: u8, client: u8, at: u64, note_id: u64| VisitClaim {
        link: [link; 16],
        key: [link, client, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        at: shortlinks_core::Timestamp(at),
        note_id,
    };
    {
        let store = SledStore::open(dir.path()).unwrap();
        store.claim_visits(vec![claim(1, 1, 1_000, 7), claim(2, 1, 5_000, 7)], rules).await.unwrap();
        assert_eq!(store.forget_visits(shortlinks_core::Timestamp(2_000)).await.unwrap(), 1);
        store.flush().await.unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    let after = vec![claim(1, 1, 6_000, 8), claim(2, 1, 6_000, 8), claim(2, 2, 6_000, 9)];
    assert_eq!(
        store.claim_visits(after, rules).await.unwrap(),
        vec![Claimed::Note, Claimed::Repeat, Claimed::OverLinkCap],
        "after a reopen, link 1 is forgotten; link 2's mark and count are kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_data_survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let link = conformance::link("AbCdEfGh1234", 5, 50, "https://persist.example/x?y=1");
    {
        let store = SledStore::open(dir.path()).unwrap();
        store.insert_links(vec![link.clone()]).await.unwrap();
        let clicks = [conformance::click("AbCdEfGh1234", 10), conformance::click("AbCdEfGh1234", 11)];
        store.push_records(CLICK_QUEUE, &clicks).await.unwrap();
        let first = store.lease(CLICK_QUEUE, 1).await.unwrap();
        store.remove(CLICK_QUEUE, vec![first[0].0]).await.unwrap();
        store.append_notes(vec![conformance::note(1, 5, 50, 10)]).await.unwrap();
        store.flush().await.unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.get_link(&link.code).await.unwrap(), Some(link.clone()));
    assert_eq!(store.links_of(AccountId(5), EntityRef::contact(50)).await.unwrap(), vec![link]);
    let clicks = store.lease_records::<Click>(CLICK_QUEUE, 10).await.unwrap();
    assert_eq!(
        clicks.iter().map(|(_, c)| c.at.0).collect::<Vec<_>>(),
        vec![11],
        "unacked clicks survive, acked stay gone"
    );
    let query =
        NotesQuery { account: AccountId(5), entity_type: EntityType::Contacts, entity_ids: None, offset: 0, limit: 10 };
    assert_eq!(store.list_notes(query).await.unwrap(), vec![conformance::note(1, 5, 50, 10)]);
    assert!(store.list_tokens().await.unwrap().is_empty());
    // Ids keep growing across a reopen, so new clicks still sort after the old ones.
    store.push_records(CLICK_QUEUE, &[conformance::click("AbCdEfGh1234", 12)]).await.unwrap();
    let ids: Vec<_> = store.lease(CLICK_QUEUE, 10).await.unwrap().into_iter().map(|(id, _)| id).collect();
    assert!(ids[0] < ids[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_keeps_its_secret_and_links_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let who = Principal::all_contacts(AccountId(1), UserId(1));
    let items = vec![NewLink {
        target: TargetUrl::parse("https://example.com/offer").unwrap(),
        entity: EntityRef::contact(42),
    }];
    let open = |dir: &std::path::Path| Shortener::builder(SledStore::open(dir).unwrap()).build();
    let first = {
        let engine = open(dir.path()).await.unwrap();
        engine.create(&who, &items).await.unwrap()
    };
    let engine = open(dir.path()).await.unwrap();
    assert_eq!(engine.create(&who, &items).await.unwrap(), first, "same secret, same code");
    let Outcome::Linked(link) = &first[0] else { panic!("{first:?}") };
    assert_eq!(engine.resolve(link.code.as_str()).await.unwrap().as_deref(), Some(link));

    // A different installation derives different codes for the same input.
    let other_dir = tempfile::tempdir().unwrap();
    let other = open(other_dir.path()).await.unwrap();
    assert_ne!(other.create(&who, &items).await.unwrap(), first);
}

/// An erasure is in the files when it returns: after a reopen the links, their index
/// entries and the notes are still gone, the codes still buried, and other data is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_erasure_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let who = Principal::all_contacts(AccountId(3), UserId(1));
    let items: Vec<NewLink> =
        [(30, "https://erase.example/a"), (30, "https://erase.example/b"), (31, "https://erase.example/a")]
            .into_iter()
            .map(|(id, url)| NewLink { target: TargetUrl::parse(url).unwrap(), entity: EntityRef::contact(id) })
            .collect();
    let (erased, kept) = {
        let store = SledStore::open(dir.path()).unwrap();
        let engine = Shortener::builder(store.clone()).build().await.unwrap();
        let links: Vec<_> = engine
            .create(&who, &items)
            .await
            .unwrap()
            .into_iter()
            .map(|o| match o {
                Outcome::Linked(link) => link,
                Outcome::NoRights => panic!("no rights"),
            })
            .collect();
        store.append_notes(vec![conformance::note(1, 3, 30, 10), conformance::note(2, 3, 31, 10)]).await.unwrap();
        let codes = engine.erase(AccountId(3), EntityRef::contact(30)).await.unwrap();
        assert_eq!(codes.len(), 2);
        assert_eq!(store.erase_notes(AccountId(3), EntityRef::contact(30)).await.unwrap(), 1);
        (codes, links[2].clone())
    };
    let store = SledStore::open(dir.path()).unwrap();
    let engine = Shortener::builder(store.clone()).build().await.unwrap();
    for code in &erased {
        assert_eq!(store.get_link(code).await.unwrap(), None);
        assert_eq!(engine.resolve_with(code.as_str(), |_| ()).await.unwrap(), Resolved::Erased);
    }
    assert!(store.links_of(AccountId(3), EntityRef::contact(30)).await.unwrap().is_empty());
    assert_eq!(store.get_link(&kept.code).await.unwrap(), Some(kept.clone()));
    assert_eq!(engine.resolve_with(kept.code.as_str(), |l| l.clone()).await.unwrap(), Resolved::Found(kept.clone()));
    let never = "NeverIssued1";
    assert_eq!(engine.resolve_with(never, |_| ()).await.unwrap(), Resolved::Unknown);
    let notes = |id| NotesQuery {
        account: AccountId(3),
        entity_type: EntityType::Contacts,
        entity_ids: Some(vec![id]),
        offset: 0,
        limit: 10,
    };
    assert!(store.list_notes(notes(30)).await.unwrap().is_empty());
    assert_eq!(store.list_notes(notes(31)).await.unwrap().len(), 1);

    // The same items again: the erased codes are not issued again.
    let again = engine.create(&who, &items).await.unwrap();
    for (outcome, item) in again.iter().zip(&items) {
        let Outcome::Linked(link) = outcome else { panic!("no rights") };
        assert!(!erased.contains(&link.code), "{} was issued again", link.code);
        assert_eq!(link.target, item.target);
        assert_eq!(engine.resolve(link.code.as_str()).await.unwrap().unwrap().entity, item.entity);
    }
    let Outcome::Linked(same) = &again[2] else { panic!("no rights") };
    assert_eq!(same.code, kept.code, "a link not erased is found again");
}
