//! The public gRPC API. Each handler checks the caller, validates its input,
//! then reads (through the linearizable read barrier) or proposes a command.
//!
//! ```text
//!  request ─▶ access (API key: admin or namespace) ─▶ validate (INVALID_ARGUMENT naming the field)
//!          ─▶ read_barrier / write (forwarded to the leader if needed)
//!          ─▶ state machine answer ─▶ error::ApiError ─▶ tonic::Status (one place)
//! ```
//!
//! - [`service`]: [`Api`] and its settings; [`access`]: who may call what.
//! - One file per service: [`cluster`] (and nodes), [`namespaces`],
//!   [`containers`], [`secrets`], [`tokens`] (and API keys), [`logs`],
//!   [`images`], [`triggers`], [`usage`], [`events`].
//! - [`convert`]: protobuf ↔ domain; [`input`]: request-field helpers.
//! - [`error`]: [`ApiError`] and its gRPC status, for every service.

pub mod access;
pub mod cluster;
pub mod containers;
pub mod convert;
pub mod error;
pub mod events;
pub mod images;
pub mod input;
pub mod logs;
pub mod namespaces;
pub mod secrets;
pub mod service;
pub mod tokens;
pub mod triggers;
pub mod usage;

pub use error::ApiError;
pub use service::{Api, ApiConfig};
