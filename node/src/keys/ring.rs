//! This node's keys: the master key (KEK) from `--master-key-file` and the
//! cluster data key it unwraps. Shared by whatever seals or opens secrets
//! (the API, the agent, rotation, joins) and by the peer pool, which sends a
//! credential derived from the master key.

use std::path::{Path, PathBuf};

use parking_lot::RwLock;

use crate::raft::PeerPool;
use crate::secrets::{Envelope, Key, SecretError};
use crate::state::StateData;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the cluster data key is not set up yet; retry in a moment")]
    NoDataKey,
    #[error("{0}; this node cannot seal or open secrets")]
    NoMasterKey(SecretError),
    #[error("master_key_file: {0} does not open the cluster data key (a different key than the cluster's, or the cluster rotated its keys and this node has not fetched the new one yet)")]
    WrongMasterKey(String),
    #[error("{0}")]
    Precondition(String),
    #[error(transparent)]
    Sealing(#[from] SecretError),
    #[error(transparent)]
    Token(#[from] crate::tokens::TokenError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

pub struct Keyring {
    master_key_file: PathBuf,
    kek: RwLock<Option<Key>>,
    /// The data key, with the wrapped form it was opened from.
    data_key: RwLock<Option<(Envelope, Key)>>,
    pool: PeerPool,
}

impl Keyring {
    /// Reads the master key file (creating it when `create`, at bootstrap).
    /// A node without one yet (a joining node) gets it later.
    pub fn open(master_key_file: &Path, create: bool, pool: PeerPool) -> Self {
        let ring = Keyring {
            master_key_file: master_key_file.to_path_buf(),
            kek: RwLock::new(None),
            data_key: RwLock::new(None),
            pool,
        };
        match Key::load_or_create(master_key_file, create) {
            Ok(k) => ring.set_kek(k),
            Err(e) => {
                tracing::warn!(error = %e, "no master key yet: this node cannot seal or open secrets until it has one")
            }
        }
        ring
    }

    pub fn master_key_file(&self) -> &Path {
        &self.master_key_file
    }

    /// The master key, read from the file on first use.
    pub fn kek(&self) -> Result<Key, SecretError> {
        if let Some(k) = self.kek.read().as_ref() {
            return Ok(k.clone());
        }
        let k = Key::load_or_create(&self.master_key_file, false)?;
        self.set_kek(k.clone());
        Ok(k)
    }

    /// Uses `k` as the master key from now on (after a rotation).
    pub fn set_kek(&self, k: Key) {
        self.pool.set_secret(k.peer_credential());
        *self.kek.write() = Some(k);
    }

    /// Whether a peer call carries this cluster's credential.
    pub fn peer_authorized(&self, presented: Option<&str>) -> bool {
        let Ok(k) = self.kek() else { return false };
        let want = k.peer_credential();
        presented.is_some_and(|p| crate::secrets::constant_time_eq(p.as_bytes(), want.as_bytes()))
    }

    /// The cluster data key the state holds, unwrapped with the master key.
    pub fn data_key(&self, state: &StateData) -> Result<Key, KeyError> {
        let wrapped = state.data_key.clone().ok_or(KeyError::NoDataKey)?;
        if let Some((w, k)) = self.data_key.read().as_ref() {
            if *w == wrapped {
                return Ok(k.clone());
            }
        }
        let kek = self.kek().map_err(KeyError::NoMasterKey)?;
        let dk = kek
            .unwrap_key(&wrapped)
            .map_err(|_| KeyError::WrongMasterKey(self.master_key_file.display().to_string()))?;
        *self.data_key.write() = Some((wrapped, dk.clone()));
        Ok(dk)
    }
}
