//! The replicated log's vocabulary: a [`Proposal`] carries one [`Command`]
//! and the proposer's clock; applying it gives a [`Response`] or a
//! deterministic [`Rejection`].
//!
//! [`Command`] is append-only: variants are added at the end and never
//! change meaning, so old logs and snapshots replay on newer nodes. Every
//! entry carries [`COMMAND_VERSION`]; a node refuses to apply an entry
//! written by a newer version than its own (see `store`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::key::Scope;
use super::ledger::UsageEntry;
use super::types::{
    ApiKey, ClusterCa, ContainerSpec, Firing, Instance, InstanceStatus, IssuedCert,
    JoinTokenRecord, NodeId, NodeRecord, Quota, SealedSecret, SigningKey, StoredSecret,
    TokenRecord, TriggerSpec,
};

/// Version of the commands' meaning written into every log entry. Rules
/// added later apply only to entries of the version that added them, so an
/// entry means on replay what it meant when it was committed.
///
/// - 1: the first.
/// - 2: `RegisterNode` refuses an address another node has registered;
///   deleting a namespace revokes its API keys and tokens, deleting a
///   container its tokens; `RevokeApiKey` keeps at least one admin key;
///   namespace quotas bound containers, secrets and tokens.
/// - 3: triggers (`CreateTrigger` … `RecordFiring`), usage (`RecordUsage`).
/// - 4: commands record what they did in the event stream.
/// - 5: `Batch`.
pub const COMMAND_VERSION: u32 = 5;

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

    /// Whether this node understands the entry: it was written with this
    /// version of the encoding or an older one.
    pub fn readable(&self) -> bool {
        self.v <= COMMAND_VERSION
    }
}

/// The replicated commands. Append-only: never reorder, rename or change
/// the meaning of a variant; add new ones at the end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
#[serde(tag = "op", rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
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
        /// Why (shown by `container get`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
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
        scope: Scope,
        entries: BTreeMap<String, SealedSecret>,
    },
    /// Precondition: the secret exists.
    DeleteSecret { scope: Scope, key: String },
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
    InitClusterCa { ca: ClusterCa },
    /// Records a join token by the hash of its secret. Precondition: its id
    /// is new.
    CreateJoinToken { token: JoinTokenRecord },
    /// Spends a join token for `node`. Preconditions: the token exists, the
    /// hash matches, it has not expired at the proposal's time, and it is
    /// unused. With `issued` (every proposal since certificates are
    /// recorded) the certificate is recorded with the token and a used
    /// token is refused, full stop; without (older entries) a token used by
    /// this same node is accepted again.
    UseJoinToken {
        id: String,
        hash: String,
        node: NodeId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        issued: Option<IssuedCert>,
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
        secrets: BTreeMap<Scope, BTreeMap<String, StoredSecret>>,
        signing_keys: Vec<SigningKey>,
    },
    /// Records when API keys were last used (id → time, ms), as nodes saw
    /// them; only moves a key's time forward.
    TouchApiKeys { used: BTreeMap<String, u64> },
    /// Sets a namespace's quota (replacing the previous one). Precondition:
    /// the namespace exists. What it holds beyond the new bounds stays;
    /// only growth is refused.
    SetQuota { namespace: String, quota: Quota },
    /// Creates a trigger of a container. Preconditions: the container
    /// exists, no trigger of that name does.
    CreateTrigger {
        namespace: String,
        container: String,
        name: String,
        spec: TriggerSpec,
    },
    /// Deletes a trigger. Precondition: it exists.
    DeleteTrigger {
        namespace: String,
        container: String,
        name: String,
    },
    /// Enables or disables a trigger. Precondition: it exists.
    SetTriggerEnabled {
        namespace: String,
        container: String,
        name: String,
        enabled: bool,
    },
    /// `node` claims the tick scheduled at `tick_ms` for delivery, after
    /// `missed` older ticks that passed unclaimed (`deliver` false: the
    /// tick itself is past its catch-up window and is one of the `missed`,
    /// not delivered). Preconditions: the trigger exists and is enabled, and
    /// `tick_ms` is later than its last claimed tick (so a tick is claimed
    /// at most once, whoever leads).
    ClaimTick {
        namespace: String,
        container: String,
        name: String,
        tick_ms: u64,
        missed: u64,
        deliver: bool,
        node: NodeId,
    },
    /// Records a delivery's outcome (and settles its tick, if pending).
    /// Precondition: the trigger exists.
    RecordFiring {
        namespace: String,
        container: String,
        name: String,
        firing: Firing,
    },
    /// Adds `node`'s metered usage to the ledger. Applied once per
    /// (node, seq): a batch sent again (its first answer lost) with a seq
    /// not above the node's last is accepted and changes nothing. Periods
    /// older than a day fold into their hour.
    RecordUsage {
        node: NodeId,
        seq: u64,
        entries: Vec<UsageEntry>,
    },
    /// Several commands in one entry (a leader loop's whole pass), applied
    /// in order, each accepted or refused on its own as if alone. Refused
    /// as a whole, changing nothing, if it holds a batch or nothing in it
    /// applies.
    Batch { commands: Vec<Command> },
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
