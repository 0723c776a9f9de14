//! [`Images`]: the handle every image operation goes through, with
//! resolution (tag → digest, pinned per generation), `ensure` (pull only
//! what is missing), listing and deletion.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use containerd_client::services::v1::{GetImageRequest, Image};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use parking_lot::Mutex;
use serde::Deserialize;
use tonic::Code;

use super::platform::{image_err, repository};
use crate::runtime::ctr::Ctr;
use crate::runtime::RuntimeError;

/// What an instance needs from its image.
#[derive(Debug, Clone, Default)]
pub struct ImageInfo {
    /// The containerd image name.
    pub name: String,
    /// Digest of the image's top-level manifest or index.
    pub digest: String,
    /// Chain id of the top layer: the parent snapshot of an instance.
    pub chain_id: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

/// Registry credentials for one host.
#[derive(Debug, Clone, Deserialize)]
pub struct RegistryCredentials {
    pub username: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
}

pub struct Images {
    pub(super) ctr: Ctr,
    pub(super) client: oci_client::Client,
    credentials: HashMap<String, RegistryCredentials>,
    pub(super) tmp: PathBuf,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Pinned images (`repo@digest`, immutable) found complete in
    /// containerd since the last image deletion: a cold start of a cached
    /// image asks containerd nothing about it.
    opened: Mutex<HashMap<String, ImageInfo>>,
    /// Registry pulls (manifest fetched and content written) since start.
    pub pulls: AtomicU64,
    pub(super) limits: Limits,
}

/// How far a pull has gone: whole layers written, and their bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PullProgress {
    pub layers_done: usize,
    pub layers: usize,
    pub bytes_done: u64,
    pub bytes: u64,
}

impl std::fmt::Display for PullProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mb = |b: u64| b as f64 / 1_000_000.0;
        write!(
            f,
            "{} of {} layers, {:.1} of {:.1} MB",
            self.layers_done,
            self.layers,
            mb(self.bytes_done),
            mb(self.bytes)
        )
    }
}

/// Where a pull tells its progress.
pub type ProgressTx = tokio::sync::watch::Sender<Option<PullProgress>>;

/// The largest image parts a node accepts (a registry, or a tarball, may
/// be hostile): refused with an error naming the setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub manifest_bytes: u64,
    pub config_bytes: u64,
    pub layer_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            manifest_bytes: 4 << 20,
            config_bytes: 4 << 20,
            layer_bytes: 4 << 30,
        }
    }
}

impl Limits {
    /// Refuses `size` bytes of `what` over `limit` (named by `setting`).
    pub fn check(
        reference: &str,
        what: &str,
        size: u64,
        limit: u64,
        setting: &str,
    ) -> Result<(), RuntimeError> {
        if size > limit {
            return Err(super::platform::image_err(
                reference,
                format!("{what} is {size} bytes, over {setting} ({limit})"),
            ));
        }
        Ok(())
    }
}

impl Images {
    pub fn new(
        ctr: Ctr,
        insecure: &[String],
        credentials: HashMap<String, RegistryCredentials>,
        tmp: PathBuf,
        limits: Limits,
    ) -> Self {
        // TLS to registries uses rustls with the ring provider; a provider
        // installed earlier by the process is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure.to_vec()),
            ..Default::default()
        };
        Images {
            ctr,
            client: oci_client::Client::new(config),
            credentials,
            tmp,
            locks: Mutex::new(HashMap::new()),
            opened: Mutex::new(HashMap::new()),
            pulls: AtomicU64::new(0),
            limits,
        }
    }

    pub(super) fn auth(&self, r: &Reference) -> RegistryAuth {
        match self.credentials.get(r.registry()) {
            Some(RegistryCredentials { token: Some(t), .. }) => RegistryAuth::Bearer(t.clone()),
            Some(RegistryCredentials {
                username: Some(u),
                password,
                ..
            }) => RegistryAuth::Basic(u.clone(), password.clone().unwrap_or_default()),
            _ => RegistryAuth::Anonymous,
        }
    }

    pub(super) fn parse(reference: &str) -> Result<Reference, RuntimeError> {
        reference
            .parse::<Reference>()
            .map_err(|e| image_err(reference, format!("not a valid image reference: {e}")))
    }

    /// Resolves a reference to `repository@digest`: an image present in
    /// containerd under that name (imported) resolves locally, anything
    /// else asks the registry.
    pub async fn resolve(&self, reference: &str) -> Result<String, RuntimeError> {
        if let Some(img) = self.get_image(reference).await? {
            // Keep the local name (tag included) so `ensure` finds the record.
            let digest = img.target.map(|t| t.digest).unwrap_or_default();
            return Ok(format!("{reference}@{digest}"));
        }
        let r = Self::parse(reference)?;
        if let Some(d) = r.digest() {
            return Ok(format!("{}@{d}", repository(&r)));
        }
        let digest = self
            .client
            .fetch_manifest_digest(&r, &self.auth(&r))
            .await
            .map_err(|e| image_err(reference, format!("resolving the tag: {e}")))?;
        Ok(format!("{}@{digest}", repository(&r)))
    }

    pub(super) async fn get_image(&self, name: &str) -> Result<Option<Image>, RuntimeError> {
        match self
            .ctr
            .images()
            .get(self.ctr.req(
                GetImageRequest {
                    name: name.to_string(),
                },
                None,
            ))
            .await
        {
            Ok(r) => Ok(r.into_inner().image),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(RuntimeError::containerd("get image", s)),
        }
    }

    /// Makes `reference` (usually `repo@digest`) available, pulling and
    /// unpacking only what is missing.
    /// One operation at a time on `key` (a reference, a snapshot).
    pub(super) fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    pub async fn ensure(&self, reference: &str) -> Result<ImageInfo, RuntimeError> {
        self.ensure_with(reference, None).await
    }

    /// [`Self::ensure`], telling `progress` how a pull goes (layers and
    /// bytes written; nothing when the image is already here).
    pub async fn ensure_with(
        &self,
        reference: &str,
        progress: Option<&ProgressTx>,
    ) -> Result<ImageInfo, RuntimeError> {
        if let Some(info) = self.opened.lock().get(reference) {
            return Ok(info.clone());
        }
        let lock = self.lock_for(reference);
        let _guard = lock.lock().await;
        // Present under this name, or (for a pinned imported image) under
        // the name without the digest and with the same target.
        let mut found = self.get_image(reference).await?;
        if found.is_none() {
            if let Some((base, digest)) = reference.split_once('@') {
                if let Some(img) = self.get_image(base).await? {
                    if img.target.as_ref().is_some_and(|t| t.digest == digest) {
                        found = Some(img);
                    }
                }
            }
        }
        let lease = self.lease().await?;
        let res = async {
            match found {
                Some(img) => {
                    let target = img
                        .target
                        .ok_or_else(|| image_err(reference, "image record has no target"))?;
                    self.open_stored(reference, &img.name, target, &lease).await
                }
                None => self.pull(reference, &lease, progress).await,
            }
        }
        .await;
        self.drop_lease(&lease).await;
        if let (Ok(info), true) = (&res, reference.contains('@')) {
            self.opened
                .lock()
                .insert(reference.to_string(), info.clone());
        }
        res
    }

    /// Forgets what [`Self::ensure`] found (an image or snapshot went away,
    /// or using one failed): the next cold start looks again.
    pub fn forget_opened(&self) {
        self.opened.lock().clear();
    }

    /// Images rouse created in this namespace.
    pub async fn list_managed(&self) -> Result<Vec<Image>, RuntimeError> {
        let req = containerd_client::services::v1::ListImagesRequest {
            filters: vec![format!(
                "labels.\"{}\"==true",
                crate::runtime::labels::MANAGED
            )],
        };
        let r = self
            .ctr
            .images()
            .list(self.ctr.req(req, None))
            .await
            .map_err(|s| RuntimeError::containerd("list images", s))?;
        Ok(r.into_inner().images)
    }

    /// Deletes an image record; containerd's GC then frees its content and
    /// snapshots once nothing else references them.
    pub async fn delete(&self, name: &str) -> Result<(), RuntimeError> {
        self.forget_opened();
        let req = containerd_client::services::v1::DeleteImageRequest {
            name: name.to_string(),
            sync: false,
            target: None,
        };
        match self.ctr.images().delete(self.ctr.req(req, None)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(RuntimeError::containerd("delete image", s)),
        }
    }
}
