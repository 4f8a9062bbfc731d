//! Queues as Redis Streams, drained by one consumer group shared by every node.
//!
//! A lease is: this node's own pending entries first (a batch that failed comes back),
//! then entries idle for longer than `claim_after` in another node's pending list (that
//! node died), then new entries. Removing is `XACK` and `XDEL` together, so a stream only
//! ever holds work not yet done. Nodes gone for good leave the group once they hold no
//! entries and have been silent for `forget_consumer_after` (an hour).

use std::time::Instant;

use redis::streams::{StreamAutoClaimReply, StreamId, StreamInfoConsumersReply, StreamReadReply};
use shortlinks_core::model::EntryId;
use shortlinks_core::store::{check_queue_name, Queues, CLICK_QUEUE};
use shortlinks_core::Error;

use crate::connection::store_error;
use crate::store::RedisStore;

/// The one consumer group of every queue.
const GROUP: &str = "shortlinks";
/// The stream field holding a record.
const FIELD: &str = "r";

impl RedisStore {
    /// Creates the queue's group (and stream) once per process; a group created by another
    /// node is fine.
    async fn ensure_group(&self, key: &str) -> Result<(), Error> {
        if self.groups.lock().contains(key) {
            return Ok(());
        }
        let created: Result<String, _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(key)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.connection())
            .await;
        match created {
            Ok(_) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(store_error(e)),
        }
        self.groups.lock().insert(key.to_owned());
        Ok(())
    }

    /// A group that vanished (Redis restarted without persistence) is made again next time.
    fn forget_group_on(&self, key: &str, e: redis::RedisError) -> Error {
        if e.code() == Some("NOGROUP") {
            self.groups.lock().remove(key);
        }
        store_error(e)
    }

    /// `XREADGROUP` from `from`: "0" for this consumer's pending entries, ">" for new ones.
    async fn read_group(&self, key: &str, from: &str, count: usize) -> Result<Vec<(EntryId, Vec<u8>)>, Error> {
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&*self.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(key)
            .arg(from)
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.forget_group_on(key, e))?;
        let entries = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids);
        self.records(key, entries).await
    }

    /// Takes over entries another consumer has left idle for too long, at most every half
    /// `claim_after` per queue.
    async fn take_over(&self, key: &str, count: usize) -> Result<Vec<(EntryId, Vec<u8>)>, Error> {
        {
            let mut last = self.last_takeover.lock();
            let now = Instant::now();
            if last.get(key).is_some_and(|t| now.duration_since(*t) < self.claim_after / 2) {
                return Ok(Vec::new());
            }
            last.insert(key.to_owned(), now);
        }
        let idle_ms = u64::try_from(self.claim_after.as_millis()).unwrap_or(u64::MAX);
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(key)
            .arg(GROUP)
            .arg(&*self.consumer)
            .arg(idle_ms)
            .arg("0-0")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.forget_group_on(key, e))?;
        if !reply.claimed.is_empty() {
            tracing::info!(queue = key, entries = reply.claimed.len(), "took over entries of a silent node");
        }
        // After the takeover, so that a dead node's entries are no longer its own.
        if let Err(e) = self.forget_dead_consumers(key).await {
            tracing::warn!(queue = key, error = %e, "cannot tidy the queue's consumers; trying again later");
        }
        self.records(key, reply.claimed).await
    }

    /// Removes from the group the consumers silent for `forget_consumer_after` that hold no
    /// entry (a consumer's removal would drop its pending entries, so one that still holds
    /// some waits until they are taken over). Returns how many went.
    pub(crate) async fn forget_dead_consumers(&self, key: &str) -> Result<usize, Error> {
        let reply: StreamInfoConsumersReply = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(key)
            .arg(GROUP)
            .query_async(&mut self.connection())
            .await
            .map_err(|e| self.forget_group_on(key, e))?;
        let idle_ms = usize::try_from(self.forget_consumer_after.as_millis()).unwrap_or(usize::MAX);
        let mut forgotten = 0;
        for consumer in reply.consumers {
            if consumer.name == *self.consumer || consumer.pending > 0 || consumer.idle < idle_ms {
                continue;
            }
            let dropped: i64 =
                self.query(redis::cmd("XGROUP").arg("DELCONSUMER").arg(key).arg(GROUP).arg(&consumer.name)).await?;
            forgotten += 1;
            match dropped {
                0 => tracing::info!(
                    queue = key,
                    consumer = consumer.name,
                    "removed a node gone for good from the queue's consumers"
                ),
                // Leased in the instant between the two commands: those entries are in the
                // stream still, but no longer pending for anyone.
                n => tracing::error!(
                    queue = key,
                    consumer = consumer.name,
                    entries = n,
                    "a removed consumer held entries; they stay in the stream unleased"
                ),
            }
        }
        Ok(forgotten)
    }

    /// Entry ids and records; entries deleted under a lease are acknowledged and skipped.
    async fn records(
        &self,
        key: &str,
        entries: impl IntoIterator<Item = StreamId>,
    ) -> Result<Vec<(EntryId, Vec<u8>)>, Error> {
        let mut out = Vec::new();
        let mut empty = Vec::new();
        for entry in entries {
            let id = parse_entry_id(&entry.id)?;
            match entry.get::<Vec<u8>>(FIELD) {
                Some(record) => out.push((id, record)),
                None => empty.push(id),
            }
        }
        if !empty.is_empty() {
            self.remove_entries(key, &empty).await?;
        }
        Ok(out)
    }

    async fn remove_entries(&self, key: &str, ids: &[EntryId]) -> Result<(), Error> {
        let ids: Vec<String> = ids.iter().map(|id| format_entry_id(*id)).collect();
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("XACK").arg(key).arg(GROUP).arg(&ids).ignore().cmd("XDEL").arg(key).arg(&ids).ignore();
        pipe.query_async::<()>(&mut self.connection()).await.map_err(store_error)
    }
}

impl Queues for RedisStore {
    async fn push(&self, queue: &str, records: Vec<Vec<u8>>) -> Result<(), Error> {
        check_queue_name(queue)?;
        if records.is_empty() {
            return Ok(());
        }
        let key = self.keys.queue(queue);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for record in &records {
            pipe.cmd("XADD").arg(&key).arg("*").arg(FIELD).arg(record.as_slice()).ignore();
        }
        let mut connection = match queue {
            CLICK_QUEUE => self.hot_connection(true),
            _ => self.write_connection(),
        };
        pipe.query_async::<()>(&mut connection).await.map_err(store_error)?;
        self.replicated().await
    }

    async fn lease(&self, queue: &str, max: usize) -> Result<Vec<(EntryId, Vec<u8>)>, Error> {
        check_queue_name(queue)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let key = self.keys.queue(queue);
        self.ensure_group(&key).await?;
        let mut out = self.read_group(&key, "0", max).await?;
        if out.len() < max {
            out.extend(self.take_over(&key, max - out.len()).await?);
        }
        if out.len() < max {
            out.extend(self.read_group(&key, ">", max - out.len()).await?);
        }
        Ok(out)
    }

    /// `XRANGE`: the stream as it is, whoever holds a lease.
    async fn peek(&self, queue: &str, max: usize) -> Result<Vec<(EntryId, Vec<u8>)>, Error> {
        check_queue_name(queue)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let key = self.keys.queue(queue);
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(max)
            .query_async(&mut self.connection())
            .await
            .map_err(store_error)?;
        self.records(&key, reply.ids).await
    }

    async fn remove(&self, queue: &str, ids: Vec<EntryId>) -> Result<(), Error> {
        check_queue_name(queue)?;
        if ids.is_empty() {
            return Ok(());
        }
        self.remove_entries(&self.keys.queue(queue), &ids).await
    }

    /// `XLEN`: a stream holds only entries not yet removed (see [`Queues::remove`]).
    async fn depth(&self, queue: &str) -> Result<u64, Error> {
        check_queue_name(queue)?;
        self.query(redis::cmd("XLEN").arg(self.keys.queue(queue))).await
    }
}

/// Stream ids are `milliseconds-sequence`; as one number they keep their order.
fn parse_entry_id(text: &str) -> Result<EntryId, Error> {
    let bad = || Error::Corrupt(format!("bad stream entry id {text:?}"));
    let (ms, seq) = text.split_once('-').ok_or_else(bad)?;
    let ms: u64 = ms.parse().map_err(|_| bad())?;
    let seq: u64 = seq.parse().map_err(|_| bad())?;
    Ok(EntryId(u128::from(ms) << 64 | u128::from(seq)))
}

fn format_entry_id(EntryId(id): EntryId) -> String {
    format!("{}-{}", id >> 64, id as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_round_trip_and_keep_order() {
        let a = parse_entry_id("1700000000000-0").expect("parse");
        let b = parse_entry_id("1700000000000-7").expect("parse");
        let c = parse_entry_id("1700000000001-0").expect("parse");
        assert!(a < b && b < c);
        assert_eq!(format_entry_id(b), "1700000000000-7");
        assert!(parse_entry_id("17-x").is_err() && parse_entry_id("17").is_err());
    }
}
