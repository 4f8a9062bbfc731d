//! The contract every [`Store`] backend must meet, as runnable checks.
//!
//! Backends call [`run`] from their tests on a fresh, empty store; it panics on the first
//! broken promise. It lives in the library, not under `tests/`, so that backends in other
//! crates (Redis) are held to exactly the same contract.

use std::future::Future;
use std::time::Duration;

use super::{
    AddressRule, AddressTally, Claimed, GatewaySpan, InsertOutcome, NotesQuery, Rate, RecordQueues, Sighting, Store,
    VisitClaim, VisitRules, CLICK_QUEUE,
};
use crate::code::{InstallationSecret, ShortCode, Tombstone};
use crate::model::{
    AccountId, ApiToken, BrowserEvidence, Click, ClickMethod, ContactScope, EntityRef, EntityType, EntryId, Link, Note,
    NoteBody, Timestamp, UserId,
};
use crate::target::TargetUrl;

/// What a crash can leave behind, made on purpose: the suite checks that the store heals it.
/// Each backend implements it in its tests, reaching into its own representation.
pub trait CrashFaults: Store {
    /// Removes a stored link's entry from its entity's index and leaves the link: what a
    /// crash between a backend's two writes of an insert leaves. False if the backend keeps
    /// no such index (it finds an entity's links from the links themselves).
    fn lose_index_entry(&self, link: &Link) -> impl Future<Output = bool> + Send;
}

/// Runs every check against a fresh, empty store.
pub async fn run<S: CrashFaults>(store: &S) {
    links(store).await;
    a_retry_restores_a_lost_index_entry(store).await;
    links_by_target(store).await;
    erasure(store).await;
    queues(store).await;
    notes_journal(store).await;
    visit_ledger(store).await;
    credentials(store).await;
    address_ledger(store).await;
    link_cap(store).await;
    large_batches(store).await;
    tokens(store).await;
    installation_secret(store).await;
    rate_limits(store).await;
    store.flush().await.expect("flush");
}

/// A link for the checks: `code` must be base62.
pub fn link(code: &str, account: u64, contact: u64, target: &str) -> Link {
    Link {
        code: ShortCode::from_key(code.as_bytes()).expect("base62 code"),
        account: AccountId(account),
        entity: EntityRef::contact(contact),
        target: TargetUrl::parse(target).expect("valid target"),
        created_at: Timestamp(1_700_000_000_000),
        created_by: UserId(1),
    }
}

/// A click for the checks.
pub fn click(code: &str, at: u64) -> Click {
    Click {
        code: ShortCode::from_key(code.as_bytes()).expect("base62 code"),
        at: Timestamp(at),
        method: ClickMethod::Get,
        user_agent: Some("Mozilla/5.0".into()),
        referer: None,
        prefetch: None,
        client_ip: Some([127, 0, 0, 1].into()),
        evidence: Some(BrowserEvidence(
            BrowserEvidence::ACCEPTS_HTML | BrowserEvidence::ACCEPT_LANGUAGE | BrowserEvidence::NAVIGATE,
        )),
        nonce: at,
        visit_key: None,
    }
}

/// A note for the checks.
pub fn note(id: u64, account: u64, contact: u64, at: u64) -> Note {
    Note {
        id,
        account: AccountId(account),
        entity: EntityRef::contact(contact),
        created_by: UserId(1),
        created_at: Timestamp(at),
        body: NoteBody::LinkFollowed { url: TargetUrl::parse("https://example.com/").expect("valid") },
    }
}

async fn links<S: Store>(store: &S) {
    let a = link("AAAAAAAAAAAA", 1, 10, "https://a.example/");
    let b = link("BBBBBBBBBBBB", 1, 10, "https://b.example/");
    let c = link("CCCCCCCCCCCC", 1, 11, "https://a.example/");
    let other_account = link("DDDDDDDDDDDD", 2, 10, "https://a.example/");

    let miss = store.get_link(&a.code).await.expect("get");
    assert_eq!(miss, None, "an empty store has no links");

    let outcomes =
        store.insert_links(vec![b.clone(), a.clone(), c.clone(), other_account.clone()]).await.expect("insert");
    assert_eq!(outcomes, vec![InsertOutcome::Inserted; 4]);
    for l in [&a, &b, &c, &other_account] {
        assert_eq!(store.get_link(&l.code).await.expect("get").as_ref(), Some(l), "read back {}", l.code);
    }

    // The same code again, for the same link (a retry) or another (a collision): never overwritten.
    let mut intruder = link("AAAAAAAAAAAA", 9, 99, "https://evil.example/");
    intruder.created_by = UserId(666);
    let outcomes = store.insert_links(vec![a.clone(), intruder]).await.expect("insert");
    assert_eq!(outcomes, vec![InsertOutcome::Occupied(a.clone()), InsertOutcome::Occupied(a.clone())]);
    assert_eq!(store.get_link(&a.code).await.expect("get"), Some(a.clone()), "a collision overwrote a link");
    assert!(store.links_of(AccountId(9), EntityRef::contact(99)).await.expect("list").is_empty());

    // Within one batch, a later item sees an earlier one.
    let e = link("EEEEEEEEEEEE", 1, 12, "https://e.example/");
    let e_twin = link("EEEEEEEEEEEE", 1, 13, "https://f.example/");
    let outcomes = store.insert_links(vec![e.clone(), e_twin]).await.expect("insert");
    assert_eq!(outcomes, vec![InsertOutcome::Inserted, InsertOutcome::Occupied(e.clone())]);
    assert!(store.links_of(AccountId(1), EntityRef::contact(13)).await.expect("list").is_empty());

    // Per-entity listing: key (code) order, nothing from other entities or accounts.
    assert_eq!(store.links_of(AccountId(1), EntityRef::contact(10)).await.expect("list"), vec![a.clone(), b.clone()]);
    assert_eq!(store.links_of(AccountId(1), EntityRef::contact(11)).await.expect("list"), vec![c]);
    assert_eq!(store.links_of(AccountId(2), EntityRef::contact(10)).await.expect("list"), vec![other_account]);
    assert!(store.links_of(AccountId(3), EntityRef::contact(10)).await.expect("list").is_empty());

    // Ids that differ only in a high byte must not share a key prefix.
    let high = link("HHHHHHHHHHHH", 1, 10 + (1 << 56), "https://h.example/");
    store.insert_links(vec![high.clone()]).await.expect("insert");
    assert_eq!(store.links_of(AccountId(1), EntityRef::contact(10)).await.expect("list").len(), 2);
    assert_eq!(store.links_of(AccountId(1), high.entity).await.expect("list"), vec![high]);
}

/// A retry is a new request: its link carries a new `created_at`. It must still find the
/// stored link its own, list it again, and leave it untouched.
async fn a_retry_restores_a_lost_index_entry<S: CrashFaults>(store: &S) {
    let first = link("RRRRRRRRRRRR", 4, 40, "https://retry.example/");
    store.insert_links(vec![first.clone()]).await.expect("insert");
    if !store.lose_index_entry(&first).await {
        return;
    }
    let listed = store.links_of(AccountId(4), EntityRef::contact(40)).await.expect("list");
    assert!(listed.is_empty(), "the fault must remove the index entry");

    let retry = Link { created_at: Timestamp(first.created_at.0 + 60_000), ..first.clone() };
    let outcomes = store.insert_links(vec![retry]).await.expect("insert");
    assert_eq!(outcomes, vec![InsertOutcome::Occupied(first.clone())], "the stored link is kept");
    let listed = store.links_of(AccountId(4), EntityRef::contact(40)).await.expect("list");
    assert_eq!(listed, vec![first.clone()], "a retry lists the link again");
    assert_eq!(store.get_link(&first.code).await.expect("get"), Some(first));
}

/// An account's links to one URL, a link per contact, in code order and up to a limit;
/// other accounts' and other URLs' links are not among them, nor erased ones.
async fn links_by_target<S: Store>(store: &S) {
    let campaign = "https://campaign.example/spring";
    let ours = [
        link("TTTTTTTTTTT3", 8, 83, campaign),
        link("TTTTTTTTTTT1", 8, 81, campaign),
        link("TTTTTTTTTTT2", 8, 82, campaign),
    ];
    let theirs = link("TTTTTTTTTTT4", 9, 81, campaign);
    let elsewhere = link("TTTTTTTTTTT5", 8, 81, "https://campaign.example/summer");
    let mut all = ours.to_vec();
    all.extend([theirs.clone(), elsewhere.clone()]);
    store.insert_links(all).await.expect("insert");
    let target = TargetUrl::parse(campaign).expect("target");
    let found = store.links_to(AccountId(8), &target, 10).await.expect("by target");
    assert_eq!(found, vec![ours[1].clone(), ours[2].clone(), ours[0].clone()], "code order");
    assert_eq!(store.links_to(AccountId(8), &target, 2).await.expect("by target").len(), 2, "the limit holds");
    assert_eq!(store.links_to(AccountId(9), &target, 10).await.expect("by target"), vec![theirs]);
    let unknown = TargetUrl::parse("https://campaign.example/autumn").expect("target");
    assert!(store.links_to(AccountId(8), &unknown, 10).await.expect("by target").is_empty());

    store.erase_links(vec![(ours[1].clone(), Tombstone([81; 16]))]).await.expect("erase");
    let found = store.links_to(AccountId(8), &target, 10).await.expect("by target");
    assert_eq!(found, vec![ours[2].clone(), ours[0].clone()], "an erased link is not found");
    assert_eq!(store.links_to(AccountId(8), &elsewhere.target, 10).await.expect("by target"), vec![elsewhere.clone()]);
}

/// Erasing removes an entity's links and notes for good, buries their codes, and touches
/// nothing of any other entity; a second erasure changes nothing.
async fn erasure<S: Store>(store: &S) {
    let gone =
        [link("GONEGONE0001", 6, 60, "https://gone.example/1"), link("GONEGONE0002", 6, 60, "https://gone.example/2")];
    let kept = link("KEPTKEPT0001", 6, 61, "https://gone.example/1");
    let other_account = link("KEPTKEPT0002", 7, 60, "https://gone.example/1");
    let all = [gone.to_vec(), vec![kept.clone(), other_account.clone()]].concat();
    store.insert_links(all).await.expect("insert");
    let notes = [note(601, 6, 60, 1_000), note(602, 6, 60, 2_000), note(611, 6, 61, 1_500), note(701, 7, 60, 1_000)];
    store.append_notes(notes.to_vec()).await.expect("append");
    let tombstone = |n: u8| Tombstone([n; 16]);
    assert_eq!(store.buried(vec![tombstone(1), tombstone(2)]).await.expect("buried"), [false, false]);

    let erasing = vec![(gone[0].clone(), tombstone(1)), (gone[1].clone(), tombstone(2))];
    store.erase_links(erasing.clone()).await.expect("erase links");
    assert_eq!(store.erase_notes(AccountId(6), EntityRef::contact(60)).await.expect("erase notes"), 2);
    for l in &gone {
        assert_eq!(store.get_link(&l.code).await.expect("get"), None, "{} is erased", l.code);
    }
    assert!(store.links_of(AccountId(6), EntityRef::contact(60)).await.expect("list").is_empty());
    assert_eq!(
        store.buried(vec![tombstone(1), tombstone(3), tombstone(2)]).await.expect("buried"),
        [true, false, true]
    );
    let listed = |account, id| store.list_notes(query(account, Some(vec![id]), 0, 10));
    assert!(listed(6, 60).await.expect("list").is_empty(), "the entity's notes are erased");
    assert_eq!(listed(6, 61).await.expect("list"), vec![notes[2].clone()], "another entity keeps its notes");
    assert_eq!(listed(7, 60).await.expect("list"), vec![notes[3].clone()], "another account keeps its notes");
    let every = store.list_notes(query(6, None, 0, 10)).await.expect("list");
    assert_eq!(every, vec![notes[2].clone()], "the erased entity is not listed");
    assert_eq!(store.get_link(&kept.code).await.expect("get"), Some(kept));
    assert_eq!(store.get_link(&other_account.code).await.expect("get"), Some(other_account));

    // Again: nothing left to erase, nothing else changes.
    store.erase_links(erasing).await.expect("erase again");
    assert_eq!(store.erase_notes(AccountId(6), EntityRef::contact(60)).await.expect("erase again"), 0);
    // A note made later (a link made for the contact afterwards) is kept.
    store.append_notes(vec![note(603, 6, 60, 3_000)]).await.expect("append");
    assert_eq!(listed(6, 60).await.expect("list"), vec![note(603, 6, 60, 3_000)]);
    let every = store.list_notes(query(6, None, 0, 10)).await.expect("list");
    assert_eq!(every, vec![note(603, 6, 60, 3_000), notes[2].clone()], "each entity listed once");

    // The retention's horizon: older notes of every entity go, newer ones stay.
    store.append_notes(vec![note(612, 6, 61, 2_500)]).await.expect("append");
    assert_eq!(store.forget_notes(Timestamp(2_000)).await.expect("forget"), 2, "notes 611 and 701");
    assert_eq!(listed(6, 61).await.expect("list"), vec![note(612, 6, 61, 2_500)]);
    assert!(listed(7, 60).await.expect("list").is_empty());
    let every = store.list_notes(query(6, None, 0, 10)).await.expect("list");
    assert_eq!(every, vec![note(603, 6, 60, 3_000), note(612, 6, 61, 2_500)]);
    assert_eq!(store.forget_notes(Timestamp(2_000)).await.expect("forget"), 0);
}

async fn queues<S: Store>(store: &S) {
    let read = |max| store.lease_records::<Click>(CLICK_QUEUE, max);
    assert!(read(10).await.expect("read").is_empty(), "the outbox starts empty");
    let first = [click("AAAAAAAAAAAA", 1), click("BBBBBBBBBBBB", 2), click("CCCCCCCCCCCC", 3)];
    store.push_records(CLICK_QUEUE, &first).await.expect("push");
    store.push_records(CLICK_QUEUE, &[click("DDDDDDDDDDDD", 4), click("EEEEEEEEEEEE", 5)]).await.expect("push");
    store.push_records::<Click>(CLICK_QUEUE, &[]).await.expect("an empty push is fine");
    // Another queue is independent of the outbox.
    store.push("sink:webhook", vec![b"x".to_vec()]).await.expect("push");

    assert_eq!(store.depth(CLICK_QUEUE).await.expect("depth"), 5);
    assert_eq!(store.depth("sink:webhook").await.expect("depth"), 1, "each queue its own depth");
    assert_eq!(store.depth("never:used").await.expect("depth"), 0);
    let all = read(100).await.expect("read");
    let times: Vec<u64> = all.iter().map(|(_, c)| c.at.0).collect();
    assert_eq!(times, vec![1, 2, 3, 4, 5], "entries come back in push order, from their queue only");
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "ids grow");
    assert_eq!(all[0].1, click("AAAAAAAAAAAA", 1));

    let first_two = read(2).await.expect("read");
    assert_eq!(first_two, all[..2].to_vec(), "entries not removed are leased again, first");

    let mut removed: Vec<EntryId> = vec![all[0].0, all[2].0];
    removed.push(EntryId(u128::MAX)); // unknown ids are ignored
    store.remove(CLICK_QUEUE, removed).await.expect("remove");
    let left: Vec<u64> = read(100).await.expect("read").iter().map(|(_, c)| c.at.0).collect();
    assert_eq!(left, vec![2, 4, 5], "removed entries are gone, the rest stay in order");
    assert_eq!(store.depth(CLICK_QUEUE).await.expect("depth"), 3, "leased entries count until removed");
    store.remove(CLICK_QUEUE, vec![all[0].0, all[2].0]).await.expect("removing again");
    assert_eq!(store.depth(CLICK_QUEUE).await.expect("depth"), 3, "a second removal counts once");

    store.push_records(CLICK_QUEUE, &[click("FFFFFFFFFFFF", 6)]).await.expect("push");
    let rest = read(100).await.expect("read");
    assert_eq!(rest.last().map(|(_, c)| c.at.0), Some(6), "a new entry goes after the older ones");
    assert_eq!(store.depth(CLICK_QUEUE).await.expect("depth"), 4, "a push counts");
    store.remove(CLICK_QUEUE, rest.iter().map(|(id, _)| *id).collect()).await.expect("remove");
    assert!(read(100).await.expect("read").is_empty());
    assert_eq!(store.depth(CLICK_QUEUE).await.expect("depth"), 0);

    let other = store.lease("sink:webhook", 10).await.expect("lease");
    assert_eq!(other.iter().map(|(_, r)| r.as_slice()).collect::<Vec<_>>(), vec![b"x".as_slice()]);
    store.remove("sink:webhook", vec![other[0].0]).await.expect("remove");
    assert!(store.lease("sink:webhook", 10).await.expect("lease").is_empty());
    assert!(store.push("bad name", vec![]).await.is_err(), "queue names are checked");

    // A look leases nothing: what it shows is still there for a lease, and can be removed.
    store.push("dead:look", vec![b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]).await.expect("push");
    let looked = store.peek("dead:look", 2).await.expect("peek");
    assert_eq!(looked.iter().map(|(_, r)| r.as_slice()).collect::<Vec<_>>(), vec![b"1".as_slice(), b"2".as_slice()]);
    assert_eq!(store.peek("dead:look", 10).await.expect("peek").len(), 3, "a look again sees all");
    store.remove("dead:look", vec![looked[0].0]).await.expect("remove what was looked at");
    let leased = store.lease("dead:look", 10).await.expect("lease");
    assert_eq!(leased.iter().map(|(_, r)| r.as_slice()).collect::<Vec<_>>(), vec![b"2".as_slice(), b"3".as_slice()]);
    assert_eq!(store.peek("dead:look", 10).await.expect("peek").len(), 2, "leased entries are still seen");
    store.remove("dead:look", leased.iter().map(|(id, _)| *id).collect()).await.expect("remove");
    assert!(store.peek("dead:look", 10).await.expect("peek").is_empty());
}

fn query(account: u64, ids: Option<Vec<u64>>, offset: usize, limit: usize) -> NotesQuery {
    NotesQuery { account: AccountId(account), entity_type: EntityType::Contacts, entity_ids: ids, offset, limit }
}

async fn notes_journal<S: Store>(store: &S) {
    assert!(store.list_notes(query(1, None, 0, 10)).await.expect("list").is_empty());
    let n = |id, contact, at| note(id, 1, contact, at);
    store.append_notes(vec![n(5, 20, 300), n(3, 10, 200), n(4, 10, 100)]).await.expect("append");
    store.append_notes(vec![note(6, 2, 10, 50), n(7, 30, 10)]).await.expect("append");
    // Redelivery of the same note is not a second note.
    store.append_notes(vec![n(3, 10, 200)]).await.expect("append");

    let ids = |notes: Vec<Note>| notes.iter().map(|n| n.id).collect::<Vec<_>>();
    assert_eq!(ids(store.list_notes(query(1, Some(vec![10]), 0, 10)).await.expect("list")), vec![4, 3], "time order");
    assert_eq!(
        ids(store.list_notes(query(1, None, 0, 10)).await.expect("list")),
        vec![4, 3, 5, 7],
        "by entity, then time"
    );
    assert_eq!(ids(store.list_notes(query(1, None, 1, 2)).await.expect("list")), vec![3, 5], "offset and limit");
    assert_eq!(ids(store.list_notes(query(1, None, 4, 2)).await.expect("list")), Vec::<u64>::new(), "past the end");
    assert_eq!(ids(store.list_notes(query(1, Some(vec![10, 30]), 0, 10)).await.expect("list")), vec![4, 3, 7]);
    assert_eq!(ids(store.list_notes(query(1, Some(vec![10, 30]), 2, 10)).await.expect("list")), vec![7]);
    assert_eq!(ids(store.list_notes(query(1, Some(vec![99]), 0, 10)).await.expect("list")), Vec::<u64>::new());
    assert_eq!(ids(store.list_notes(query(2, None, 0, 10)).await.expect("list")), vec![6], "accounts are isolated");
    let stored = store.list_notes(query(2, None, 0, 1)).await.expect("list");
    assert_eq!(stored, vec![note(6, 2, 10, 50)], "notes read back whole");
}

async fn tokens<S: Store>(store: &S) {
    let token = |id: &str| ApiToken {
        id: id.into(),
        hash: [7; 32],
        account: AccountId(1),
        user: UserId(2),
        scope: ContactScope::only(vec![3, 1]),
        created_at: Timestamp(5),
        revoked_at: None,
    };
    assert_eq!(store.get_token("b").await.expect("get"), None);
    store.put_token(token("b")).await.expect("put");
    store.put_token(token("a")).await.expect("put");
    assert_eq!(store.get_token("b").await.expect("get"), Some(token("b")));
    let mut revoked = token("b");
    revoked.revoked_at = Some(Timestamp(9));
    store.put_token(revoked.clone()).await.expect("put");
    assert_eq!(store.get_token("b").await.expect("get"), Some(revoked.clone()));
    assert_eq!(store.list_tokens().await.expect("list"), vec![token("a"), revoked], "id order");
}

async fn installation_secret<S: Store>(store: &S) {
    let first = InstallationSecret::from_bytes([1; 32]);
    let second = InstallationSecret::from_bytes([2; 32]);
    assert_eq!(store.installation_secret(first.clone()).await.expect("secret"), first);
    assert_eq!(store.installation_secret(second).await.expect("secret"), first, "the first secret stays");
}

async fn rate_limits<S: Store>(store: &S) {
    // One a minute, three at once: the burst goes through, the fourth waits most of a minute.
    let rate = Rate::new(1, 3);
    let slow = Rate::new(1, 1);
    for _ in 0..3 {
        assert_eq!(store.take("api:a", rate).await.expect("take"), None, "within the burst");
    }
    let wait = store.take("api:a", rate).await.expect("take").expect("over the burst, a request waits");
    assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
    let again = store.take("api:a", rate).await.expect("take").expect("a refused request took nothing");
    assert!(again <= wait, "waiting only shortens: {again:?} after {wait:?}");
    assert_eq!(store.take("api:b", slow).await.expect("take"), None, "keys are independent");
    assert!(store.take("api:b", slow).await.expect("take").is_some());
}

const HOUR: u64 = 3_600_000;
/// The dedup window alone, no cap.
const UNCAPPED: VisitRules = VisitRules { window_ms: HOUR, notes_per_link: 0 };

/// A claim on link `link` by client `client`.
fn claim(link: u8, client: u8, at: u64, note_id: u64) -> VisitClaim {
    let mut key = [client; 16];
    key[0] = link;
    VisitClaim { link: [link; 16], key, at: Timestamp(at), note_id }
}

async fn visit_ledger<S: Store>(store: &S) {
    use Claimed::{Note, Repeat};
    let claims = vec![
        claim(1, 1, 1_000, 11),            // a first visit is a note
        claim(1, 1, 2_000, 12),            // a repeat within the window is not
        claim(1, 1, 1_000, 11),            // a redelivery of the note is
        claim(1, 2, 2_000, 13),            // keys are independent
        claim(1, 1, 1_000 + HOUR - 1, 14), // still within the window
    ];
    let got = store.claim_visits(claims, UNCAPPED).await.expect("claim");
    assert_eq!(got, vec![Note, Repeat, Note, Note, Repeat]);
    let later = vec![claim(1, 1, 1_000 + HOUR, 15), claim(1, 1, 1_000 + HOUR + 5, 16)];
    let got = store.claim_visits(later, UNCAPPED).await.expect("claim");
    assert_eq!(got, vec![Note, Repeat], "after the window a new note, and the window restarts from it");
    assert!(store.claim_visits(Vec::new(), UNCAPPED).await.expect("claim").is_empty());

    // Whatever a backend forgets, marks made at or after the time given stay: the mark of
    // link 1's client 1 is at 1_000 + HOUR.
    store.forget_visits(Timestamp(1_000 + HOUR)).await.expect("forget");
    let got = store.claim_visits(vec![claim(1, 1, 1_000 + HOUR + 9, 17)], UNCAPPED).await.expect("claim");
    assert_eq!(got, vec![Repeat], "a mark made at the sweep's time was forgotten");
}

async fn link_cap<S: Store>(store: &S) {
    use Claimed::{Note, OverLinkCap, Repeat};
    let rules = VisitRules { window_ms: HOUR, notes_per_link: 3 };
    // Link 7: five clients within the window; the cap of three holds, and a refused
    // visit sets no mark and takes no place.
    let claims: Vec<_> =
        (1..=5).map(|client| claim(7, client, 1_000 * u64::from(client), 70 + u64::from(client))).collect();
    let got = store.claim_visits(claims, rules).await.expect("claim");
    assert_eq!(got, vec![Note, Note, Note, OverLinkCap, OverLinkCap]);
    let again = vec![
        claim(7, 1, 6_000, 81), // a repeat stays a repeat, the cap aside
        claim(7, 2, 2_000, 72), // a redelivered note stays a note, and is not counted twice
        claim(8, 1, 6_000, 82), // links are independent
        claim(7, 6, 7_000, 83),
    ];
    assert_eq!(store.claim_visits(again, rules).await.expect("claim"), vec![Repeat, Note, Note, OverLinkCap]);
    // Once the first note's window has passed, one place is free again; and with no cap,
    // the link takes every new client.
    let after = vec![claim(7, 4, 1_000 + HOUR, 91), claim(7, 5, 1_000 + HOUR, 92)];
    assert_eq!(store.claim_visits(after, rules).await.expect("claim"), vec![Note, OverLinkCap]);
    assert_eq!(store.claim_visits(vec![claim(7, 5, 1_000 + HOUR, 92)], UNCAPPED).await.expect("claim"), vec![Note]);
}

/// A dispatcher's batch holds thousands of claims and notes, which a backend may split
/// (Redis: into script calls and pipelines): each answer still lands at its claim, a link's claims are
/// still decided in batch order, and every note is written once.
async fn large_batches<S: Store>(store: &S) {
    use Claimed::{Note, OverLinkCap, Repeat};
    const LINKS: u16 = 700;
    // Each claim a note id of its own: a repeat is not a redelivery.
    let wide = |link: u16, client: u8, at: u64| {
        let mut id = [0u8; 16];
        id[..2].copy_from_slice(&link.to_be_bytes());
        id[2] = 0xba;
        let mut key = id;
        key[15] = client;
        VisitClaim { link: id, key, at: Timestamp(at), note_id: u64::from(link) << 32 | at }
    };
    // Round by round over every link, so that one link's claims lie far apart.
    let mut claims = Vec::new();
    let mut expected = Vec::new();
    for (round, (client, answer)) in [(1, Note), (1, Repeat), (2, Note), (3, OverLinkCap)].into_iter().enumerate() {
        for link in 0..LINKS {
            claims.push(wide(link, client, 50_000 + round as u64));
            expected.push(answer);
        }
    }
    let rules = VisitRules { window_ms: HOUR, notes_per_link: 2 };
    assert_eq!(store.claim_visits(claims, rules).await.expect("claim"), expected);
    // Without a cap (Redis: plain commands, and the script for a mark past its window),
    // on links of their own: a window's repeat, a later window's note and its repeat.
    let mut claims = Vec::new();
    let mut expected = Vec::new();
    let rounds =
        [(0, 1, Note), (1, 1, Repeat), (2, 2, Note), (HOUR, 1, Note), (HOUR + 1, 1, Repeat), (HOUR + 2, 2, Note)];
    for (after, client, answer) in rounds {
        for link in LINKS..2 * LINKS {
            claims.push(wide(link, client, 60_000 + after));
            expected.push(answer);
        }
    }
    assert_eq!(store.claim_visits(claims, UNCAPPED).await.expect("claim"), expected);

    // Links read in one call: found or not, each in its place, a code asked twice twice.
    let stored: Vec<Link> =
        (0..LINKS).map(|i| link(&format!("BULK{i:08}"), 9, 9_000 + u64::from(i), "https://bulk.example/")).collect();
    store.insert_links(stored.clone()).await.expect("insert");
    let mut asked = Vec::new();
    let mut expected = Vec::new();
    for (i, l) in stored.iter().enumerate() {
        asked.push(l.code);
        expected.push(Some(l.clone()));
        if i % 7 == 0 {
            asked.push(ShortCode::from_key(format!("NONE{i:08}").as_bytes()).expect("base62 code"));
            expected.push(None);
        }
    }
    asked.push(stored[5].code);
    expected.push(Some(stored[5].clone()));
    assert_eq!(store.get_links(&asked).await.expect("get links"), expected);
    assert!(store.get_links(&[]).await.expect("get links").is_empty());

    let notes: Vec<_> = (0..u64::from(LINKS) * 2).map(|i| note(900_000 + i, 9, 9_000 + i / 2, 1_000 + i)).collect();
    store.append_notes(notes.clone()).await.expect("append");
    store.append_notes(notes[..10].to_vec()).await.expect("append a copy again");
    let every = store.list_notes(query(9, None, 0, 10_000)).await.expect("list");
    assert_eq!(every.len(), notes.len(), "each note once");
    let of_one = store.list_notes(query(9, Some(vec![9_000 + 123]), 0, 10)).await.expect("list");
    assert_eq!(of_one, notes[246..248].to_vec());
}

/// For backends that sweep their ledger themselves (not [`run`]'s part: Redis marks expire
/// by TTL instead): marks made before the time given are forgotten, the rest stay; so do
/// link counts.
pub async fn forgets_visits_before<S: Store>(store: &S) {
    use Claimed::{Note, OverLinkCap, Repeat};
    let first = vec![claim(1, 1, 1_000, 11), claim(2, 2, 2_000, 22), claim(3, 3, 3_000, 33)];
    assert_eq!(store.claim_visits(first, UNCAPPED).await.expect("claim"), vec![Note; 3]);
    assert_eq!(store.forget_visits(Timestamp(2_001)).await.expect("forget"), 2);
    assert_eq!(store.forget_visits(Timestamp(2_001)).await.expect("forget"), 0, "nothing left to forget");
    // Forgotten marks no longer hold repeats back; the kept one does.
    let repeats = vec![claim(1, 1, 4_000, 14), claim(2, 2, 4_000, 24), claim(3, 3, 4_000, 34)];
    assert_eq!(store.claim_visits(repeats, UNCAPPED).await.expect("claim"), vec![Note, Note, Repeat]);

    // A link's count is swept with its notes' times, and only then.
    let one = VisitRules { window_ms: HOUR, notes_per_link: 1 };
    assert_eq!(store.claim_visits(vec![claim(5, 1, 10_000, 51)], one).await.expect("claim"), vec![Note]);
    store.forget_visits(Timestamp(10_000)).await.expect("forget");
    assert_eq!(store.claim_visits(vec![claim(5, 2, 11_000, 52)], one).await.expect("claim"), vec![OverLinkCap]);
    store.forget_visits(Timestamp(10_001)).await.expect("forget");
    assert_eq!(store.claim_visits(vec![claim(5, 3, 12_000, 53)], one).await.expect("claim"), vec![Note]);
}

async fn credentials<S: Store>(store: &S) {
    let name = "test.oauth";
    assert_eq!(store.credential(name).await.expect("read"), None);
    assert!(!store.swap_credential(name, Some(b"x".to_vec()), b"a".to_vec()).await.expect("swap"), "nothing was there");
    assert!(store.swap_credential(name, None, b"a".to_vec()).await.expect("swap"), "first value");
    assert!(!store.swap_credential(name, None, b"b".to_vec()).await.expect("swap"), "something is there now");
    assert!(!store.swap_credential(name, Some(b"stale".to_vec()), b"b".to_vec()).await.expect("swap"));
    assert_eq!(store.credential(name).await.expect("read"), Some(b"a".to_vec()), "a lost swap stores nothing");
    assert!(store.swap_credential(name, Some(b"a".to_vec()), vec![0, 255, 1]).await.expect("swap"));
    assert_eq!(store.credential(name).await.expect("read"), Some(vec![0, 255, 1]), "any bytes");
    assert_eq!(store.credential("test.other").await.expect("read"), None, "names are independent");
}

async fn address_ledger<S: Store>(store: &S) {
    let (a, b) = ([7; 16], [8; 16]);
    let rule = AddressRule::default(); // three contacts within a minute
    let seen = |address, contact, at| Sighting { address, contact, at: Timestamp(at) };
    let span = |from, to| GatewaySpan { from: Timestamp(from), to: Timestamp(to) };
    let all = |address| store.gateway_spans(address, Timestamp(0), Timestamp(u64::MAX));
    assert!(all(a).await.expect("read").is_empty());
    // Address a: contact 1 twice, then 2 and 3; b: one contact, many times.
    let sightings = vec![
        seen(a, 1, 100_000),
        seen(b, 9, 100_000),
        seen(a, 1, 130_000),
        seen(a, 2, 140_000),
        seen(b, 9, 150_000),
        seen(a, 3, 150_000),
    ];
    store.sight(sightings.clone(), rule, 600_000).await.expect("sight");
    assert_eq!(all(a).await.expect("read"), [span(90_000, 150_000)], "a window up to the third contact");
    assert!(all(b).await.expect("read").is_empty(), "one person");
    store.sight(sightings, rule, 600_000).await.expect("sighting again changes nothing");
    assert_eq!(all(a).await.expect("read"), [span(90_000, 150_000)]);
    // A fourth contact extends the span; a gateway again much later makes a second one.
    store.sight(vec![seen(a, 4, 170_000)], rule, 600_000).await.expect("sight");
    let later = vec![seen(a, 5, 400_000), seen(a, 6, 400_001), seen(a, 7, 400_002)];
    store.sight(later, rule, 600_000).await.expect("sight");
    assert_eq!(all(a).await.expect("read"), [span(90_000, 170_000), span(340_002, 400_002)]);
    // Only the spans that overlap the range asked for, both ends included.
    let from_to = |from, to| store.gateway_spans(a, Timestamp(from), Timestamp(to));
    assert_eq!(from_to(170_000, 340_002).await.expect("read"), all(a).await.expect("read"));
    assert_eq!(from_to(0, 90_000).await.expect("read"), [span(90_000, 170_000)]);
    assert!(from_to(170_001, 340_001).await.expect("read").is_empty());
    // The rule's own numbers decide: two contacts within a minute, by a rule of two.
    let pairs = AddressRule { contacts: 2, ..rule };
    store.sight(vec![seen(b, 8, 160_000)], pairs, 600_000).await.expect("sight");
    assert_eq!(all(b).await.expect("read"), [span(100_000, 160_000)]);
    // Whatever a backend forgets, spans that end at or after the time given stay.
    store.forget_sightings(Timestamp(170_000)).await.expect("forget");
    assert_eq!(all(a).await.expect("read"), [span(90_000, 170_000), span(340_002, 400_002)]);
}

/// A gateway's `thousands` thousand clicks from one address, each to another contact and
/// within a minute, cost a tally of constant size: what the backend keeps for the address
/// is counted by `held` (entries of any kind).
pub async fn a_gateways_tally_stays_small<S: Store, F, Fut>(store: &S, thousands: u64, held: F)
where
    F: Fn([u8; 16]) -> Fut,
    Fut: Future<Output = usize>,
{
    let address = [3; 16];
    let rule = AddressRule::default();
    for batch in 0..thousands {
        let sightings = (0..1_000u64)
            .map(|n| Sighting { address, contact: batch * 1_000 + n, at: Timestamp(1_000_000 + batch * 50 + n / 20) })
            .collect();
        store.sight(sightings, rule, 600_000).await.expect("sight");
    }
    let spans = store.gateway_spans(address, Timestamp(0), Timestamp(u64::MAX)).await.expect("read");
    let last = 1_000_000 + (thousands - 1) * 50 + 49;
    assert_eq!(spans, [GatewaySpan { from: Timestamp(940_000), to: Timestamp(last) }], "one span, merged");
    let held = held(address).await;
    assert!(held <= AddressTally::MOST_CONTACTS + AddressTally::MOST_SPANS, "{held} entries for one address");
}

/// For backends that sweep sightings themselves (not Redis: a TTL): those before the time
/// given are gone.
pub async fn forgets_sightings_before<S: Store>(store: &S) {
    let seen = |contact, at| Sighting { address: [1; 16], contact, at: Timestamp(at) };
    let rule = AddressRule::default();
    store
        .sight(vec![seen(1, 1_000), seen(2, 2_000), seen(3, 3_000), seen(4, 200_000)], rule, 60_000)
        .await
        .expect("sight");
    assert_eq!(store.forget_sightings(Timestamp(3_001)).await.expect("forget"), 4, "three contacts and a span");
    let all = store.gateway_spans([1; 16], Timestamp(0), Timestamp(u64::MAX)).await.expect("read");
    assert!(all.is_empty());
    // What is left still counts: two more contacts with the fourth make a span.
    store.sight(vec![seen(5, 200_001), seen(6, 200_002)], rule, 60_000).await.expect("sight");
    assert_eq!(
        store.gateway_spans([1; 16], Timestamp(0), Timestamp(u64::MAX)).await.expect("read"),
        [GatewaySpan { from: Timestamp(140_002), to: Timestamp(200_002) }]
    );
}
