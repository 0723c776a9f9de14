//! Running instances on a real containerd.
//!
//! ```text
//!  replicated state ──desired for this node──┐
//!                                            ▼
//!  agent: reconcile(desired, actual) ──▶ actions ──▶ supervisors (one per instance)
//!                                                      │ image::ensure (pull → content → unpack)
//!                                                      │ task::create/start/wait/stop
//!                                                      ▼
//!                                                 containerd 1.6 (ctr)
//!  supervisors ──status──▶ Raft (ReportInstanceStatus)
//! ```
//!
//! - [`ctr`]: the containerd connection and request scoping.
//! - [`image`]: pulls from OCI registries into the content store and
//!   unpacks into snapshots; imports OCI-layout tarballs.
//! - [`spec`]: the OCI runtime spec of an instance (pure).
//! - [`task`]: container, snapshot and task lifecycle.
//! - [`agent`]: the level-triggered reconciler, suspend and image GC.
//! - [`supervisor`]: one instance's life as a pure state machine, with
//!   backoff; `supervise` performs its steps.
//! - [`idle`], [`gc`]: which instances to suspend, which images to delete (pure).
//! - [`network`]: a network namespace per instance on the node's bridge,
//!   and the firewall around it; [`seccomp`]: the sandbox's profile.
//! - [`health`]: readiness checks.

pub mod agent;
pub mod ctr;
pub mod gc;
pub mod health;
pub mod idle;
pub mod image;
pub mod meter;
pub mod network;
pub mod seccomp;
pub mod spec;
mod supervise;
pub mod supervisor;
pub mod task;

/// A runtime failure, with the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("containerd at {socket}: {message}")]
    Connect { socket: String, message: String },
    #[error("containerd {op}: {status}")]
    Containerd {
        op: String,
        status: String,
        code: tonic::Code,
    },
    #[error("image {reference}: {message}")]
    Image { reference: String, message: String },
    #[error("registry: {0}")]
    Registry(String),
    #[error("spec: {0}")]
    Spec(String),
    #[error("network: {0}")]
    Network(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl RuntimeError {
    pub fn containerd(op: &str, s: tonic::Status) -> Self {
        RuntimeError::Containerd {
            op: op.to_string(),
            status: s.message().to_string(),
            code: s.code(),
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            RuntimeError::Containerd {
                code: tonic::Code::NotFound,
                ..
            }
        )
    }
}

/// Labels rouse puts on its containerd objects.
pub mod labels {
    pub const MANAGED: &str = "rouse.managed";
    pub const INSTANCE: &str = "rouse.instance";
    pub const NAMESPACE: &str = "rouse.namespace";
    pub const CONTAINER: &str = "rouse.container";
    pub const GENERATION: &str = "rouse.generation";
    pub const NODE: &str = "rouse.node";
    pub const PORT: &str = "rouse.port";
    /// The user namespace base the instance's snapshot was made for.
    pub const USERNS: &str = "rouse.userns";
}
