//! shortlinks-core: per-contact short links without HTTP.
//!
//! Every CRM contact gets its own short link, even for the same URL. Codes are a keyed
//! blake3 hash of (account, entity, target) in base62, keyed by a per-installation secret:
//! retrying a request yields the same links, and nobody without the secret can predict or
//! enumerate codes. A code taken by another link is never overwritten; the next candidate
//! is derived instead.
//!
//! The pieces, one module each:
//! - [`code`]: [`ShortCode`], its derivation and parsing;
//! - [`target`]: which target URLs are allowed;
//! - [`model`]: links, clicks, notes, tokens;
//! - [`store`]: the storage traits, with in-memory and sled backends;
//! - [`codec`]: how records are encoded;
//! - [`cache`]: the read cache in front of the store, for the redirect's hot path;
//! - [`engine`]: [`Shortener`], the facade a host service embeds.
//!
//! # Example
//! ```
//! use shortlinks_core::{AccountId, Config, EntityRef, NewLink, Outcome, Principal, Shortener, TargetUrl, UserId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), shortlinks_core::Error> {
//! # let dir = tempfile::tempdir().unwrap();
//! let engine = Shortener::open(Config::new(dir.path())).await?;
//! let caller = Principal::all_contacts(AccountId(123), UserId(1));
//! // Validation comes first, and says why a URL is refused.
//! assert!(TargetUrl::parse("javascript:alert(1)").is_err());
//! let target = TargetUrl::parse("https://www.yandex.ru").expect("valid");
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

pub mod cache;
pub mod code;
pub mod codec;
pub mod engine;
mod error;
pub mod model;
pub mod store;
pub mod target;

pub use cache::LinkCache;
pub use code::{CodeLength, InstallationSecret, ShortCode};
pub use engine::{Config, NewLink, Outcome, Shortener, MAX_BATCH};
pub use error::Error;
pub use model::{AccountId, ContactScope, EntityRef, EntityType, Link, Principal, Timestamp, UserId};
pub use store::{MemoryStore, SledStore, Store};
pub use target::{TargetUrl, UrlProblem};
