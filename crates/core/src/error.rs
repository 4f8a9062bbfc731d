//! The one error type at this crate's boundary.

/// What can go wrong in shortlinks-core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    /// A code length outside 8..=22.
    #[error("code length must be between 8 and 22 characters, got {0}")]
    InvalidCodeLength(usize),
    /// Every candidate code for an item was taken; only plausible with tiny code lengths.
    #[error("no free short code after {0} attempts")]
    CodeSpaceExhausted(u32),
    /// The operating system's random source failed.
    #[error("random source failed: {0}")]
    Random(String),
    /// A stored record or key could not be read back.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The store failed.
    #[error("storage failed: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store cannot be reached right now (a network backend); retrying may succeed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::Storage(Box::new(e))
    }
}
