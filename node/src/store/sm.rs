//! The state machine: applies committed entries to the in-memory state,
//! writes the changed keys through to sled, builds and installs snapshots.
//! [`SmShared`] is the read view every other part of the node uses.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use parking_lot::{RwLock, RwLockReadGuard};
use serde::{Deserialize, Serialize};

use super::applied::Applied;
use super::errors::{read_err, sm_err, snap_err, StResult};
use super::keys::{
    full_batch, json, write_key, SM_LAST_APPLIED, SM_MEMBERSHIP, SM_REVISION, SNAP_DATA, SNAP_META,
};
use crate::raft::TypeConfig;
use crate::state::{Key, NodeId, Response, StateData, COMMAND_VERSION};

type StoredSnapshotParts = (SnapshotMeta<NodeId, BasicNode>, Vec<u8>);

/// Shared, read-mostly view of the state machine for the API.
pub struct SmShared {
    applied: RwLock<Applied>,
    snapshots_installed: AtomicU64,
    snapshot_index: AtomicU64,
}

impl SmShared {
    /// A read guard on the applied state. Never hold it across an await.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.applied.read()
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
    pub(super) db: sled::Db,
    sm: sled::Tree,
    snap: sled::Tree,
    pub(super) shared: Arc<SmShared>,
    snapshot_seq: Arc<AtomicU64>,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
}

impl StateMachineStore {
    pub(super) fn load(db: sled::Db, sm: sled::Tree, snap: sled::Tree) -> Result<Self, String> {
        let mut a = super::keys::load(&sm)?;
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
                    placement_inputs: 0,
                };
            }
        }
        *store.shared.applied.write() = a;
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
        let started = std::time::Instant::now();
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
        let took = started.elapsed();
        crate::telemetry::METRICS
            .snapshot_builds
            .observe(took.as_secs_f64());
        tracing::info!(
            index = last_applied.map_or(0, |l| l.index),
            bytes = data.len(),
            took_ms = took.as_millis() as u64,
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
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        // An entry from a newer node is refused before anything is applied:
        // this node cannot know what it means, and guessing would diverge.
        if let Some(e) = entries.iter().find_map(|e| match &e.payload {
            EntryPayload::Normal(p) if !p.readable() => Some((e.log_id, p.v)),
            _ => None,
        }) {
            let (log_id, v) = e;
            tracing::error!(
                index = log_id.index,
                version = v,
                understood = COMMAND_VERSION,
                "log entry written by a newer rouse-node; upgrade this node"
            );
            return Err(StorageError::from(StorageIOError::apply(
                log_id,
                AnyError::error(format!(
                    "log entry {} has command version {v}; this node understands up to {COMMAND_VERSION}: upgrade this node",
                    log_id.index
                )),
            )));
        }
        let mut out = Vec::new();
        let mut batch = sled::Batch::default();
        {
            let mut guard = self.shared.applied.write();
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
                        if keys.iter().any(|k| {
                            matches!(k, Key::Container(_) | Key::Node(_) | Key::Instance(_))
                        }) {
                            a.placement_inputs += 1;
                        }
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
        let started = std::time::Instant::now();
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
            placement_inputs: 0,
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
        {
            // A new state: whatever placement saw before is out of date.
            let mut a = self.shared.applied.write();
            let inputs = a.placement_inputs + 1;
            *a = applied;
            a.placement_inputs = inputs;
        }
        self.shared
            .snapshots_installed
            .fetch_add(1, Ordering::Relaxed);
        let took = started.elapsed();
        crate::telemetry::METRICS
            .snapshot_installs
            .observe(took.as_secs_f64());
        tracing::info!(
            index = meta.last_log_id.map_or(0, |l| l.index),
            bytes = bytes.len(),
            took_ms = took.as_millis() as u64,
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
