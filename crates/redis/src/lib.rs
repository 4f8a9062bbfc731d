//! Redis and Redis Cluster storage for shortlinks.
//!
//! One machine on sled serves most installations. Those that outgrow it run several
//! stateless shortlinks nodes sharing one Redis (or a Redis Cluster for sharding):
//! [`RedisStore`] implements every core storage trait there and passes the same
//! conformance suite as the embedded backends.
//!
//! How the contract maps onto Redis:
//! - links are written with `SET NX`, so a collision is never an overwrite; a per-contact
//!   sorted set indexes them;
//! - each queue (the click outbox, one per note sink) is a Stream drained by one consumer
//!   group, so any node can dispatch and a crashed node's entries are claimed by another;
//! - notes live per (account, contact) under one hash tag, so appending one is a single
//!   atomic transaction even on a cluster;
//! - visit marks are keys with a time to live, made by `SET NX GET` (or, under a cap on
//!   notes per link, checked and set with the link's count by one script);
//! - rate limits are one key per caller, decided by a script on Redis's clock, so every
//!   node draws on one allowance.
//!
//! Durability is Redis's own: see `docs/scaling.md` for what `appendfsync` and replicas
//! promise. With the `testing` feature, `testing` starts throwaway `redis-server` processes for
//! tests and benches.

pub mod acl;
mod config;
mod connection;
mod keys;
mod links;
mod notes;
mod queues;
mod rates;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::{redacted, RedisConfig, RedisTarget, RedisTls};
pub use store::RedisStore;
