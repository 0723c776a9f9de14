//! Durable Raft storage on sled, behind openraft's storage traits.
//!
//! ```text
//!  sled db (<data-dir>/raft)
//!   ├─ "log"      index (u64 BE) → Entry (JSON)        ┐ LogStore
//!   ├─ "raft"     vote, committed, last purged id      ┘  (flushed before acking)
//!   ├─ "sm"       ns/…, ct/…, node/…, meta/…            ┐ StateMachineStore
//!   └─ "snapshot" meta, data                           ┘
//! ```
//!
//! The log and the vote are flushed to disk before openraft is told they
//! are written. The state machine is written through on every apply but
//! not flushed: after a crash it may be behind the log, which openraft then
//! replays; if it is behind the last snapshot (whose logs may be purged), it
//! is reloaded from that snapshot, which is always flushed.

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};

use crate::raft::TypeConfig;
use crate::state::{Key, NodeId, Response, StateData};

/// openraft's `StorageError` is large by design; it is the traits' error type.
#[allow(clippy::result_large_err)]
type StResult<T> = Result<T, StorageError<NodeId>>;

type StoredSnapshotParts = (SnapshotMeta<NodeId, BasicNode>, Vec<u8>);

/// Errors opening the store.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("opening sled database at {path}: {source}")]
    Sled { path: String, source: sled::Error },
    #[error("reading the state machine from {path}: {message}")]
    Corrupt { path: String, message: String },
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read(AnyError::new(&e)).into()
}
fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write(AnyError::new(&e)).into()
}
fn logs_read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}
fn logs_write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}
fn vote_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_vote(AnyError::new(&e)).into()
}
fn sm_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}
fn snap_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, AnyError::new(&e)).into()
}

/// Opens (or creates) the store under `dir`.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), OpenError> {
    let path = dir.join("raft");
    let p = path.display().to_string();
    let db = sled::Config::new()
        .path(&path)
        .mode(sled::Mode::HighThroughput)
        .open()
        .map_err(|source| OpenError::Sled {
            path: p.clone(),
            source,
        })?;
    let tree = |name: &str| {
        db.open_tree(name).map_err(|source| OpenError::Sled {
            path: p.clone(),
            source,
        })
    };
    let log = LogStore {
        db: db.clone(),
        log: tree("log")?,
        raft: tree("raft")?,
    };
    let sm =
        StateMachineStore::load(db.clone(), tree("sm")?, tree("snapshot")?).map_err(|message| {
            OpenError::Corrupt {
                path: p.clone(),
                message,
            }
        })?;
    Ok((log, sm))
}

// ------------------------------------------------------------------ log

/// Raft log and vote.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    raft: sled::Tree,
}

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";

impl LogStore {
    fn get_json<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> StResult<Option<T>> {
        match self.raft.get(key).map_err(read_err)? {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    fn put_json<T: Serialize>(&self, key: &[u8], v: &T) -> StResult<()> {
        let bytes = serde_json::to_vec(v).map_err(write_err)?;
        self.raft.insert(key, bytes).map_err(write_err)?;
        Ok(())
    }

    async fn flush(&self) -> Result<(), sled::Error> {
        self.db.flush_async().await.map(|_| ())
    }
}

fn bound_start(b: Bound<&u64>) -> Option<u64> {
    match b {
        Bound::Included(x) => Some(*x),
        Bound::Excluded(x) => x.checked_add(1),
        Bound::Unbounded => Some(0),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StResult<Vec<Entry<TypeConfig>>> {
        let Some(start) = bound_start(range.start_bound()) else {
            return Ok(vec![]);
        };
        let iter = match range.end_bound() {
            Bound::Included(e) => self.log.range(start.to_be_bytes()..=e.to_be_bytes()),
            Bound::Excluded(e) => self.log.range(start.to_be_bytes()..e.to_be_bytes()),
            Bound::Unbounded => self.log.range(start.to_be_bytes()..),
        };
        let mut out = Vec::new();
        for kv in iter {
            let (_, v) = kv.map_err(logs_read_err)?;
            out.push(serde_json::from_slice(&v).map_err(logs_read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<NodeId>> = self.get_json(KEY_PURGED)?;
        let last = match self.log.last().map_err(logs_read_err)? {
            Some((_, v)) => {
                let e: Entry<TypeConfig> = serde_json::from_slice(&v).map_err(logs_read_err)?;
                Some(e.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StResult<()> {
        self.put_json(KEY_VOTE, vote)?;
        self.flush().await.map_err(vote_err)
    }

    async fn read_vote(&mut self) -> StResult<Option<Vote<NodeId>>> {
        self.get_json(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StResult<()> {
        // Advisory: losing it only means re-applying already committed logs.
        self.put_json(KEY_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> StResult<Option<LogId<NodeId>>> {
        Ok(self
            .get_json::<Option<LogId<NodeId>>>(KEY_COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for e in entries {
            let bytes = serde_json::to_vec(&e).map_err(logs_write_err)?;
            batch.insert(&e.log_id.index.to_be_bytes(), bytes);
        }
        self.log.apply_batch(batch).map_err(logs_write_err)?;
        // Acknowledge only once the entries are on disk.
        let res = self.flush().await.map_err(std::io::Error::other);
        callback.log_io_completed(res);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StResult<()> {
        let mut batch = sled::Batch::default();
        for kv in self.log.range(log_id.index.to_be_bytes()..) {
            let (k, _) = kv.map_err(logs_write_err)?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(logs_write_err)?;
        self.flush().await.map_err(logs_write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StResult<()> {
        self.put_json(KEY_PURGED, &log_id)?;
        let mut batch = sled::Batch::default();
        for kv in self.log.range(..=log_id.index.to_be_bytes()) {
            let (k, _) = kv.map_err(logs_write_err)?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(logs_write_err)?;
        self.flush().await.map_err(logs_write_err)
    }
}

// -------------------------------------------------------- state machine

/// What the state machine holds besides the domain state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Applied {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, BasicNode>,
    pub data: StateData,
}

/// Shared, read-mostly view of the state machine for the API.
pub struct SmShared {
    applied: RwLock<Applied>,
    snapshots_installed: AtomicU64,
    snapshot_index: AtomicU64,
}

impl SmShared {
    /// A read guard on the applied state. Never hold it across an await.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        // A poisoned lock means a panic mid-apply; the data is still the
        // last consistent state, so keep serving it.
        self.applied.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshots_installed(&self) -> u64 {
        self.snapshots_installed.load(Ordering::Relaxed)
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index.load(Ordering::Relaxed)
    }
}

/// The state machine and its snapshots.
#[derive(Clone)]
pub struct StateMachineStore {
    db: sled::Db,
    sm: sled::Tree,
    snap: sled::Tree,
    shared: Arc<SmShared>,
    snapshot_seq: Arc<AtomicU64>,
}

const SM_LAST_APPLIED: &[u8] = b"meta/last_applied";
const SM_MEMBERSHIP: &[u8] = b"meta/membership";
const SM_REVISION: &[u8] = b"meta/revision";
const SM_DATA_KEY: &[u8] = b"meta/data_key";
const SM_SIGNING_KEYS: &[u8] = b"meta/signing_keys";
const SM_CLUSTER_CA: &[u8] = b"meta/cluster_ca";
const SM_KEK_ID: &[u8] = b"meta/kek_id";
const SM_REVOKED_CERTS: &[u8] = b"meta/revoked_certs";
const SNAP_META: &[u8] = b"meta";
const SNAP_DATA: &[u8] = b"data";

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(v)
}

/// Writes the current value of `key` (or its removal) into `batch`.
fn write_key(batch: &mut sled::Batch, d: &StateData, key: &Key) -> Result<(), serde_json::Error> {
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
fn full_batch(a: &Applied) -> Result<sled::Batch, serde_json::Error> {
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
    for (k, v) in &a.data.instances {
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
    Ok(b)
}

impl StateMachineStore {
    fn load(db: sled::Db, sm: sled::Tree, snap: sled::Tree) -> Result<Self, String> {
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
            } else if let Some(id) = key.strip_prefix("tok/") {
                a.data
                    .tokens
                    .insert(id.to_string(), serde_json::from_slice(&v).map_err(bad)?);
            } else if k.as_ref() == SM_DATA_KEY {
                a.data.data_key = serde_json::from_slice(&v).map_err(bad)?;
            } else if let Some(scope) = key.strip_prefix("sec/") {
                a.data
                    .secrets
                    .insert(scope.to_string(), serde_json::from_slice(&v).map_err(bad)?);
            } else if k.as_ref() == SM_REVISION {
                a.data.revision = serde_json::from_slice(&v).map_err(bad)?;
            } else if let Some(name) = key.strip_prefix("ns/") {
                a.data
                    .namespaces
                    .insert(name.to_string(), serde_json::from_slice(&v).map_err(bad)?);
            } else if let Some(name) = key.strip_prefix("ct/") {
                a.data
                    .containers
                    .insert(name.to_string(), serde_json::from_slice(&v).map_err(bad)?);
            } else if let Some(id) = key.strip_prefix("in/") {
                a.data
                    .instances
                    .insert(id.to_string(), serde_json::from_slice(&v).map_err(bad)?);
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
        let store = StateMachineStore {
            db,
            sm,
            snap,
            shared: Arc::new(SmShared {
                applied: RwLock::new(Applied::default()),
                snapshots_installed: AtomicU64::new(0),
                snapshot_index: AtomicU64::new(0),
            }),
            snapshot_seq: Arc::new(AtomicU64::new(0)),
        };
        // The state machine is not flushed on apply; if a crash left it
        // behind the (flushed) snapshot, start from the snapshot.
        if let Some((meta, data)) = store.read_snapshot().map_err(|e| e.to_string())? {
            store
                .shared
                .snapshot_index
                .store(meta.last_log_id.map_or(0, |l| l.index), Ordering::Relaxed);
            if meta.last_log_id > a.last_applied {
                let data: StateData =
                    serde_json::from_slice(&data).map_err(|e| format!("snapshot: {e}"))?;
                a = Applied {
                    last_applied: meta.last_log_id,
                    membership: meta.last_membership,
                    data,
                };
            }
        }
        *store
            .shared
            .applied
            .write()
            .unwrap_or_else(|p| p.into_inner()) = a;
        Ok(store)
    }

    pub fn shared(&self) -> Arc<SmShared> {
        self.shared.clone()
    }

    fn read_snapshot(&self) -> StResult<Option<StoredSnapshotParts>> {
        let (Some(m), Some(d)) = (
            self.snap.get(SNAP_META).map_err(read_err)?,
            self.snap.get(SNAP_DATA).map_err(read_err)?,
        ) else {
            return Ok(None);
        };
        let stored: StoredSnapshot = serde_json::from_slice(&m).map_err(read_err)?;
        Ok(Some((stored.meta, d.to_vec())))
    }

    async fn save_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        data: &[u8],
    ) -> StResult<()> {
        let mut b = sled::Batch::default();
        b.insert(
            SNAP_META,
            json(&StoredSnapshot { meta: meta.clone() }).map_err(snap_err)?,
        );
        b.insert(SNAP_DATA, data);
        self.snap.apply_batch(b).map_err(snap_err)?;
        self.db.flush_async().await.map_err(snap_err)?;
        self.shared
            .snapshot_index
            .store(meta.last_log_id.map_or(0, |l| l.index), Ordering::Relaxed);
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StResult<Snapshot<TypeConfig>> {
        let (data, last_applied, membership) = {
            let a = self.shared.read();
            (
                json(&a.data).map_err(snap_err)?,
                a.last_applied,
                a.membership.clone(),
            )
        };
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, seq),
            None => format!("none-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        self.save_snapshot(&meta, &data).await?;
        tracing::info!(
            index = last_applied.map_or(0, |l| l.index),
            bytes = data.len(),
            "built snapshot"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> StResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        let a = self.shared.read();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let mut batch = sled::Batch::default();
        {
            let mut guard = self
                .shared
                .applied
                .write()
                .unwrap_or_else(|p| p.into_inner());
            let a = &mut *guard;
            for entry in entries {
                a.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => out.push(Response {
                        revision: a.data.revision,
                        rejection: None,
                    }),
                    EntryPayload::Membership(m) => {
                        a.membership = StoredMembership::new(Some(entry.log_id), m);
                        batch.insert(SM_MEMBERSHIP, json(&a.membership).map_err(sm_err)?);
                        out.push(Response {
                            revision: a.data.revision,
                            rejection: None,
                        });
                    }
                    EntryPayload::Normal(p) => {
                        let mut keys = Vec::new();
                        let resp = a.data.apply_tracked(&p, &mut keys);
                        for k in keys {
                            write_key(&mut batch, &a.data, &k).map_err(sm_err)?;
                        }
                        if resp.rejection.is_none() {
                            batch.insert(SM_REVISION, json(&a.data.revision).map_err(sm_err)?);
                        }
                        out.push(resp);
                    }
                }
            }
            batch.insert(SM_LAST_APPLIED, json(&a.last_applied).map_err(sm_err)?);
        }
        self.sm.apply_batch(batch).map_err(sm_err)?;
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StResult<()> {
        let bytes = snapshot.into_inner();
        let data: StateData = serde_json::from_slice(&bytes).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::new(&e),
            ))
        })?;
        let applied = Applied {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            data,
        };
        let mut batch = sled::Batch::default();
        for kv in self.sm.iter() {
            let (k, _) = kv.map_err(sm_err)?;
            batch.remove(k);
        }
        // Removals first, then inserts: later operations in a batch win.
        let fresh = full_batch(&applied).map_err(sm_err)?;
        self.sm.apply_batch(batch).map_err(sm_err)?;
        self.sm.apply_batch(fresh).map_err(sm_err)?;
        self.save_snapshot(meta, &bytes).await?;
        *self
            .shared
            .applied
            .write()
            .unwrap_or_else(|p| p.into_inner()) = applied;
        self.shared
            .snapshots_installed
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            index = meta.last_log_id.map_or(0, |l| l.index),
            bytes = bytes.len(),
            "installed snapshot from leader"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StResult<Option<Snapshot<TypeConfig>>> {
        Ok(self.read_snapshot()?.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
        async fn build(&self) -> StResult<(tempfile::TempDir, LogStore, StateMachineStore)> {
            let dir = tempfile::tempdir().map_err(write_err)?;
            let (log, sm) =
                open(dir.path()).map_err(|e| write_err(std::io::Error::other(e.to_string())))?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's own storage conformance suite.
    #[test]
    fn openraft_storage_suite() -> StResult<()> {
        Suite::test_all(Builder)
    }

    #[tokio::test]
    async fn state_survives_reopen_and_snapshot_restores() -> anyhow::Result<()> {
        use crate::state::{Command, Proposal};
        let dir = tempfile::tempdir()?;
        {
            let (_log, mut sm) = open(dir.path())?;
            let mk = |i: u64, name: &str| Entry::<TypeConfig> {
                log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), i),
                payload: EntryPayload::Normal(Proposal::new(
                    i,
                    Command::CreateNamespace {
                        name: name.into(),
                        env: Default::default(),
                    },
                )),
            };
            sm.apply([mk(1, "a"), mk(2, "b")]).await?;
            sm.apply([mk(3, "b")]).await?; // rejected: already exists
            sm.db.flush_async().await?;
        }
        let (_log, mut sm) = open(dir.path())?;
        let (applied, _) = sm.applied_state().await?;
        assert_eq!(applied.map(|l| l.index), Some(3));
        let digest = sm.shared.read().data.digest();
        assert_eq!(sm.shared.read().data.namespaces.len(), 2);
        let snap = sm.build_snapshot().await?;
        // A second store installs the snapshot and holds the same state.
        let dir2 = tempfile::tempdir()?;
        let (l2, mut sm2) = open(dir2.path())?;
        sm2.install_snapshot(&snap.meta, snap.snapshot).await?;
        assert_eq!(sm2.shared.read().data.digest(), digest);
        drop((l2, sm2));
        let (_l2, sm2) = open(dir2.path())?;
        assert_eq!(sm2.shared.read().data.digest(), digest);
        Ok(())
    }
}
