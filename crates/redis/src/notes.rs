//! The notes journal, the visit ledger and the address ledger.

use std::collections::HashMap;

use futures_util::future::try_join_all;
use shortlinks_core::model::{EntityRef, Note};
use shortlinks_core::store::{decode, encode};
use shortlinks_core::store::{
    AddressLedger, AddressRule, AddressTally, Claimed, GatewaySpan, NotesJournal, NotesQuery, Sighting, VisitClaim,
    VisitLedger, VisitRules,
};
use shortlinks_core::{AccountId, Error, Timestamp};

use crate::connection::{one_each, store_error};
use crate::keys::ordered_id;
use crate::store::RedisStore;

/// Claims visits in order: for each, the same decision as
/// `shortlinks_core::store::decide_visit`, made atomically next to the mark and the link's
/// count. Both expire once they can no longer matter. Answers, per claim, 1 for a note, 0
/// for a repeat, 2 for a link over its cap. One call takes many claims: per claim a Lua call
/// costs Redis a fraction of a command of its own (measured: 12 µs a call of one claim).
///
/// KEYS: per claim, the mark and the link's notes (a sorted set of note ids by time);
/// ARGV: window (ms), time to live (ms), notes per link (0: no cap), then per claim: at
/// (ms), note id, and at minus window (from Rust: Lua would print a large number in
/// exponent form). Note ids are compared as strings: Lua numbers would round them.
const CLAIM_VISITS: &str = r"
local window, ttl, cap = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local function claim(mark_key, notes_key, at_text, id, since)
  local at = tonumber(at_text)
  local mark = redis.call('GET', mark_key)
  if mark then
    local sep = string.find(mark, ':', 1, true)
    local marked = tonumber(string.sub(mark, 1, sep - 1))
    if string.sub(mark, sep + 1) == id then
      return 1
    end
    if at < marked + window then
      return 0
    end
  end
  if cap > 0 then
    redis.call('ZREMRANGEBYSCORE', notes_key, '-inf', since)
    if redis.call('ZCARD', notes_key) >= cap then
      return 2
    end
    redis.call('ZADD', notes_key, at_text, id)
    redis.call('PEXPIRE', notes_key, ttl)
  end
  redis.call('SET', mark_key, at_text .. ':' .. id, 'PX', ttl)
  return 1
end
local answers = {}
for i = 1, #KEYS / 2 do
  local a = 3 + 3 * (i - 1)
  answers[i] = claim(KEYS[2 * i - 1], KEYS[2 * i], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3])
end
return answers
";

/// Counts one address's sightings: the same steps as `shortlinks_core::store::AddressTally`,
/// made atomically next to its two keys (one hash tag, so one slot), which then live for
/// the time to live from the last sighting.
///
/// KEYS[1] the most recent contacts (a sorted set: member the contact's 8 bytes, score its
/// latest time), KEYS[2] the spans (a sorted set: member `from:to`, score `to`);
/// ARGV: the rule's contacts, its window (ms), time to live (ms), the most contacts and
/// spans kept, then `at, contact` for each sighting, in order. Times are below 2^53, so
/// Lua's numbers hold them exactly.
const SIGHT: &str = r"
local k, window, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local most_contacts, most_spans = tonumber(ARGV[4]), tonumber(ARGV[5])
local function mark(from, to)
  local later = redis.call('ZRANGEBYSCORE', KEYS[2], from, '+inf', 'WITHSCORES')
  for i = 1, #later, 2 do
    local start = tonumber(string.match(later[i], '^%d+'))
    if start <= to then
      from = math.min(from, start)
      to = math.max(to, tonumber(later[i + 1]))
      redis.call('ZREM', KEYS[2], later[i])
    end
  end
  redis.call('ZADD', KEYS[2], to, string.format('%d:%d', from, to))
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -most_spans - 1)
end
for i = 6, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], 'GT', ARGV[i], ARGV[i + 1])
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -most_contacts - 1)
  if k > 0 then
    local top = redis.call('ZRANGE', KEYS[1], 0, k - 1, 'REV', 'WITHSCORES')
    if #top == 2 * k then
      local newest, kth = tonumber(top[2]), tonumber(top[2 * k])
      if newest - kth <= window then
        mark(math.max(newest - window, 0), newest)
      end
    end
  end
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
";

/// `created_at ‖ id`, big-endian: byte order is time order within an entity.
fn note_member(note: &Note) -> [u8; 16] {
    let mut member = [0u8; 16];
    member[..8].copy_from_slice(&note.created_at.0.to_be_bytes());
    member[8..].copy_from_slice(&note.id.to_be_bytes());
    member
}

impl RedisStore {
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

impl RedisStore {
    /// Claims without a cap: per claim one `SET NX GET`, which makes the mark or returns
    /// the one there, in a pipeline per slot (claims of one link in batch order). Costs
    /// Redis less than the script (measured: 3.3 against 5.2 µs a claim on an idle
    /// server). A mark past its window, which its TTL keeps a minute longer, must be
    /// replaced atomically: those claims are returned, in order, for the script.
    async fn claim_marks(
        &self,
        claims: &[VisitClaim],
        rules: VisitRules,
        ttl_ms: u64,
        claimed: &mut [Claimed],
    ) -> Result<Vec<usize>, Error> {
        let calls = self.connection.pack(chains(claims.iter().enumerate(), &self.keys)).into_iter().map(|call| {
            let mut pipe = redis::pipe();
            for &i in &call {
                let claim = &claims[i];
                let (mark, _) = self.keys.visit(&claim.link, &claim.key);
                let value = format!("{}:{}", claim.at.0, claim.note_id);
                pipe.cmd("SET").arg(mark).arg(value).arg("NX").arg("GET").arg("PX").arg(ttl_ms);
            }
            async move {
                let marks: Vec<Option<String>> = pipe.query_async(&mut self.connection()).await.map_err(store_error)?;
                one_each(call, marks, "visit claims")
            }
        });
        let mut scripted = Vec::new();
        for (i, mark) in try_join_all(calls).await?.into_iter().flatten() {
            let claim = &claims[i];
            let Some(mark) = mark else {
                claimed[i] = Claimed::Note;
                continue;
            };
            let (at, id) = mark
                .split_once(':')
                .and_then(|(at, id)| Some((at.parse::<u64>().ok()?, id.parse::<u64>().ok()?)))
                .ok_or_else(|| Error::Corrupt(format!("a visit mark reads {mark:?}")))?;
            claimed[i] = if id == claim.note_id {
                Claimed::Note
            } else if claim.at.0 < at.saturating_add(rules.window_ms) {
                Claimed::Repeat
            } else {
                scripted.push(i);
                continue;
            };
        }
        scripted.sort_unstable();
        Ok(scripted)
    }

    /// Claims `which` (indices into `claims`, in batch order) with [`CLAIM_VISITS`].
    async fn claim_by_script(
        &self,
        claims: &[VisitClaim],
        which: Vec<usize>,
        rules: VisitRules,
        ttl_ms: u64,
        claimed: &mut [Claimed],
    ) -> Result<(), Error> {
        let script = redis::Script::new(CLAIM_VISITS);
        let units = chains(which.iter().map(|&i| (i, &claims[i])), &self.keys);
        let calls = self.connection.pack(units).into_iter().map(|call| {
            let mut invocation = script.prepare_invoke();
            invocation.arg(rules.window_ms).arg(ttl_ms).arg(rules.notes_per_link);
            for &i in &call {
                let claim = &claims[i];
                let (mark, link_notes) = self.keys.visit(&claim.link, &claim.key);
                invocation
                    .key(mark)
                    .key(link_notes)
                    .arg(claim.at.0)
                    .arg(claim.note_id)
                    .arg(i128::from(claim.at.0) - i128::from(rules.window_ms));
            }
            async move {
                let answers: Vec<i64> = invocation.invoke_async(&mut self.connection()).await.map_err(store_error)?;
                one_each(call, answers, "visit claims")
            }
        });
        for (i, answer) in try_join_all(calls).await?.into_iter().flatten() {
            claimed[i] = match answer {
                1 => Claimed::Note,
                0 => Claimed::Repeat,
                _ => Claimed::OverLinkCap,
            };
        }
        Ok(())
    }
}

/// Claims by link, each link's in batch order, keyed by a key of the link's slot: one
/// call keeps a link's claims together and in order.
fn chains<'a>(
    claims: impl IntoIterator<Item = (usize, &'a VisitClaim)>,
    keys: &crate::keys::Keys,
) -> Vec<(String, Vec<usize>)> {
    let mut chains: HashMap<[u8; 16], Vec<usize>> = HashMap::new();
    for (i, claim) in claims {
        chains.entry(claim.link).or_default().push(i);
    }
    chains.into_iter().map(|(link, chain)| (keys.link_notes(&link), chain)).collect()
}

impl NotesJournal for RedisStore {
    /// The entities are listed first (an entry without notes is harmless), then the
    /// notes go in, a few pipelines of plain commands. A retry after a failure part way
    /// writes the rest: a body already there is kept as is, an order key set again.
    async fn append_notes(&self, notes: Vec<Note>) -> Result<(), Error> {
        if notes.is_empty() {
            return Ok(());
        }
        let mut accounts: Vec<u64> = notes.iter().map(|n| n.account.0).collect();
        accounts.sort_unstable();
        accounts.dedup();
        let mut listed = redis::cmd("SADD");
        listed.arg(self.keys.noted_accounts()).arg(&accounts);
        let mut noted: HashMap<String, redis::Cmd> = HashMap::new();
        for note in &notes {
            let key = self.keys.noted(note.account, note.entity.kind);
            let add = noted.entry(key).or_insert_with_key(|key| {
                let mut add = redis::cmd("ZADD");
                add.arg(key);
                add
            });
            add.arg(0).arg(ordered_id(note.entity.id));
        }
        let listings = noted.values().chain([&listed]).map(|cmd| self.write::<i64>(cmd));
        try_join_all(listings).await?;
        let mut units = Vec::with_capacity(notes.len());
        for note in &notes {
            let (order, body) = self.keys.notes(note.account, note.entity);
            let member = note_member(note);
            let unit = (order.clone(), vec![(order, body, member, encode(note)?)]);
            units.push(unit);
        }
        // Plain commands, not a script: a script's call costs Redis more than the two
        // commands it would run (measured: 5.9 against 4.6 µs a note on an idle server).
        // Each body goes before its order key, so a listing never meets a key without
        // its body; a body whose order key a failure left out is unseen until the retry.
        let calls = self.connection.pack(units).into_iter().map(|call| {
            let mut pipe = redis::pipe();
            for (order, body, member, bytes) in &call {
                pipe.cmd("HSETNX").arg(body).arg(member.as_slice()).arg(bytes.as_slice()).ignore();
                pipe.cmd("ZADD").arg(order).arg(0).arg(member.as_slice()).ignore();
            }
            async move { pipe.query_async::<()>(&mut self.write_connection()).await.map_err(store_error) }
        });
        try_join_all(calls).await?;
        self.replicated().await
    }

    /// Every account with notes, every entity it has notes on, and of each the notes
    /// before `before`: a walk of the whole journal, which the retention's sweep makes once
    /// a day.
    async fn forget_notes(&self, before: Timestamp) -> Result<u64, Error> {
        let accounts: Vec<u64> = self.query(redis::cmd("SMEMBERS").arg(self.keys.noted_accounts())).await?;
        let accounts = accounts.into_iter().map(AccountId);
        // Members are `created_at ‖ id`: those before this are older.
        let mut bound = vec![b'('];
        bound.extend_from_slice(&before.0.to_be_bytes());
        bound.extend_from_slice(&[0; 8]);
        let mut forgotten = 0;
        for account in accounts {
            let kind = shortlinks_core::EntityType::Contacts;
            let query = NotesQuery { account, entity_type: kind, entity_ids: None, offset: 0, limit: 0 };
            for id in self.entities_of(&query).await? {
                let (order, body) = self.keys.notes(account, EntityRef { kind, id });
                let old: Vec<Vec<u8>> =
                    self.query(redis::cmd("ZRANGE").arg(&order).arg("-").arg(&bound).arg("BYLEX")).await?;
                if old.is_empty() {
                    continue;
                }
                let mut pipe = redis::pipe();
                pipe.atomic().cmd("ZREM").arg(&order).arg(&old).ignore().cmd("HDEL").arg(&body).arg(&old).ignore();
                pipe.cmd("ZCARD").arg(&order);
                let (left,): (u64,) = pipe.query_async(&mut self.write_connection()).await.map_err(store_error)?;
                if left == 0 {
                    let _: i64 =
                        self.write(redis::cmd("ZREM").arg(self.keys.noted(account, kind)).arg(ordered_id(id))).await?;
                }
                forgotten += old.len() as u64;
            }
        }
        self.replicated().await?;
        Ok(forgotten)
    }

    /// The entity's two keys go in one transaction (one hash tag), then its entry in the
    /// list of noted entities.
    async fn erase_notes(&self, account: AccountId, entity: EntityRef) -> Result<u64, Error> {
        let (order, body) = self.keys.notes(account, entity);
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("ZCARD").arg(&order).cmd("DEL").arg(&order).ignore().cmd("DEL").arg(&body).ignore();
        let (erased,): (u64,) = pipe.query_async(&mut self.write_connection()).await.map_err(store_error)?;
        let noted = self.keys.noted(account, entity.kind);
        let _: i64 = self.write(redis::cmd("ZREM").arg(noted).arg(ordered_id(entity.id))).await?;
        self.replicated().await?;
        Ok(erased)
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
    /// Without a cap on notes per link a claim needs only its mark, which plain commands
    /// settle (see [`RedisStore::claim_marks`]); the claims they cannot settle, and every
    /// claim under a cap, go to a few script calls (see [`CLAIM_VISITS`]).
    async fn claim_visits(&self, claims: Vec<VisitClaim>, rules: VisitRules) -> Result<Vec<Claimed>, Error> {
        // A mark outlives its window by a minute: clicks reach the dispatcher a little late.
        let ttl_ms = rules.window_ms.saturating_add(60_000).min(i64::MAX as u64);
        let mut claimed = vec![Claimed::Repeat; claims.len()];
        let scripted = if rules.notes_per_link == 0 {
            self.claim_marks(&claims, rules, ttl_ms, &mut claimed).await?
        } else {
            (0..claims.len()).collect()
        };
        if !scripted.is_empty() {
            self.claim_by_script(&claims, scripted, rules, ttl_ms, &mut claimed).await?;
        }
        Ok(claimed)
    }

    /// Nothing to do: each mark expires by its TTL (the window plus a minute), and finding
    /// old ones would mean scanning every node's keys.
    async fn forget_visits(&self, _before: Timestamp) -> Result<u64, Error> {
        Ok(0)
    }
}

impl AddressLedger for RedisStore {
    /// One script call per address, with that address's sightings in order; addresses at
    /// once. A group of clicks holds at most a writer's group, so no call is larger.
    async fn sight(&self, sightings: Vec<Sighting>, rule: AddressRule, keep_ms: u64) -> Result<(), Error> {
        let mut by_address: HashMap<[u8; 16], Vec<Sighting>> = HashMap::new();
        for sighting in sightings {
            by_address.entry(sighting.address).or_default().push(sighting);
        }
        let ttl_ms = keep_ms.min(i64::MAX as u64).max(1);
        let script = redis::Script::new(SIGHT);
        let calls = by_address.into_iter().map(|(address, sightings)| {
            let script = &script;
            async move {
                let (contacts, spans) = self.keys.sightings(&address);
                let mut call = script.key(contacts);
                call.key(spans)
                    .arg(rule.contacts.min(AddressTally::MOST_CONTACTS as u32))
                    .arg(rule.window_ms())
                    .arg(ttl_ms)
                    .arg(AddressTally::MOST_CONTACTS)
                    .arg(AddressTally::MOST_SPANS);
                for s in &sightings {
                    call.arg(s.at.0).arg(s.contact.to_be_bytes().as_slice());
                }
                call.invoke_async::<()>(&mut self.connection()).await.map_err(store_error)
            }
        });
        try_join_all(calls).await?;
        Ok(())
    }

    async fn gateway_spans(
        &self,
        address: [u8; 16],
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<GatewaySpan>, Error> {
        let (_, spans) = self.keys.sightings(&address);
        let members: Vec<String> = self.query(redis::cmd("ZRANGEBYSCORE").arg(spans).arg(from.0).arg("+inf")).await?;
        let mut found = Vec::with_capacity(members.len());
        for member in members {
            let span = member
                .split_once(':')
                .and_then(|(start, end)| {
                    Some(GatewaySpan { from: Timestamp(start.parse().ok()?), to: Timestamp(end.parse().ok()?) })
                })
                .ok_or_else(|| Error::Corrupt(format!("a gateway span reads {member:?}")))?;
            if span.from <= to {
                found.push(span);
            }
        }
        Ok(found)
    }

    /// Nothing to do: each address's keys expire by their TTL.
    async fn forget_sightings(&self, _before: Timestamp) -> Result<u64, Error> {
        Ok(0)
    }
}
