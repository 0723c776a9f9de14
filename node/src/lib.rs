//! A rouse node: one member of a rouse cluster.
//!
//! ```text
//!            rouse CLI / SDK
//!                  │ gRPC (--listen)
//!   ┌──────────────▼──────────────┐        peer gRPC (same port)
//!   │ api      validate → Command │──forward writes / read index──▶ leader
//!   └──────────────┬──────────────┘
//!                  │ cluster::Cluster::write / read
//!   ┌──────────────▼──────────────┐
//!   │ raft     openraft + network │◀──── peer: vote, append, snapshot chunks
//!   └──────────────┬──────────────┘
//!                  │ apply (deterministic)
//!   ┌──────────────▼──────────────┐
//!   │ store    sled log + state   │   state: domain types, Command, apply
//!   └─────────────────────────────┘
//! ```
//!
//! - [`config`]: flags, `ROUSE_*` env vars and the TOML file, one struct.
//! - [`state`]: the replicated state and its commands; pure.
//! - [`store`]: openraft storage on sled.
//! - [`raft`]: openraft types and the peer network.
//! - [`cluster`]: writes with leader forwarding, linearizable reads, joins.
//! - [`peer`]: the peer gRPC service.
//! - [`api`]: the public gRPC services and the one error → status mapping.
//! - [`runtime`]: instances on containerd (images, specs, tasks, agent).
//! - [`scheduler`]: placement, a pure function of the state.
//! - [`mesh`]: the HTTP routing mesh, activator and autoscaler.
//! - [`secrets`]: sealing secret values (AES-256-GCM, wrapped data key).
//! - [`tokens`]: EdDSA access tokens for private containers.
//! - [`auth`]: API keys and who may call what.
//! - [`server`]: binds everything and runs until shutdown.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
// openraft's StorageError (the storage traits' error type) is large by design.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod join;
pub mod keys;
pub mod mesh;
pub mod peer;
pub mod raft;
pub mod runtime;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod state;
pub mod store;
pub mod tls;
pub mod tokens;
