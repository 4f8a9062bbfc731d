//! Retention: notes and dead letters older than their settings are removed, by the same
//! means as an erasure (gone from every listing at once, from the files with the next
//! compaction). A running server sweeps once a day.
//!
//! A click's address and User-Agent are kept only until it is dispatched: no note carries
//! them, the outbox's handled entries leave the files with the compaction, and the address
//! rule keeps only a keyed hash of an address.

use std::time::Duration;

use shortlinks_core::{AccountId, Store, Timestamp};

use crate::sink::amocrm::connection;
use crate::sink::dead_letter::{remove_where, DeadLetter};
use crate::sink::SinkKeys;
use crate::Error;

/// How long what is kept is kept; `None`: for ever.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Notes in the journal, by when the visit was.
    pub notes: Option<Duration>,
    /// Dead letters, by when they were set aside.
    pub dead_letters: Option<Duration>,
}

impl Retention {
    /// Notes for a year, dead letters for 30 days.
    pub const DEFAULT: Retention = Retention {
        notes: Some(Duration::from_secs(365 * 86_400)),
        dead_letters: Some(Duration::from_secs(30 * 86_400)),
    };
}

/// What one sweep removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Notes.
    pub notes: u64,
    /// Dead letters.
    pub dead_letters: usize,
}

/// Removes what is older than `retention` allows at `now`: notes of every account, and the
/// dead letters of the webhook and of the amoCRM connections (those the store records, and
/// `accounts`, the settings' own).
pub async fn sweep<S: Store>(
    store: &S,
    retention: Retention,
    now: Timestamp,
    accounts: &[AccountId],
) -> Result<Swept, Error> {
    let horizon = |age: Duration| Timestamp(now.0.saturating_sub(age.as_millis() as u64));
    let mut swept = Swept::default();
    if let Some(age) = retention.notes {
        swept.notes = store.forget_notes(horizon(age)).await?;
    }
    if let Some(age) = retention.dead_letters {
        let before = horizon(age);
        let mut sinks = vec![SinkKeys::new("webhook", None)];
        let mut amocrm = connection::accounts(store).await?;
        amocrm.extend_from_slice(accounts);
        amocrm.sort_unstable();
        amocrm.dedup();
        sinks.extend(amocrm.into_iter().map(|a| SinkKeys::new("amocrm", Some(a))));
        for keys in sinks {
            let older = |bytes: &[u8]| DeadLetter::decode(bytes).is_ok_and(|letter| letter.at < before);
            swept.dead_letters += remove_where(store, &keys.dead_letters(), older).await?;
        }
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use shortlinks_core::store::{conformance, NotesJournal, NotesQuery, Queues, RecordQueues};
    use shortlinks_core::{EntityType, MemoryStore};

    use super::*;

    #[tokio::test]
    async fn what_is_older_than_its_retention_goes_and_the_rest_stays() {
        let store = MemoryStore::new();
        let day = 86_400_000;
        let now = Timestamp(1_000 * day);
        let notes = [conformance::note(1, 1, 10, now.0 - 400 * day), conformance::note(2, 1, 10, now.0 - 10 * day)];
        store.append_notes(notes.to_vec()).await.unwrap();
        let letter = |id, days_ago: u64| DeadLetter {
            note: conformance::note(id, 2, 20, now.0 - days_ago * day),
            reason: "refused".into(),
            at: Timestamp(now.0 - days_ago * day),
        };
        let amocrm = SinkKeys::new("amocrm", Some(AccountId(2)));
        store.push_records(&amocrm.dead_letters(), &[letter(3, 40), letter(4, 5)]).await.unwrap();
        let webhook = SinkKeys::new("webhook", None);
        store.push_records(&webhook.dead_letters(), &[letter(5, 31)]).await.unwrap();

        let forever = Retention { notes: None, dead_letters: None };
        assert_eq!(sweep(&store, forever, now, &[AccountId(2)]).await.unwrap(), Swept::default());
        let swept = sweep(&store, Retention::DEFAULT, now, &[AccountId(2)]).await.unwrap();
        assert_eq!(swept, Swept { notes: 1, dead_letters: 2 });
        let query = NotesQuery {
            account: AccountId(1),
            entity_type: EntityType::Contacts,
            entity_ids: None,
            offset: 0,
            limit: 10,
        };
        assert_eq!(store.list_notes(query).await.unwrap(), [notes[1].clone()]);
        let left = store.peek(&amocrm.dead_letters(), 10).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(DeadLetter::decode(&left[0].1).unwrap(), letter(4, 5));
        assert!(store.peek(&webhook.dead_letters(), 10).await.unwrap().is_empty());
    }
}
