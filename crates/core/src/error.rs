//! This crate's errors, one type per concern: what a store reports, and what a batch
//! creation can refuse on top of it.

/// A store's failure, or a caller's mistake in what it asked a store for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed.
    #[error("storage failed: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store cannot be reached right now (a network backend); retrying may succeed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A stored record or key could not be read back.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The caller asked for something no store can do, such as a malformed queue name.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The operating system's random source failed.
    #[error("random source failed: {0}")]
    Random(String),
    /// The data was written by a newer version of shortlinks, in a format this build does
    /// not know: it is left untouched rather than misread.
    #[error("written by a newer shortlinks: {0}")]
    NewerFormat(String),
}

impl Error {
    /// A backend's own error, kept as the source.
    pub fn storage(cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Storage(Box::new(cause))
    }
}

/// Why [`crate::Shortener::create`] made no links at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CreateError {
    /// A batch with no items.
    #[error("Request data can not be empty")]
    EmptyBatch,
    /// A batch over the size limit.
    #[error("a batch may hold at most {max} items, got {got}")]
    BatchTooLarge {
        /// The limit.
        max: usize,
        /// The size sent.
        got: usize,
    },
    /// Every candidate code for an item was taken; only plausible with tiny code lengths.
    #[error("no free short code after {0} attempts")]
    CodeSpaceExhausted(u32),
    /// The store failed; nothing is known to be created, and a retry is safe.
    #[error(transparent)]
    Store(#[from] Error),
}

/// A code length outside what [`crate::CodeLength`] allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("code length must be between 8 and 22 characters, got {0}")]
pub struct InvalidCodeLength(pub usize);
