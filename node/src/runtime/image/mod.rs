//! Images: pulled from OCI registries by rouse itself, written to
//! containerd's content store under a lease, recorded as containerd images
//! and unpacked into snapshots keyed by chain id (prepare → diff apply →
//! commit). An image already present is not pulled again.
//!
//! ```text
//!  resolve(tag) ──HEAD manifest──▶ repo@sha256:…   (pinned once per generation)
//!  ensure(ref)  ──image record? ──yes──▶ read manifest+config from content
//!                     │no
//!                     ▼
//!        lease ─▶ manifest (index → this machine's platform) ─▶ config ─▶ layers (verified)
//!              ─▶ content store (gc labels) ─▶ image record ─▶ unpack ─▶ drop lease
//! ```
//!
//! - [`images`]: [`Images`], resolve and ensure, list and delete.
//! - `pull`: from a registry (verified), or an image already stored.
//! - `content`: leases, blobs and image records in containerd.
//! - `unpack`: layers into snapshots by chain id.
//! - `import`: OCI-layout tarballs.
//! - [`remap`]: an image's copy for instances in a user namespace.
//! - [`platform`]: digests, this machine's platform, reference helpers.

mod content;
pub mod images;
mod import;
pub mod platform;
mod pull;
pub mod remap;
mod unpack;

pub use content::BlobSource;
pub use images::{ImageInfo, Images, Limits, ProgressTx, PullProgress, RegistryCredentials};
pub use platform::without_digest;
pub use pull::parse_documents;
pub use unpack::chain_ids;
