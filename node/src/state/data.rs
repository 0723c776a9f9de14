//! The whole replicated state ([`StateData`]) and the read-side views every
//! part of a node uses (a container by key, its instances, a node's state).
//! Changes only come through `apply`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::key::{ContainerKey, Scope};
use super::ledger::Usage;
use super::types::{
    ApiKey, ClusterCa, Container, Instance, InstanceStatus, JoinTokenRecord, Namespace, NodeId,
    NodeRecord, NodeState, SigningKey, StoredSecret, TokenRecord, Trigger,
};

/// The whole replicated state. Ordered maps keep serialisation, and so
/// snapshots and digests, deterministic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StateData {
    /// Bumped by every command that changes something.
    pub revision: u64,
    pub namespaces: BTreeMap<String, Namespace>,
    pub containers: BTreeMap<ContainerKey, Container>,
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    #[serde(default)]
    pub instances: super::instances::Instances,
    #[serde(default)]
    pub statuses: BTreeMap<String, InstanceStatus>,
    #[serde(default)]
    pub node_states: BTreeMap<NodeId, NodeState>,
    /// The cluster data key, wrapped by the nodes' master key.
    #[serde(default)]
    pub data_key: Option<crate::secrets::Envelope>,
    /// Scope → key → sealed secret.
    #[serde(default)]
    pub secrets: BTreeMap<Scope, BTreeMap<String, StoredSecret>>,
    /// Token-signing keys, oldest first.
    #[serde(default)]
    pub signing_keys: Vec<SigningKey>,
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenRecord>,
    #[serde(default)]
    pub api_keys: BTreeMap<String, ApiKey>,
    /// The CA that signs node certificates for peer mTLS.
    #[serde(default)]
    pub cluster_ca: Option<ClusterCa>,
    #[serde(default)]
    pub join_tokens: BTreeMap<String, JoinTokenRecord>,
    /// Id of the master key that wraps the data key, once it was rotated
    /// (nodes with another key fetch the current one from a peer).
    #[serde(default)]
    pub kek_id: Option<String>,
    /// Certificates (SHA-256) of removed nodes: peers refuse them.
    #[serde(default)]
    pub revoked_certs: BTreeSet<String>,
    /// Triggers by `namespace/container/name`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub triggers: BTreeMap<String, Trigger>,
    /// The usage ledger: per container (kept after it is deleted), per
    /// period start (a minute; an hour once older than a day).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub usage: BTreeMap<ContainerKey, BTreeMap<u64, Usage>>,
    /// The last usage batch applied from each node.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub usage_seq: BTreeMap<NodeId, u64>,
    /// What happened, oldest first, the last [`super::ledger::EVENTS_KEPT`].
    #[serde(default, skip_serializing_if = "std::collections::VecDeque::is_empty")]
    pub events: std::collections::VecDeque<super::ledger::Event>,
}

/// A key of the state an applied command changed (for write-through storage).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Namespace(String),
    Container(ContainerKey),
    Node(NodeId),
    /// The instance and its status.
    Instance(String),
    /// A scope's secrets.
    Secrets(Scope),
    DataKey,
    SigningKeys,
    Token(String),
    ApiKey(String),
    ClusterCa,
    JoinToken(String),
    KekId,
    RevokedCerts,
    /// A trigger, by `namespace/container/name`.
    Trigger(String),
    /// A container's usage ledger.
    Usage(ContainerKey),
    UsageSeq,
    /// An event, by sequence number.
    Event(u64),
}

impl StateData {
    /// Whether a peer showing a cluster certificate (`cert_sha256`, naming
    /// `node`) is a member's: the cluster issued that certificate to that
    /// node (its registered record, or a spent join token's), and did not
    /// revoke it. The CA's signature alone is not enough: a removed node
    /// still holds the CA key.
    pub fn peer_trusted(&self, node: NodeId, cert_sha256: &str) -> Result<(), String> {
        if self.revoked_certs.contains(cert_sha256) {
            return Err(format!(
                "the certificate of node {node} was revoked when it was removed from the cluster"
            ));
        }
        let registered = self
            .nodes
            .get(&node)
            .is_some_and(|n| n.cert_sha256 == cert_sha256);
        let issued = || {
            self.join_tokens.values().any(|t| {
                t.used_by == Some(node)
                    && t.issued
                        .as_ref()
                        .is_some_and(|i| i.cert_sha256 == cert_sha256)
            })
        };
        if registered || issued() {
            Ok(())
        } else {
            Err(format!(
                "node {node}'s certificate was not issued by this cluster to a member"
            ))
        }
    }

    /// Triggers of one container.
    pub fn triggers_of<'a>(
        &'a self,
        namespace: &'a str,
        container: &'a str,
    ) -> impl Iterator<Item = &'a Trigger> + 'a {
        self.triggers
            .values()
            .filter(move |t| t.namespace == namespace && t.container == container)
    }

    /// The event numbered `seq`, while it is kept.
    pub fn event(&self, seq: u64) -> Option<&super::ledger::Event> {
        let first = self.events.front()?.seq;
        self.events
            .get(usize::try_from(seq.checked_sub(first)?).ok()?)
            .filter(|e| e.seq == seq)
    }

    /// Instances of one container.
    pub fn instances_of<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Instance> + 'a {
        self.instances.of(namespace, name)
    }

    pub fn container(&self, namespace: &str, name: &str) -> Option<&Container> {
        self.containers.get(&ContainerKey::new(namespace, name))
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

    /// Secret names of a scope.
    pub fn secret_names(&self, scope: &Scope) -> Vec<String> {
        self.secrets
            .get(scope)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// SHA-256 of the canonical JSON encoding, hex. Equal states, equal digests.
    pub fn digest(&self) -> String {
        // Serialising plain maps of strings and numbers cannot fail.
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(&bytes))
    }
}
