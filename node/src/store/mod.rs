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
//!
//! - [`log`]: the Raft log and vote ([`LogStore`]).
//! - [`sm`]: the state machine ([`StateMachineStore`]), its snapshots and
//!   the shared read view ([`SmShared`]).
//! - `keys`: how the state maps onto sled keys (write-through and reload).

mod applied;
mod errors;
mod keys;
pub mod log;
pub mod sm;

use std::path::Path;

pub use applied::Applied;
pub use log::LogStore;
pub use sm::{SmShared, StateMachineStore};

/// Errors opening the store.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("opening sled database at {path}: {source}")]
    Sled { path: String, source: sled::Error },
    #[error("reading the state machine from {path}: {message}")]
    Corrupt { path: String, message: String },
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
    let log = LogStore::new(db.clone(), tree("log")?, tree("raft")?);
    let sm =
        StateMachineStore::load(db.clone(), tree("sm")?, tree("snapshot")?).map_err(|message| {
            OpenError::Corrupt {
                path: p.clone(),
                message,
            }
        })?;
    Ok((log, sm))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::TypeConfig;
    use crate::store::errors::{write_err, StResult};
    use openraft::storage::RaftStateMachine;
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{Entry, EntryPayload, LogId, RaftSnapshotBuilder};

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

    /// An entry written by a newer node is refused with a clear error, and
    /// nothing of its batch is applied.
    #[tokio::test]
    async fn entries_from_a_newer_version_are_refused() -> anyhow::Result<()> {
        use crate::state::{Command, Proposal, COMMAND_VERSION};
        let dir = tempfile::tempdir()?;
        let (_log, mut sm) = open(dir.path())?;
        let entry = |i: u64, v: u32| Entry::<TypeConfig> {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), i),
            payload: EntryPayload::Normal(Proposal {
                v,
                ..Proposal::new(
                    i,
                    Command::CreateNamespace {
                        name: format!("n{i}"),
                        env: Default::default(),
                    },
                )
            }),
        };
        let e = sm
            .apply([entry(1, COMMAND_VERSION), entry(2, COMMAND_VERSION + 1)])
            .await
            .expect_err("a newer entry must be refused");
        assert!(e.to_string().contains("upgrade this node"), "{e}");
        assert!(sm.shared.read().data.namespaces.is_empty());
        assert_eq!(sm.applied_state().await?.0, None);
        Ok(())
    }
}
