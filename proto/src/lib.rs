//! Generated code for rouse's gRPC surfaces, and nothing else.
//!
//! - [`v1`]: the public API (cluster, namespaces, containers, secrets, tokens)
//!   served on every node's `--listen` address.
//! - [`peer`]: the internal node-to-node service (Raft RPCs, forwarding).
//!
//! Conversions to domain types live in the crates that own those types.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("rouse.v1");
}

#[allow(clippy::all, missing_docs)]
pub mod peer {
    tonic::include_proto!("rouse.v1.peer");
}

/// The API's compatibility level (`NodeInfoResponse.api_level`): raised
/// when a change breaks clients of the previous level; added fields and
/// services do not raise it.
pub const API_LEVEL: u32 = 1;

/// Encoded `FileDescriptorSet` of every rouse proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("rouse_descriptor");
