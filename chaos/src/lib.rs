//! `rouse-chaos`: a seeded, Jepsen-style harness over real rouse-node
//! processes.
//!
//! - [`cluster`]: node processes, each behind a [`proxy`] that can cut,
//!   delay or drop its links;
//! - [`workload`]: clients recording a history of register reads and writes
//!   and create-only writes, on registers that [`registers`] rotates so
//!   every key's history stays small;
//! - [`mesh`]: with containerd, requests through every node's mesh to a
//!   min-scale 2 container, counting every answer;
//! - [`run`]: the seeded fault schedule, heal and checks;
//! - [`check`]: one module per invariant (linearizability, lost writes);
//! - [`history`]: the register history as JSON lines for outside checkers,
//!   and back;
//! - [`jit`]: a second linearizability checker sharing no code with
//!   [`check`] (Lowe's just-in-time linearization), to check the first;
//! - [`report`]: JSON, summary and an SVG timeline.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod check;
pub mod cluster;
pub mod history;
pub mod jit;
pub mod mesh;
pub mod proxy;
pub mod registers;
pub mod report;
pub mod run;
pub mod triggers;
pub mod workload;

/// The admin API key of the cluster under test, once node 1 wrote it.
pub static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// An admin client of `url`.
pub async fn connect(url: &str) -> Result<rouse_client::Client, rouse_client::Error> {
    rouse_client::Client::connect(url, TOKEN.get().map(String::as_str)).await
}
