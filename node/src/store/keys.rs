//! How the replicated state maps onto sled keys: `ns/…`, `ct/…`, `node/…`,
//! `in/…`, `st/…`, `sec/…`, `trg/…`, `use/…`, `ev/…`, `meta/…`. One key per object, written through
//! on apply (only the keys a command changed) and read back on start.

use serde::Serialize;

use super::applied::Applied;
use crate::state::{ContainerKey, Key, NodeId, Scope, StateData};

pub(super) const SM_LAST_APPLIED: &[u8] = b"meta/last_applied";
pub(super) const SM_MEMBERSHIP: &[u8] = b"meta/membership";
pub(super) const SM_REVISION: &[u8] = b"meta/revision";
pub(super) const SM_DATA_KEY: &[u8] = b"meta/data_key";
pub(super) const SM_SIGNING_KEYS: &[u8] = b"meta/signing_keys";
pub(super) const SM_CLUSTER_CA: &[u8] = b"meta/cluster_ca";
pub(super) const SM_KEK_ID: &[u8] = b"meta/kek_id";
pub(super) const SM_REVOKED_CERTS: &[u8] = b"meta/revoked_certs";
pub(super) const SM_USAGE_SEQ: &[u8] = b"meta/usage_seq";
pub(super) const SNAP_META: &[u8] = b"meta";
pub(super) const SNAP_DATA: &[u8] = b"data";

pub(super) fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(v)
}

/// Writes the current value of `key` (or its removal) into `batch`.
pub(super) fn write_key(
    batch: &mut sled::Batch,
    d: &StateData,
    key: &Key,
) -> Result<(), serde_json::Error> {
    match key {
        Key::Namespace(k) => match d.namespaces.get(k) {
            Some(v) => batch.insert(format!("ns/{k}").as_bytes(), json(v)?),
            None => batch.remove(format!("ns/{k}").as_bytes()),
        },
        Key::Container(k) => match d.containers.get(k) {
            Some(v) => batch.insert(format!("ct/{k}").as_bytes(), json(v)?),
            None => batch.remove(format!("ct/{k}").as_bytes()),
        },
        Key::Node(id) => {
            match d.nodes.get(id) {
                Some(v) => batch.insert(format!("node/{id:020}").as_bytes(), json(v)?),
                None => batch.remove(format!("node/{id:020}").as_bytes()),
            }
            match d.node_states.get(id) {
                Some(v) => batch.insert(format!("nstate/{id:020}").as_bytes(), json(v)?),
                None => batch.remove(format!("nstate/{id:020}").as_bytes()),
            }
        }
        Key::Secrets(scope) => match d.secrets.get(scope) {
            Some(v) => batch.insert(format!("sec/{scope}").as_bytes(), json(v)?),
            None => batch.remove(format!("sec/{scope}").as_bytes()),
        },
        Key::ApiKey(id) => match d.api_keys.get(id) {
            Some(v) => batch.insert(format!("apikey/{id}").as_bytes(), json(v)?),
            None => batch.remove(format!("apikey/{id}").as_bytes()),
        },
        Key::SigningKeys => batch.insert(SM_SIGNING_KEYS, json(&d.signing_keys)?),
        Key::Token(id) => match d.tokens.get(id) {
            Some(v) => batch.insert(format!("tok/{id}").as_bytes(), json(v)?),
            None => batch.remove(format!("tok/{id}").as_bytes()),
        },
        Key::DataKey => match &d.data_key {
            Some(v) => batch.insert(SM_DATA_KEY, json(v)?),
            None => batch.remove(SM_DATA_KEY),
        },
        Key::ClusterCa => match &d.cluster_ca {
            Some(v) => batch.insert(SM_CLUSTER_CA, json(v)?),
            None => batch.remove(SM_CLUSTER_CA),
        },
        Key::RevokedCerts => batch.insert(SM_REVOKED_CERTS, json(&d.revoked_certs)?),
        Key::KekId => match &d.kek_id {
            Some(v) => batch.insert(SM_KEK_ID, json(v)?),
            None => batch.remove(SM_KEK_ID),
        },
        Key::JoinToken(id) => match d.join_tokens.get(id) {
            Some(v) => batch.insert(format!("join/{id}").as_bytes(), json(v)?),
            None => batch.remove(format!("join/{id}").as_bytes()),
        },
        Key::Usage(k) => match d.usage.get(k) {
            Some(v) => batch.insert(format!("use/{k}").as_bytes(), json(v)?),
            None => batch.remove(format!("use/{k}").as_bytes()),
        },
        Key::UsageSeq => batch.insert(SM_USAGE_SEQ, json(&d.usage_seq)?),
        Key::Event(seq) => match d.event(*seq) {
            Some(v) => batch.insert(format!("ev/{seq:020}").as_bytes(), json(v)?),
            None => batch.remove(format!("ev/{seq:020}").as_bytes()),
        },
        Key::Trigger(id) => match d.triggers.get(id) {
            Some(v) => batch.insert(format!("trg/{id}").as_bytes(), json(v)?),
            None => batch.remove(format!("trg/{id}").as_bytes()),
        },
        Key::Instance(k) => {
            match d.instances.get(k) {
                Some(v) => batch.insert(format!("in/{k}").as_bytes(), json(v)?),
                None => batch.remove(format!("in/{k}").as_bytes()),
            }
            match d.statuses.get(k) {
                Some(v) => batch.insert(format!("st/{k}").as_bytes(), json(v)?),
                None => batch.remove(format!("st/{k}").as_bytes()),
            }
        }
    }
    Ok(())
}

/// Writes every key of `a` into a batch (used on snapshot install).
pub(super) fn full_batch(a: &Applied) -> Result<sled::Batch, serde_json::Error> {
    let mut b = sled::Batch::default();
    b.insert(SM_LAST_APPLIED, json(&a.last_applied)?);
    b.insert(SM_MEMBERSHIP, json(&a.membership)?);
    b.insert(SM_REVISION, json(&a.data.revision)?);
    for (k, v) in &a.data.namespaces {
        b.insert(format!("ns/{k}").as_bytes(), json(v)?);
    }
    for (k, v) in &a.data.containers {
        b.insert(format!("ct/{k}").as_bytes(), json(v)?);
    }
    for (k, v) in &a.data.nodes {
        b.insert(format!("node/{k:020}").as_bytes(), json(v)?);
    }
    for (k, v) in a.data.instances.iter() {
        b.insert(format!("in/{k}").as_bytes(), json(v)?);
    }
    for (k, v) in &a.data.secrets {
        b.insert(format!("sec/{k}").as_bytes(), json(v)?);
    }
    if let Some(dk) = &a.data.data_key {
        b.insert(SM_DATA_KEY, json(dk)?);
    }
    b.insert(SM_SIGNING_KEYS, json(&a.data.signing_keys)?);
    if let Some(ca) = &a.data.cluster_ca {
        b.insert(SM_CLUSTER_CA, json(ca)?);
    }
    if let Some(id) = &a.data.kek_id {
        b.insert(SM_KEK_ID, json(id)?);
    }
    b.insert(SM_REVOKED_CERTS, json(&a.data.revoked_certs)?);
    for (k, v) in &a.data.join_tokens {
        b.insert(format!("join/{k}").as_bytes(), json(v)?);
    }
    for (k, v) in &a.data.tokens {
        b.insert(format!("tok/{k}").as_bytes(), json(v)?);
    }
    for (k, v) in &a.data.api_keys {
        b.insert(format!("apikey/{k}").as_bytes(), json(v)?);
    }
    for (k, v) in &a.data.node_states {
        b.insert(format!("nstate/{k:020}").as_bytes(), json(v)?);
    }
    for (k, v) in &a.data.statuses {
        b.insert(format!("st/{k}").as_bytes(), json(v)?);
    }
    for (k, v) in &a.data.triggers {
        b.insert(format!("trg/{k}").as_bytes(), json(v)?);
    }
    for (k, v) in &a.data.usage {
        b.insert(format!("use/{k}").as_bytes(), json(v)?);
    }
    b.insert(SM_USAGE_SEQ, json(&a.data.usage_seq)?);
    for e in &a.data.events {
        b.insert(format!("ev/{:020}", e.seq).as_bytes(), json(e)?);
    }
    Ok(b)
}

/// Reads the state machine back from its keys.
pub(super) fn load(sm: &sled::Tree) -> Result<Applied, String> {
    let mut a = Applied::default();
    for kv in sm.iter() {
        let (k, v) = kv.map_err(|e| e.to_string())?;
        let key = String::from_utf8_lossy(&k).to_string();
        let bad = |e: serde_json::Error| format!("key {key}: {e}");
        if k.as_ref() == SM_LAST_APPLIED {
            a.last_applied = serde_json::from_slice(&v).map_err(bad)?;
        } else if k.as_ref() == SM_MEMBERSHIP {
            a.membership = serde_json::from_slice(&v).map_err(bad)?;
        } else if k.as_ref() == SM_SIGNING_KEYS {
            a.data.signing_keys = serde_json::from_slice(&v).map_err(bad)?;
        } else if k.as_ref() == SM_REVOKED_CERTS {
            a.data.revoked_certs = serde_json::from_slice(&v).map_err(bad)?;
        } else if k.as_ref() == SM_KEK_ID {
            a.data.kek_id = serde_json::from_slice(&v).map_err(bad)?;
        } else if k.as_ref() == SM_CLUSTER_CA {
            a.data.cluster_ca = serde_json::from_slice(&v).map_err(bad)?;
        } else if let Some(id) = key.strip_prefix("join/") {
            a.data
                .join_tokens
                .insert(id.to_string(), serde_json::from_slice(&v).map_err(bad)?);
        } else if let Some(id) = key.strip_prefix("apikey/") {
            a.data
                .api_keys
                .insert(id.to_string(), serde_json::from_slice(&v).map_err(bad)?);
        } else if k.as_ref() == SM_USAGE_SEQ {
            a.data.usage_seq = serde_json::from_slice(&v).map_err(bad)?;
        } else if let Some(name) = key.strip_prefix("use/") {
            let name = ContainerKey::parse(name)
                .ok_or_else(|| format!("key {key}: not a container key"))?;
            a.data
                .usage
                .insert(name, serde_json::from_slice(&v).map_err(bad)?);
        } else if key.starts_with("ev/") {
            // In key order: oldest first.
            a.data
                .events
                .push_back(serde_json::from_slice(&v).map_err(bad)?);
        } else if let Some(id) = key.strip_prefix("trg/") {
            a.data
                .triggers
                .insert(id.to_string(), serde_json::from_slice(&v).map_err(bad)?);
        } else if let Some(id) = key.strip_prefix("tok/") {
            a.data
                .tokens
                .insert(id.to_string(), serde_json::from_slice(&v).map_err(bad)?);
        } else if k.as_ref() == SM_DATA_KEY {
            a.data.data_key = serde_json::from_slice(&v).map_err(bad)?;
        } else if let Some(scope) = key.strip_prefix("sec/") {
            let scope =
                Scope::parse(scope).ok_or_else(|| format!("key {key}: not a secret scope"))?;
            a.data
                .secrets
                .insert(scope, serde_json::from_slice(&v).map_err(bad)?);
        } else if k.as_ref() == SM_REVISION {
            a.data.revision = serde_json::from_slice(&v).map_err(bad)?;
        } else if let Some(name) = key.strip_prefix("ns/") {
            a.data
                .namespaces
                .insert(name.to_string(), serde_json::from_slice(&v).map_err(bad)?);
        } else if let Some(name) = key.strip_prefix("ct/") {
            let name = ContainerKey::parse(name)
                .ok_or_else(|| format!("key {key}: not a container key"))?;
            a.data
                .containers
                .insert(name, serde_json::from_slice(&v).map_err(bad)?);
        } else if let Some(id) = key.strip_prefix("in/") {
            let inst: crate::state::Instance = serde_json::from_slice(&v).map_err(bad)?;
            if inst.id != id {
                return Err(format!("key {key}: holds instance {:?}", inst.id));
            }
            a.data.instances.insert(inst);
        } else if let Some(id) = key.strip_prefix("st/") {
            a.data
                .statuses
                .insert(id.to_string(), serde_json::from_slice(&v).map_err(bad)?);
        } else if let Some(id) = key.strip_prefix("nstate/") {
            let id: NodeId = id.parse().map_err(|e| format!("key {key}: {e}"))?;
            a.data
                .node_states
                .insert(id, serde_json::from_slice(&v).map_err(bad)?);
        } else if key.starts_with("node/") {
            let n: crate::state::NodeRecord = serde_json::from_slice(&v).map_err(bad)?;
            a.data.nodes.insert(n.id, n);
        }
    }
    Ok(a)
}
