//! Erasing a contact: its links (their codes buried: `410 Gone`, never issued again), its
//! notes in the journal, and its notes still waiting in a sink's queue or set aside there
//! as dead letters.
//!
//! What is not touched, and why:
//! - clicks on its links still in the outbox (held at most the note hold): the dispatcher
//!   finds no link for them and drops them, as clicks on an unknown code;
//! - visit marks: keyed hashes of a link and a client, naming neither;
//! - sightings: a keyed hash of an address and a contact id, forgotten with the address
//!   rule's window.
//!
//! A note may be in flight while a contact is erased: read from its link a moment before,
//! and written a moment after. [`settle`] sweeps the journal and the queues again once
//! every node has dropped the links from its cache ([`SETTLE`]).
//!
//! An erasure can be repeated: a second one finishes what a crash cut short.

use std::time::Duration;

use shortlinks_core::model::{EntityRef, Note};
use shortlinks_core::store::decode;
use shortlinks_core::{AccountId, Shortener, Store};

use crate::sink::dead_letter::{remove_where, DeadLetter};
use crate::sink::SinkKeys;
use crate::Error;

/// How long after an erasure a note in flight may still be written: the bound within which
/// every node hears of it and drops the links from its cache (one look a second), and a
/// dispatcher's batch ends.
pub const SETTLE: Duration = Duration::from_secs(3);

/// What one erasure removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Erased {
    /// Links (their codes now answer `410 Gone`).
    pub links: usize,
    /// Notes in the journal.
    pub notes: u64,
    /// Notes waiting for a sink.
    pub waiting: usize,
    /// Dead letters.
    pub dead_letters: usize,
}

impl Erased {
    /// Adds what another erasure, or a later sweep, removed.
    pub fn add(&mut self, other: &Erased) {
        self.links += other.links;
        self.notes += other.notes;
        self.waiting += other.waiting;
        self.dead_letters += other.dead_letters;
    }
}

/// Erases `entity` of `account`: its links first, so that no new note can be made of
/// them, then what notes of it exist.
pub async fn erase<S: Store>(
    engine: &Shortener<S>,
    store: &S,
    account: AccountId,
    entity: EntityRef,
) -> Result<Erased, Error> {
    let links = engine.erase(account, entity).await?.len();
    let mut erased = sweep(store, account, entity).await?;
    erased.links = links;
    Ok(erased)
}

/// Sweeps the entities' notes again after [`SETTLE`], for any written by a batch that read
/// a link before the erasure; what it found.
pub async fn settle<S: Store>(store: &S, account: AccountId, entities: &[EntityRef]) -> Result<Erased, Error> {
    tokio::time::sleep(SETTLE).await;
    let mut late = Erased::default();
    for &entity in entities {
        late.add(&sweep(store, account, entity).await?);
    }
    if late != Erased::default() {
        tracing::info!(account = account.0, ?late, "notes in flight during an erasure were erased after it");
    }
    Ok(late)
}

/// The entity's notes: in the journal, waiting, and dead-lettered.
async fn sweep<S: Store>(store: &S, account: AccountId, entity: EntityRef) -> Result<Erased, Error> {
    let mut erased = Erased { notes: store.erase_notes(account, entity).await?, ..Erased::default() };
    let ours = |note: &Note| note.account == account && note.entity == entity;
    for keys in [SinkKeys::new("amocrm", Some(account)), SinkKeys::new("webhook", None)] {
        erased.waiting +=
            remove_where(store, &keys.queue(), |bytes| decode::<Note>(bytes).is_ok_and(|n| ours(&n))).await?;
        let dead = |bytes: &[u8]| DeadLetter::decode(bytes).is_ok_and(|letter| ours(&letter.note));
        erased.dead_letters += remove_where(store, &keys.dead_letters(), dead).await?;
    }
    Ok(erased)
}
