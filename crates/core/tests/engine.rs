//! The engine's create/resolve contract, on the in-memory store.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use shortlinks_core::{
    AccountId, CodeLength, ContactScope, CreateError, EntityRef, MemoryStore, NewLink, Outcome, Principal, Shortener,
    TargetUrl, UserId, MAX_BATCH,
};

async fn engine() -> Shortener<MemoryStore> {
    Shortener::builder(MemoryStore::new()).build().await.unwrap()
}

fn item(url: &str, contact: u64) -> NewLink {
    NewLink { target: TargetUrl::parse(url).unwrap(), entity: EntityRef::contact(contact) }
}

fn linked(outcome: &Outcome) -> &shortlinks_core::Link {
    match outcome {
        Outcome::Linked(link) => link,
        other => panic!("expected a link, got {other:?}"),
    }
}

#[tokio::test]
async fn each_contact_gets_its_own_link_for_the_same_url() {
    let engine = engine().await;
    let who = Principal::all_contacts(AccountId(3), UserId(9));
    let out = engine.create(&who, &[item("https://x.example/", 1), item("https://x.example/", 2)]).await.unwrap();
    let (a, b) = (linked(&out[0]), linked(&out[1]));
    assert_ne!(a.code, b.code);
    assert_eq!((a.account, a.created_by, a.entity), (AccountId(3), UserId(9), EntityRef::contact(1)));
    assert_eq!(engine.resolve(b.code.as_str()).await.unwrap().as_deref(), Some(b));
}

#[tokio::test]
async fn duplicates_within_a_batch_get_the_same_link() {
    let engine = engine().await;
    let who = Principal::all_contacts(AccountId(1), UserId(1));
    let out = engine.create(&who, &[item("https://x.example", 1), item("https://x.example/", 1)]).await.unwrap();
    assert_eq!(out[0], out[1], "the same normalized target for the same contact is one link");
}

#[tokio::test]
async fn rights_are_enforced_per_item_in_order() {
    let engine = engine().await;
    let who = Principal { account: AccountId(1), user: UserId(1), scope: ContactScope::only(vec![2, 4]) };
    let items: Vec<_> = (1..=4).map(|c| item("https://x.example/", c)).collect();
    let out = engine.create(&who, &items).await.unwrap();
    assert_eq!(out[0], Outcome::NoRights);
    assert_eq!(linked(&out[1]).entity, EntityRef::contact(2));
    assert_eq!(out[2], Outcome::NoRights);
    assert_eq!(linked(&out[3]).entity, EntityRef::contact(4));
}

#[tokio::test]
async fn batch_bounds() {
    let engine = engine().await;
    let who = Principal::all_contacts(AccountId(1), UserId(1));
    assert!(matches!(engine.create(&who, &[]).await, Err(CreateError::EmptyBatch)));
    let too_many: Vec<_> = (0..=MAX_BATCH as u64).map(|c| item("https://x.example/", c + 1)).collect();
    assert!(matches!(engine.create(&who, &too_many).await, Err(CreateError::BatchTooLarge { max: 250, got: 251 })));
    let full = engine.create(&who, &too_many[..MAX_BATCH]).await.unwrap();
    assert_eq!(full.len(), MAX_BATCH);
    for (i, o) in full.iter().enumerate() {
        assert_eq!(linked(o).entity, EntityRef::contact(i as u64 + 1), "order is preserved");
    }
}

#[tokio::test]
async fn accounts_are_isolated() {
    let engine = engine().await;
    let a = Principal::all_contacts(AccountId(1), UserId(1));
    let b = Principal::all_contacts(AccountId(2), UserId(1));
    let la = engine.create(&a, &[item("https://x.example/", 7)]).await.unwrap();
    let lb = engine.create(&b, &[item("https://x.example/", 7)]).await.unwrap();
    assert_ne!(linked(&la[0]).code, linked(&lb[0]).code, "same contact id in two accounts: two links");
}

#[tokio::test]
async fn resolve_rejects_malformed_codes() {
    let engine = engine().await;
    for bad in ["", "short", "has/slash00", "../../etc/passwd", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"] {
        assert_eq!(engine.resolve(bad).await.unwrap(), None, "{bad:?}");
    }
}

#[tokio::test]
async fn code_length_is_configurable() {
    let engine =
        Shortener::builder(MemoryStore::new()).code_length(CodeLength::new(22).unwrap()).build().await.unwrap();
    let who = Principal::all_contacts(AccountId(1), UserId(1));
    let out = engine.create(&who, &[item("https://x.example/", 1)]).await.unwrap();
    assert_eq!(linked(&out[0]).code.as_str().len(), 22);
}
