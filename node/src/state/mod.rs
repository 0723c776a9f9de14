//! The replicated state: domain types, the command log's vocabulary and
//! its deterministic `apply`.
//!
//! ```text
//!  API (validate) ──▶ Proposal{v, at_ms, Command} ──raft──▶ StateData::apply ──▶ Response
//! ```
//!
//! - [`types`]: namespaces, containers, instances, nodes, secrets, keys.
//! - [`key`]: typed keys ([`ContainerKey`], secret [`Scope`]).
//! - [`command`]: [`Proposal`], [`Command`] (append-only), [`Rejection`].
//! - [`data`]: [`StateData`] and its read-side views.
//! - `apply`: one function per command; pure (no I/O, no clock).
//! - [`validate`]: input rules shared by the API and the config.

mod apply;
pub mod command;
pub mod data;
pub mod instances;
pub mod key;
pub mod ledger;
pub mod types;
pub mod validate;

pub use command::{Command, Proposal, Rejection, Response, COMMAND_VERSION};
pub use data::{Key, StateData};
pub use key::{ContainerKey, Scope};
pub use ledger::*;
pub use types::*;

#[cfg(test)]
mod encoding_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
