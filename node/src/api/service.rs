//! [`Api`]: what every public service handler has at hand.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use crate::cluster::Cluster;
use crate::join::Identity;
use crate::keys::Keyring;
use crate::runtime::image::Images;

/// The API's own settings.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Highest max-scale a container may ask for.
    pub scale_cap: u32,
    /// Where instance logs and import uploads live.
    pub data_dir: PathBuf,
    /// Peer traffic is plain (no key rotation, no join tokens).
    pub insecure: bool,
}

#[derive(Clone)]
pub struct Api {
    pub(super) config: ApiConfig,
    pub(super) cluster: Arc<Cluster>,
    pub(super) keys: Arc<Keyring>,
    pub(super) identity: Arc<Identity>,
    /// This node's image store, once containerd is reachable.
    pub(super) images: Arc<OnceLock<Arc<Images>>>,
    /// API keys seen used here, until reported.
    pub(super) key_uses: Arc<crate::auth::KeyUses>,
}

impl Api {
    pub fn new(
        config: ApiConfig,
        cluster: Arc<Cluster>,
        keys: Arc<Keyring>,
        identity: Arc<Identity>,
        images: Arc<OnceLock<Arc<Images>>>,
        key_uses: Arc<crate::auth::KeyUses>,
    ) -> Self {
        Api {
            config,
            cluster,
            keys,
            identity,
            images,
            key_uses,
        }
    }
}
