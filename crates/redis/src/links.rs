//! Links: `SET NX` per code, and a per-entity sorted set of codes.

use std::collections::HashSet;

use futures_util::future::try_join_all;
use shortlinks_core::model::EntityRef;
use shortlinks_core::store::{decode, encode};
use shortlinks_core::store::{InsertOutcome, LinkStore};
use shortlinks_core::{AccountId, Error, Link, ShortCode};

use crate::store::RedisStore;

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
        let index = self.keys.links_of(owner.account, owner.entity);
        let _: i64 = self.write(redis::cmd("ZADD").arg(index).arg(0).arg(owner.code.as_str())).await?;
        Ok(outcome)
    }
}

impl LinkStore for RedisStore {
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
        let bytes: Option<Vec<u8>> = self.query(redis::cmd("GET").arg(self.keys.link(code))).await?;
        bytes.map(|b| decode(&b)).transpose()
    }

    async fn links_of(&self, account: AccountId, entity: EntityRef) -> Result<Vec<Link>, Error> {
        let codes: Vec<String> = self
            .query(redis::cmd("ZRANGE").arg(self.keys.links_of(account, entity)).arg("-").arg("+").arg("BYLEX"))
            .await?;
        let codes = codes
            .iter()
            .map(|c| ShortCode::parse(c).ok_or_else(|| Error::Corrupt(format!("bad code {c:?} in an index"))))
            .collect::<Result<Vec<_>, _>>()?;
        let found = try_join_all(codes.iter().map(|code| self.get_link(code))).await?;
        Ok(found.into_iter().flatten().collect())
    }
}

#[cfg(feature = "testing")]
impl shortlinks_core::store::conformance::CrashFaults for RedisStore {
    async fn lose_index_entry(&self, link: &Link) {
        let index = self.keys.links_of(link.account, link.entity);
        let _: i64 = self.query(redis::cmd("ZREM").arg(index).arg(link.code.as_str())).await.expect("ZREM");
    }
}
