//! A read cache of links in front of the store: the redirect's hot path.
//!
//! Links are immutable (never overwritten, never edited), so a cached link is never stale
//! and needs no invalidation. Misses are not cached: a link created on another node, or
//! after a 404, must be found at once.

use std::sync::Arc;

use crate::model::Link;
use crate::store::LinkStore;
use crate::{Error, ShortCode};

/// A bounded, concurrent, scan-resistant (S3-FIFO) cache of links. Cheap to clone:
/// clones share the cache.
#[derive(Clone)]
pub struct LinkCache {
    links: Arc<quick_cache::sync::Cache<ShortCode, Arc<Link>>>,
}

impl LinkCache {
    /// The default size: a million links, about 250 MB.
    pub const DEFAULT_CAPACITY: usize = 1_000_000;

    /// A cache of at most `capacity` links.
    pub fn new(capacity: usize) -> Self {
        Self { links: Arc::new(quick_cache::sync::Cache::new(capacity.max(1))) }
    }

    /// The link with this code: from the cache, or one store read on a miss.
    pub async fn get<S: LinkStore>(&self, store: &S, code: &ShortCode) -> Result<Option<Arc<Link>>, Error> {
        if let Some(link) = self.links.get(code) {
            return Ok(Some(link));
        }
        let Some(link) = store.get_link(code).await? else { return Ok(None) };
        let link = Arc::new(link);
        self.links.insert(*code, link.clone());
        Ok(Some(link))
    }

    /// How many links are cached.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }
}
