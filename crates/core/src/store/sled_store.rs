//! The embedded default backend: sled 0.34, in one directory.
//!
//! Trees (all values are [`crate::codec`] records):
//!
//! | tree        | key                                               | value        |
//! |-------------|---------------------------------------------------|--------------|
//! | `by_entity` | account u64 ‖ type u8 ‖ entity u64 ‖ code bytes   | empty        |
//! | `queue_heads` | queue name                                      | the head's position (16 bytes) |
//! | `visits`    | 16-byte visit key (link, client)                  | `VisitMark`  |
//! | `link_notes` | 16-byte link key                                 | times of the link's recent notes (`Vec<u64>`) |
//! | `sightings` | 16-byte address key ‖ at u64 ‖ contact u64         | empty        |
//! | `notes`     | account u64 ‖ type u8 ‖ entity u64 ‖ at u64 ‖ id u64 | `Note`    |
//! | `tokens`    | token id                                          | `ApiToken`   |
//! | default     | `installation_secret`                             | 32 raw bytes |
//! | default     | `credential:<name>`                               | a credential's bytes (see `CredentialStore`) |
//!
//! Integers in keys are big-endian, so scans come out in numeric order.
//!
//! Links are not in sled: they are one append-only file, `links.log`, indexed in memory
//! (see [`LinkLog`] for why). Nor are queues: each is a directory of append-only files under
//! `queues/` (see [`QueueLog`]); sled keeps only each queue's head, without a flush of its
//! own.
//!
//! Reads run inline: sled serves them from its page cache, a link is one positional read,
//! and the hot path puts its own cache in front. Anything that writes or flushes (an fsync)
//! runs on tokio's blocking pool.
//!
//! A flush is sled's own (`sync_file_range` on Linux, which neither records the log's new
//! length nor empties the disk's write cache) followed by an `fdatasync` of sled's log file,
//! which does both: without it, a flushed write could still be lost on power loss.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::link_log::LinkLog;
use super::queue_log::{Position, QueueLog, SEGMENT_BYTES};
use super::rate::LocalRates;
use super::{
    check_queue_name, decide_visit, keys, AddressLedger, Claimed, CredentialStore, InsertOutcome, LinkStore,
    NotesJournal, NotesQuery, Queues, Rate, RateLimiter, SecretStore, Sighting, Store, TokenStore, VisitClaim,
    VisitLedger, VisitRules,
};
use crate::code::{InstallationSecret, ShortCode};
use crate::codec::{decode, encode};
use crate::model::{AccountId, ApiToken, EntityRef, EntryId, Link, Note, Timestamp, VisitMark};
use crate::Error;

const SECRET_KEY: &[u8] = b"installation_secret";

/// A sled database. Cheap to clone: clones share the open database.
#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    links: Arc<LinkLog>,
    by_entity: sled::Tree,
    queue_heads: sled::Tree,
    queues: Arc<OpenQueues>,
    visits: sled::Tree,
    link_notes: sled::Tree,
    sightings: sled::Tree,
    /// Claims move a visit's mark and its link's count together: one claim at a time
    /// (one process owns a sled directory, so a process lock is enough).
    claiming: Arc<Mutex<()>>,
    notes: sled::Tree,
    tokens: sled::Tree,
    /// sled's log file, opened again only to `fdatasync` it: see the module comment.
    sled_log: Arc<File>,
    rates: Arc<Mutex<LocalRates>>,
}

/// The queues' files, each opened on first use.
struct OpenQueues {
    dir: PathBuf,
    open: Mutex<HashMap<String, Arc<QueueLog>>>,
}

/// Opens sled, waiting a moment for its directory lock if this process just let go of it:
/// sled's flusher thread releases the lock shortly after the last handle is dropped, so a
/// reopen in the same process (an embedding host, a test) could otherwise fail. Another
/// process holding the directory still fails, a second later.
fn open_sled(dir: &Path, cache_bytes: u64) -> Result<sled::Db, Error> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match sled::Config::new().path(dir).cache_capacity(cache_bytes).open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            opened => return opened.map_err(Error::storage),
        }
    }
}

impl SledStore {
    /// sled's page cache by default: 64 MiB (sled's own default is 1 GiB). Small, because
    /// links are not in sled and the link cache serves the redirect.
    pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

    /// Opens (or creates) the database in `dir`. sled locks the directory: one process at a time.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        Self::open_with_cache(dir, Self::DEFAULT_CACHE_BYTES)
    }

    /// As [`SledStore::open`], with sled's page cache limited to `cache_bytes`.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, Error> {
        let db = open_sled(dir, cache_bytes)?;
        // sled 0.34 keeps its whole log in `db`; the version is pinned, so is the name.
        let log = File::open(dir.join("db"))
            .map_err(|e| Error::Storage(format!("cannot open sled's log file for fsync: {e}").into()))?;
        let store = Self {
            sled_log: Arc::new(log),
            links: Arc::new(LinkLog::open(dir)?),
            by_entity: db.open_tree("by_entity").map_err(Error::storage)?,
            queue_heads: db.open_tree("queue_heads").map_err(Error::storage)?,
            queues: Arc::new(OpenQueues { dir: dir.join("queues"), open: Mutex::default() }),
            visits: db.open_tree("visits").map_err(Error::storage)?,
            link_notes: db.open_tree("link_notes").map_err(Error::storage)?,
            sightings: db.open_tree("sightings").map_err(Error::storage)?,
            claiming: Arc::default(),
            notes: db.open_tree("notes").map_err(Error::storage)?,
            tokens: db.open_tree("tokens").map_err(Error::storage)?,
            rates: Arc::default(),
            db,
        };
        Ok(store)
    }

    /// A queue's files, opened (or made) on first use, at the head kept in sled.
    fn queue(&self, name: &str) -> Result<Arc<QueueLog>, Error> {
        check_queue_name(name)?;
        let mut open = self.queues.open.lock();
        if let Some(log) = open.get(name) {
            return Ok(log.clone());
        }
        let head = self.queue_heads.get(name).map_err(Error::storage)?.and_then(|bytes| Position::from_bytes(&bytes));
        let log = Arc::new(QueueLog::open(&self.queues.dir.join(name), head, SEGMENT_BYTES)?);
        open.insert(name.to_owned(), log.clone());
        Ok(log)
    }

    /// Runs blocking work on tokio's blocking pool.
    async fn blocking<T, F>(&self, work: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&SledStore) -> Result<T, Error> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || work(&store)).await.map_err(Error::storage)?
    }

    fn flush_now(&self) -> Result<(), Error> {
        self.db.flush().map_err(Error::storage)?;
        self.sled_log.sync_data().map_err(Error::storage)
    }

    /// Appends the links to the log (durable when it returns), then writes the index
    /// entries of their owners. A crash in between leaves a link without its index entry
    /// (never the reverse), and a retry heals it: an occupied code's entry is written again.
    ///
    /// The entries are plain inserts, not a `Batch`: sled 0.34's first batch or transaction
    /// in a process makes every later operation of every tree take a global lock (its
    /// `concurrency_control`).
    fn insert_unflushed(&self, links: &[Link]) -> Result<Vec<InsertOutcome>, Error> {
        let outcomes = self.links.insert(links)?;
        for (link, outcome) in links.iter().zip(&outcomes) {
            let owner = match outcome {
                InsertOutcome::Inserted => link,
                InsertOutcome::Occupied(existing) => existing,
            };
            self.by_entity
                .insert(keys::link_index_key(owner.account, owner.entity, owner.code.as_bytes()), &[] as &[u8])
                .map_err(Error::storage)?;
        }
        Ok(outcomes)
    }
}

impl LinkStore for SledStore {
    async fn insert_links(&self, links: Vec<Link>) -> Result<Vec<InsertOutcome>, Error> {
        self.blocking(move |s| {
            let outcomes = s.insert_unflushed(&links)?;
            s.flush_now()?;
            Ok(outcomes)
        })
        .await
    }

    async fn get_link(&self, code: &ShortCode) -> Result<Option<Link>, Error> {
        self.links.get(code)
    }

    async fn links_of(&self, account: AccountId, entity: EntityRef) -> Result<Vec<Link>, Error> {
        let prefix = keys::entity_prefix(account, entity);
        let mut links = Vec::new();
        for entry in self.by_entity.scan_prefix(prefix) {
            let (key, _) = entry.map_err(Error::storage)?;
            let code = ShortCode::from_key(&key[prefix.len()..])
                .ok_or_else(|| Error::Corrupt("bad code in the entity index".into()))?;
            if let Some(link) = self.get_link(&code).await? {
                links.push(link);
            }
        }
        Ok(links)
    }
}

impl Queues for SledStore {
    async fn push(&self, queue: &str, records: Vec<Vec<u8>>) -> Result<(), Error> {
        let queue = queue.to_owned();
        self.blocking(move |s| s.queue(&queue)?.push(&records)).await
    }

    async fn lease(&self, queue: &str, max: usize) -> Result<Vec<(EntryId, Vec<u8>)>, Error> {
        let queue = queue.to_owned();
        self.blocking(move |s| s.queue(&queue)?.lease(max)).await
    }

    async fn remove(&self, queue: &str, ids: Vec<EntryId>) -> Result<(), Error> {
        let queue = queue.to_owned();
        self.blocking(move |s| {
            if let Some(head) = s.queue(&queue)?.remove(&ids)? {
                // Not flushed: an old head after a crash only means entries handled again.
                s.queue_heads.insert(queue.as_bytes(), &head.to_bytes()[..]).map_err(Error::storage)?;
            }
            Ok(())
        })
        .await
    }
}

impl VisitLedger for SledStore {
    async fn claim_visits(&self, claims: Vec<VisitClaim>, rules: VisitRules) -> Result<Vec<Claimed>, Error> {
        self.blocking(move |s| {
            let _one_claim_at_a_time = s.claiming.lock();
            let capped = rules.notes_per_link > 0;
            claims
                .into_iter()
                .map(|c| {
                    let previous = s.visits.get(c.key).map_err(Error::storage)?;
                    let previous = previous.as_deref().map(decode::<VisitMark>).transpose()?;
                    let mut link_notes = match capped {
                        true => s.link_notes.get(c.link).map_err(Error::storage)?,
                        false => None,
                    }
                    .as_deref()
                    .map(decode::<Vec<u64>>)
                    .transpose()?
                    .unwrap_or_default();
                    let claimed = decide_visit(previous, &mut link_notes, &c, rules);
                    if claimed == Claimed::Note {
                        let mark = encode(&VisitMark { at: c.at, note_id: c.note_id })?;
                        s.visits.insert(c.key, mark).map_err(Error::storage)?;
                        if capped {
                            s.link_notes.insert(c.link, encode(&link_notes)?).map_err(Error::storage)?;
                        }
                    }
                    Ok(claimed)
                })
                .collect()
        })
        .await
    }

    async fn forget_visits(&self, before: Timestamp) -> Result<u64, Error> {
        // One pass over each tree on a blocking thread: sweeps are minutes apart, and the
        // trees hold about one window's visitors and links once they run.
        self.blocking(move |s| {
            let forgotten = forget_where(&s.visits, |bytes| Ok(decode::<VisitMark>(bytes)?.at < before))?;
            forget_where(&s.link_notes, |bytes| Ok(decode::<Vec<u64>>(bytes)?.iter().all(|&t| t < before.0)))?;
            Ok(forgotten)
        })
        .await
    }
}

/// Removes the entries of `tree` that `stale` picks; returns how many. Only an unchanged
/// entry goes: a claim made meanwhile stays.
fn forget_where(tree: &sled::Tree, stale: impl Fn(&[u8]) -> Result<bool, Error>) -> Result<u64, Error> {
    let mut forgotten = 0;
    for entry in tree.iter() {
        let (key, bytes) = entry.map_err(Error::storage)?;
        if stale(&bytes)?
            && tree.compare_and_swap(&key, Some(&bytes), None as Option<&[u8]>).map_err(Error::storage)?.is_ok()
        {
            forgotten += 1;
        }
    }
    Ok(forgotten)
}

impl NotesJournal for SledStore {
    async fn append_notes(&self, notes: Vec<Note>) -> Result<(), Error> {
        self.blocking(move |s| {
            for note in &notes {
                let key = keys::note_key(note.account, note.entity, note.created_at, note.id);
                // Insert-if-absent: a redelivered note leaves the first copy as it is.
                let _ = s
                    .notes
                    .compare_and_swap(key, None as Option<&[u8]>, Some(encode(note)?))
                    .map_err(Error::storage)?;
            }
            s.flush_now()
        })
        .await
    }

    /// On the blocking pool: a deep page is read through from the start of its notes.
    async fn list_notes(&self, query: NotesQuery) -> Result<Vec<Note>, Error> {
        self.blocking(move |s| s.list_notes_now(&query)).await
    }
}

impl SledStore {
    fn list_notes_now(&self, query: &NotesQuery) -> Result<Vec<Note>, Error> {
        let mut prefixes: Vec<Vec<u8>> = match &query.entity_ids {
            None => vec![keys::account_type_prefix(query.account, query.entity_type).to_vec()],
            Some(ids) => ids
                .iter()
                .map(|&id| keys::entity_prefix(query.account, EntityRef { kind: query.entity_type, id }).to_vec())
                .collect(),
        };
        prefixes.sort();
        let mut out = Vec::new();
        let mut skip = query.offset;
        for prefix in prefixes {
            for entry in self.notes.scan_prefix(prefix) {
                if out.len() == query.limit {
                    return Ok(out);
                }
                let (_, value) = entry.map_err(Error::storage)?;
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                out.push(decode(&value)?);
            }
        }
        Ok(out)
    }
}

impl TokenStore for SledStore {
    async fn put_token(&self, token: ApiToken) -> Result<(), Error> {
        self.blocking(move |s| {
            s.tokens.insert(token.id.as_bytes(), encode(&token)?).map_err(Error::storage)?;
            s.flush_now()
        })
        .await
    }

    async fn get_token(&self, id: &str) -> Result<Option<ApiToken>, Error> {
        match self.tokens.get(id.as_bytes()).map_err(Error::storage)? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn list_tokens(&self) -> Result<Vec<ApiToken>, Error> {
        self.tokens.iter().map(|entry| decode(&entry.map_err(Error::storage)?.1)).collect()
    }
}

impl RateLimiter for SledStore {
    /// In this process: one process owns the store.
    async fn take(&self, key: &str, rate: Rate) -> Result<Option<std::time::Duration>, Error> {
        Ok(LocalRates::take(&self.rates, key, rate))
    }
}

impl SecretStore for SledStore {
    async fn installation_secret(&self, candidate: InstallationSecret) -> Result<InstallationSecret, Error> {
        self.blocking(move |s| {
            let bytes = candidate.to_bytes();
            let stored = match s
                .db
                .compare_and_swap(SECRET_KEY, None as Option<&[u8]>, Some(&bytes[..]))
                .map_err(Error::storage)?
            {
                Ok(()) => {
                    s.flush_now()?;
                    return Ok(candidate);
                }
                Err(current) => current.current,
            };
            let stored: [u8; 32] = stored
                .as_deref()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| Error::Corrupt("installation secret is not 32 bytes".into()))?;
            Ok(InstallationSecret::from_bytes(stored))
        })
        .await
    }
}

impl AddressLedger for SledStore {
    async fn sight(&self, sightings: Vec<Sighting>, _keep_ms: u64) -> Result<(), Error> {
        // One batch, no flush: sled writes it out within its flush interval.
        self.blocking(move |s| {
            let mut batch = sled::Batch::default();
            for sighting in sightings {
                batch.insert(&sighting_key(sighting.address, sighting.at.0, sighting.contact)[..], &[][..]);
            }
            s.sightings.apply_batch(batch).map_err(Error::storage)
        })
        .await
    }

    async fn sightings(
        &self,
        address: [u8; 16],
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<(u64, Timestamp)>, Error> {
        let range = sighting_key(address, from.0, 0)..=sighting_key(address, to.0, u64::MAX);
        self.sightings
            .range(range)
            .map(|entry| {
                let (key, _) = entry.map_err(Error::storage)?;
                let (at, contact) = sighting_parts(&key)?;
                Ok((contact, Timestamp(at)))
            })
            .collect()
    }

    async fn forget_sightings(&self, before: Timestamp) -> Result<u64, Error> {
        self.blocking(move |s| {
            let mut forgotten = 0;
            for entry in s.sightings.iter() {
                let (key, _) = entry.map_err(Error::storage)?;
                if sighting_parts(&key)?.0 < before.0 {
                    s.sightings.remove(&key).map_err(Error::storage)?;
                    forgotten += 1;
                }
            }
            Ok(forgotten)
        })
        .await
    }
}

/// address ‖ at ‖ contact, big-endian: one address's sightings are one range, in time order.
fn sighting_key(address: [u8; 16], at: u64, contact: u64) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(&address);
    key[16..24].copy_from_slice(&at.to_be_bytes());
    key[24..].copy_from_slice(&contact.to_be_bytes());
    key
}

/// (at, contact) of a sighting's key.
fn sighting_parts(key: &[u8]) -> Result<(u64, u64), Error> {
    let part = |range: std::ops::Range<usize>| {
        key.get(range)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| Error::Corrupt("a sighting's key is not 32 bytes".into()))
    };
    Ok((part(16..24)?, part(24..32)?))
}

/// Credentials live in the default tree beside the installation secret, under this prefix.
const CREDENTIAL_PREFIX: &str = "credential:";

impl CredentialStore for SledStore {
    async fn credential(&self, name: &str) -> Result<Option<Vec<u8>>, Error> {
        let key = format!("{CREDENTIAL_PREFIX}{name}");
        Ok(self.db.get(key).map_err(Error::storage)?.map(|v| v.to_vec()))
    }

    async fn swap_credential(&self, name: &str, expected: Option<Vec<u8>>, new: Vec<u8>) -> Result<bool, Error> {
        let key = format!("{CREDENTIAL_PREFIX}{name}");
        self.blocking(move |s| {
            let swapped = s.db.compare_and_swap(key, expected, Some(new)).map_err(Error::storage)?.is_ok();
            if swapped {
                s.flush_now()?;
            }
            Ok(swapped)
        })
        .await
    }
}

impl Store for SledStore {
    async fn flush(&self) -> Result<(), Error> {
        self.blocking(SledStore::flush_now).await
    }
}

#[cfg(any(test, feature = "testing"))]
impl super::conformance::CrashFaults for SledStore {
    async fn lose_index_entry(&self, link: &Link) {
        let key = keys::link_index_key(link.account, link.entity, link.code.as_bytes());
        self.by_entity.remove(key).expect("remove an index entry");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::conformance;

    /// Listing notes scans them from the start of the scope: it runs off the runtime's
    /// threads, so other tasks go on meanwhile (here, on a one-thread runtime, they could
    /// not run at all until an inline scan returned).
    #[test]
    fn notes_are_listed_off_the_runtime_threads() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = SledStore::open(dir.path()).unwrap();
            // Enough notes that the scan to the last page takes milliseconds.
            let notes: Vec<Note> = (0..50_000).map(|i| conformance::note(i + 1, 1, 10, i)).collect();
            store.append_notes(notes).await.unwrap();
            let other_ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = other_ran.clone();
            tokio::spawn(async move { flag.store(true, std::sync::atomic::Ordering::SeqCst) });
            let query = NotesQuery {
                account: AccountId(1),
                entity_type: crate::EntityType::Contacts,
                entity_ids: None,
                offset: 49_999,
                limit: 10,
            };
            assert_eq!(store.list_notes(query).await.unwrap().len(), 1);
            assert!(other_ran.load(std::sync::atomic::Ordering::SeqCst), "the listing held the runtime's thread");
        });
    }

    /// Queue records of any size stay out of sled: a page over 128 KiB would go to a blob
    /// file that sled never syncs. Pushed, removed and kept across a reopen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queues_live_in_their_own_files_and_keep_their_head() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let big: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 300 << 10]).collect();
        store.push("clicks", big.clone()).await.unwrap();
        let leased = store.lease("clicks", 10).await.unwrap();
        assert_eq!(leased.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(), big);
        store.remove("clicks", vec![leased[0].0]).await.unwrap();
        store.flush().await.unwrap();
        drop(store);
        assert_eq!(std::fs::read_dir(dir.path().join("blobs")).unwrap().count(), 0, "no sled blob files");

        let store = SledStore::open(dir.path()).unwrap();
        let left: Vec<Vec<u8>> = store.lease("clicks", 10).await.unwrap().into_iter().map(|(_, r)| r).collect();
        assert_eq!(left, big[1..], "the removed head stays removed");
        assert!(store.push("..", vec![b"x".to_vec()]).await.is_err(), "a name must not leave the queues directory");
    }
}
