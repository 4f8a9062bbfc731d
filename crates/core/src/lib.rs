//! shortlinks-core: per-contact short links without HTTP.
//!
//! Every CRM contact gets its own short link, even for the same URL. Codes are a keyed
//! blake3 hash of (account, entity, target) in base62, keyed by a per-installation secret:
//! retrying a request yields the same links, and nobody without the secret can predict or
//! enumerate codes. A code taken by another link is never overwritten; the next candidate
//! is derived instead.
//!
//! An embedder needs the root of this crate: [`Shortener`] and its builder, the link
//! model, [`TargetUrl`] validation, and a store. Two modules serve the other crates of the
//! project and anyone writing a backend:
//! - [`store`]: the storage traits, with in-memory and sled backends, and how records are
//!   encoded;
//! - [`model`]: every stored record (links, clicks, notes, tokens).
//!
//! An embedder's own database implements [`LinkStore`] and [`SecretStore`], nothing more.
//!
//! # Example
//! ```
//! use shortlinks_core::{AccountId, EntityRef, MemoryStore, NewLink, Outcome, Principal, Shortener, TargetUrl, UserId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Shortener::builder(MemoryStore::new()).build().await?;
//! let caller = Principal::all_contacts(AccountId(123), UserId(1));
//! // Validation comes first, and says why a URL is refused.
//! assert!(TargetUrl::parse("javascript:alert(1)").is_err());
//! let target = TargetUrl::parse("https://www.yandex.ru")?;
//! let items = [NewLink { target, entity: EntityRef::contact(321) }];
//!
//! let outcomes = engine.create(&caller, &items).await?;
//! let Outcome::Linked(link) = &outcomes[0] else { unreachable!() };
//! assert_eq!(link.code.as_str().len(), 12);
//!
//! let found = engine.resolve(link.code.as_str()).await?.expect("just created");
//! assert_eq!(found.target.as_str(), "https://www.yandex.ru/");
//!
//! // A retry yields the same link, not a duplicate.
//! assert_eq!(engine.create(&caller, &items).await?, outcomes);
//! # Ok(()) }
//! ```
//!
//! On disk, the store is `SledStore::open(dir)?` instead; `SledStore` is a clone away
//! from serving the click pipeline and tokens too.

mod cache;
mod code;
mod codec;
mod engine;
mod error;
mod ids;
pub mod model;
pub mod store;
mod target;
#[cfg(feature = "testing")]
pub mod testing;

pub use cache::LinkCache;
#[cfg(feature = "testing")]
pub use code::CodeDeriver;
pub use code::{random_base62, CodeLength, InstallationSecret, ShortCode, Tombstone};
pub use engine::{NewLink, Outcome, Resolved, Shortener, ShortenerBuilder, MAX_BATCH};
pub use error::{CreateError, Error, InvalidCodeLength};
pub use model::{AccountId, ContactScope, EntityRef, EntityType, Link, Principal, Timestamp, UserId};
pub use store::{LinkStore, MemoryStore, SecretStore, SledStore, Store};
pub use target::{TargetUrl, UrlProblem, MAX_NORMALIZED_BYTES, MAX_TARGET_CHARS};
