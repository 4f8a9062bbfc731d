//! The engine's create/resolve contract, on the in-memory store (and on sled where an erasure races a create).

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

/// A sled store whose next insert first lets an erasure of the inserted links' entity run
/// to its end, through another engine on the same store: the interleaving in which a
/// create has checked the tombstones and an erasure then buries and removes the code
/// before the create inserts it.
#[derive(Clone)]
struct EraseBeforeInsert {
    store: shortlinks_core::SledStore,
    eraser: std::sync::Arc<tokio::sync::OnceCell<Shortener<shortlinks_core::SledStore>>>,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl shortlinks_core::store::LinkStore for EraseBeforeInsert {
    async fn insert_links(
        &self,
        links: Vec<shortlinks_core::Link>,
    ) -> Result<Vec<shortlinks_core::store::InsertOutcome>, shortlinks_core::Error> {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            let eraser = self.eraser.get().unwrap();
            eraser.erase(links[0].account, links[0].entity).await?;
        }
        self.store.insert_links(links).await
    }
    async fn get_link(
        &self,
        code: &shortlinks_core::ShortCode,
    ) -> Result<Option<shortlinks_core::Link>, shortlinks_core::Error> {
        self.store.get_link(code).await
    }
    async fn links_of(
        &self,
        account: AccountId,
        entity: EntityRef,
    ) -> Result<Vec<shortlinks_core::Link>, shortlinks_core::Error> {
        self.store.links_of(account, entity).await
    }
    async fn erase_links(
        &self,
        links: Vec<(shortlinks_core::Link, shortlinks_core::Tombstone)>,
    ) -> Result<(), shortlinks_core::Error> {
        self.store.erase_links(links).await
    }
    async fn buried(&self, tombstones: Vec<shortlinks_core::Tombstone>) -> Result<Vec<bool>, shortlinks_core::Error> {
        self.store.buried(tombstones).await
    }
}

impl shortlinks_core::SecretStore for EraseBeforeInsert {
    async fn installation_secret(
        &self,
        candidate: shortlinks_core::InstallationSecret,
    ) -> Result<shortlinks_core::InstallationSecret, shortlinks_core::Error> {
        self.store.installation_secret(candidate).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_code_never_comes_back_through_a_create_that_raced_the_erasure() {
    use shortlinks_core::store::LinkStore;
    use shortlinks_core::Resolved;
    let dir = tempfile::tempdir().unwrap();
    let sled = shortlinks_core::SledStore::open(dir.path()).unwrap();
    let store = EraseBeforeInsert { store: sled.clone(), eraser: Default::default(), armed: Default::default() };
    let _ = store.eraser.set(Shortener::builder(sled.clone()).build().await.unwrap());
    let engine = Shortener::builder(store.clone()).build().await.unwrap();
    let who = Principal::all_contacts(AccountId(1), UserId(1));
    let contact = item("https://race.example/", 5);
    let first = linked(&engine.create(&who, std::slice::from_ref(&contact)).await.unwrap()[0]).clone();

    // A retry of the same item, with the erasure of its contact slipping in before the insert.
    store.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let again = linked(&engine.create(&who, std::slice::from_ref(&contact)).await.unwrap()[0]).clone();
    assert_ne!(again.code, first.code, "the erased code was issued again");
    assert_eq!(sled.get_link(&first.code).await.unwrap(), None, "the erased code is live again");
    assert_eq!(engine.resolve_with(first.code.as_str(), |_| ()).await.unwrap(), Resolved::Erased);
    assert_eq!(engine.resolve(again.code.as_str()).await.unwrap().unwrap().target, contact.target);
    assert_eq!(sled.links_of(AccountId(1), EntityRef::contact(5)).await.unwrap(), vec![again]);
}
