//! Domain types of the replicated state: what namespaces, containers,
//! instances, nodes, secrets and credentials look like once committed.
//! Plain data, no behaviour beyond small derived views.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub type NodeId = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Privacy {
    #[default]
    Public,
    Private,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Http1,
    H2c,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub name: String,
    pub env: BTreeMap<String, String>,
    pub revision: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// What the namespace may hold (an admin sets it; none: unbounded).
    #[serde(default, skip_serializing_if = "Quota::is_unbounded")]
    pub quota: Quota,
}

/// A namespace's bounds. `None`: unbounded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers: Option<u32>,
    /// The sum of its containers' max-scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_scale: Option<u64>,
    /// Secrets, in the namespace and its containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<u32>,
    /// Tokens that are neither revoked nor expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u32>,
    /// Memory at full scale: the sum of max-scale × memory (MB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
}

impl Quota {
    pub fn is_unbounded(&self) -> bool {
        *self == Quota::default()
    }
}

/// What an operator asks for when deploying a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub image: String,
    pub port: u32,
    pub env: BTreeMap<String, String>,
    pub cpu_mvcpu: u32,
    pub memory_mb: u32,
    pub min_scale: u32,
    pub max_scale: u32,
    pub max_concurrency: u32,
    pub timeout_secs: u32,
    pub privacy: Privacy,
    pub protocol: Protocol,
    pub scale_to_zero_after_secs: u32,
    /// Place instances only on nodes of this region.
    #[serde(default)]
    pub region: Option<String>,
    /// Ready when this path answers 2xx (default: when the port accepts).
    #[serde(default)]
    pub health_path: Option<String>,
    /// The instance's root filesystem is read-only (/tmp stays writable).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only_rootfs: bool,
    /// Which instances a node's mesh prefers.
    #[serde(default, skip_serializing_if = "Routing::is_default")]
    pub routing: Routing,
}

/// Which ready instances a node's mesh sends a request to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Routing {
    /// This node's own instances, then those in its zone, then in its
    /// region, then anywhere: a request leaves its region only when the
    /// region has no ready instance.
    #[default]
    LocalFirst,
    /// This node's own, then any other node's alike.
    Any,
}

impl Routing {
    pub fn is_default(&self) -> bool {
        *self == Routing::LocalFirst
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Routing::LocalFirst => "local-first",
            Routing::Any => "any",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "local-first" => Some(Routing::LocalFirst),
            "any" => Some(Routing::Any),
            _ => None,
        }
    }
}

impl ContainerSpec {
    pub const DEFAULT_PORT: u32 = 8080;
    pub const DEFAULT_CPU_MVCPU: u32 = 1000;
    pub const DEFAULT_MEMORY_MB: u32 = 256;
    pub const DEFAULT_MAX_SCALE: u32 = 5;
    pub const DEFAULT_MAX_CONCURRENCY: u32 = 80;
    pub const DEFAULT_TIMEOUT_SECS: u32 = 300;
    pub const DEFAULT_SCALE_TO_ZERO_AFTER_SECS: u32 = 300;

    /// A spec with every field at its default, for the given image.
    pub fn with_image(image: impl Into<String>) -> Self {
        ContainerSpec {
            image: image.into(),
            port: Self::DEFAULT_PORT,
            env: BTreeMap::new(),
            cpu_mvcpu: Self::DEFAULT_CPU_MVCPU,
            memory_mb: Self::DEFAULT_MEMORY_MB,
            min_scale: 0,
            max_scale: Self::DEFAULT_MAX_SCALE,
            max_concurrency: Self::DEFAULT_MAX_CONCURRENCY,
            timeout_secs: Self::DEFAULT_TIMEOUT_SECS,
            privacy: Privacy::Public,
            protocol: Protocol::Http1,
            scale_to_zero_after_secs: Self::DEFAULT_SCALE_TO_ZERO_AFTER_SECS,
            region: None,
            health_path: None,
            read_only_rootfs: false,
            routing: Routing::LocalFirst,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub namespace: String,
    pub name: String,
    pub spec: ContainerSpec,
    pub revision: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Changes when what instances run changes (image, port, env, limits,
    /// protocol, or the namespace's env); instances of an older generation
    /// are replaced. Scale settings alone keep the generation.
    #[serde(default)]
    pub generation: u64,
    /// `image@sha256:…` the generation's tag resolved to, pinned once so
    /// that every instance of a generation runs the same bits.
    #[serde(default)]
    pub resolved_image: Option<String>,
    /// Instances the autoscaler (or the activator, on a cold start) wants;
    /// the scheduler runs `clamp(max(min_scale, desired_scale), max_scale)`.
    #[serde(default)]
    pub desired_scale: u32,
    /// Recent cold starts of the container's instances, oldest first.
    #[serde(default)]
    pub cold_starts: Vec<ColdStart>,
    /// Why instances the container wants are not placed, when some are not.
    #[serde(default)]
    pub pending_reason: Option<String>,
    /// The last scaling decision: why, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_reason: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub scaled_at_ms: u64,
    /// Scaling decisions up and down since the container was created.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub scale_ups: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub scale_downs: u64,
}

impl Container {
    /// The most recent cold start and the median total.
    pub fn cold_start_summary(&self) -> Option<(ColdStart, u64)> {
        let last = *self.cold_starts.last()?;
        let mut totals: Vec<u64> = self.cold_starts.iter().map(|c| c.total_ms).collect();
        totals.sort_unstable();
        Some((last, totals[totals.len() / 2]))
    }

    /// How many instances the scheduler should run.
    pub fn target_scale(&self) -> u32 {
        self.desired_scale
            .max(self.spec.min_scale)
            .min(self.spec.max_scale)
    }
}

impl ContainerSpec {
    /// Whether instances of `self` and `other` would run differently.
    pub fn runtime_differs(&self, other: &ContainerSpec) -> bool {
        self.image != other.image
            || self.port != other.port
            || self.env != other.env
            || self.cpu_mvcpu != other.cpu_mvcpu
            || self.memory_mb != other.memory_mb
            || self.protocol != other.protocol
            || self.health_path != other.health_path
            || self.read_only_rootfs != other.read_only_rootfs
    }
}

/// One placed instance of a container generation on a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub namespace: String,
    pub container: String,
    pub generation: u64,
    pub node: NodeId,
    pub created_at_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Placed; the node has not reported yet.
    #[default]
    Pending,
    Pulling,
    Starting,
    Ready,
    /// Exited or killed; the node restarts it after a backoff.
    Crashed,
    /// Cannot start (bad image, unreachable registry…); retried slowly.
    Failed,
    Stopping,
    /// Paused (memory kept) after an idle time; the mesh still routes to it
    /// and its node resumes it on the next request.
    Suspended,
}

impl InstanceState {
    /// Whether the mesh may send it requests.
    pub fn routable(self) -> bool {
        matches!(self, InstanceState::Ready | InstanceState::Suspended)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Pulling => "pulling",
            InstanceState::Starting => "starting",
            InstanceState::Ready => "ready",
            InstanceState::Crashed => "crashed",
            InstanceState::Failed => "failed",
            InstanceState::Stopping => "stopping",
            InstanceState::Suspended => "suspended",
        }
    }
}

/// What the node running an instance last reported about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct InstanceStatus {
    pub state: InstanceState,
    pub message: String,
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    pub restarts: u32,
    /// The port the instance listens on: in its own network namespace, or
    /// on the node in host mode.
    pub port: u32,
    /// The instance's address on its node's bridge (empty in host mode:
    /// the node's loopback).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ip: String,
    pub updated_at_ms: u64,
    /// The instance's last cold start, once it has been ready.
    #[serde(default)]
    pub cold_start: Option<ColdStart>,
}

/// How long a cold start took, by phase, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ColdStart {
    /// Placement committed → the node started working on it.
    pub placement_ms: u64,
    /// Tag resolution, pull and unpack (near zero when cached).
    pub pull_ms: u64,
    /// Spec, snapshot and container record.
    pub create_ms: u64,
    /// Task create and start.
    pub start_ms: u64,
    /// Connecting the instance's network namespace (within `start_ms`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub network_ms: u64,
    /// Task started → its port accepts connections.
    pub ready_ms: u64,
    pub total_ms: u64,
    /// When the instance became ready.
    pub at_ms: u64,
}

pub(super) fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Cold starts kept per container.
pub const COLD_START_HISTORY: usize = 32;

/// A cluster member as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeRecord {
    pub id: NodeId,
    /// gRPC API and peer address (`--advertise`, else `--listen`).
    pub api_addr: String,
    /// Routing-mesh address (`--http`).
    pub http_addr: String,
    /// Where other nodes' meshes forward requests (`--hop`, mutual TLS);
    /// empty for a node that takes hops on `http_addr`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hop_addr: String,
    pub zone: String,
    pub region: String,
    pub cpu_capacity_mvcpu: u32,
    pub memory_capacity_mb: u32,
    /// SHA-256 of the node's cluster certificate (revoked when the node is
    /// removed); empty with `--insecure`.
    #[serde(default)]
    pub cert_sha256: String,
}

/// What the cluster decided about a node (its record is what the node says
/// about itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeState {
    /// Silent past the liveness grace: its instances are replaced elsewhere
    /// and the mesh stops routing to it.
    pub down: bool,
    /// Gets no new instances.
    pub cordoned: bool,
    /// Cordoned, and its instances are moved off (replacements first).
    pub draining: bool,
    pub since_ms: u64,
}

impl NodeState {
    /// Whether new instances may be placed on the node.
    pub fn schedulable(&self) -> bool {
        !self.down && !self.cordoned && !self.draining
    }
}

/// A secret as the replicated state holds it: sealed, never in plain text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSecret {
    pub sealed: crate::secrets::Envelope,
    /// HMAC-SHA256 of the value under the data key (what reads show).
    pub fingerprint: String,
    pub version: u64,
    pub updated_at_ms: u64,
}

/// A secret on its way into the state (sealed by the proposing node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecret {
    pub sealed: crate::secrets::Envelope,
    pub fingerprint: String,
}

/// A token-signing key: the private half sealed under the data key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKey {
    pub kid: String,
    /// Raw Ed25519 public key, hex.
    pub public_hex: String,
    pub sealed_private: crate::secrets::Envelope,
    pub created_at_ms: u64,
}

/// An issued access token (the token itself is never stored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub namespace: String,
    pub container: Option<String>,
    pub expires_at_ms: u64,
    pub created_at_ms: u64,
    pub revoked: bool,
}

/// An API key: only a hash of its secret is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    /// SHA-256 of the key's secret part, hex.
    pub secret_sha256: String,
    /// `None`: an admin key; `Some(ns)`: may manage only that namespace.
    pub namespace: Option<String>,
    pub created_at_ms: u64,
    pub revoked: bool,
    /// Last time a node saw it used (to the minute; 0: never).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_used_at_ms: u64,
}

/// A join token as Raft keeps it: the hash of its secret, never the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    pub id: String,
    pub hash: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub used_by: Option<NodeId>,
    /// The certificate issued for the token (recorded since tokens are
    /// spent once: a retry gets it again only for the same key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued: Option<IssuedCert>,
}

/// A node certificate the cluster issued: trusted by peers while its node
/// is a member and it is not revoked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCert {
    pub cert_sha256: String,
    pub cert_pem: String,
    /// SHA-256 of the public key in the certificate request.
    pub key_sha256: String,
}

/// The cluster CA as stored in the replicated state: the certificate, and
/// its private key sealed by the master key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterCa {
    pub cert_pem: String,
    pub key: crate::secrets::Envelope,
}

/// A trigger: a named source of events (a cron schedule, a NATS subject)
/// delivered as HTTP requests to one container. Its id is
/// `namespace/container/name`; it goes with its container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    pub namespace: String,
    pub container: String,
    pub name: String,
    pub spec: TriggerSpec,
    pub enabled: bool,
    pub created_at_ms: u64,
    /// Deliveries answered 2xx, deliveries that failed after their retries,
    /// and ticks that passed with no leader for longer than the catch-up.
    #[serde(default)]
    pub fired: u64,
    #[serde(default)]
    pub failed: u64,
    #[serde(default)]
    pub missed: u64,
    /// The last tick claimed (its scheduled time, ms): ticks are claimed
    /// in order, each at most once.
    #[serde(default)]
    pub last_tick_ms: u64,
    /// The most recently claimed ticks, oldest first (at most
    /// [`TRIGGER_CLAIMS_KEPT`]), for audits.
    #[serde(default)]
    pub claimed: Vec<u64>,
    /// Claimed ticks with no delivery outcome yet: tick → (node, claimed at).
    #[serde(default)]
    pub pending: BTreeMap<u64, (NodeId, u64)>,
    /// The last deliveries, oldest first (at most [`TRIGGER_HISTORY`]).
    #[serde(default)]
    pub history: Vec<Firing>,
}

/// Firings a trigger keeps.
pub const TRIGGER_HISTORY: usize = 20;
/// Claimed ticks a trigger remembers.
pub const TRIGGER_CLAIMS_KEPT: usize = 1000;

impl Trigger {
    pub fn id(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.container, self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerSpec {
    pub source: TriggerSource,
    /// The request each event becomes.
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body; `{{event_id}}`, `{{scheduled_at}}` and `{{trigger}}` are
    /// replaced (NATS: the message's payload when empty).
    #[serde(default)]
    pub body: String,
    /// Deliveries retried (with backoff) after a connection failure, a 5xx
    /// or a timeout.
    pub max_retries: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TriggerSource {
    /// Five fields (minute…weekday) or six with a leading seconds field.
    Cron {
        schedule: String,
        /// IANA time zone.
        timezone: String,
        /// A tick missed (no leader) is fired late within this window, and
        /// recorded as missed past it.
        catch_up_s: u64,
    },
    Nats {
        url: String,
        stream: String,
        subject: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dead_letter: Option<String>,
        /// The name of a secret of the container (or its namespace) that
        /// holds `user:password` or a token for the NATS server.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credentials: Option<String>,
    },
}

impl TriggerSource {
    pub fn kind(&self) -> &'static str {
        match self {
            TriggerSource::Cron { .. } => "cron",
            TriggerSource::Nats { .. } => "nats",
        }
    }
}

/// One delivery's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firing {
    pub event_id: String,
    /// The tick's scheduled time (cron) or the message's time, ms.
    pub scheduled_ms: u64,
    /// When the first attempt was sent, ms.
    pub sent_ms: u64,
    /// `200`, `503`, or what went wrong (`timeout`, `connect: …`).
    pub status: String,
    pub ok: bool,
    /// From the first attempt to the final answer.
    pub latency_ms: u64,
    pub attempts: u32,
    pub node: NodeId,
}

/// The reason the mesh gives when it scales a container up from zero for a
/// request: the autoscaler counts it as a request its load reports may not
/// show yet.
pub const COLD_START_REASON: &str = "a request while scaled to zero";
