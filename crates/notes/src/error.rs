//! The crate's error at its boundary: what setting a sink up, connecting an amoCRM
//! account, or reading a table of scanner networks, can refuse. A delivery's outcome is a [`crate::sink::SinkError`],
//! which the sink's worker acts on, and a click that cannot be recorded is a
//! [`crate::NotRecorded`], which the redirect answers.

/// Why something could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A sink's settings cannot work: a base URL that is not one, a batch outside the
    /// receiver's limits, a token that is no header value.
    #[error("{0}")]
    Sink(String),
    /// The random source failed (a lease id could not be made).
    #[error("no randomness: {0}")]
    Random(String),
    /// An amoCRM account could not be connected, or disconnected: a `state`, `referer` or
    /// signature refused, or amoCRM's refusal. The text may be shown to the person
    /// connecting; it never holds a secret.
    #[error("{0}")]
    Connect(String),
    /// The store failed.
    #[error("the store: {0}")]
    Store(#[from] shortlinks_core::Error),
    /// Lines of a table of scanner networks that are not `<prefix> <owner>`, each with why.
    #[error("{}", .0.join("; "))]
    ScannerNetworks(Vec<String>),
}
