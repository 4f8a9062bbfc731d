//! Links: `SET NX` per code, and sorted sets of codes per entity and per target. Erased codes: a set of
//! tombstones, and a stream of the codes erased in the last [`ERASURES_KEPT`], which every
//! node reads to drop them from its cache of links.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::{try_join, try_join_all};
use shortlinks_core::model::EntityRef;
use shortlinks_core::store::{decode, encode};
use shortlinks_core::store::{ErasureCursor, ErasureNews, InsertOutcome, LinkStore};
use shortlinks_core::{AccountId, Error, Link, ShortCode, TargetUrl, Timestamp, Tombstone};

use crate::connection::{one_each, store_error};
use crate::store::RedisStore;

/// How long an erased code stays in the stream of erasures: every node reads it well
/// within this, and a node that does not (away longer) drops its whole cache instead.
pub(crate) const ERASURES_KEPT: Duration = Duration::from_secs(600);

/// The most erasures one read takes.
const ERASURES_AT_ONCE: usize = 10_000;

/// The codes an index (a sorted set of codes) holds.
fn indexed_codes(members: &[String]) -> Result<Vec<ShortCode>, Error> {
    members
        .iter()
        .map(|c| ShortCode::parse(c).ok_or_else(|| Error::Corrupt(format!("bad code {c:?} in an index"))))
        .collect()
}

/// A stream entry id, `ms-seq`, as numbers: ids compare in this order.
fn stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

impl RedisStore {
    /// Stores one link unless its code is taken, then indexes it.
    ///
    /// The index is written after the link (they may live on different nodes), and again
    /// when the code is taken: a retry thus heals an insert that was cut off between the
    /// two writes.
    async fn insert_link(&self, link: Link) -> Result<InsertOutcome, Error> {
        let key = self.keys.link(&link.code);
        let encoded = encode(&link)?;
        let outcome = loop {
            let set: Option<String> = self.write(redis::cmd("SET").arg(&key).arg(&encoded).arg("NX")).await?;
            if set.is_some() {
                break InsertOutcome::Inserted;
            }
            // `None` only if the key vanished in between (deleted by hand): try again.
            if let Some(existing) = self.get_link(&link.code).await? {
                break InsertOutcome::Occupied(existing);
            }
        };
        // The owner's entry, whoever asked: a retry carries a new `created_at`, so only the
        // stored link says whose index the code belongs in.
        let owner = match &outcome {
            InsertOutcome::Inserted => &link,
            InsertOutcome::Occupied(existing) => existing,
        };
        let of = self.keys.links_of(owner.account, owner.entity);
        let to = self.keys.links_to(owner.account, &owner.target);
        let index = |key: String| async move {
            let _: i64 = self.write(redis::cmd("ZADD").arg(key).arg(0).arg(owner.code.as_str())).await?;
            Ok::<_, Error>(())
        };
        if self.index_targets {
            try_join(index(of), index(to)).await?;
        } else {
            index(of).await?;
        }
        Ok(outcome)
    }
}

impl LinkStore for RedisStore {
    const READS_ARE_REMOTE: bool = true;

    async fn insert_links(&self, links: Vec<Link>) -> Result<Vec<InsertOutcome>, Error> {
        let mut codes = HashSet::with_capacity(links.len());
        if links.iter().all(|l| codes.insert(l.code)) {
            // Distinct codes are independent: send them all at once.
            let outcomes = try_join_all(links.into_iter().map(|link| self.insert_link(link))).await?;
            self.replicated().await?;
            return Ok(outcomes);
        }
        // A code repeated in the batch: later links must see earlier ones, so go in order.
        let mut outcomes = Vec::with_capacity(links.len());
        for link in links {
            outcomes.push(self.insert_link(link).await?);
        }
        self.replicated().await?;
        Ok(outcomes)
    }

    async fn get_link(&self, code: &ShortCode) -> Result<Option<Link>, Error> {
        let bytes: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.keys.link(code))
            .query_async(&mut self.hot_connection(false))
            .await
            .map_err(store_error)?;
        bytes.map(|b| decode(&b)).transpose()
    }

    /// `MGET`s of up to 256 keys (on a cluster, per hash slot), on the shared connection:
    /// a batch's reads must not queue ahead of the redirects' own.
    async fn get_links(&self, codes: &[ShortCode]) -> Result<Vec<Option<Link>>, Error> {
        let units = codes.iter().enumerate().map(|(i, code)| {
            let key = self.keys.link(code);
            (key.clone(), vec![(i, key)])
        });
        let calls = self.connection.pack(units).into_iter().map(|call| async move {
            let keys: Vec<&String> = call.iter().map(|(_, key)| key).collect();
            let found: Vec<Option<Vec<u8>>> = self.query(redis::cmd("MGET").arg(keys)).await?;
            Ok(one_each(call, found, "keys")?.map(|((i, _), bytes)| (i, bytes)))
        });
        let mut links = vec![None; codes.len()];
        for (i, bytes) in try_join_all(calls).await?.into_iter().flatten() {
            links[i] = bytes.map(|b| decode(&b)).transpose()?;
        }
        Ok(links)
    }

    async fn links_of(&self, account: AccountId, entity: EntityRef) -> Result<Vec<Link>, Error> {
        let codes: Vec<String> = self
            .query(redis::cmd("ZRANGE").arg(self.keys.links_of(account, entity)).arg("-").arg("+").arg("BYLEX"))
            .await?;
        let found = self.get_links(&indexed_codes(&codes)?).await?;
        Ok(found.into_iter().flatten().collect())
    }

    /// The target's index, then the links; an entry whose link is gone or is another
    /// target's (a hash collision) is passed over.
    async fn links_to(&self, account: AccountId, target: &TargetUrl, limit: usize) -> Result<Vec<Link>, Error> {
        if !self.index_targets {
            return Err(Error::InvalidInput("links are found by URL only with redis_index_targets on".into()));
        }
        let index = self.keys.links_to(account, target);
        let mut found = Vec::new();
        let mut after = "-".to_owned();
        while found.len() < limit {
            let page = (limit - found.len()).min(1000);
            let codes: Vec<String> = self
                .query(redis::cmd("ZRANGE").arg(&index).arg(&after).arg("+").arg("BYLEX").arg("LIMIT").arg(0).arg(page))
                .await?;
            let Some(last) = codes.last() else { break };
            after = format!("({last}");
            let links = self.get_links(&indexed_codes(&codes)?).await?;
            found.extend(links.into_iter().flatten().filter(|l| l.account == account && l.target == *target));
            if codes.len() < page {
                break;
            }
        }
        found.truncate(limit);
        Ok(found)
    }

    /// Tombstones first, then each link's key and index entries, then the news for caches.
    async fn erase_links(&self, links: Vec<(Link, Tombstone)>) -> Result<(), Error> {
        if links.is_empty() {
            return Ok(());
        }
        let mut bury = redis::cmd("SADD");
        bury.arg(self.keys.erased());
        for (_, tombstone) in &links {
            bury.arg(tombstone.0.as_slice());
        }
        let _: i64 = self.write(&bury).await?;
        self.replicated().await?;
        for (link, _) in &links {
            if !self.get_link(&link.code).await?.is_some_and(|stored| stored.same_identity(link)) {
                continue;
            }
            let _: i64 = self.write(redis::cmd("DEL").arg(self.keys.link(&link.code))).await?;
            for index in [self.keys.links_of(link.account, link.entity), self.keys.links_to(link.account, &link.target)]
            {
                let _: i64 = self.write(redis::cmd("ZREM").arg(index).arg(link.code.as_str())).await?;
            }
            let _: String = self
                .write(redis::cmd("XADD").arg(self.keys.erasures()).arg("*").arg("code").arg(link.code.as_str()))
                .await?;
        }
        self.replicated().await
    }

    async fn buried(&self, tombstones: Vec<Tombstone>) -> Result<Vec<bool>, Error> {
        if tombstones.is_empty() {
            return Ok(Vec::new());
        }
        let mut ask = redis::cmd("SMISMEMBER");
        ask.arg(self.keys.erased());
        for tombstone in &tombstones {
            ask.arg(tombstone.0.as_slice());
        }
        self.query(&ask).await
    }

    /// Reads the stream of erasures on from the cursor, `<last id>/<entries added up to
    /// it>`, and its counts in the same transaction; trims what is older than
    /// [`ERASURES_KEPT`]. The stream only loses entries from its front (trimming): the
    /// cursor's reader missed some if the first entry still there came after the one it
    /// was to read next.
    async fn erasures_since(&self, cursor: ErasureCursor) -> Result<ErasureNews, Error> {
        let key = self.keys.erasures();
        let horizon = Timestamp::now().0.saturating_sub(ERASURES_KEPT.as_millis() as u64);
        let _: i64 = self.write(redis::cmd("XTRIM").arg(&key).arg("MINID").arg(horizon)).await?;
        let parsed = cursor.0.split_once('/').and_then(|(id, seen)| Some((stream_id(id)?, seen.parse::<u64>().ok()?)));
        let (from, seen) = parsed.unwrap_or(((0, 0), 0));
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("XINFO").arg("STREAM").arg(&key);
        pipe.cmd("XRANGE").arg(&key).arg(format!("({}-{}", from.0, from.1)).arg("+").arg("COUNT").arg(ERASURES_AT_ONCE);
        type Entries = Vec<(String, Vec<(String, String)>)>;
        let (info, entries): (redis::Value, Entries) = match pipe.query_async(&mut self.connection()).await {
            Ok(answer) => answer,
            // No erasure yet.
            Err(e) if e.to_string().contains("no such key") => {
                return Ok(ErasureNews::Codes { codes: Vec::new(), next: ErasureCursor("0-0/0".into()) })
            }
            Err(e) => return Err(store_error(e)),
        };
        let info = StreamInfo::read(info)?;
        let latest = || ErasureCursor(format!("{}/{}", info.last_id, info.added));
        if parsed.is_none() {
            // The first read starts from now.
            return Ok(ErasureNews::Codes { codes: Vec::new(), next: latest() });
        }
        if seen > info.added || seen < info.added - info.length {
            return Ok(ErasureNews::Lost { next: latest() });
        }
        let next = match entries.last() {
            Some((id, _)) => ErasureCursor(format!("{id}/{}", seen + entries.len() as u64)),
            None => cursor,
        };
        let codes = entries
            .iter()
            .flat_map(|(_, fields)| fields.iter().filter(|(name, _)| name == "code"))
            .filter_map(|(_, code)| ShortCode::parse(code))
            .collect();
        Ok(ErasureNews::Codes { codes, next })
    }
}

/// What `XINFO STREAM` says of the stream of erasures.
struct StreamInfo {
    /// Entries ever added.
    added: u64,
    /// Entries in it now.
    length: u64,
    /// The last entry ever added.
    last_id: String,
}

impl StreamInfo {
    fn read(info: redis::Value) -> Result<Self, Error> {
        let pairs: Vec<(redis::Value, redis::Value)> = match info {
            redis::Value::Map(pairs) => pairs,
            redis::Value::Array(items) => items.chunks_exact(2).map(|p| (p[0].clone(), p[1].clone())).collect(),
            _ => Vec::new(),
        };
        let text = |v: &redis::Value| redis::from_redis_value_ref::<String>(v).ok();
        let field = |name: &str| pairs.iter().find(|(key, _)| text(key).as_deref() == Some(name)).map(|(_, v)| v);
        let number = |name: &str| field(name).and_then(|v| redis::from_redis_value_ref::<u64>(v).ok());
        match (number("entries-added"), number("length"), field("last-generated-id").and_then(text)) {
            (Some(added), Some(length), Some(last_id)) if length <= added => Ok(Self { added, length, last_id }),
            _ => Err(Error::Unavailable("Redis 7 or later is needed: XINFO STREAM has no entries-added".into())),
        }
    }
}

impl RedisStore {
    /// Trims every erasure older than `age` from the stream now, rather than after
    /// [`ERASURES_KEPT`]: nodes that had not read them yet drop their whole cache.
    pub async fn trim_erasures(&self, age: Duration) -> Result<(), Error> {
        let horizon = Timestamp::now().0.saturating_sub(age.as_millis() as u64).saturating_add(1);
        let _: i64 = self.write(redis::cmd("XTRIM").arg(self.keys.erasures()).arg("MINID").arg(horizon)).await?;
        Ok(())
    }
}

#[cfg(feature = "testing")]
impl shortlinks_core::store::conformance::CrashFaults for RedisStore {
    async fn lose_index_entry(&self, link: &Link) -> bool {
        let index = self.keys.links_of(link.account, link.entity);
        let _: i64 = self.query(redis::cmd("ZREM").arg(index).arg(link.code.as_str())).await.expect("ZREM");
        true
    }
}
