//! The embedded default backend, in one directory: files of our own, each an append-only
//! run of frames ([`frame`](super::frame)) with its index in memory. It is still called
//! `sled` in the settings, after the database that once held it (sled's files, in a
//! directory of format 1 or 2, are moved into `state.log` on the first open:
//! [`sled_import`](super::sled_import)).
//!
//! | file | what | see |
//! |------|------|-----|
//! | `links.log`, `links.index` | links and erasures, the index's checkpoint | [`LinkLog`] |
//! | `notes.log`, `notes.index` | notes, visit marks and erasures, the older notes' index | [`NotesLog`] |
//! | `queues/<name>/` | each queue's segments | [`QueueLog`] |
//! | `sightings.log`, `sightings.previous.log` | the address ledger | [`SightingsLog`] |
//! | `state.log` | tokens, tombstones, queue heads, the secret, credentials, times | [`StateLog`] |
//! | `lock` | one process at a time | [`DirLock`] |
//!
//! In `state.log` (values are [`crate::codec`] records unless said):
//!
//! | table | key | value |
//! |-------|-----|-------|
//! | `QueueHeads` | queue name | the head's position (16 bytes) |
//! | `Tokens` | token id | `ApiToken` |
//! | `Erased` | a [`Tombstone`]: the keyed hash of an erased code | when, u64 |
//! | `Settings` | `installation_secret` | 32 raw bytes |
//! | `Settings` | `credential:<name>` | a credential's bytes (see `CredentialStore`) |
//! | `Settings` | `visits_forgotten_before` | the last sweep's horizon, u64 (not synced on its own) |
//! | `Settings` | `erased_since` | the first erasure not yet compacted away, u64 ms |
//!
//! Integers are big-endian.
//!
//! `notes.log` is opened on a thread of its own, so that opening the store waits only for
//! the links ([`Journal`]). Reads run inline: a link is one positional read, and the hot
//! path puts its own cache in front. Anything that writes or syncs runs on tokio's
//! blocking pool.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;

use super::dir_lock::DirLock;
use super::link_log::{LinkLog, CHECKPOINT_EVERY};
use super::notes_log::{NotesLog, HOT_NOTES};
use super::queue_log::{Position, QueueLog, SEGMENT_BYTES};
use super::rate::LocalRates;
use super::sightings_log::SightingsLog;
use super::state_log::{Change, StateLog, Table};
use super::{
    check_queue_name, AddressLedger, AddressRule, Claimed, CredentialStore, GatewaySpan, InsertOutcome, LinkStore,
    NotesJournal, NotesQuery, Queues, Rate, RateLimiter, SecretStore, Sighting, Store, TokenStore, VisitClaim,
    VisitLedger, VisitRules,
};
use crate::code::{InstallationSecret, ShortCode, Tombstone};
use crate::codec::{decode, encode};
use crate::model::{AccountId, ApiToken, EntityRef, EntryId, Link, Note, Timestamp};
use crate::target::TargetUrl;
use crate::Error;

const SECRET_KEY: &[u8] = b"installation_secret";
/// Where the last sweep of the visit ledger reached: marks before it are not loaded.
const VISITS_HORIZON_KEY: &[u8] = b"visits_forgotten_before";
/// When the first erasure not yet compacted away was made.
const ERASED_SINCE_KEY: &[u8] = b"erased_since";

/// The embedded store. Cheap to clone: clones share the open directory.
#[derive(Clone)]
pub struct SledStore {
    state: Arc<StateLog>,
    links: Arc<LinkLog>,
    queues: Arc<OpenQueues>,
    sightings: Arc<SightingsLog>,
    /// Notes and the visit ledger, opened on a thread of their own.
    journal: Journal,
    rates: Arc<Mutex<LocalRates>>,
    /// Notes the index may hold in memory before the upkeep writes `notes.index`.
    hot_notes: usize,
    _lock: Arc<DirLock>,
}

/// `notes.log`, opened on a thread of its own: reading it through takes seconds at millions
/// of notes (3 s at ten million, with their marks) and a redirect needs only the links.
/// What needs the notes waits for it without holding a thread; clicks wait in the outbox
/// meanwhile.
/// The thread holds the directory's lock until it is done: no other opening of the
/// directory reads the file while this one may cut its end.
#[derive(Clone)]
struct Journal(watch::Receiver<Option<Result<Arc<NotesLog>, Arc<str>>>>);

impl Journal {
    fn open(dir: &Path, horizon: Timestamp, lock: Arc<DirLock>) -> Result<Self, Error> {
        let (opened, journal) = watch::channel(None);
        let dir = dir.to_owned();
        std::thread::Builder::new()
            .name("notes-log-open".into())
            .spawn(move || {
                let started = Instant::now();
                let log = NotesLog::open(&dir, horizon).map(Arc::new).map_err(|e| Arc::<str>::from(e.to_string()));
                match &log {
                    Ok(_) => tracing::debug!(took_ms = started.elapsed().as_millis() as u64, "notes.log read"),
                    Err(e) => {
                        tracing::error!(error = %e, "notes.log cannot be read: notes and visits fail until a restart")
                    }
                }
                let _ = opened.send(Some(log));
                drop(lock);
            })
            .map_err(Error::storage)?;
        Ok(Self(journal))
    }

    /// The log, once it is open.
    async fn opened(&self) -> Result<Arc<NotesLog>, Error> {
        let mut journal = self.0.clone();
        let opened = journal.wait_for(Option::is_some).await.map_err(|_| Self::failed("its opening stopped"))?;
        Self::unpack(&opened).unwrap_or_else(|| Err(Self::failed("its opening stopped")))
    }

    /// The log if it is open (or could not be) by now.
    fn if_opened(&self) -> Option<Result<Arc<NotesLog>, Error>> {
        Self::unpack(&self.0.borrow())
    }

    fn unpack(opened: &Option<Result<Arc<NotesLog>, Arc<str>>>) -> Option<Result<Arc<NotesLog>, Error>> {
        opened.as_ref().map(|log| log.clone().map_err(|e| Self::failed(&e)))
    }

    fn failed(why: &str) -> Error {
        Error::Storage(format!("notes.log could not be opened: {why}").into())
    }
}

/// The queues' files, each opened on first use.
struct OpenQueues {
    dir: PathBuf,
    open: Mutex<HashMap<String, Arc<QueueLog>>>,
}

impl SledStore {
    /// sled's page cache while a directory of format 1 or 2 is imported: 64 MiB (sled's
    /// own default is 1 GiB).
    pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

    /// Opens (or creates) the store in `dir`, which it locks: one process at a time.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        Self::open_with_cache(dir, Self::DEFAULT_CACHE_BYTES)
    }

    /// As [`SledStore::open`], with sled's page cache limited to `cache_bytes` should the
    /// directory's sled files need importing.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, Error> {
        // Before any file is touched: a newer directory is left as it is.
        super::format::check(dir)?;
        std::fs::create_dir_all(dir).map_err(super::frame::io)?;
        let lock = Arc::new(DirLock::take(dir)?);
        // Raises the format once it holds sled's lock, if sled's files are there.
        super::sled_import::import(dir, cache_bytes)?;
        super::format::raise(dir)?;
        let state = StateLog::open(dir)?;
        let horizon = state
            .get(Table::Settings, VISITS_HORIZON_KEY)
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
            .map_or(Timestamp(0), |bytes| Timestamp(u64::from_be_bytes(bytes)));
        let store = Self {
            state: Arc::new(state),
            journal: Journal::open(dir, horizon, lock.clone())?,
            links: Arc::new(LinkLog::open(dir)?),
            queues: Arc::new(OpenQueues { dir: dir.join("queues"), open: Mutex::default() }),
            sightings: Arc::new(SightingsLog::open(dir)?),
            rates: Arc::default(),
            hot_notes: HOT_NOTES,
            _lock: lock,
        };
        Ok(store)
    }

    /// A queue's files, opened (or made) on first use, at the head kept in `state.log`.
    fn queue(&self, name: &str) -> Result<Arc<QueueLog>, Error> {
        check_queue_name(name)?;
        let mut open = self.queues.open.lock();
        if let Some(log) = open.get(name) {
            return Ok(log.clone());
        }
        let head = self.state.get(Table::QueueHeads, name.as_bytes()).and_then(|bytes| Position::from_bytes(&bytes));
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

    /// Syncs what `state.log` was given without a sync (the queues' heads, the sweep's
    /// horizon).
    fn flush_now(&self) -> Result<(), Error> {
        self.state.sync()
    }
}

impl LinkStore for SledStore {
    async fn insert_links(&self, links: Vec<Link>) -> Result<Vec<InsertOutcome>, Error> {
        self.blocking(move |s| s.links.insert(&links)).await
    }

    async fn get_link(&self, code: &ShortCode) -> Result<Option<Link>, Error> {
        self.links.get(code)
    }

    /// A read of `links.log` through, on the blocking pool: an erasure's look, and the
    /// price of keeping no index by entity (whose entries sled would keep in its log, with
    /// the contact's id and codes, long after they were removed).
    async fn links_of(&self, account: AccountId, entity: EntityRef) -> Result<Vec<Link>, Error> {
        self.blocking(move |s| s.links.links_of(account, entity)).await
    }

    /// A read of `links.log` through, as [`LinkStore::links_of`].
    async fn links_to(&self, account: AccountId, target: &TargetUrl, limit: usize) -> Result<Vec<Link>, Error> {
        let target = target.clone();
        self.blocking(move |s| s.links.links_to(account, &target, limit)).await
    }

    /// Tombstones (flushed), then the links' erasure frames (synced).
    async fn erase_links(&self, links: Vec<(Link, Tombstone)>) -> Result<(), Error> {
        self.blocking(move |s| {
            let now = Timestamp::now().0.to_be_bytes();
            let buried: Vec<Change<'_>> =
                links.iter().map(|(_, tombstone)| Change::put(Table::Erased, &tombstone.0, &now)).collect();
            s.state.write(&buried, true)?;
            s.note_erasure()?;
            let mut codes = Vec::with_capacity(links.len());
            for (link, _) in &links {
                if s.links.get(&link.code)?.is_some_and(|stored| stored.same_identity(link)) {
                    codes.push(link.code);
                }
            }
            s.links.erase(&codes)
        })
        .await
    }

    async fn buried(&self, tombstones: Vec<Tombstone>) -> Result<Vec<bool>, Error> {
        Ok(tombstones.iter().map(|t| self.state.contains(Table::Erased, &t.0)).collect())
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

    /// One consumer: a lease is a look.
    async fn peek(&self, queue: &str, max: usize) -> Result<Vec<(EntryId, Vec<u8>)>, Error> {
        self.lease(queue, max).await
    }

    async fn remove(&self, queue: &str, ids: Vec<EntryId>) -> Result<(), Error> {
        let queue = queue.to_owned();
        self.blocking(move |s| {
            if let Some(head) = s.queue(&queue)?.remove(&ids)? {
                // Not synced: an old head after a crash only means entries handled again.
                let head = head.to_bytes();
                s.state.write(&[Change::put(Table::QueueHeads, queue.as_bytes(), &head)], false)?;
            }
            Ok(())
        })
        .await
    }

    async fn depth(&self, queue: &str) -> Result<u64, Error> {
        let queue = queue.to_owned();
        self.blocking(move |s| s.queue(&queue)?.depth()).await
    }
}

impl VisitLedger for SledStore {
    /// In memory, under one lock: the marks reach the disk with the notes they become. On
    /// the blocking pool all the same: a batch is thousands of claims, and the ledger's
    /// table, millions of marks in a campaign, now and then grows (a rehash of all of it),
    /// which must not hold a runtime thread that redirects are waiting for.
    async fn claim_visits(&self, claims: Vec<VisitClaim>, rules: VisitRules) -> Result<Vec<Claimed>, Error> {
        let journal = self.journal.opened().await?;
        self.blocking(move |_| Ok(journal.claim(&claims, rules))).await
    }

    /// A pass over the whole ledger (millions of marks in a campaign), so off the runtime.
    async fn forget_visits(&self, before: Timestamp) -> Result<u64, Error> {
        let journal = self.journal.opened().await?;
        self.blocking(move |s| {
            let forgotten = journal.forget(before);
            // Not synced: if it is lost, older marks are loaded on open and swept again.
            let horizon = before.0.to_be_bytes();
            s.state.write(&[Change::put(Table::Settings, VISITS_HORIZON_KEY, &horizon)], false)?;
            Ok(forgotten)
        })
        .await
    }
}

impl NotesJournal for SledStore {
    async fn append_notes(&self, notes: Vec<Note>) -> Result<(), Error> {
        let journal = self.journal.opened().await?;
        self.blocking(move |_| journal.append(notes)).await
    }

    /// On the blocking pool: one positional read per note.
    async fn list_notes(&self, query: NotesQuery) -> Result<Vec<Note>, Error> {
        let journal = self.journal.opened().await?;
        self.blocking(move |_| journal.list(&query)).await
    }

    async fn forget_notes(&self, before: Timestamp) -> Result<u64, Error> {
        let journal = self.journal.opened().await?;
        self.blocking(move |s| {
            let forgotten = journal.forget_before(before)?;
            if forgotten > 0 {
                s.note_erasure()?;
            }
            Ok(forgotten)
        })
        .await
    }

    async fn erase_notes(&self, account: AccountId, entity: EntityRef) -> Result<u64, Error> {
        let journal = self.journal.opened().await?;
        self.blocking(move |s| {
            let erased = journal.erase(account, entity)?;
            if erased > 0 {
                s.note_erasure()?;
            }
            Ok(erased)
        })
        .await
    }
}

impl TokenStore for SledStore {
    async fn put_token(&self, token: ApiToken) -> Result<(), Error> {
        self.blocking(move |s| {
            let record = encode(&token)?;
            s.state.write(&[Change::put(Table::Tokens, token.id.as_bytes(), &record)], true)
        })
        .await
    }

    async fn get_token(&self, id: &str) -> Result<Option<ApiToken>, Error> {
        self.state.get(Table::Tokens, id.as_bytes()).map(|bytes| decode(&bytes)).transpose()
    }

    async fn list_tokens(&self) -> Result<Vec<ApiToken>, Error> {
        self.state.values(Table::Tokens).iter().map(|bytes| decode(bytes)).collect()
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
            if s.state.compare_and_swap(Table::Settings, SECRET_KEY, None, Some(&bytes))? {
                return Ok(candidate);
            }
            let stored: [u8; 32] = s
                .state
                .get(Table::Settings, SECRET_KEY)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| Error::Corrupt("installation secret is not 32 bytes".into()))?;
            Ok(InstallationSecret::from_bytes(stored))
        })
        .await
    }
}

impl AddressLedger for SledStore {
    /// One unsynced write per group, on the blocking pool (a write can wait on the disk).
    async fn sight(&self, sightings: Vec<Sighting>, rule: AddressRule, _keep_ms: u64) -> Result<(), Error> {
        self.blocking(move |s| s.sightings.sight(&sightings, rule)).await
    }

    /// In memory: a probe and a look at a few spans, on the caller's thread.
    async fn gateway_spans(
        &self,
        address: [u8; 16],
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<GatewaySpan>, Error> {
        Ok(self.sightings.gateway_spans(&address, from, to))
    }

    async fn forget_sightings(&self, before: Timestamp) -> Result<u64, Error> {
        self.blocking(move |s| s.sightings.forget(before)).await
    }
}

/// Credentials live in the default tree beside the installation secret, under this prefix.
const CREDENTIAL_PREFIX: &str = "credential:";

impl CredentialStore for SledStore {
    async fn credential(&self, name: &str) -> Result<Option<Vec<u8>>, Error> {
        let key = format!("{CREDENTIAL_PREFIX}{name}");
        Ok(self.state.get(Table::Settings, key.as_bytes()))
    }

    async fn swap_credential(&self, name: &str, expected: Option<Vec<u8>>, new: Vec<u8>) -> Result<bool, Error> {
        let key = format!("{CREDENTIAL_PREFIX}{name}");
        self.blocking(move |s| {
            s.state.compare_and_swap(Table::Settings, key.as_bytes(), expected.as_deref(), Some(&new))
        })
        .await
    }
}

impl Store for SledStore {
    async fn flush(&self) -> Result<(), Error> {
        // Not open yet: nothing was appended to it (an append waits for it).
        let journal = self.journal.if_opened();
        self.blocking(move |s| {
            if let Some(journal) = journal {
                journal?.flush()?;
            }
            s.flush_now()?;
            // So that the next start reads the links' index back rather than links.log.
            s.checkpoint_links(1);
            Ok(())
        })
        .await
    }

    async fn compact(&self) -> Result<u64, Error> {
        let journal = self.journal.opened().await?;
        self.blocking(move |s| s.compact_now(&journal)).await
    }

    async fn maintain(&self, after_erasure: Duration) -> Result<Option<u64>, Error> {
        let compacted = match self.blocking(move |s| s.compaction_due(after_erasure)).await? {
            true => Some(self.compact().await?),
            // Cheap, so every time: handled clicks leave the disk soon after.
            false => self.blocking(|s| s.roll_drained_queues()).await.map(|_| None)?,
        };
        let journal = self.journal.if_opened().transpose()?;
        self.blocking(move |s| {
            s.checkpoint_links(CHECKPOINT_EVERY);
            if let Some(journal) = journal {
                // So that memory holds only the notes written lately. Only a cache: a
                // start without it reads the notes from notes.log.
                if let Err(e) = journal.checkpoint(s.hot_notes) {
                    tracing::warn!(error = %e, "the index of older notes could not be written");
                }
            }
            Ok(())
        })
        .await?;
        Ok(compacted)
    }
}

impl SledStore {
    /// Writes the checkpoint of the links' index if `links.log` changed by `min_change`
    /// bytes since the last. Only a cache: a failure is logged, and a start without one
    /// reads `links.log` through.
    fn checkpoint_links(&self, min_change: u64) {
        if let Err(e) = self.links.checkpoint(min_change) {
            tracing::warn!(error = %e, "the checkpoint of the links' index could not be written");
        }
    }

    /// [`Store::compact`]: `links.log` and `notes.log` rewritten, each drained queue
    /// started on a new segment, and the time of the first erasure not yet compacted away
    /// cleared (synced).
    fn compact_now(&self, journal: &NotesLog) -> Result<u64, Error> {
        let since = self.state.get(Table::Settings, ERASED_SINCE_KEY);
        // A file with nothing to leave out is not rewritten.
        let mut freed = 0;
        if self.links.usage().1 > 0 {
            freed += self.links.compact()?;
        }
        if journal.garbage() > 0 {
            freed += journal.compact()?;
        }
        freed += self.roll_drained_queues()?;
        // Only the erasures this compaction saw: one made meanwhile keeps its own time.
        if let Some(since) = since {
            self.state.compare_and_swap(Table::Settings, ERASED_SINCE_KEY, Some(&since), None)?;
        }
        self.flush_now()?;
        Ok(freed)
    }

    /// Starts each drained queue on a new segment, deleting the old one; the bytes freed.
    fn roll_drained_queues(&self) -> Result<u64, Error> {
        let names: Vec<String> = match std::fs::read_dir(&self.queues.dir) {
            Ok(entries) => entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::storage(e)),
        };
        let mut freed = 0;
        for name in names.iter().filter(|n| check_queue_name(n).is_ok()) {
            let queue = self.queue(name)?;
            let before = queue.bytes();
            if let Some(head) = queue.roll_if_drained()? {
                let head = head.to_bytes();
                self.state.write(&[Change::put(Table::QueueHeads, name.as_bytes(), &head)], false)?;
                freed += before;
            }
        }
        Ok(freed)
    }

    /// Whether a compaction is due: an erasure made before `after_erasure` ago is still in
    /// the files, or garbage is over half of `links.log` (and 64 MiB).
    fn compaction_due(&self, after_erasure: Duration) -> Result<bool, Error> {
        let since = self.state.get(Table::Settings, ERASED_SINCE_KEY);
        let since = since.and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok()).map(u64::from_be_bytes);
        let overdue = since.is_some_and(|at| Timestamp::now().0.saturating_sub(at) >= after_erasure.as_millis() as u64);
        let (len, garbage) = self.links.usage();
        Ok(overdue || (garbage > 64 << 20 && garbage * 2 > len))
    }

    /// Notes the time of the first erasure since the last compaction, durably.
    fn note_erasure(&self) -> Result<(), Error> {
        let now = Timestamp::now().0.to_be_bytes();
        self.state.compare_and_swap(Table::Settings, ERASED_SINCE_KEY, None, Some(&now))?;
        Ok(())
    }
}

#[cfg(any(test, feature = "testing"))]
impl super::conformance::CrashFaults for SledStore {
    /// No index by entity to lose: `links_of` reads the links themselves.
    async fn lose_index_entry(&self, _: &Link) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::conformance;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gateways_million_clicks_keep_its_tally_small() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        conformance::a_gateways_tally_stays_small(&store, 1_000, |a| std::future::ready(store.sightings.held(&a)))
            .await;
    }

    /// The upkeep moves the notes' index to disk once memory holds enough of them, and a
    /// new store reads it back: the notes are all listed, the same before and after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_upkeep_writes_the_older_notes_index_and_a_start_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SledStore::open(dir.path()).unwrap();
        store.hot_notes = 100;
        let notes: Vec<_> = (0..150).map(|i| conformance::note(i, 1, 1 + i % 40, 1_000 + i)).collect();
        store.append_notes(notes[..99].to_vec()).await.unwrap();
        let index = dir.path().join(super::super::notes_cold::FILE_NAME);
        store.maintain(Duration::from_secs(3600)).await.unwrap();
        assert!(!index.exists(), "not before memory holds enough notes");
        store.append_notes(notes[99..].to_vec()).await.unwrap();
        store.maintain(Duration::from_secs(3600)).await.unwrap();
        assert!(index.exists(), "written by the upkeep");
        let query = NotesQuery {
            account: AccountId(1),
            entity_type: crate::EntityType::Contacts,
            entity_ids: None,
            offset: 0,
            limit: 1_000,
        };
        let listed = store.list_notes(query.clone()).await.unwrap();
        assert_eq!(listed.len(), 150);
        drop(store);
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.list_notes(query).await.unwrap(), listed);
    }

    /// Opening does not wait for `notes.log`: with one that cannot be read, links are
    /// stored and found, and what needs the notes fails saying why. A store dropped while
    /// its notes are still being read can be opened again at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn links_do_not_wait_for_the_notes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(super::super::notes_log::FILE_NAME)).unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let link = conformance::link("AAAAAAAAAAAA", 1, 10, "https://x.example/");
        store.insert_links(vec![link.clone()]).await.unwrap();
        assert_eq!(store.get_link(&link.code).await.unwrap(), Some(link.clone()));
        let failed = store.append_notes(vec![conformance::note(1, 1, 10, 5)]).await.unwrap_err();
        assert!(failed.to_string().contains("notes.log could not be opened"), "{failed}");
        store.flush().await.unwrap_err();
        drop(store);

        std::fs::remove_dir(dir.path().join(super::super::notes_log::FILE_NAME)).unwrap();
        for _ in 0..3 {
            drop(SledStore::open(dir.path()).unwrap());
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.get_link(&link.code).await.unwrap(), Some(link));
        store.append_notes(vec![conformance::note(1, 1, 10, 5)]).await.unwrap();
        let query = NotesQuery {
            account: AccountId(1),
            entity_type: crate::EntityType::Contacts,
            entity_ids: None,
            offset: 0,
            limit: 10,
        };
        assert_eq!(store.list_notes(query).await.unwrap().len(), 1);
    }

    /// The links' checkpoint is a cache: a flush that cannot write it still flushes, and
    /// the next opening reads `links.log` through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checkpoint_that_cannot_be_written_fails_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // Where the checkpoint's copy would be written.
        std::fs::create_dir(dir.path().join("links.index.new")).unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let link = conformance::link("BBBBBBBBBBBB", 1, 10, "https://x.example/");
        store.insert_links(vec![link.clone()]).await.unwrap();
        store.flush().await.unwrap();
        assert!(!dir.path().join("links.index").exists());
        drop(store);
        std::fs::remove_dir(dir.path().join("links.index.new")).unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.get_link(&link.code).await.unwrap(), Some(link));
        store.flush().await.unwrap();
        assert!(dir.path().join("links.index").exists(), "written once it can be");
    }

    /// Listing notes reads the file: it runs off the runtime's threads, so other tasks go
    /// on meanwhile. Another thread holds the index until a second task has run; on this
    /// one-thread runtime that task can run only if the listing waits elsewhere. Were the
    /// listing inline, the holder would give up after its timeout and the check fail.
    #[test]
    fn notes_are_listed_off_the_runtime_threads() {
        use std::sync::mpsc;
        use std::time::Duration;

        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = SledStore::open(dir.path()).unwrap();
            let notes: Vec<Note> = (0..3).map(|i| conformance::note(i + 1, 1, 10, i)).collect();
            store.append_notes(notes).await.unwrap();

            let (held_tx, held_rx) = mpsc::channel();
            let (ran_tx, ran_rx) = mpsc::channel::<()>();
            let holder = store.journal.opened().await.unwrap();
            let holding = std::thread::spawn(move || {
                holder.with_index_held(|| {
                    held_tx.send(()).unwrap();
                    ran_rx.recv_timeout(Duration::from_secs(10)).is_ok()
                })
            });
            held_rx.recv().unwrap();
            tokio::spawn(async move { ran_tx.send(()).ok() });

            let query = NotesQuery {
                account: AccountId(1),
                entity_type: crate::EntityType::Contacts,
                entity_ids: None,
                offset: 2,
                limit: 10,
            };
            assert_eq!(store.list_notes(query).await.unwrap().len(), 1);
            assert!(holding.join().unwrap(), "the listing held the runtime's thread");
        });
    }

    /// Queue records of any size live in the queue's own files. Pushed, removed and kept
    /// across a reopen.
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

        let store = SledStore::open(dir.path()).unwrap();
        let left: Vec<Vec<u8>> = store.lease("clicks", 10).await.unwrap().into_iter().map(|(_, r)| r).collect();
        assert_eq!(left, big[1..], "the removed head stays removed");
        assert!(store.push("..", vec![b"x".to_vec()]).await.is_err(), "a name must not leave the queues directory");
    }
}
