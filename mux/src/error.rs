//! The crate's one error type.

use crate::peek::PeekError;

/// Everything that can go wrong in the mux.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is inconsistent; the message names the key.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A certificate or key could not be loaded or generated.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The ACME client failed; the previous certificate stays in use.
    #[error("acme: {0}")]
    Acme(String),
    /// The peer sent something that is not an acceptable ClientHello.
    #[error("peer: {0}")]
    Peek(#[from] PeekError),
    /// A socket or file operation failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}
