//! Node identity: the cluster CA, each node's certificate, and join tokens.
//!
//! ```text
//!  bootstrap leader ─▶ CA (leader::bootstrap; key sealed by the master key, in Raft)
//!  every member ─▶ issues its own certificate from the CA (it holds the master key)
//!  bootstrap node ─▶ writes a first one-time join token to <data-dir>/join-token
//!  joining node ─▶ GetClusterCa (plain; checked against the token's CA fingerprint)
//!               ─▶ IssueCertificate(token, CSR) over TLS ─▶ certificate (+ master key)
//! ```
//!
//! - [`identity`]: this node's certificate and the bootstrap token file.
//! - [`client`]: a joining node getting its certificate.
//! - [`service`]: the join service members serve to nodes without one.
//! - [`error`]: the join errors ([`JoinError`]).

pub mod client;
pub mod error;
pub mod identity;
pub mod service;

pub use error::JoinError;
pub use identity::Identity;
