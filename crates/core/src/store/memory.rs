//! An in-memory backend: for tests, and for hosts that keep links elsewhere.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::rate::LocalRates;
use super::{
    check_queue_name, decide_visit, keys, AddressLedger, AddressRule, AddressTally, Claimed, CredentialStore,
    GatewaySpan, InsertOutcome, LinkStore, NotesJournal, NotesQuery, Queues, Rate, RateLimiter, SecretStore, Sighting,
    Store, TokenStore, VisitClaim, VisitLedger, VisitRules,
};
use crate::code::{InstallationSecret, ShortCode, Tombstone};
use crate::model::{AccountId, ApiToken, EntityRef, EntryId, Link, Note, Timestamp, VisitMark};
use crate::target::TargetUrl;
use crate::Error;

/// Everything in process memory; nothing survives the process. Cheap to clone: clones share data.
#[derive(Clone, Default)]
pub struct MemoryStore {
    links: Arc<RwLock<Links>>,
    rest: Arc<Mutex<Rest>>,
    rates: Arc<Mutex<LocalRates>>,
}

#[derive(Default)]
struct Links {
    /// Hashed, not ordered: a lookup stays a probe or two at millions of links.
    by_code: HashMap<ShortCode, Link>,
    by_entity: BTreeMap<Vec<u8>, ShortCode>,
    buried: HashSet<Tombstone>,
}

#[derive(Default)]
struct Rest {
    next_entry: u128,
    queues: BTreeMap<(String, EntryId), Vec<u8>>,
    visits: HashMap<[u8; 16], VisitMark>,
    /// Times of each link's recent notes.
    link_notes: HashMap<[u8; 16], Vec<u64>>,
    notes: BTreeMap<[u8; 33], Note>,
    tokens: BTreeMap<String, ApiToken>,
    secret: Option<InstallationSecret>,
    credentials: HashMap<String, Vec<u8>>,
    /// Each address's tally of sightings.
    sightings: HashMap<[u8; 16], AddressTally>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl LinkStore for MemoryStore {
    async fn insert_links(&self, links: Vec<Link>) -> Result<Vec<InsertOutcome>, Error> {
        let mut guard = self.links.write();
        let mut outcomes = Vec::with_capacity(links.len());
        for link in links {
            if let Some(existing) = guard.by_code.get(&link.code).cloned() {
                // As every backend: the owner's index entry is written again, so a retry
                // heals whatever lost it.
                let index = keys::link_index_key(existing.account, existing.entity, existing.code.as_bytes());
                guard.by_entity.insert(index, existing.code);
                outcomes.push(InsertOutcome::Occupied(existing));
                continue;
            }
            let index = keys::link_index_key(link.account, link.entity, link.code.as_bytes());
            guard.by_entity.insert(index, link.code);
            guard.by_code.insert(link.code, link);
            outcomes.push(InsertOutcome::Inserted);
        }
        Ok(outcomes)
    }

    async fn get_link(&self, code: &ShortCode) -> Result<Option<Link>, Error> {
        Ok(self.links.read().by_code.get(code).cloned())
    }

    async fn links_of(&self, account: AccountId, entity: EntityRef) -> Result<Vec<Link>, Error> {
        let prefix = keys::entity_prefix(account, entity);
        let guard = self.links.read();
        let found = guard
            .by_entity
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(_, code)| guard.by_code.get(code).cloned())
            .collect();
        Ok(found)
    }

    async fn links_to(&self, account: AccountId, target: &TargetUrl, limit: usize) -> Result<Vec<Link>, Error> {
        let guard = self.links.read();
        let mut found: Vec<Link> =
            guard.by_code.values().filter(|l| l.account == account && l.target == *target).cloned().collect();
        found.sort_by_key(|l| l.code);
        found.truncate(limit);
        Ok(found)
    }

    async fn erase_links(&self, links: Vec<(Link, Tombstone)>) -> Result<(), Error> {
        let mut guard = self.links.write();
        for (link, tombstone) in links {
            guard.buried.insert(tombstone);
            if guard.by_code.get(&link.code).is_some_and(|stored| stored.same_identity(&link)) {
                guard.by_code.remove(&link.code);
                guard.by_entity.remove(&keys::link_index_key(link.account, link.entity, link.code.as_bytes()));
            }
        }
        Ok(())
    }

    async fn buried(&self, tombstones: Vec<Tombstone>) -> Result<Vec<bool>, Error> {
        let guard = self.links.read();
        Ok(tombstones.iter().map(|t| guard.buried.contains(t)).collect())
    }
}

impl Queues for MemoryStore {
    async fn push(&self, queue: &str, records: Vec<Vec<u8>>) -> Result<(), Error> {
        check_queue_name(queue)?;
        let mut rest = self.rest.lock();
        for record in records {
            rest.next_entry += 1;
            let id = EntryId(rest.next_entry);
            rest.queues.insert((queue.to_owned(), id), record);
        }
        Ok(())
    }

    async fn lease(&self, queue: &str, max: usize) -> Result<Vec<(EntryId, Vec<u8>)>, Error> {
        check_queue_name(queue)?;
        let rest = self.rest.lock();
        let start = (queue.to_owned(), EntryId(0));
        Ok(rest
            .queues
            .range(start..)
            .take_while(|((name, _), _)| name == queue)
            .take(max)
            .map(|((_, id), record)| (*id, record.clone()))
            .collect())
    }

    /// One consumer: a lease is a look.
    async fn peek(&self, queue: &str, max: usize) -> Result<Vec<(EntryId, Vec<u8>)>, Error> {
        self.lease(queue, max).await
    }

    async fn remove(&self, queue: &str, ids: Vec<EntryId>) -> Result<(), Error> {
        check_queue_name(queue)?;
        let mut rest = self.rest.lock();
        for id in ids {
            rest.queues.remove(&(queue.to_owned(), id));
        }
        Ok(())
    }

    async fn depth(&self, queue: &str) -> Result<u64, Error> {
        check_queue_name(queue)?;
        let rest = self.rest.lock();
        let start = (queue.to_owned(), EntryId(0));
        Ok(rest.queues.range(start..).take_while(|((name, _), _)| name == queue).count() as u64)
    }
}

impl VisitLedger for MemoryStore {
    async fn claim_visits(&self, claims: Vec<VisitClaim>, rules: VisitRules) -> Result<Vec<Claimed>, Error> {
        let mut guard = self.rest.lock();
        let rest = &mut *guard;
        Ok(claims
            .into_iter()
            .map(|c| {
                let mut uncounted = Vec::new();
                let link_notes = match rules.notes_per_link {
                    0 => &mut uncounted,
                    _ => rest.link_notes.entry(c.link).or_default(),
                };
                let claimed = decide_visit(rest.visits.get(&c.key).copied(), link_notes, &c, rules);
                if claimed == Claimed::Note {
                    rest.visits.insert(c.key, VisitMark { at: c.at, note_id: c.note_id });
                }
                claimed
            })
            .collect())
    }

    async fn forget_visits(&self, before: Timestamp) -> Result<u64, Error> {
        let rest = &mut *self.rest.lock();
        let had = rest.visits.len();
        rest.visits.retain(|_, mark| mark.at >= before);
        rest.link_notes.retain(|_, times| times.iter().any(|&t| t >= before.0));
        Ok((had - rest.visits.len()) as u64)
    }
}

impl NotesJournal for MemoryStore {
    async fn append_notes(&self, notes: Vec<Note>) -> Result<(), Error> {
        let mut rest = self.rest.lock();
        for note in notes {
            let key = keys::note_key(note.account, note.entity, note.created_at, note.id);
            rest.notes.entry(key).or_insert(note);
        }
        Ok(())
    }

    async fn list_notes(&self, query: NotesQuery) -> Result<Vec<Note>, Error> {
        let prefix = keys::account_type_prefix(query.account, query.entity_type);
        let rest = self.rest.lock();
        let mut start = [0u8; 33];
        start[..9].copy_from_slice(&prefix);
        Ok(rest
            .notes
            .range(start..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| wanted(&query, k.as_slice()))
            .skip(query.offset)
            .take(query.limit)
            .map(|(_, n)| n.clone())
            .collect())
    }

    async fn erase_notes(&self, account: AccountId, entity: EntityRef) -> Result<u64, Error> {
        let prefix = keys::entity_prefix(account, entity);
        let mut rest = self.rest.lock();
        let mut start = [0u8; 33];
        start[..17].copy_from_slice(&prefix);
        let keys: Vec<[u8; 33]> =
            rest.notes.range(start..).map(|(k, _)| *k).take_while(|k| k.starts_with(&prefix)).collect();
        for key in &keys {
            rest.notes.remove(key);
        }
        Ok(keys.len() as u64)
    }

    async fn forget_notes(&self, before: Timestamp) -> Result<u64, Error> {
        let mut rest = self.rest.lock();
        let was = rest.notes.len();
        rest.notes.retain(|_, note| note.created_at >= before);
        Ok((was - rest.notes.len()) as u64)
    }
}

/// Whether a note key belongs to an entity the query asks for.
fn wanted(query: &NotesQuery, key: &[u8]) -> bool {
    match (&query.entity_ids, keys::entity_id_of(key)) {
        (None, _) => true,
        (Some(ids), Some(id)) => ids.binary_search(&id).is_ok(),
        (Some(_), None) => false,
    }
}

impl TokenStore for MemoryStore {
    async fn put_token(&self, token: ApiToken) -> Result<(), Error> {
        self.rest.lock().tokens.insert(token.id.clone(), token);
        Ok(())
    }

    async fn get_token(&self, id: &str) -> Result<Option<ApiToken>, Error> {
        Ok(self.rest.lock().tokens.get(id).cloned())
    }

    async fn list_tokens(&self) -> Result<Vec<ApiToken>, Error> {
        Ok(self.rest.lock().tokens.values().cloned().collect())
    }
}

impl RateLimiter for MemoryStore {
    /// In this process: one process owns the store.
    async fn take(&self, key: &str, rate: Rate) -> Result<Option<std::time::Duration>, Error> {
        Ok(LocalRates::take(&self.rates, key, rate))
    }
}

impl SecretStore for MemoryStore {
    async fn installation_secret(&self, candidate: InstallationSecret) -> Result<InstallationSecret, Error> {
        Ok(self.rest.lock().secret.get_or_insert(candidate).clone())
    }
}

impl AddressLedger for MemoryStore {
    async fn sight(&self, sightings: Vec<Sighting>, rule: AddressRule, _keep_ms: u64) -> Result<(), Error> {
        let tallies = &mut self.rest.lock().sightings;
        for s in sightings {
            tallies.entry(s.address).or_default().sight(s.contact, s.at, rule);
        }
        Ok(())
    }

    async fn gateway_spans(
        &self,
        address: [u8; 16],
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<GatewaySpan>, Error> {
        Ok(self.rest.lock().sightings.get(&address).map(|t| t.spans(from, to).collect()).unwrap_or_default())
    }

    async fn forget_sightings(&self, before: Timestamp) -> Result<u64, Error> {
        let mut forgotten = 0;
        self.rest.lock().sightings.retain(|_, tally| {
            forgotten += tally.forget(before);
            !tally.is_empty()
        });
        Ok(forgotten)
    }
}

impl CredentialStore for MemoryStore {
    async fn credential(&self, name: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.rest.lock().credentials.get(name).cloned())
    }

    async fn swap_credential(&self, name: &str, expected: Option<Vec<u8>>, new: Vec<u8>) -> Result<bool, Error> {
        let credentials = &mut self.rest.lock().credentials;
        if credentials.get(name) != expected.as_ref() {
            return Ok(false);
        }
        credentials.insert(name.to_owned(), new);
        Ok(true)
    }
}

impl Store for MemoryStore {
    async fn flush(&self) -> Result<(), Error> {
        Ok(())
    }
}

#[cfg(any(test, feature = "testing"))]
impl super::conformance::CrashFaults for MemoryStore {
    async fn lose_index_entry(&self, link: &Link) -> bool {
        let index = keys::link_index_key(link.account, link.entity, link.code.as_bytes());
        self.links.write().by_entity.remove(&index);
        true
    }
}
