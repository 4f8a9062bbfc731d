//! Storage behind traits, so that the engine runs on any backend unchanged.
//!
//! Every method returns a `Send` future: an embedded backend answers at once or moves
//! blocking work off the runtime, and a network backend (Redis) awaits its socket. Callers
//! are generic over [`Store`], so there is no boxing and no dynamic dispatch on the hot path.
//!
//! Every backend must pass [`conformance`].

use std::future::Future;

use crate::code::{InstallationSecret, ShortCode};
use crate::model::{AccountId, ApiToken, Click, ClickId, EntityRef, EntityType, Link, Note};
use crate::Error;

pub mod conformance;
pub(crate) mod keys;
mod memory;
mod sled_store;

pub use memory::MemoryStore;
pub use sled_store::SledStore;

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
    /// Inserts each link only if its code is free, atomically per link, and durably before
    /// returning. One outcome per link, in order. A later link in the batch sees earlier ones.
    fn insert_links(&self, links: Vec<Link>) -> impl Future<Output = Result<Vec<InsertOutcome>, Error>> + Send;

    /// The link with this code: the hot path, one read.
    fn get_link(&self, code: &ShortCode) -> impl Future<Output = Result<Option<Link>, Error>> + Send;

    /// The links of one entity in one account, in key (code) order.
    fn links_of(&self, account: AccountId, entity: EntityRef) -> impl Future<Output = Result<Vec<Link>, Error>> + Send;
}

/// The durable, ordered queue between the redirect and the note dispatcher.
pub trait ClickOutbox: Send + Sync + 'static {
    /// Appends clicks in order, durably before returning (one flush for the whole group).
    fn append_clicks(&self, clicks: Vec<Click>) -> impl Future<Output = Result<(), Error>> + Send;

    /// Up to `max` unacknowledged clicks after `after` (from the start when `None`), in order.
    fn read_clicks(
        &self,
        after: Option<ClickId>,
        max: usize,
    ) -> impl Future<Output = Result<Vec<(ClickId, Click)>, Error>> + Send;

    /// Removes handled clicks. Acknowledging an unknown id is not an error.
    fn ack_clicks(&self, ids: Vec<ClickId>) -> impl Future<Output = Result<(), Error>> + Send;
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

/// A complete backend.
pub trait Store: LinkStore + ClickOutbox + NotesJournal + TokenStore {
    /// The installation secret: the stored one, or `candidate` stored if there is none yet.
    /// Nodes sharing one store thus share one secret.
    fn installation_secret(
        &self,
        candidate: InstallationSecret,
    ) -> impl Future<Output = Result<InstallationSecret, Error>> + Send;

    /// Makes every write so far durable; called on shutdown.
    fn flush(&self) -> impl Future<Output = Result<(), Error>> + Send;
}
