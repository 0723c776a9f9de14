//! The replicated state: domain types, the command log's vocabulary and
//! its deterministic `apply`.
//!
//! ```text
//!  API (validate) ──▶ Proposal{at_ms, Command} ──raft──▶ StateData::apply ──▶ Response
//! ```
//!
//! `apply` performs no I/O and reads no clock: time arrives inside the
//! proposal, so every node computes the same state from the same log.
//! [`Command`] is append-only: variants are added at the end and never
//! change meaning, so old logs and snapshots replay on newer nodes.

pub mod validate;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub type NodeId = u64;

/// Version of the command encoding written into every log entry.
pub const COMMAND_VERSION: u32 = 1;

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
    /// Host port the instance listens on (host networking).
    pub port: u32,
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
    /// Task started → its port accepts connections.
    pub ready_ms: u64,
    pub total_ms: u64,
    /// When the instance became ready.
    pub at_ms: u64,
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
}

/// `namespace` or `namespace/container`.
pub fn secret_scope(namespace: &str, container: Option<&str>) -> String {
    match container {
        Some(c) => format!("{namespace}/{c}"),
        None => namespace.to_string(),
    }
}

/// One entry's payload in the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Encoding version; see [`COMMAND_VERSION`].
    pub v: u32,
    /// Wall-clock time of the proposing node, in ms since the Unix epoch.
    pub at_ms: u64,
    pub command: Command,
}

impl Proposal {
    pub fn new(at_ms: u64, command: Command) -> Self {
        Proposal {
            v: COMMAND_VERSION,
            at_ms,
            command,
        }
    }
}

/// The replicated commands. Append-only: never reorder, rename or change
/// the meaning of a variant; add new ones at the end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Precondition: no namespace named `name`.
    CreateNamespace {
        name: String,
        env: BTreeMap<String, String>,
    },
    /// Precondition: the namespace exists and, when `expected_revision` is
    /// set, its revision equals it. Replaces the env vars.
    UpdateNamespace {
        name: String,
        env: BTreeMap<String, String>,
        expected_revision: Option<u64>,
    },
    /// Precondition: the namespace exists and holds no container.
    DeleteNamespace { name: String },
    /// Creates or replaces a container. Preconditions: the namespace
    /// exists; `expected_revision` `Some(0)` means the container must not
    /// exist, `Some(r)` that its revision is `r`.
    PutContainer {
        namespace: String,
        name: String,
        spec: ContainerSpec,
        expected_revision: Option<u64>,
    },
    /// Precondition: the container exists.
    DeleteContainer { namespace: String, name: String },
    /// Inserts or replaces a node's record. No precondition.
    RegisterNode { node: NodeRecord },
    /// Removes a node's record and the instances placed on it. No precondition.
    RemoveNode { id: NodeId },
    /// A placement plan from the leader's scheduler. Entries whose
    /// preconditions fail are skipped: an added instance needs its container
    /// at that generation, a registered node and a fresh id; a removed one
    /// must exist.
    PlaceInstances {
        add: Vec<Instance>,
        remove: Vec<String>,
    },
    /// A node reports an instance's status. Precondition: the instance is
    /// placed on that node.
    ReportInstanceStatus {
        id: String,
        node: NodeId,
        status: InstanceStatus,
    },
    /// Pins the image a generation runs. Preconditions: the container is at
    /// that generation and has no pinned image yet.
    PinImage {
        namespace: String,
        name: String,
        generation: u64,
        image: String,
    },
    /// Sets a container's desired scale. Precondition: the container exists
    /// and its desired scale differs.
    Scale {
        namespace: String,
        name: String,
        replicas: u32,
    },
    /// Changes the cluster's view of a node (liveness, cordon, drain); unset
    /// fields keep their value. Precondition: the node is registered and
    /// something changes.
    SetNodeState {
        id: NodeId,
        down: Option<bool>,
        cordoned: Option<bool>,
        draining: Option<bool>,
    },
    /// Records (or clears) why a container's wanted instances are not
    /// placed. Precondition: the container exists and the reason changes.
    SetPending {
        namespace: String,
        name: String,
        reason: Option<String>,
    },
    /// Records the cluster data key, wrapped by the master key.
    /// Precondition: no data key yet.
    InitDataKey { wrapped: crate::secrets::Envelope },
    /// Sets sealed secrets in a scope (`ns` or `ns/container`), bumping
    /// each key's version. Precondition: the namespace (and container) exist.
    SetSecrets {
        scope: String,
        entries: BTreeMap<String, SealedSecret>,
    },
    /// Precondition: the secret exists.
    DeleteSecret { scope: String, key: String },
    /// Adds a token-signing key; the newest signs, all verify.
    /// Precondition: its kid is new.
    AddSigningKey { key: SigningKey },
    /// Records an issued token. Preconditions: the namespace (and container)
    /// exist and the id is new.
    CreateToken { record: TokenRecord },
    /// Precondition: the token exists.
    RevokeToken { id: String },
    /// Records an API key. Preconditions: its id is new; a namespace key's
    /// namespace exists.
    CreateApiKey { key: ApiKey },
    /// Precondition: the key exists.
    RevokeApiKey { id: String },
    /// Records the cluster CA (its key sealed by the master key).
    /// Precondition: no CA yet.
    InitClusterCa { ca: crate::tls::ClusterCa },
    /// Records a join token by the hash of its secret. Precondition: its id
    /// is new.
    CreateJoinToken { token: JoinTokenRecord },
    /// Spends a join token for `node`. Preconditions: the token exists, the
    /// hash matches, it has not expired at the proposal's time, and it is
    /// unused or was used by this same node (a retried join).
    UseJoinToken {
        id: String,
        hash: String,
        node: NodeId,
    },
    /// Replaces the master key (known here only by its id) and the data
    /// key, with every secret, signing key and the CA key re-sealed under
    /// them. Preconditions: the data key is still `from`, and the secrets
    /// and signing keys are exactly the ones re-sealed (same scopes, keys
    /// and versions; same kids), so no concurrent change is lost.
    RotateKeys {
        from: crate::secrets::Envelope,
        kek_id: String,
        data_key: crate::secrets::Envelope,
        ca_key: Option<crate::secrets::Envelope>,
        secrets: BTreeMap<String, BTreeMap<String, StoredSecret>>,
        signing_keys: Vec<SigningKey>,
    },
}

/// A join token as Raft keeps it: the hash of its secret, never the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    pub id: String,
    pub hash: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub used_by: Option<NodeId>,
}

/// Why `apply` refused a command. Deterministic: every node refuses alike.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum Rejection {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The object changed since the caller read it; retry with a fresh read.
    #[error("{0}")]
    Conflict(String),
}

/// The result of applying one log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Response {
    /// The state's revision after the entry (unchanged when rejected).
    pub revision: u64,
    pub rejection: Option<Rejection>,
}

/// The whole replicated state. Ordered maps keep serialisation, and so
/// snapshots and digests, deterministic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StateData {
    /// Bumped by every command that changes something.
    pub revision: u64,
    pub namespaces: BTreeMap<String, Namespace>,
    /// Keyed by `namespace/name`.
    pub containers: BTreeMap<String, Container>,
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    #[serde(default)]
    pub instances: BTreeMap<String, Instance>,
    #[serde(default)]
    pub statuses: BTreeMap<String, InstanceStatus>,
    #[serde(default)]
    pub node_states: BTreeMap<NodeId, NodeState>,
    /// The cluster data key, wrapped by the nodes' master key.
    #[serde(default)]
    pub data_key: Option<crate::secrets::Envelope>,
    /// Scope (`ns` or `ns/container`) → key → sealed secret.
    #[serde(default)]
    pub secrets: BTreeMap<String, BTreeMap<String, StoredSecret>>,
    /// Token-signing keys, oldest first.
    #[serde(default)]
    pub signing_keys: Vec<SigningKey>,
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenRecord>,
    #[serde(default)]
    pub api_keys: BTreeMap<String, ApiKey>,
    /// The CA that signs node certificates for peer mTLS.
    #[serde(default)]
    pub cluster_ca: Option<crate::tls::ClusterCa>,
    #[serde(default)]
    pub join_tokens: BTreeMap<String, JoinTokenRecord>,
    /// Id of the master key that wraps the data key, once it was rotated
    /// (nodes with another key fetch the current one from a peer).
    #[serde(default)]
    pub kek_id: Option<String>,
    /// Certificates (SHA-256) of removed nodes: peers refuse them.
    #[serde(default)]
    pub revoked_certs: std::collections::BTreeSet<String>,
}

/// A key of the state an applied command changed (for write-through storage).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Namespace(String),
    Container(String),
    Node(NodeId),
    /// The instance and its status.
    Instance(String),
    /// A scope's secrets.
    Secrets(String),
    DataKey,
    SigningKeys,
    Token(String),
    ApiKey(String),
    ClusterCa,
    JoinToken(String),
    KekId,
    RevokedCerts,
}

pub fn container_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl StateData {
    /// Applies one proposal. Pure: same state and proposal, same result.
    pub fn apply(&mut self, p: &Proposal) -> Response {
        self.apply_tracked(p, &mut Vec::new())
    }

    /// Like [`Self::apply`], and records the keys it changed in `touched`.
    pub fn apply_tracked(&mut self, p: &Proposal, touched: &mut Vec<Key>) -> Response {
        match self.apply_command(p.at_ms, &p.command, touched) {
            Ok(()) => Response {
                revision: self.revision,
                rejection: None,
            },
            Err(r) => Response {
                revision: self.revision,
                rejection: Some(r),
            },
        }
    }

    fn bump(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    /// New generation for the containers a secret scope feeds.
    fn regenerate(&mut self, scope: &str, touched: &mut Vec<Key>) {
        let rev = self.revision;
        let (ns, only) = match scope.split_once('/') {
            Some((ns, c)) => (ns.to_string(), Some(c.to_string())),
            None => (scope.to_string(), None),
        };
        for (key, c) in self.containers.iter_mut() {
            if c.namespace == ns && only.as_ref().is_none_or(|o| o == &c.name) {
                c.generation = rev;
                c.resolved_image = None;
                touched.push(Key::Container(key.clone()));
            }
        }
    }

    /// Secret names of a scope.
    pub fn secret_names(&self, scope: &str) -> Vec<String> {
        self.secrets
            .get(scope)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn remove_instance(&mut self, id: &str, touched: &mut Vec<Key>) {
        if self.instances.remove(id).is_some() {
            self.statuses.remove(id);
            touched.push(Key::Instance(id.to_string()));
        }
    }

    fn apply_command(
        &mut self,
        at_ms: u64,
        cmd: &Command,
        touched: &mut Vec<Key>,
    ) -> Result<(), Rejection> {
        match cmd {
            Command::CreateNamespace { name, env } => {
                if self.namespaces.contains_key(name) {
                    return Err(Rejection::AlreadyExists(format!(
                        "namespace {name:?} already exists"
                    )));
                }
                let revision = self.bump();
                self.namespaces.insert(
                    name.clone(),
                    Namespace {
                        name: name.clone(),
                        env: env.clone(),
                        revision,
                        created_at_ms: at_ms,
                        updated_at_ms: at_ms,
                    },
                );
                touched.push(Key::Namespace(name.clone()));
            }
            Command::UpdateNamespace {
                name,
                env,
                expected_revision,
            } => {
                let env_changed = &self.namespace_for_update(name, *expected_revision)?.env != env;
                let revision = self.bump();
                if let Some(ns) = self.namespaces.get_mut(name) {
                    ns.env = env.clone();
                    ns.revision = revision;
                    ns.updated_at_ms = at_ms;
                }
                touched.push(Key::Namespace(name.clone()));
                if env_changed {
                    // Instances carry the namespace's env: start a new generation.
                    for (key, c) in self
                        .containers
                        .iter_mut()
                        .filter(|(_, c)| &c.namespace == name)
                    {
                        c.generation = revision;
                        c.resolved_image = None;
                        touched.push(Key::Container(key.clone()));
                    }
                }
            }
            Command::DeleteNamespace { name } => {
                if !self.namespaces.contains_key(name) {
                    return Err(Rejection::NotFound(format!("namespace {name:?} not found")));
                }
                let prefix = format!("{name}/");
                let held = self
                    .containers
                    .keys()
                    .filter(|k| k.starts_with(&prefix))
                    .count();
                if held > 0 {
                    return Err(Rejection::FailedPrecondition(format!(
                        "namespace {name:?} still holds {held} container(s); delete them first"
                    )));
                }
                self.bump();
                self.namespaces.remove(name);
                touched.push(Key::Namespace(name.clone()));
                if self.secrets.remove(name).is_some() {
                    touched.push(Key::Secrets(name.clone()));
                }
            }
            Command::PutContainer {
                namespace,
                name,
                spec,
                expected_revision,
            } => {
                if !self.namespaces.contains_key(namespace) {
                    return Err(Rejection::NotFound(format!(
                        "namespace {namespace:?} not found"
                    )));
                }
                let key = container_key(namespace, name);
                let existing = self.containers.get(&key);
                match (expected_revision, existing) {
                    (Some(0), Some(_)) => {
                        return Err(Rejection::Conflict(format!(
                            "container {key:?} was created concurrently"
                        )))
                    }
                    (Some(r), Some(c)) if *r != c.revision => {
                        return Err(Rejection::Conflict(format!(
                            "container {key:?} changed (revision {} != {r})",
                            c.revision
                        )))
                    }
                    (Some(r), None) if *r != 0 => {
                        return Err(Rejection::Conflict(format!(
                            "container {key:?} was deleted concurrently"
                        )))
                    }
                    _ => {}
                }
                let created_at_ms = existing.map_or(at_ms, |c| c.created_at_ms);
                let kept = existing
                    .filter(|c| !c.spec.runtime_differs(spec))
                    .map(|c| (c.generation, c.resolved_image.clone()));
                let desired_scale = existing.map_or(0, |c| c.desired_scale);
                let cold_starts = existing.map(|c| c.cold_starts.clone()).unwrap_or_default();
                let pending_reason = existing.and_then(|c| c.pending_reason.clone());
                let revision = self.bump();
                let (generation, resolved_image) = kept.unwrap_or((revision, None));
                touched.push(Key::Container(key.clone()));
                self.containers.insert(
                    key,
                    Container {
                        namespace: namespace.clone(),
                        name: name.clone(),
                        spec: spec.clone(),
                        revision,
                        created_at_ms,
                        updated_at_ms: at_ms,
                        generation,
                        resolved_image,
                        desired_scale,
                        cold_starts,
                        pending_reason,
                    },
                );
            }
            Command::DeleteContainer { namespace, name } => {
                let key = container_key(namespace, name);
                if !self.containers.contains_key(&key) {
                    return Err(Rejection::NotFound(format!("container {key:?} not found")));
                }
                self.bump();
                self.containers.remove(&key);
                if self.secrets.remove(&key).is_some() {
                    touched.push(Key::Secrets(key.clone()));
                }
                touched.push(Key::Container(key));
                let gone: Vec<String> = self
                    .instances
                    .values()
                    .filter(|i| &i.namespace == namespace && &i.container == name)
                    .map(|i| i.id.clone())
                    .collect();
                for id in gone {
                    self.remove_instance(&id, touched);
                }
            }
            Command::RegisterNode { node } => {
                self.bump();
                self.nodes.insert(node.id, node.clone());
                touched.push(Key::Node(node.id));
            }
            Command::RemoveNode { id } => {
                self.bump();
                if let Some(n) = self.nodes.get(id).filter(|n| !n.cert_sha256.is_empty()) {
                    self.revoked_certs.insert(n.cert_sha256.clone());
                    touched.push(Key::RevokedCerts);
                }
                self.nodes.remove(id);
                self.node_states.remove(id);
                touched.push(Key::Node(*id));
                let gone: Vec<String> = self
                    .instances
                    .values()
                    .filter(|i| i.node == *id)
                    .map(|i| i.id.clone())
                    .collect();
                for iid in gone {
                    self.remove_instance(&iid, touched);
                }
            }
            Command::PlaceInstances { add, remove } => {
                let before = touched.len();
                for id in remove {
                    self.remove_instance(id, touched);
                }
                for inst in add {
                    let fits = self
                        .container(&inst.namespace, &inst.container)
                        .is_some_and(|c| c.generation == inst.generation)
                        && self.nodes.contains_key(&inst.node)
                        && !self.instances.contains_key(&inst.id);
                    if fits {
                        self.instances.insert(inst.id.clone(), inst.clone());
                        touched.push(Key::Instance(inst.id.clone()));
                    }
                }
                if touched.len() == before {
                    return Err(Rejection::FailedPrecondition(
                        "placement plan is stale: nothing in it applies".into(),
                    ));
                }
                self.bump();
            }
            Command::ReportInstanceStatus { id, node, status } => {
                match self.instances.get(id) {
                    Some(i) if i.node == *node => {}
                    _ => {
                        return Err(Rejection::NotFound(format!(
                            "instance {id:?} is not placed on node {node}"
                        )))
                    }
                }
                self.bump();
                let previous = self.statuses.insert(id.clone(), status.clone());
                touched.push(Key::Instance(id.clone()));
                let new_cold_start = status
                    .cold_start
                    .filter(|c| previous.and_then(|p| p.cold_start) != Some(*c));
                if let (Some(cs), Some(inst)) = (new_cold_start, self.instances.get(id)) {
                    let key = container_key(&inst.namespace, &inst.container);
                    if let Some(c) = self.containers.get_mut(&key) {
                        c.cold_starts.push(cs);
                        if c.cold_starts.len() > COLD_START_HISTORY {
                            c.cold_starts.remove(0);
                        }
                        touched.push(Key::Container(key));
                    }
                }
            }
            Command::Scale {
                namespace,
                name,
                replicas,
            } => {
                let key = container_key(namespace, name);
                let c = self
                    .containers
                    .get_mut(&key)
                    .ok_or_else(|| Rejection::NotFound(format!("container {key:?} not found")))?;
                if c.desired_scale == *replicas {
                    return Err(Rejection::FailedPrecondition(format!(
                        "container {key:?} already wants {replicas}"
                    )));
                }
                c.desired_scale = *replicas;
                self.bump();
                touched.push(Key::Container(key));
            }
            Command::SetNodeState {
                id,
                down,
                cordoned,
                draining,
            } => {
                if !self.nodes.contains_key(id) {
                    return Err(Rejection::NotFound(format!("node {id} is not registered")));
                }
                let cur = self.node_states.get(id).cloned().unwrap_or_default();
                let next = NodeState {
                    down: down.unwrap_or(cur.down),
                    cordoned: cordoned.unwrap_or(cur.cordoned),
                    draining: draining.unwrap_or(cur.draining),
                    since_ms: at_ms,
                };
                if (next.down, next.cordoned, next.draining)
                    == (cur.down, cur.cordoned, cur.draining)
                {
                    return Err(Rejection::FailedPrecondition(format!(
                        "node {id} is already in that state"
                    )));
                }
                self.bump();
                self.node_states.insert(*id, next);
                touched.push(Key::Node(*id));
            }
            Command::InitDataKey { wrapped } => {
                if self.data_key.is_some() {
                    return Err(Rejection::AlreadyExists(
                        "the cluster data key is already set".into(),
                    ));
                }
                self.bump();
                self.data_key = Some(wrapped.clone());
                touched.push(Key::DataKey);
            }
            Command::SetSecrets { scope, entries } => {
                let exists = match scope.split_once('/') {
                    Some((ns, c)) => self.container(ns, c).is_some(),
                    None => self.namespaces.contains_key(scope),
                };
                if !exists {
                    return Err(Rejection::NotFound(format!("{scope:?} not found")));
                }
                self.bump();
                let slot = self.secrets.entry(scope.clone()).or_default();
                for (k, v) in entries {
                    let version = slot.get(k).map_or(1, |s| s.version + 1);
                    slot.insert(
                        k.clone(),
                        StoredSecret {
                            sealed: v.sealed.clone(),
                            fingerprint: v.fingerprint.clone(),
                            version,
                            updated_at_ms: at_ms,
                        },
                    );
                }
                touched.push(Key::Secrets(scope.clone()));
                // Instances carry their secrets: start a new generation.
                self.regenerate(scope, touched);
            }
            Command::DeleteSecret { scope, key } => {
                let removed = self
                    .secrets
                    .get_mut(scope)
                    .and_then(|m| m.remove(key))
                    .is_some();
                if !removed {
                    return Err(Rejection::NotFound(format!(
                        "secret {key:?} not found in {scope:?}"
                    )));
                }
                if self.secrets.get(scope).is_some_and(|m| m.is_empty()) {
                    self.secrets.remove(scope);
                }
                self.bump();
                touched.push(Key::Secrets(scope.clone()));
                self.regenerate(scope, touched);
            }
            Command::AddSigningKey { key } => {
                if self.signing_keys.iter().any(|k| k.kid == key.kid) {
                    return Err(Rejection::AlreadyExists(format!(
                        "signing key {:?} exists",
                        key.kid
                    )));
                }
                self.bump();
                self.signing_keys.push(key.clone());
                touched.push(Key::SigningKeys);
            }
            Command::CreateToken { record } => {
                if !self.namespaces.contains_key(&record.namespace) {
                    return Err(Rejection::NotFound(format!(
                        "namespace {:?} not found",
                        record.namespace
                    )));
                }
                if let Some(c) = &record.container {
                    if self.container(&record.namespace, c).is_none() {
                        return Err(Rejection::NotFound(format!(
                            "container \"{}/{c}\" not found",
                            record.namespace
                        )));
                    }
                }
                if self.tokens.contains_key(&record.id) {
                    return Err(Rejection::AlreadyExists(format!(
                        "token {:?} exists",
                        record.id
                    )));
                }
                self.bump();
                self.tokens.insert(record.id.clone(), record.clone());
                touched.push(Key::Token(record.id.clone()));
            }
            Command::RevokeToken { id } => {
                let t = self
                    .tokens
                    .get_mut(id)
                    .ok_or_else(|| Rejection::NotFound(format!("token {id:?} not found")))?;
                t.revoked = true;
                self.bump();
                touched.push(Key::Token(id.clone()));
            }
            Command::CreateApiKey { key } => {
                if self.api_keys.contains_key(&key.id) {
                    return Err(Rejection::AlreadyExists(format!(
                        "api key {:?} exists",
                        key.id
                    )));
                }
                if let Some(ns) = &key.namespace {
                    if !self.namespaces.contains_key(ns) {
                        return Err(Rejection::NotFound(format!("namespace {ns:?} not found")));
                    }
                }
                self.bump();
                self.api_keys.insert(key.id.clone(), key.clone());
                touched.push(Key::ApiKey(key.id.clone()));
            }
            Command::InitClusterCa { ca } => {
                if self.cluster_ca.is_some() {
                    return Err(Rejection::AlreadyExists(
                        "the cluster CA is already set".into(),
                    ));
                }
                self.bump();
                self.cluster_ca = Some(ca.clone());
                touched.push(Key::ClusterCa);
            }
            Command::CreateJoinToken { token } => {
                if self.join_tokens.contains_key(&token.id) {
                    return Err(Rejection::AlreadyExists(format!(
                        "join token {:?} already exists",
                        token.id
                    )));
                }
                self.bump();
                self.join_tokens.insert(token.id.clone(), token.clone());
                touched.push(Key::JoinToken(token.id.clone()));
            }
            Command::UseJoinToken { id, hash, node } => {
                let refused =
                    |why: &str| Rejection::FailedPrecondition(format!("join_token: {why}"));
                let t = self
                    .join_tokens
                    .get_mut(id)
                    .ok_or_else(|| refused("unknown token"))?;
                if !crate::secrets::constant_time_eq(t.hash.as_bytes(), hash.as_bytes()) {
                    return Err(refused("unknown token"));
                }
                if at_ms >= t.expires_ms {
                    return Err(refused(
                        "the token has expired; mint a new one with `rouse cluster join-token`",
                    ));
                }
                match t.used_by {
                    Some(n) if n != *node => {
                        return Err(refused(&format!(
                            "the token was already used (by node {n}); join tokens are good for one node"
                        )))
                    }
                    Some(_) => {}
                    None => {
                        t.used_by = Some(*node);
                        self.bump();
                        touched.push(Key::JoinToken(id.clone()));
                    }
                }
            }
            Command::RotateKeys {
                from,
                kek_id,
                data_key,
                ca_key,
                secrets,
                signing_keys,
            } => {
                let conflict = |what: &str| {
                    Rejection::Conflict(format!(
                        "{what} changed while the keys were rotated; rotate again"
                    ))
                };
                if self.data_key.as_ref() != Some(from) {
                    return Err(conflict("the data key"));
                }
                let versions = |m: &BTreeMap<String, BTreeMap<String, StoredSecret>>| {
                    m.iter()
                        .flat_map(|(scope, keys)| {
                            keys.iter()
                                .map(move |(k, v)| (scope.clone(), k.clone(), v.version))
                        })
                        .collect::<Vec<_>>()
                };
                if versions(&self.secrets) != versions(secrets) {
                    return Err(conflict("a secret"));
                }
                let kids = |v: &[SigningKey]| v.iter().map(|k| k.kid.clone()).collect::<Vec<_>>();
                if kids(&self.signing_keys) != kids(signing_keys) {
                    return Err(conflict("the signing keys"));
                }
                if self.cluster_ca.is_some() != ca_key.is_some() {
                    return Err(conflict("the cluster CA"));
                }
                self.bump();
                self.data_key = Some(data_key.clone());
                self.kek_id = Some(kek_id.clone());
                if let (Some(ca), Some(k)) = (self.cluster_ca.as_mut(), ca_key) {
                    ca.key = k.clone();
                }
                for scope in self.secrets.keys() {
                    touched.push(Key::Secrets(scope.clone()));
                }
                self.secrets = secrets.clone();
                self.signing_keys = signing_keys.clone();
                touched.extend([Key::DataKey, Key::KekId, Key::ClusterCa, Key::SigningKeys]);
            }
            Command::RevokeApiKey { id } => {
                let k = self
                    .api_keys
                    .get_mut(id)
                    .ok_or_else(|| Rejection::NotFound(format!("api key {id:?} not found")))?;
                k.revoked = true;
                self.bump();
                touched.push(Key::ApiKey(id.clone()));
            }
            Command::SetPending {
                namespace,
                name,
                reason,
            } => {
                let key = container_key(namespace, name);
                let c = self
                    .containers
                    .get_mut(&key)
                    .ok_or_else(|| Rejection::NotFound(format!("container {key:?} not found")))?;
                if &c.pending_reason == reason {
                    return Err(Rejection::FailedPrecondition(
                        "pending reason unchanged".into(),
                    ));
                }
                c.pending_reason = reason.clone();
                self.bump();
                touched.push(Key::Container(key));
            }
            Command::PinImage {
                namespace,
                name,
                generation,
                image,
            } => {
                let key = container_key(namespace, name);
                let c = self
                    .containers
                    .get_mut(&key)
                    .ok_or_else(|| Rejection::NotFound(format!("container {key:?} not found")))?;
                if c.generation != *generation || c.resolved_image.is_some() {
                    return Err(Rejection::Conflict(format!(
                        "container {key:?} generation {generation} is gone or pinned"
                    )));
                }
                c.resolved_image = Some(image.clone());
                self.bump();
                touched.push(Key::Container(key));
            }
        }
        Ok(())
    }

    /// Instances of one container.
    pub fn instances_of<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Instance> + 'a {
        self.instances
            .values()
            .filter(move |i| i.namespace == namespace && i.container == name)
    }

    fn namespace_for_update(
        &self,
        name: &str,
        expected: Option<u64>,
    ) -> Result<&Namespace, Rejection> {
        let ns = self
            .namespaces
            .get(name)
            .ok_or_else(|| Rejection::NotFound(format!("namespace {name:?} not found")))?;
        if let Some(r) = expected {
            if r != ns.revision {
                return Err(Rejection::Conflict(format!(
                    "namespace {name:?} changed (revision {} != {r})",
                    ns.revision
                )));
            }
        }
        Ok(ns)
    }

    pub fn container(&self, namespace: &str, name: &str) -> Option<&Container> {
        self.containers.get(&container_key(namespace, name))
    }

    /// The cluster's view of a node (default: up, schedulable).
    pub fn node_state(&self, id: NodeId) -> NodeState {
        self.node_states.get(&id).cloned().unwrap_or_default()
    }

    pub fn containers_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Container> + 'a {
        self.containers
            .values()
            .filter(move |c| c.namespace == namespace)
    }

    /// SHA-256 of the canonical JSON encoding, hex. Equal states, equal digests.
    pub fn digest(&self) -> String {
        // Serialising plain maps of strings and numbers cannot fail.
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(&bytes))
    }
}

#[cfg(test)]
mod tests;
