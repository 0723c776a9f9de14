//! TLS errors and the one crypto provider every configuration uses.

use std::io;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// Prefix of join tokens.
pub(crate) const JOIN_PREFIX: &str = "rjt";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

pub(crate) fn invalid(what: &str, e: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid(format!("{what}: {e}"))
}

/// The one crypto provider every TLS configuration and handshake check
/// uses (built once: handshakes consult it on every signature).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::LazyLock<Arc<CryptoProvider>> =
        std::sync::LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));
    PROVIDER.clone()
}
