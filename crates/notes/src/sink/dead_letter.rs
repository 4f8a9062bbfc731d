//! Notes a receiver refused for good, kept in their sink's dead-letter queue
//! (`dead:<name>[:<account>]`) with why and when, and what an operator does with them:
//! look, put them back on their sink's queue, or delete them.
//!
//! An operator acts for one account: a sink that serves every account (the webhook) keeps
//! every account's dead letters in one queue, and only that account's are touched.
//!
//! Crash safety: a replay pushes the notes onto the sink's queue before it removes them
//! here, so a crash between the two leaves a copy, never a loss; the copy is replayed
//! again or purged. A purge removes only what it counted, and only once the operator has
//! confirmed that count.

use serde::{Deserialize, Serialize};
use shortlinks_core::model::{EntryId, Note};
use shortlinks_core::store::{decode, Queues, RecordQueues};
use shortlinks_core::{AccountId, Timestamp};

use super::SinkKeys;
use crate::Error;

/// The most dead letters one command reads; a larger queue takes more than one run.
pub const MOST_AT_ONCE: usize = 100_000;

/// A note refused for good.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The note, as it would have been delivered.
    pub note: Note,
    /// The receiver's words, or ours.
    pub reason: String,
    /// When it was set aside.
    pub at: Timestamp,
}

impl DeadLetter {
    /// A stored record: a dead letter, or a bare note set aside by a release that kept no
    /// reason (dated by the note).
    pub fn decode(bytes: &[u8]) -> Result<Self, shortlinks_core::Error> {
        decode::<DeadLetter>(bytes).or_else(|_| {
            let note: Note = decode(bytes)?;
            Ok(DeadLetter { at: note.created_at, reason: "(kept without its reason)".into(), note })
        })
    }
}

/// What a purge did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purge {
    /// Nothing yet: this many would go; run again confirming the count.
    ToConfirm(usize),
    /// This many went.
    Purged(usize),
}

/// One account's dead letters in one sink.
pub struct DeadLetters<'a, S> {
    store: &'a S,
    keys: SinkKeys,
    account: AccountId,
}

impl<'a, S: Queues> DeadLetters<'a, S> {
    /// `account`'s dead letters in the sink `keys` names.
    pub fn new(store: &'a S, keys: SinkKeys, account: AccountId) -> Self {
        Self { store, keys, account }
    }

    /// The account's dead letters, oldest first (up to [`MOST_AT_ONCE`]), with their ids.
    async fn read(&self) -> Result<Vec<(EntryId, DeadLetter)>, Error> {
        let raw = self.store.peek(&self.keys.dead_letters(), MOST_AT_ONCE).await?;
        let mut mine = Vec::new();
        for (id, bytes) in raw {
            let letter = DeadLetter::decode(&bytes)?;
            if letter.note.account == self.account {
                mine.push((id, letter));
            }
        }
        Ok(mine)
    }

    /// How many there are, and the first `limit`.
    pub async fn list(&self, limit: usize) -> Result<(usize, Vec<DeadLetter>), Error> {
        let all = self.read().await?;
        let count = all.len();
        Ok((count, all.into_iter().take(limit).map(|(_, letter)| letter).collect()))
    }

    /// Puts them back on the sink's queue; how many.
    pub async fn replay(&self) -> Result<usize, Error> {
        let letters = self.read().await?;
        if letters.is_empty() {
            return Ok(0);
        }
        let notes: Vec<&Note> = letters.iter().map(|(_, letter)| &letter.note).collect();
        self.store.push_records(&self.keys.queue(), &notes).await?;
        self.store.remove(&self.keys.dead_letters(), letters.iter().map(|(id, _)| *id).collect()).await?;
        Ok(letters.len())
    }

    /// Deletes them, if `confirmed` is their count; otherwise tells the count.
    pub async fn purge(&self, confirmed: Option<usize>) -> Result<Purge, Error> {
        let letters = self.read().await?;
        if confirmed != Some(letters.len()) {
            return Ok(Purge::ToConfirm(letters.len()));
        }
        self.store.remove(&self.keys.dead_letters(), letters.iter().map(|(id, _)| *id).collect()).await?;
        Ok(Purge::Purged(letters.len()))
    }
}

/// Removes the entries of `queue` (the first [`MOST_AT_ONCE`]) whose record `matches`;
/// how many. An erasure's and the retention's way through a queue.
pub(crate) async fn remove_where<S: Queues>(
    store: &S,
    queue: &str,
    matches: impl Fn(&[u8]) -> bool,
) -> Result<usize, Error> {
    let found: Vec<EntryId> = store
        .peek(queue, MOST_AT_ONCE)
        .await?
        .into_iter()
        .filter(|(_, bytes)| matches(bytes))
        .map(|(id, _)| id)
        .collect();
    let count = found.len();
    if count > 0 {
        store.remove(queue, found).await?;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use shortlinks_core::store::{conformance, encode, RecordQueues};
    use shortlinks_core::MemoryStore;

    use super::*;

    #[tokio::test]
    async fn an_accounts_letters_are_listed_replayed_and_purged_and_no_others() {
        let store = MemoryStore::new();
        let keys = SinkKeys::new("webhook", None);
        let letter = |id, account| DeadLetter {
            note: conformance::note(id, account, 10 + id, 5_000),
            reason: format!("refused {id}"),
            at: Timestamp(7_000),
        };
        store.push_records(&keys.dead_letters(), &[letter(1, 1), letter(2, 2), letter(3, 1)]).await.unwrap();
        // A bare note, as a release before reasons were kept set it aside.
        let bare = conformance::note(4, 1, 14, 6_000);
        store.push(&keys.dead_letters(), vec![encode(&bare).unwrap()]).await.unwrap();

        let mine = DeadLetters::new(&store, keys.clone(), AccountId(1));
        let (count, first) = mine.list(2).await.unwrap();
        assert_eq!(count, 3);
        assert_eq!(first, [letter(1, 1), letter(3, 1)]);
        let (_, all) = mine.list(10).await.unwrap();
        assert_eq!((all[2].note.id, all[2].at), (4, bare.created_at), "a bare note is dated by itself");

        assert_eq!(mine.replay().await.unwrap(), 3);
        let queued: Vec<u64> =
            store.lease_records::<Note>(&keys.queue(), 10).await.unwrap().into_iter().map(|(_, n)| n.id).collect();
        assert_eq!(queued, [1, 3, 4], "back on the sink's queue, in order");
        assert_eq!(mine.list(10).await.unwrap().0, 0);

        let theirs = DeadLetters::new(&store, keys.clone(), AccountId(2));
        assert_eq!(theirs.purge(None).await.unwrap(), Purge::ToConfirm(1));
        assert_eq!(theirs.purge(Some(2)).await.unwrap(), Purge::ToConfirm(1), "a wrong count purges nothing");
        assert_eq!(theirs.list(10).await.unwrap().0, 1);
        assert_eq!(theirs.purge(Some(1)).await.unwrap(), Purge::Purged(1));
        assert!(store.peek(&keys.dead_letters(), 10).await.unwrap().is_empty());
    }
}
