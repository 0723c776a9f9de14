//! The routing mesh: every node serves HTTP on `--http` and gets a request
//! for any container to a ready instance, starting one when there is none.
//!
//! ```text
//!  request ─▶ route (Host: NAME.NAMESPACE.BASE_DOMAIN)
//!          ─▶ authorize (private containers: a token for it)
//!          ─▶ activate: a local ready instance with a free slot? ──yes──▶ forward to 127.0.0.1:port
//!                 │ no, but another node has one ──────────────────────▶ forward to that node's mesh
//!                 │ all busy here ─▶ wait for a slot (bounded queue; 503 when full)
//!                 │ none anywhere ─▶ Scale≥1 through Raft, hold until ready
//!          ─▶ all within the container's timeout (504)
//!  in-flight + queued per container ──report──▶ leader's autoscaler
//! ```
//!
//! - [`server`]: the listener (connection limits, head deadline, hop TLS).
//! - [`stack`]: [`Mesh`], the layers in order, one span per request.
//! - [`route`], [`authorize`], [`activate`], [`forward`]: the layers;
//!   [`choose`]: where a request can go (pure, used by `activate`).
//! - [`demand`]: per-container demand; [`report`]: sent to the leader.
//! - [`error`]: [`MeshError`] and the one place it becomes a response.
//! - [`metrics`]: the `/metrics` page.

pub mod activate;
pub mod authorize;
pub mod choose;
pub mod demand;
pub mod error;
pub mod forward;
pub mod metrics;
pub mod report;
pub mod route;
pub mod server;
pub mod stack;

pub use error::MeshError;
pub use forward::{Upstreams, HOP, ORIGINAL_HOST};
pub use stack::{Mesh, MeshConfig};
