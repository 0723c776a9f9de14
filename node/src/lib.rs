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
//! - [`raft`]: openraft types, the peer network and connection pool.
//! - [`cluster`]: a handle on the replicated state: writes (forwarded to
//!   the leader), linearizable reads, membership.
//! - [`leader`]: leader-only loops around pure deciders (placement,
//!   liveness, autoscale, bootstrap of keys and CA).
//! - [`scheduler`]: placement, a pure function of the state.
//! - [`peer`]: the peer gRPC service; [`trust`]: who counts as a member.
//! - [`api`]: the public gRPC services and the one error → status mapping.
//! - [`join`]: node identity: the CA, certificates, join tokens.
//! - [`keys`]: master key, data key, rotation, signing keys.
//! - [`runtime`]: instances on containerd (images, specs, tasks, agent).
//! - [`mesh`]: the HTTP routing mesh, as layers.
//! - [`local`]: what this node knows of its own instances (slots, idle,
//!   suspended), shared by the mesh and the agent.
//! - [`loads`]: nodes' load reports, kept by the leader.
//! - [`secrets`]: sealing secret values (AES-256-GCM, wrapped data key).
//! - [`tokens`]: EdDSA access tokens for private containers.
//! - [`auth`]: API keys and who may call what.
//! - [`tls`]: mutual TLS between nodes.
//! - [`server`]: wires everything and runs until shutdown.

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
pub mod leader;
pub mod loads;
pub mod local;
pub mod mesh;
pub mod peer;
pub mod raft;
pub mod router;
pub mod runtime;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod tokens;
pub mod trace;
pub mod triggers;
pub mod trust;

#[cfg(test)]
mod fuzz;
