//! The embeddable engine: create links and resolve codes, without HTTP.

use std::sync::Arc;

use crate::cache::LinkCache;
use crate::code::{CodeDeriver, CodeLength};
use crate::error::CreateError;
use crate::model::{EntityRef, Link, Principal, Timestamp};
use crate::store::{ErasureCursor, ErasureNews, InsertOutcome, LinkStore, SecretStore};
use crate::target::TargetUrl;
use crate::{Error, ShortCode, Tombstone};

/// How many candidate codes to try for one link before giving up. With 8+ characters a
/// second candidate is already astronomically rare; the bound only matters for tiny test codes.
const MAX_ATTEMPTS: u32 = 64;

/// The most items one `create` call takes, as in the amoCRM API.
pub const MAX_BATCH: usize = 250;

/// One link to create. The target is already validated: callers report bad URLs in
/// their own terms (the HTTP API per item, with every other problem of that item).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewLink {
    /// Where the link will redirect.
    pub target: TargetUrl,
    /// The entity the link is for.
    pub entity: EntityRef,
}

/// What `create` did with one item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The item's link: newly created, or the existing one on a retry.
    Linked(Link),
    /// No link: the principal has no rights to the entity.
    NoRights,
}

/// What [`Shortener::resolve_with`] found for a code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved<R> {
    /// Its link, as the caller read it.
    Found(R),
    /// Its link was erased (`410 Gone`).
    Erased,
    /// Malformed, or never issued (`404`).
    Unknown,
}

/// Creates and resolves short links on any store of links that keeps the installation
/// secret: that is all it needs, so an embedder's own database implements two traits.
pub struct Shortener<S> {
    store: S,
    codes: CodeDeriver,
    cache: LinkCache,
}

/// Settings of a [`Shortener`] before it starts; from [`Shortener::builder`].
#[must_use = "a builder does nothing until `build`"]
pub struct ShortenerBuilder<S> {
    store: S,
    code_length: CodeLength,
    cache: Option<LinkCache>,
}

impl<S: LinkStore + SecretStore> ShortenerBuilder<S> {
    /// The length of newly issued codes (12 by default).
    pub fn code_length(mut self, length: CodeLength) -> Self {
        self.code_length = length;
        self
    }

    /// The read cache: sized by the host, or shared with other readers of the same links
    /// (its clones share entries). A cache of [`LinkCache::DEFAULT_CAPACITY`] otherwise.
    pub fn cache(mut self, cache: LinkCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Reads the installation secret from the store (storing a new one on first use), so
    /// engines on one store issue the same codes.
    pub async fn build(self) -> Result<Shortener<S>, Error> {
        let secret = self.store.load_or_create_secret().await?;
        Ok(Shortener {
            codes: CodeDeriver::new(secret, self.code_length),
            cache: self.cache.unwrap_or_else(|| LinkCache::new(LinkCache::DEFAULT_CAPACITY)),
            store: self.store,
        })
    }
}

impl<S: LinkStore + SecretStore> Shortener<S> {
    /// An engine on `store`, once [`ShortenerBuilder::build`] has read its secret.
    pub fn builder(store: S) -> ShortenerBuilder<S> {
        ShortenerBuilder { store, code_length: CodeLength::default(), cache: None }
    }

    /// Creates one link per item, in order, for the entities the principal has rights to.
    ///
    /// Retrying the same items returns the same links; an item repeated within the batch
    /// gets the same link each time.
    pub async fn create(&self, who: &Principal, items: &[NewLink]) -> Result<Vec<Outcome>, CreateError> {
        if items.is_empty() {
            return Err(CreateError::EmptyBatch);
        }
        if items.len() > MAX_BATCH {
            return Err(CreateError::BatchTooLarge { max: MAX_BATCH, got: items.len() });
        }
        let now = Timestamp::now();
        let mut outcomes: Vec<Outcome> = vec![Outcome::NoRights; items.len()];
        // (item index, attempt) of every item still looking for its code.
        let mut pending: Vec<(usize, u32)> =
            (0..items.len()).filter(|&i| who.scope.allows(items[i].entity)).map(|i| (i, 0)).collect();

        while !pending.is_empty() {
            let candidates: Vec<Link> = pending
                .iter()
                .map(|&(i, attempt)| Link {
                    code: self.codes.derive(who.account, items[i].entity, &items[i].target, attempt),
                    account: who.account,
                    entity: items[i].entity,
                    target: items[i].target.clone(),
                    created_at: now,
                    created_by: who.user,
                })
                .collect();
            // An erased code is never issued again: it counts as taken.
            let tombstones = candidates.iter().map(|c| self.codes.tombstone(&c.code)).collect();
            let buried = self.store.buried(tombstones).await?;
            let (fresh, gone): (Vec<_>, Vec<_>) =
                candidates.into_iter().zip(pending).zip(buried).partition(|(_, buried)| !buried);
            let (candidates, trying): (Vec<Link>, Vec<(usize, u32)>) = fresh.into_iter().map(|(c, _)| c).unzip();
            let mut collided = Vec::new();
            for ((_, (index, attempt)), _) in gone {
                if attempt + 1 >= MAX_ATTEMPTS {
                    return Err(CreateError::CodeSpaceExhausted(MAX_ATTEMPTS));
                }
                collided.push((index, attempt + 1));
            }
            let era = self.cache.era();
            let results = match candidates.is_empty() {
                true => Vec::new(),
                false => self.store.insert_links(candidates.clone()).await?,
            };
            let lost = self.buried_meanwhile(&candidates, &results).await?;
            if S::READS_ARE_REMOTE {
                let inserted = candidates
                    .iter()
                    .zip(&results)
                    .zip(&lost)
                    .filter(|((_, r), lost)| **r == InsertOutcome::Inserted && !**lost);
                self.cache.put(inserted.map(|((link, _), _)| link.clone()), era);
            }
            let tried = trying.into_iter().zip(candidates.into_iter().zip(results)).zip(lost);
            for (((index, attempt), (candidate, result)), lost) in tried {
                match result {
                    _ if lost && attempt + 1 >= MAX_ATTEMPTS => {
                        return Err(CreateError::CodeSpaceExhausted(MAX_ATTEMPTS))
                    }
                    _ if lost => collided.push((index, attempt + 1)),
                    InsertOutcome::Inserted => outcomes[index] = Outcome::Linked(candidate),
                    InsertOutcome::Occupied(existing) if existing.same_identity(&candidate) => {
                        outcomes[index] = Outcome::Linked(existing)
                    }
                    InsertOutcome::Occupied(_) if attempt + 1 >= MAX_ATTEMPTS => {
                        return Err(CreateError::CodeSpaceExhausted(MAX_ATTEMPTS))
                    }
                    InsertOutcome::Occupied(_) => collided.push((index, attempt + 1)),
                }
            }
            pending = collided;
        }
        Ok(outcomes)
    }

    /// Which of a round's links an erasure buried after the round's check of the
    /// tombstones (so while it inserted them): each such code is erased again, in case
    /// the erasure removed the links before the insert, and the item tries its next code.
    /// An erased code is never live again, however a create and an erasure interleave.
    async fn buried_meanwhile(&self, candidates: &[Link], results: &[InsertOutcome]) -> Result<Vec<bool>, Error> {
        let mut lost = vec![false; candidates.len()];
        let asked: Vec<(usize, Tombstone)> = candidates
            .iter()
            .zip(results)
            .enumerate()
            .filter(|(_, (link, result))| match result {
                InsertOutcome::Inserted => true,
                InsertOutcome::Occupied(existing) => existing.same_identity(link),
            })
            .map(|(i, (link, _))| (i, self.codes.tombstone(&link.code)))
            .collect();
        if asked.is_empty() {
            return Ok(lost);
        }
        let buried = self.store.buried(asked.iter().map(|&(_, tombstone)| tombstone).collect()).await?;
        let mut erase = Vec::new();
        for ((i, tombstone), buried) in asked.into_iter().zip(buried) {
            if buried {
                lost[i] = true;
                erase.push((candidates[i].clone(), tombstone));
            }
        }
        if !erase.is_empty() {
            let codes: Vec<ShortCode> = erase.iter().map(|(link, _)| link.code).collect();
            self.store.erase_links(erase).await?;
            self.cache.forget(&codes);
        }
        Ok(lost)
    }

    /// Erases every link of one entity: their codes then resolve as
    /// [`Resolved::Erased`] and are never issued again, to anyone. Returns the codes.
    /// Safe to repeat: a second erasure finishes what a crash cut short.
    pub async fn erase(&self, account: crate::AccountId, entity: EntityRef) -> Result<Vec<ShortCode>, Error> {
        let links = self.store.links_of(account, entity).await?;
        let codes: Vec<ShortCode> = links.iter().map(|l| l.code).collect();
        let buried = links
            .into_iter()
            .map(|link| {
                let tombstone = self.codes.tombstone(&link.code);
                (link, tombstone)
            })
            .collect();
        self.store.erase_links(buried).await?;
        self.cache.forget(&codes);
        Ok(codes)
    }

    /// Takes the links that other nodes erased since `cursor` out of this node's cache;
    /// returns where to read on from. Called every moment by a node on a shared store.
    pub async fn hear_erasures(&self, cursor: ErasureCursor) -> Result<ErasureCursor, Error> {
        match self.store.erasures_since(cursor).await? {
            ErasureNews::Codes { codes, next } => {
                if !codes.is_empty() {
                    self.cache.forget(&codes);
                }
                Ok(next)
            }
            ErasureNews::Lost { next } => {
                self.cache.forget_all();
                Ok(next)
            }
        }
    }

    /// The link for a code taken from untrusted input; `None` if malformed or unknown.
    /// Served from the read cache when it can be: no store read, no allocation.
    pub async fn resolve(&self, code: &str) -> Result<Option<Arc<Link>>, Error> {
        match ShortCode::parse(code) {
            Some(code) => self.cache.get(&self.store, &code).await,
            None => Ok(None),
        }
    }

    /// `f` of the link for a code taken from untrusted input, as [`Shortener::resolve`], but
    /// a cached link is read where it lies: the redirect needs only its target, and taking
    /// a shared reference to the link would write to memory the other cores read. A code
    /// with no link costs one more read, to tell an erased one.
    pub async fn resolve_with<R>(&self, code: &str, f: impl FnOnce(&Link) -> R) -> Result<Resolved<R>, Error> {
        let Some(code) = ShortCode::parse(code) else { return Ok(Resolved::Unknown) };
        if let Some(found) = self.cache.get_with(&self.store, &code, |link| f(link)).await? {
            return Ok(Resolved::Found(found));
        }
        // Boxed: the redirect's future stays the size of a found link's.
        let buried = Box::pin(self.store.buried(vec![self.codes.tombstone(&code)])).await?;
        Ok(if buried.first() == Some(&true) { Resolved::Erased } else { Resolved::Unknown })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::model::{AccountId, UserId};
    use crate::store::{MemoryStore, SledStore};

    fn principal() -> Principal {
        Principal::all_contacts(AccountId(7), UserId(1))
    }

    /// With two-character codes (3844 of them) 1500 links collide constantly; every link must
    /// still get its own code and resolve to its own target, and a retry must find them all.
    async fn forced_collisions<S: LinkStore + SecretStore>(store: S) {
        let engine = Shortener::builder(store).code_length(CodeLength::tiny_for_tests(2)).build().await.unwrap();
        let items: Vec<NewLink> = (1..=1500u64)
            .map(|id| NewLink {
                target: TargetUrl::parse(&format!("https://example.com/p/{}", id % 3)).unwrap(),
                entity: EntityRef::contact(id),
            })
            .collect();
        let mut first = Vec::new();
        for chunk in items.chunks(MAX_BATCH) {
            first.extend(engine.create(&principal(), chunk).await.unwrap());
        }
        let mut seen = HashMap::new();
        let mut collisions = 0;
        for (item, outcome) in items.iter().zip(&first) {
            let Outcome::Linked(link) = outcome else { panic!("{outcome:?}") };
            assert_eq!(link.entity, item.entity);
            assert!(seen.insert(link.code, item.entity).is_none(), "code {} issued twice", link.code);
            let stored = engine.store.get_link(&link.code).await.unwrap().unwrap();
            assert_eq!(stored.target, item.target);
            assert_eq!(stored.entity, item.entity, "a link was overwritten");
            let attempt0 = engine.codes.derive(AccountId(7), item.entity, &stored.target, 0);
            collisions += usize::from(attempt0 != link.code);
        }
        assert!(collisions > 100, "the test must actually collide, got {collisions}");
        let mut again = Vec::new();
        for chunk in items.chunks(MAX_BATCH) {
            again.extend(engine.create(&principal(), chunk).await.unwrap());
        }
        assert_eq!(first, again, "a retry must return the very same links");
    }

    #[tokio::test]
    async fn forced_collisions_on_memory() {
        forced_collisions(MemoryStore::new()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forced_collisions_on_sled() {
        let dir = tempfile::tempdir().unwrap();
        forced_collisions(SledStore::open(dir.path()).unwrap()).await;
    }
}
