//! The notes journal and the visit ledger.

use std::collections::HashMap;

use futures_util::future::try_join_all;
use shortlinks_core::model::{EntityRef, Note};
use shortlinks_core::store::{decode, encode};
use shortlinks_core::store::{NotesJournal, NotesQuery, VisitClaim, VisitLedger};
use shortlinks_core::{Error, Timestamp};

use crate::connection::store_error;
use crate::keys::ordered_id;
use crate::store::RedisStore;

/// Claims one visit: the same decision as `shortlinks_core::store::visit_claims`, made
/// atomically next to the mark. The mark expires once it can no longer matter.
///
/// KEYS[1] the mark; ARGV: at (ms), note id, window (ms), time to live (ms).
/// Note ids are compared as strings: Lua numbers would round them.
const CLAIM_VISIT: &str = r"
local mark = redis.call('GET', KEYS[1])
if mark then
  local sep = string.find(mark, ':', 1, true)
  local at = tonumber(string.sub(mark, 1, sep - 1))
  local id = string.sub(mark, sep + 1)
  if id ~= ARGV[2] and tonumber(ARGV[1]) < at + tonumber(ARGV[3]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2], 'PX', ARGV[4])
return 1
";

/// `created_at ‖ id`, big-endian: byte order is time order within an entity.
fn note_member(note: &Note) -> [u8; 16] {
    let mut member = [0u8; 16];
    member[..8].copy_from_slice(&note.created_at.0.to_be_bytes());
    member[8..].copy_from_slice(&note.id.to_be_bytes());
    member
}

impl RedisStore {
    /// One note: the entity is listed first (an entry without notes is harmless), then the
    /// note's order key and body go in one transaction. `HSETNX` keeps a first copy as is.
    async fn append_note(&self, note: &Note) -> Result<(), Error> {
        let noted = self.keys.noted(note.account, note.entity.kind);
        let _: i64 = self.query(redis::cmd("ZADD").arg(noted).arg(0).arg(ordered_id(note.entity.id))).await?;
        let (order, body) = self.keys.notes(note.account, note.entity);
        let member = note_member(note);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HSETNX")
            .arg(&body)
            .arg(member.as_slice())
            .arg(encode(note)?)
            .ignore()
            .cmd("ZADD")
            .arg(&order)
            .arg(0)
            .arg(member.as_slice())
            .ignore();
        pipe.query_async::<()>(&mut self.connection()).await.map_err(store_error)
    }

    /// The entity ids of a query, ascending.
    async fn entities_of(&self, query: &NotesQuery) -> Result<Vec<u64>, Error> {
        if let Some(ids) = &query.entity_ids {
            let mut ids = ids.clone();
            ids.sort_unstable();
            ids.dedup();
            return Ok(ids);
        }
        let members: Vec<String> = self
            .query(
                redis::cmd("ZRANGE")
                    .arg(self.keys.noted(query.account, query.entity_type))
                    .arg("-")
                    .arg("+")
                    .arg("BYLEX"),
            )
            .await?;
        members
            .iter()
            .map(|m| u64::from_str_radix(m, 16).map_err(|_| Error::Corrupt(format!("bad entity id {m:?}"))))
            .collect()
    }
}

impl NotesJournal for RedisStore {
    async fn append_notes(&self, notes: Vec<Note>) -> Result<(), Error> {
        try_join_all(notes.iter().map(|note| self.append_note(note))).await?;
        Ok(())
    }

    async fn list_notes(&self, query: NotesQuery) -> Result<Vec<Note>, Error> {
        let mut out = Vec::new();
        let mut skip = query.offset;
        for id in self.entities_of(&query).await? {
            if out.len() == query.limit {
                break;
            }
            let (order, body) = self.keys.notes(query.account, EntityRef { kind: query.entity_type, id });
            let count: usize = self.query(redis::cmd("ZCARD").arg(&order)).await?;
            if skip >= count {
                skip -= count;
                continue;
            }
            let members: Vec<Vec<u8>> = self
                .query(
                    redis::cmd("ZRANGE")
                        .arg(&order)
                        .arg("-")
                        .arg("+")
                        .arg("BYLEX")
                        .arg("LIMIT")
                        .arg(skip)
                        .arg(query.limit - out.len()),
                )
                .await?;
            skip = 0;
            if members.is_empty() {
                continue;
            }
            let bodies: Vec<Option<Vec<u8>>> = self.query(redis::cmd("HMGET").arg(&body).arg(&members)).await?;
            for bytes in bodies.into_iter().flatten() {
                out.push(decode(&bytes)?);
            }
        }
        Ok(out)
    }
}

impl VisitLedger for RedisStore {
    async fn claim_visits(&self, claims: Vec<VisitClaim>, window_ms: u64) -> Result<Vec<bool>, Error> {
        let script = redis::Script::new(CLAIM_VISIT);
        // A mark outlives its window by a minute: clicks reach the dispatcher a little late.
        let ttl_ms = window_ms.saturating_add(60_000).min(i64::MAX as u64);
        // Claims of one key run in batch order, one after another; different keys at once.
        let mut chains: HashMap<[u8; 16], Vec<usize>> = HashMap::new();
        for (i, claim) in claims.iter().enumerate() {
            chains.entry(claim.key).or_default().push(i);
        }
        let calls = chains.into_values().map(|chain| {
            let (script, claims) = (&script, &claims);
            async move {
                let mut answers = Vec::with_capacity(chain.len());
                for i in chain {
                    let claim = &claims[i];
                    let yes: i64 = script
                        .key(self.keys.visit(&claim.key))
                        .arg(claim.at.0)
                        .arg(claim.note_id.to_string())
                        .arg(window_ms)
                        .arg(ttl_ms)
                        .invoke_async(&mut self.connection())
                        .await
                        .map_err(store_error)?;
                    answers.push((i, yes == 1));
                }
                Ok::<_, Error>(answers)
            }
        });
        let mut claimed = vec![false; claims.len()];
        for (i, yes) in try_join_all(calls).await?.into_iter().flatten() {
            claimed[i] = yes;
        }
        Ok(claimed)
    }

    /// Nothing to do: each mark expires by its TTL (the window plus a minute), and finding
    /// old ones would mean scanning every node's keys.
    async fn forget_visits(&self, _before: Timestamp) -> Result<u64, Error> {
        Ok(0)
    }
}
