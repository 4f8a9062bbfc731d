//! The one error type at this crate's boundary.

/// What can stop the server or a command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The engine or its store failed.
    #[error(transparent)]
    Core(#[from] shortlinks_core::Error),
    /// A socket or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The settings are invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The admin socket answered with an error, or not in protocol.
    #[error("{0}")]
    Admin(String),
}

impl ServerError {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }
}
