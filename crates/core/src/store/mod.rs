//! Storage behind traits, so that the engine runs on any backend unchanged.
//!
//! Every method returns a `Send` future: an embedded backend answers at once or moves
//! blocking work off the runtime, and a network backend (Redis) awaits its socket. Callers
//! are generic over [`Store`], so there is no boxing and no dynamic dispatch on the hot path.
//!
//! Every backend must pass [`conformance`].

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::code::{InstallationSecret, ShortCode, Tombstone};
pub use crate::codec::{decode, encode};
use crate::model::{AccountId, ApiToken, EntityRef, EntityType, EntryId, Link, Note};
use crate::target::TargetUrl;
use crate::Error;

mod address_tally;
#[cfg(any(test, feature = "testing"))]
pub mod conformance;
mod dir_lock;
mod file_header;
mod format;
mod frame;
pub(crate) mod keys;
mod link_index;
mod link_log;
mod memory;
mod notes_cold;
mod notes_index;
mod notes_log;
mod notes_tiers;
mod queue_log;
mod rate;
mod sightings_log;
mod sled_import;
mod sled_store;
mod state_log;

pub use address_tally::{AddressRule, AddressTally, GatewaySpan};
pub use memory::MemoryStore;
pub use rate::{gcra, Rate};
pub use sled_store::SledStore;

/// The queue the redirect appends clicks to and the dispatcher drains.
pub const CLICK_QUEUE: &str = "clicks";

/// What happened to one link of a batch insert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    /// The code was free; the link is now stored.
    Inserted,
    /// The code was already taken, by this link (a retry) or another one (a collision).
    /// Either way the stored link is untouched.
    Occupied(Link),
}

/// Links, keyed by code, with a per-entity index.
pub trait LinkStore: Send + Sync + 'static {
    /// Whether reading a link costs a round trip to another machine. A node then caches
    /// the links it creates as it creates them: a link is most often clicked soon after
    /// it is made (a campaign's mails go out), and its first click is then served from
    /// memory too. A store read in-process gains nothing from the copy.
    const READS_ARE_REMOTE: bool = false;

    /// Inserts each link only if its code is free, atomically per link, and durably before
    /// returning. One outcome per link, in order. A later link in the batch sees earlier ones.
    fn insert_links(&self, links: Vec<Link>) -> impl Future<Output = Result<Vec<InsertOutcome>, Error>> + Send;

    /// The link with this code: the hot path, one read.
    fn get_link(&self, code: &ShortCode) -> impl Future<Output = Result<Option<Link>, Error>> + Send;

    /// The links with these codes, in order: a batch's reads (the dispatcher's), which a
    /// remote store makes in a few round trips rather than one each. One
    /// [`LinkStore::get_link`] after another, by default.
    fn get_links(&self, codes: &[ShortCode]) -> impl Future<Output = Result<Vec<Option<Link>>, Error>> + Send {
        async move {
            let mut links = Vec::with_capacity(codes.len());
            for code in codes {
                links.push(self.get_link(code).await?);
            }
            Ok(links)
        }
    }

    /// The links of one entity in one account, in key (code) order.
    fn links_of(&self, account: AccountId, entity: EntityRef) -> impl Future<Output = Result<Vec<Link>, Error>> + Send;

    /// Up to `limit` links of one account to this target, in code order: an operator's
    /// look-up by URL (a campaign's URL has a link per contact). A store that cannot
    /// search by target (the default) refuses.
    fn links_to(
        &self,
        account: AccountId,
        target: &TargetUrl,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Link>, Error>> + Send {
        let _ = (account, target, limit);
        async { Err(Error::InvalidInput("this store cannot find links by URL".into())) }
    }

    /// Erases links for good: each link's tombstone is stored first, durably, then the link
    /// and its index entry are removed, so that a crash in between leaves a link that a
    /// second erasure removes, never a code free to be issued again. Links not stored are
    /// passed over. A store that cannot erase (the default) refuses.
    fn erase_links(&self, links: Vec<(Link, Tombstone)>) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = links;
        async { Err(Error::InvalidInput("this store cannot erase links".into())) }
    }

    /// Whether each tombstone is stored: its code was erased, answers `410 Gone`, and is
    /// never issued again. Nothing, by default (a store that cannot erase).
    fn buried(&self, tombstones: Vec<Tombstone>) -> impl Future<Output = Result<Vec<bool>, Error>> + Send {
        async move { Ok(vec![false; tombstones.len()]) }
    }

    /// Codes erased since `cursor`, by any node sharing this store: what a node-local
    /// cache of links must drop. The first call (with the default cursor) starts from now.
    /// Nothing, by default: a store that one process owns has no other node to hear from.
    fn erasures_since(&self, cursor: ErasureCursor) -> impl Future<Output = Result<ErasureNews, Error>> + Send {
        async move { Ok(ErasureNews::Codes { codes: Vec::new(), next: cursor }) }
    }
}

/// Where a node's reading of erasures stands; opaque but to its backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErasureCursor(pub String);

/// What [`LinkStore::erasures_since`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErasureNews {
    /// These codes were erased since the cursor (none is the usual case); read on from `next`.
    Codes {
        /// The erased codes.
        codes: Vec<ShortCode>,
        /// Where to read on from.
        next: ErasureCursor,
    },
    /// Some erasures since the cursor are no longer known (the node read too late, after
    /// they were trimmed): every cached link must go. Read on from `next`.
    Lost {
        /// Where to read on from.
        next: ErasureCursor,
    },
}

/// Named, durable, ordered queues of encoded records: the click outbox, and one delivery
/// queue per note sink, so that a slow sink only ever delays itself.
///
/// Consumption is by lease, so that several nodes sharing one store can drain one queue
/// without handling an entry twice, and a crashed node's entries are not stranded: a
/// store handle is one consumer; what it leases stays its own until it removes it, or
/// until it has been silent so long that another consumer takes the entry over. With a
/// single consumer (every embedded store) a lease is simply the head of the queue.
///
/// Queue names are short ASCII (`[A-Za-z0-9_.:-]`, at most 64 bytes, not only dots).
pub trait Queues: Send + Sync + 'static {
    /// Appends records in order, durably before returning (one flush for the whole group).
    fn push(&self, queue: &str, records: Vec<Vec<u8>>) -> impl Future<Output = Result<(), Error>> + Send;

    /// Up to `max` entries for this consumer, oldest first: those it leased before and has
    /// not removed (so a failed batch comes back), then any abandoned by a consumer that
    /// went silent, then new ones.
    fn lease(&self, queue: &str, max: usize) -> impl Future<Output = Result<Vec<(EntryId, Vec<u8>)>, Error>> + Send;

    /// Up to `max` entries, oldest first, without leasing them: a look for an operator, not
    /// consumption (another consumer's leased entries are among them). An entry looked at
    /// can be removed all the same.
    fn peek(&self, queue: &str, max: usize) -> impl Future<Output = Result<Vec<(EntryId, Vec<u8>)>, Error>> + Send;

    /// Removes handled entries. Unknown ids are ignored. Not necessarily flushed: a removal
    /// lost in a crash means the entry is handled again, never that it is lost.
    fn remove(&self, queue: &str, ids: Vec<EntryId>) -> impl Future<Output = Result<(), Error>> + Send;

    /// How many entries the queue holds, leased or not: a backlog for an operator's eyes,
    /// read often, so cheap after its first answer.
    fn depth(&self, queue: &str) -> impl Future<Output = Result<u64, Error>> + Send;
}

/// Typed access to [`Queues`]: records go through [`crate::codec`].
pub trait RecordQueues: Queues {
    /// Encodes and appends records.
    fn push_records<T: Serialize + Sync>(
        &self,
        queue: &str,
        records: &[T],
    ) -> impl Future<Output = Result<(), Error>> + Send {
        async move {
            let encoded = records.iter().map(encode).collect::<Result<Vec<_>, _>>()?;
            self.push(queue, encoded).await
        }
    }

    /// Leases and decodes entries.
    fn lease_records<T: DeserializeOwned + Send>(
        &self,
        queue: &str,
        max: usize,
    ) -> impl Future<Output = Result<Vec<(EntryId, T)>, Error>> + Send {
        async move {
            let raw = self.lease(queue, max).await?;
            raw.into_iter().map(|(id, bytes)| Ok((id, decode(&bytes)?))).collect()
        }
    }
}

impl<Q: Queues + ?Sized> RecordQueues for Q {}

/// Checks a queue name; backends call this so that names cannot collide in their key spaces.
pub fn check_queue_name(name: &str) -> Result<(), Error> {
    // Not `.` or `..` either: a backend may use the name as a file name.
    let ok = !name.is_empty()
        && !name.bytes().all(|b| b == b'.')
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!("invalid queue name {name:?}")))
    }
}

/// Which notes to list, and which page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotesQuery {
    /// The account; notes of other accounts are never seen.
    pub account: AccountId,
    /// The entity type.
    pub entity_type: EntityType,
    /// Only these entities (ascending); `None` for every entity of the type.
    pub entity_ids: Option<Vec<u64>>,
    /// How many matching notes to skip.
    pub offset: usize,
    /// The most to return.
    pub limit: usize,
}

/// Notes per (account, entity), in time order within an entity.
pub trait NotesJournal: Send + Sync + 'static {
    /// Appends notes durably. A note whose id is already there for that entity and time is
    /// not duplicated, so redelivery is harmless.
    fn append_notes(&self, notes: Vec<Note>) -> impl Future<Output = Result<(), Error>> + Send;

    /// One page of notes: by entity id, then by time.
    fn list_notes(&self, query: NotesQuery) -> impl Future<Output = Result<Vec<Note>, Error>> + Send;

    /// Erases every note of one entity, durably before returning; returns how many. Notes
    /// appended later (a click on a link made afterwards) are kept.
    fn erase_notes(&self, account: AccountId, entity: EntityRef) -> impl Future<Output = Result<u64, Error>> + Send;

    /// Erases every note made before `before` (the retention's horizon), of every
    /// entity, durably; returns how many. As an erasure: gone from every listing at once,
    /// and from the files with the next compaction.
    fn forget_notes(&self, before: crate::Timestamp) -> impl Future<Output = Result<u64, Error>> + Send;
}

/// API tokens, stored hashed.
pub trait TokenStore: Send + Sync + 'static {
    /// Stores or replaces a token record (revoking is replacing with `revoked_at` set).
    fn put_token(&self, token: ApiToken) -> impl Future<Output = Result<(), Error>> + Send;

    /// The record with this public id.
    fn get_token(&self, id: &str) -> impl Future<Output = Result<Option<ApiToken>, Error>> + Send;

    /// Every record, in id order.
    fn list_tokens(&self) -> impl Future<Output = Result<Vec<ApiToken>, Error>> + Send;
}

/// One visit that may become a note.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VisitClaim {
    /// Names the link alone: notes are capped per link.
    pub link: [u8; 16],
    /// Names the link and the client.
    pub key: [u8; 16],
    /// When the visit happened.
    pub at: crate::Timestamp,
    /// The note it would become.
    pub note_id: u64,
}

/// How the ledger decides whether a visit becomes a note.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VisitRules {
    /// Repeats of one visit key within this many milliseconds make no note.
    pub window_ms: u64,
    /// At most this many notes per link within the window (0: no cap). A link is made for
    /// one contact: a forwarded mail may add a few visitors, a flood must not add fifty
    /// notes.
    pub notes_per_link: u32,
}

/// What the ledger made of a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claimed {
    /// The visit becomes its note (or already did: a redelivered click).
    Note,
    /// The same client visited within the window: no note.
    Repeat,
    /// The link already has its cap of notes within the window: no note.
    OverLinkCap,
}

/// Remembers which visits became notes, so that repeats within a window do not, and how many
/// notes each link made, so that a flood of "different" visitors does not either.
///
/// Kept in the store, not in a process, so it survives restarts and is shared by nodes.
pub trait VisitLedger: Send + Sync + 'static {
    /// For each visit in order, what it becomes, as [`decide_visit`] rules.
    ///
    /// On [`Claimed::Note`] the visit key's mark and the link's count are updated
    /// atomically, and later claims in the batch see them. Marks are made durable by the
    /// next durable write (the notes themselves).
    fn claim_visits(
        &self,
        claims: Vec<VisitClaim>,
        rules: VisitRules,
    ) -> impl Future<Output = Result<Vec<Claimed>, Error>> + Send;

    /// Forgets marks and link counts of visits made before `before`; returns how many marks.
    /// A mark matters only to visits within its window after it, so the dispatcher, once
    /// past that, sweeps it away; otherwise the ledger would grow with every new visitor for
    /// ever. Marks made at or after `before` are kept. Backends whose marks expire by
    /// themselves may forget none here (Redis: a TTL on each key).
    fn forget_visits(&self, before: crate::Timestamp) -> impl Future<Output = Result<u64, Error>> + Send;
}

/// The decision [`VisitLedger::claim_visits`] makes, shared by every backend: `previous` is
/// the visit key's mark, `link_notes` the times of the link's notes (updated on a note).
///
/// A redelivered note stays a note; a repeat within the window of the key's mark is not;
/// otherwise it is a note unless the link made `notes_per_link` notes within the window
/// before it.
pub fn decide_visit(
    previous: Option<crate::model::VisitMark>,
    link_notes: &mut Vec<u64>,
    claim: &VisitClaim,
    rules: VisitRules,
) -> Claimed {
    let at = claim.at.0;
    if let Some(mark) = previous {
        if mark.note_id == claim.note_id {
            return Claimed::Note;
        }
        if at < mark.at.0.saturating_add(rules.window_ms) {
            return Claimed::Repeat;
        }
    }
    if rules.notes_per_link > 0 {
        link_notes.retain(|&t| t.saturating_add(rules.window_ms) > at);
        if link_notes.len() >= rules.notes_per_link as usize {
            return Claimed::OverLinkCap;
        }
        link_notes.push(at);
    }
    Claimed::Note
}

/// Keeps the installation secret, which keys every code: the engine needs it beside links.
pub trait SecretStore: Send + Sync + 'static {
    /// The installation secret: the stored one, or `candidate` stored if there is none yet.
    /// Nodes sharing one store thus share one secret.
    fn installation_secret(
        &self,
        candidate: InstallationSecret,
    ) -> impl Future<Output = Result<InstallationSecret, Error>> + Send;

    /// The secret kept here, or a new one stored here on first use.
    fn load_or_create_secret(&self) -> impl Future<Output = Result<InstallationSecret, Error>> + Send {
        async move { self.installation_secret(InstallationSecret::generate()?).await }
    }
}

/// Rate limits per key (an API token, say), decided by [`gcra`]. Kept in the store so that
/// on a shared store every node draws on one allowance.
pub trait RateLimiter: Send + Sync + 'static {
    /// Takes one request from `key`'s allowance: `None` if it may go ahead, else how long it
    /// must wait. A refused request takes nothing.
    fn take(&self, key: &str, rate: Rate) -> impl Future<Output = Result<Option<std::time::Duration>, Error>> + Send;
}

/// A click that may be a visit, as the rule "one address, many contacts" sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sighting {
    /// A keyed hash of the client's address.
    pub address: [u8; 16],
    /// Which contact's link it followed.
    pub contact: u64,
    /// When.
    pub at: crate::Timestamp,
}

/// Which contacts each client address followed links of, recently, told as the spans in
/// which the address was a gateway by an [`AddressRule`]: a person follows their own links,
/// a gateway or scanner everyone's. Kept in the store so that every node sees the clicks of
/// all, and in constant space per address (an [`AddressTally`]), so that a gateway's
/// millions of clicks cost what a person's few do.
pub trait AddressLedger: Send + Sync + 'static {
    /// Counts sightings by `rule`, each address's in the order given; what they tell is kept
    /// at least `keep_ms` past their time. Not flushed on its own: a crash may lose the last
    /// moments of sightings (never a click).
    fn sight(
        &self,
        sightings: Vec<Sighting>,
        rule: AddressRule,
        keep_ms: u64,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The spans in which `address` was a gateway that overlap `from..=to`, in time order:
    /// at most [`AddressTally::MOST_SPANS`].
    fn gateway_spans(
        &self,
        address: [u8; 16],
        from: crate::Timestamp,
        to: crate::Timestamp,
    ) -> impl Future<Output = Result<Vec<GatewaySpan>, Error>> + Send;

    /// Forgets contacts last seen, and spans ended, before `before`; returns how many.
    /// Backends whose entries expire by themselves may forget none here (Redis: a TTL on
    /// each address's keys).
    fn forget_sightings(&self, before: crate::Timestamp) -> impl Future<Output = Result<u64, Error>> + Send;
}

/// Small secrets that change, such as an OAuth token pair that its issuer rotates: kept in
/// the store so that every node shares them and a restart finds the latest.
pub trait CredentialStore: Send + Sync + 'static {
    /// The value stored under `name`.
    fn credential(&self, name: &str) -> impl Future<Output = Result<Option<Vec<u8>>, Error>> + Send;

    /// Stores `new` under `name` if the value there is still `expected` (`None`: nothing),
    /// durably before returning; false, storing nothing, if it is not. Compare-and-swap, so
    /// that of several nodes acting on one value only one wins.
    fn swap_credential(
        &self,
        name: &str,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
}

/// A complete backend: what the engine needs, and the click pipeline, notes, tokens,
/// rate limits and credentials. A cheap handle: every task that needs the store holds a
/// clone.
pub trait Store:
    Clone
    + LinkStore
    + SecretStore
    + Queues
    + NotesJournal
    + TokenStore
    + VisitLedger
    + AddressLedger
    + RateLimiter
    + CredentialStore
{
    /// Makes every write so far durable; called on shutdown.
    fn flush(&self) -> impl Future<Output = Result<(), Error>> + Send;

    /// Rewrites what the store keeps on disk without what is erased or handled, so that
    /// none of its bytes are left in the store's files; returns how many bytes that freed.
    /// Crash-safe, and reads go on meanwhile. Nothing to do, by default.
    fn compact(&self) -> impl Future<Output = Result<u64, Error>> + Send {
        async { Ok(0) }
    }

    /// Compacts if it is due: an erasure older than `after_erasure` not yet compacted
    /// away, or files mostly garbage. Called every minute by a running server; returns
    /// what [`Store::compact`] freed, if it ran.
    fn maintain(&self, after_erasure: std::time::Duration) -> impl Future<Output = Result<Option<u64>, Error>> + Send {
        let _ = after_erasure;
        async { Ok(None) }
    }
}
