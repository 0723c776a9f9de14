//! The Raft log and vote on sled, flushed before openraft hears they are
//! written.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, Vote};
use serde::{Deserialize, Serialize};

use super::errors::{logs_read_err, logs_write_err, read_err, vote_err, write_err, StResult};
use crate::raft::TypeConfig;
use crate::state::NodeId;

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
    pub(super) fn new(db: sled::Db, log: sled::Tree, raft: sled::Tree) -> Self {
        LogStore { db, log, raft }
    }

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

    /// The id of the last entry in the log (or the last purged one), read
    /// from disk: what a pre-vote compares with a candidate's.
    pub fn last_log_id(&self) -> StResult<Option<LogId<NodeId>>> {
        match self.log.last().map_err(logs_read_err)? {
            Some((_, v)) => {
                let e: Entry<TypeConfig> = serde_json::from_slice(&v).map_err(logs_read_err)?;
                Ok(Some(e.log_id))
            }
            None => self.get_json(KEY_PURGED),
        }
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
        Ok(LogState {
            last_purged_log_id: self.get_json(KEY_PURGED)?,
            last_log_id: self.last_log_id()?,
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
        if let Some(c) = committed {
            crate::telemetry::METRICS.set_committed(c.index);
        }
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
