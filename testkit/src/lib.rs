//! The one harness behind the end-to-end tests, the chaos suite and the
//! benchmarks.
//!
//! ```text
//!  HeldListener (bound by the harness, kept for the whole run)
//!      └─ passed to rouse-node as an inherited socket (LISTEN_FDS)
//!  NodeProcess: spawn · kill (SIGKILL; the port stays ours, refusing) ·
//!               restart (same ports) · pause/resume (SIGSTOP/SIGCONT)
//!  eventually(what, f): the one way to wait
//!  env: the test containerd and registry, test images, ctr
//! ```
//!
//! A node never binds a port of its own in a test: the harness binds each
//! listener once (below the kernel's ephemeral range) and hands it to every
//! incarnation of the node, so no other process can take the port while the
//! node is down, and restarts never race for it.
//!
//! - [`wait`]: the one way to wait ([`eventually`]).
//! - [`listener`]: listeners the harness holds ([`HeldListener`]).
//! - [`process`]: one node and its incarnations ([`NodeProcess`]).
//! - [`cluster`]: a [`Cluster`] of them: bootstrap, joins with one-time
//!   tokens, the admin key, clients, waiting for voters.
//! - [`env`]: binaries, the test containerd and registry, images.
//! - [`network`]: a claimed instance subnet per test node.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod cluster;
pub mod env;
pub mod listener;
pub mod network;
pub mod process;
pub mod wait;

pub use cluster::{Cluster, NodeOptions, Template};
pub use listener::HeldListener;
pub use process::{NodeProcess, NodeSpec};
pub use wait::{eventually, eventually_within, PATIENCE};
