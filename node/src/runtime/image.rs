//! Images: pulled from OCI registries by rouse itself, written to
//! containerd's content store under a lease, recorded as containerd images
//! and unpacked into snapshots keyed by chain id (prepare → diff apply →
//! commit). An image already present is not pulled again.
//!
//! ```text
//!  resolve(tag) ──HEAD manifest──▶ repo@sha256:…   (pinned once per generation)
//!  ensure(ref)  ──image record? ──yes──▶ read manifest+config from content
//!                     │no
//!                     ▼
//!        lease ─▶ manifest (index → linux/amd64) ─▶ config ─▶ layers (verified)
//!              ─▶ content store (gc labels) ─▶ image record ─▶ unpack ─▶ drop lease
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::ApplyRequest;
use containerd_client::services::v1::{
    CreateImageRequest, CreateRequest as LeaseCreateRequest, DeleteRequest as LeaseDeleteRequest,
    GetImageRequest, Image, InfoRequest, ReadContentRequest, UpdateImageRequest, WriteAction,
    WriteContentRequest,
};
use containerd_client::types::Descriptor;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio_stream::StreamExt;
use tonic::Code;

use super::ctr::{Ctr, SNAPSHOTTER};
use super::RuntimeError;

const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const ACCEPTED: &[&str] = &[
    MEDIA_OCI_INDEX,
    MEDIA_DOCKER_LIST,
    MEDIA_OCI_MANIFEST,
    MEDIA_DOCKER_MANIFEST,
];
const CHUNK: usize = 1024 * 1024;

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
    ctr: Ctr,
    client: oci_client::Client,
    credentials: HashMap<String, RegistryCredentials>,
    tmp: PathBuf,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Registry pulls (manifest fetched and content written) since start.
    pub pulls: AtomicU64,
}

fn image_err(reference: &str, message: impl ToString) -> RuntimeError {
    RuntimeError::Image {
        reference: reference.to_string(),
        message: message.to_string(),
    }
}

fn sha256_hex(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// Chain ids of a layer stack from its diff ids (OCI image spec).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256_hex(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[derive(Deserialize)]
struct MediaTypeOnly {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

fn is_index(raw: &[u8]) -> bool {
    match serde_json::from_slice::<MediaTypeOnly>(raw) {
        Ok(m) => match m.media_type.as_deref() {
            Some(MEDIA_OCI_INDEX) | Some(MEDIA_DOCKER_LIST) => true,
            Some(_) => false,
            None => m.manifests.is_some(),
        },
        Err(_) => false,
    }
}

impl Images {
    pub fn new(
        ctr: Ctr,
        insecure: &[String],
        credentials: HashMap<String, RegistryCredentials>,
        tmp: PathBuf,
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
            pulls: AtomicU64::new(0),
        }
    }

    fn auth(&self, r: &Reference) -> RegistryAuth {
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

    fn parse(reference: &str) -> Result<Reference, RuntimeError> {
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
            return Ok(format!("{}@{d}", strip_tag_digest(reference)));
        }
        let digest = self
            .client
            .fetch_manifest_digest(&r, &self.auth(&r))
            .await
            .map_err(|e| image_err(reference, format!("resolving the tag: {e}")))?;
        Ok(format!("{}@{digest}", strip_tag_digest(reference)))
    }

    async fn get_image(&self, name: &str) -> Result<Option<Image>, RuntimeError> {
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
    pub async fn ensure(&self, reference: &str) -> Result<ImageInfo, RuntimeError> {
        let lock = {
            let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(reference.to_string()).or_default().clone()
        };
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
                None => self.pull(reference, &lease).await,
            }
        }
        .await;
        self.drop_lease(&lease).await;
        res
    }

    async fn lease(&self) -> Result<String, RuntimeError> {
        let id = format!("rouse-{}", rand::random::<u64>());
        let mut labels = HashMap::new();
        // Should rouse die mid-pull, containerd drops the lease itself.
        let expire = chrono_like_expiry(3600);
        labels.insert("containerd.io/gc.expire".to_string(), expire);
        let req = LeaseCreateRequest {
            id: id.clone(),
            labels,
        };
        self.ctr
            .leases()
            .create(self.ctr.req(req, None))
            .await
            .map_err(|s| RuntimeError::containerd("create lease", s))?;
        Ok(id)
    }

    async fn drop_lease(&self, id: &str) {
        let req = LeaseDeleteRequest {
            id: id.to_string(),
            sync: false,
        };
        if let Err(s) = self.ctr.leases().delete(self.ctr.req(req, None)).await {
            tracing::warn!(lease = id, error = %s, "dropping lease");
        }
    }

    async fn content_exists(&self, digest: &str) -> Result<bool, RuntimeError> {
        match self
            .ctr
            .content()
            .info(self.ctr.req(
                InfoRequest {
                    digest: digest.to_string(),
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(RuntimeError::containerd("content info", s)),
        }
    }

    async fn read_content(&self, digest: &str) -> Result<Vec<u8>, RuntimeError> {
        let req = ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        };
        let mut stream = self
            .ctr
            .content()
            .read(self.ctr.req(req, None))
            .await
            .map_err(|s| RuntimeError::containerd("read content", s))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(
                &chunk
                    .map_err(|s| RuntimeError::containerd("read content", s))?
                    .data,
            );
        }
        if sha256_hex(&out) != digest {
            return Err(RuntimeError::Image {
                reference: digest.into(),
                message: "content store returned corrupt data".into(),
            });
        }
        Ok(out)
    }

    /// Writes a blob to the content store, verifying its digest; a blob that
    /// is already there is left alone.
    pub async fn write_content(
        &self,
        lease: &str,
        digest: &str,
        source: BlobSource<'_>,
        labels: HashMap<String, String>,
    ) -> Result<(), RuntimeError> {
        if self.content_exists(digest).await? {
            return Ok(());
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
        let refname = format!(
            "rouse-{}-{}",
            digest.replace(':', "-"),
            rand::random::<u32>()
        );
        let send = |r: WriteContentRequest| {
            let tx = tx.clone();
            async move {
                tx.send(r)
                    .await
                    .map_err(|_| image_err(digest, "content writer closed"))
            }
        };
        // containerd answers (and sends headers) only after the first
        // message, so queue it before opening the stream.
        send(WriteContentRequest {
            action: WriteAction::Stat.into(),
            r#ref: refname.clone(),
            ..Default::default()
        })
        .await?;
        let mut responses = self
            .ctr
            .content()
            .write(
                self.ctr
                    .req(tokio_stream::wrappers::ReceiverStream::new(rx), Some(lease)),
            )
            .await
            .map_err(|s| RuntimeError::containerd("write content", s))?
            .into_inner();
        next_msg(&mut responses, digest).await?;
        let mut hasher = Sha256::new();
        let mut offset: i64 = 0;
        let mut emit = |data: Vec<u8>| {
            hasher.update(&data);
            let req = WriteContentRequest {
                action: WriteAction::Write.into(),
                offset,
                data,
                ..Default::default()
            };
            offset += i64::try_from(req.data.len()).unwrap_or(i64::MAX);
            req
        };
        match source {
            BlobSource::Bytes(b) => {
                for c in b.chunks(CHUNK) {
                    send(emit(c.to_vec())).await?;
                    next_msg(&mut responses, digest).await?;
                }
            }
            BlobSource::File(p) => {
                let mut f = tokio::fs::File::open(p).await?;
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let n = f.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    send(emit(buf[..n].to_vec())).await?;
                    next_msg(&mut responses, digest).await?;
                }
            }
        }
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        if got != digest {
            return Err(image_err(
                digest,
                format!("digest mismatch: content hashes to {got}"),
            ));
        }
        let commit = WriteContentRequest {
            action: WriteAction::Commit.into(),
            offset,
            total: offset,
            expected: digest.to_string(),
            labels,
            ..Default::default()
        };
        send(commit).await?;
        match next_msg(&mut responses, digest).await {
            Ok(_) => Ok(()),
            Err(RuntimeError::Containerd {
                code: Code::AlreadyExists,
                ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn pull(&self, reference: &str, lease: &str) -> Result<ImageInfo, RuntimeError> {
        let r = Self::parse(reference)?;
        let auth = self.auth(&r);
        tracing::info!(image = reference, "pulling");
        self.pulls.fetch_add(1, Ordering::Relaxed);
        let (raw, top_digest) = self
            .client
            .pull_manifest_raw(&r, &auth, ACCEPTED)
            .await
            .map_err(|e| image_err(reference, format!("fetching the manifest: {e}")))?;
        let raw = raw.to_vec();
        if sha256_hex(&raw) != top_digest {
            return Err(image_err(reference, "manifest does not match its digest"));
        }
        let top_media;
        let (manifest_raw, manifest_digest) = if is_index(&raw) {
            let index: ImageIndex = serde_json::from_slice(&raw)
                .map_err(|e| image_err(reference, format!("index: {e}")))?;
            top_media = index
                .media_type()
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_else(|| MEDIA_OCI_INDEX.to_string());
            let pick = index
                .manifests()
                .iter()
                .find(|m| {
                    m.platform().as_ref().is_none_or(|p| {
                        p.os().to_string() == "linux" && p.architecture().to_string() == "amd64"
                    })
                })
                .ok_or_else(|| image_err(reference, "no linux/amd64 manifest in the index"))?;
            let digest = pick.digest().to_string();
            let by_digest = Reference::with_digest(
                r.registry().to_string(),
                r.repository().to_string(),
                digest.clone(),
            );
            let (m, d) = self
                .client
                .pull_manifest_raw(&by_digest, &auth, ACCEPTED)
                .await
                .map_err(|e| {
                    image_err(reference, format!("fetching the platform manifest: {e}"))
                })?;
            if d != digest || sha256_hex(&m) != digest {
                return Err(image_err(
                    reference,
                    "platform manifest does not match its digest",
                ));
            }
            let labels = HashMap::from([(
                "containerd.io/gc.ref.content.m.0".to_string(),
                digest.clone(),
            )]);
            self.write_content(lease, &top_digest, BlobSource::Bytes(&raw), labels)
                .await?;
            (m.to_vec(), digest)
        } else {
            top_media = serde_json::from_slice::<MediaTypeOnly>(&raw)
                .ok()
                .and_then(|m| m.media_type)
                .unwrap_or_else(|| MEDIA_OCI_MANIFEST.to_string());
            (raw.clone(), top_digest.clone())
        };
        let manifest: ImageManifest = serde_json::from_slice(&manifest_raw)
            .map_err(|e| image_err(reference, format!("manifest: {e}")))?;
        let config_digest = manifest.config().digest().to_string();
        let mut config_raw = Vec::new();
        self.client
            .pull_blob(&r, config_digest.as_str(), &mut config_raw)
            .await
            .map_err(|e| image_err(reference, format!("fetching the config: {e}")))?;
        let config: ImageConfiguration = serde_json::from_slice(&config_raw)
            .map_err(|e| image_err(reference, format!("config: {e}")))?;
        let diff_ids: Vec<String> = config.rootfs().diff_ids().to_vec();
        if diff_ids.len() != manifest.layers().len() {
            return Err(image_err(
                reference,
                "config and manifest disagree on the number of layers",
            ));
        }
        let chains = chain_ids(&diff_ids);
        let top_chain = chains.last().cloned().unwrap_or_default();
        let labels = HashMap::from([(
            format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
            top_chain.clone(),
        )]);
        self.write_content(
            lease,
            &config_digest,
            BlobSource::Bytes(&config_raw),
            labels,
        )
        .await?;
        for (layer, diff_id) in manifest.layers().iter().zip(&diff_ids) {
            let digest = layer.digest().to_string();
            if self.content_exists(&digest).await? {
                continue;
            }
            std::fs::create_dir_all(&self.tmp)?;
            let path = self.tmp.join(format!(
                "blob-{}-{}",
                digest.replace(':', "-"),
                rand::random::<u32>()
            ));
            let res = async {
                let file = tokio::fs::File::create(&path).await?;
                self.client
                    .pull_blob(&r, digest.as_str(), file)
                    .await
                    .map_err(|e| image_err(reference, format!("fetching layer {digest}: {e}")))?;
                let labels =
                    HashMap::from([("containerd.io/uncompressed".to_string(), diff_id.clone())]);
                self.write_content(lease, &digest, BlobSource::File(&path), labels)
                    .await
            }
            .await;
            let _ = std::fs::remove_file(&path);
            res?;
        }
        let labels = manifest_gc_labels(&manifest, &config_digest);
        self.write_content(
            lease,
            &manifest_digest,
            BlobSource::Bytes(&manifest_raw),
            labels,
        )
        .await?;
        let size = i64::try_from(raw.len()).unwrap_or(i64::MAX);
        let target = Descriptor {
            media_type: top_media,
            digest: top_digest.clone(),
            size,
            annotations: HashMap::new(),
        };
        self.put_image(reference, target).await?;
        self.unpack(reference, &manifest, &diff_ids, lease).await?;
        Ok(info_from(reference, &top_digest, &top_chain, &config))
    }

    async fn put_image(&self, name: &str, target: Descriptor) -> Result<(), RuntimeError> {
        let labels = HashMap::from([(super::labels::MANAGED.to_string(), "true".to_string())]);
        let image = Image {
            name: name.to_string(),
            labels,
            target: Some(target),
            created_at: None,
            updated_at: None,
        };
        let req = CreateImageRequest {
            image: Some(image.clone()),
            source_date_epoch: None,
        };
        match self.ctr.images().create(self.ctr.req(req, None)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                let req = UpdateImageRequest {
                    image: Some(image),
                    update_mask: None,
                    source_date_epoch: None,
                };
                self.ctr
                    .images()
                    .update(self.ctr.req(req, None))
                    .await
                    .map_err(|s| RuntimeError::containerd("update image", s))?;
                Ok(())
            }
            Err(s) => Err(RuntimeError::containerd("create image", s)),
        }
    }

    /// Reads an image already in the content store, unpacking what is missing.
    async fn open_stored(
        &self,
        reference: &str,
        name: &str,
        target: Descriptor,
        lease: &str,
    ) -> Result<ImageInfo, RuntimeError> {
        let raw = self.read_content(&target.digest).await?;
        let manifest_raw = if is_index(&raw) {
            let index: ImageIndex = serde_json::from_slice(&raw)
                .map_err(|e| image_err(reference, format!("index: {e}")))?;
            let pick = index
                .manifests()
                .iter()
                .find(|m| {
                    m.platform().as_ref().is_none_or(|p| {
                        p.os().to_string() == "linux" && p.architecture().to_string() == "amd64"
                    })
                })
                .ok_or_else(|| image_err(reference, "no linux/amd64 manifest in the index"))?;
            self.read_content(pick.digest().as_ref()).await?
        } else {
            raw
        };
        let manifest: ImageManifest = serde_json::from_slice(&manifest_raw)
            .map_err(|e| image_err(reference, format!("manifest: {e}")))?;
        let config_raw = self
            .read_content(manifest.config().digest().as_ref())
            .await?;
        let config: ImageConfiguration = serde_json::from_slice(&config_raw)
            .map_err(|e| image_err(reference, format!("config: {e}")))?;
        let diff_ids: Vec<String> = config.rootfs().diff_ids().to_vec();
        let chains = chain_ids(&diff_ids);
        let top = chains.last().cloned().unwrap_or_default();
        if !self.snapshot_exists(&top).await? {
            self.unpack(reference, &manifest, &diff_ids, lease).await?;
        }
        Ok(info_from(name, &target.digest, &top, &config))
    }

    async fn snapshot_exists(&self, key: &str) -> Result<bool, RuntimeError> {
        let req = StatSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.to_string(),
        };
        match self.ctr.snapshots().stat(self.ctr.req(req, None)).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(RuntimeError::containerd("stat snapshot", s)),
        }
    }

    /// Applies each layer onto its parent snapshot, committing each under
    /// its chain id; layers already unpacked are skipped.
    async fn unpack(
        &self,
        reference: &str,
        manifest: &ImageManifest,
        diff_ids: &[String],
        lease: &str,
    ) -> Result<(), RuntimeError> {
        let chains = chain_ids(diff_ids);
        let mut parent = String::new();
        for ((layer, chain), diff_id) in manifest.layers().iter().zip(&chains).zip(diff_ids) {
            if self.snapshot_exists(chain).await? {
                parent = chain.clone();
                continue;
            }
            let key = format!("rouse-extract-{}-{chain}", rand::random::<u32>());
            let req = PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.clone(),
                parent: parent.clone(),
                labels: HashMap::new(),
            };
            let mounts = self
                .ctr
                .snapshots()
                .prepare(self.ctr.req(req, Some(lease)))
                .await
                .map_err(|s| RuntimeError::containerd("prepare snapshot", s))?
                .into_inner()
                .mounts;
            let desc = Descriptor {
                media_type: layer.media_type().to_string(),
                digest: layer.digest().to_string(),
                size: i64::try_from(layer.size()).unwrap_or(i64::MAX),
                annotations: HashMap::new(),
            };
            let applied = self
                .ctr
                .diff()
                .apply(self.ctr.req(
                    ApplyRequest {
                        diff: Some(desc),
                        mounts,
                        payloads: HashMap::new(),
                        sync_fs: false,
                    },
                    Some(lease),
                ))
                .await;
            let fail = |e: RuntimeError| async {
                let req = RemoveSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.clone(),
                };
                let _ = self
                    .ctr
                    .snapshots()
                    .remove(self.ctr.req(req, Some(lease)))
                    .await;
                Err(e)
            };
            let applied = match applied {
                Ok(r) => r.into_inner().applied,
                Err(s) => return fail(RuntimeError::containerd("apply layer", s)).await,
            };
            if applied.as_ref().map(|d| d.digest.as_str()) != Some(diff_id.as_str()) {
                return fail(image_err(
                    reference,
                    format!("layer {} unpacked to an unexpected diff id", layer.digest()),
                ))
                .await;
            }
            let labels = HashMap::from([("containerd.io/snapshot.ref".to_string(), chain.clone())]);
            let req = CommitSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                name: chain.clone(),
                key: key.clone(),
                labels,
            };
            match self
                .ctr
                .snapshots()
                .commit(self.ctr.req(req, Some(lease)))
                .await
            {
                Ok(_) => {}
                Err(s) if s.code() == Code::AlreadyExists => {
                    let req = RemoveSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: key.clone(),
                    };
                    let _ = self
                        .ctr
                        .snapshots()
                        .remove(self.ctr.req(req, Some(lease)))
                        .await;
                }
                Err(s) => return fail(RuntimeError::containerd("commit snapshot", s)).await,
            }
            parent = chain.clone();
        }
        Ok(())
    }

    /// Imports an OCI-layout tarball (`index.json` + `blobs/`), naming each
    /// image after its `org.opencontainers.image.ref.name` annotation.
    /// Returns the names imported.
    pub async fn import(
        &self,
        tarball: &Path,
        default_name: Option<&str>,
    ) -> Result<Vec<String>, RuntimeError> {
        let dir = self.tmp.join(format!("import-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir)?;
        let res = self.import_in(tarball, &dir, default_name).await;
        let _ = std::fs::remove_dir_all(&dir);
        res
    }

    async fn import_in(
        &self,
        tarball: &Path,
        dir: &Path,
        default_name: Option<&str>,
    ) -> Result<Vec<String>, RuntimeError> {
        let (t, d) = (tarball.to_path_buf(), dir.to_path_buf());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let f = std::fs::File::open(&t)?;
            tar::Archive::new(f).unpack(&d)
        })
        .await
        .map_err(|e| image_err("import", e))??;
        let index_raw = std::fs::read(dir.join("index.json"))
            .map_err(|e| image_err("import", format!("index.json: {e}")))?;
        let index: ImageIndex = serde_json::from_slice(&index_raw)
            .map_err(|e| image_err("import", format!("index.json: {e}")))?;
        let blob = |digest: &str| dir.join("blobs").join(digest.replace(':', "/"));
        let lease = self.lease().await?;
        let mut names = Vec::new();
        let res = async {
            for (i, m) in index.manifests().iter().enumerate() {
                let name = m
                    .annotations()
                    .as_ref()
                    .and_then(|a| {
                        a.get("io.containerd.image.name")
                            .or_else(|| a.get("org.opencontainers.image.ref.name"))
                    })
                    .cloned()
                    .or_else(|| default_name.map(str::to_string))
                    .ok_or_else(|| {
                        image_err(
                            "import",
                            format!("manifest {i} has no name annotation; give --name"),
                        )
                    })?;
                let digest = m.digest().to_string();
                let raw = std::fs::read(blob(&digest))?;
                let (manifest_raw, manifest_digest) = if is_index(&raw) {
                    let idx: ImageIndex =
                        serde_json::from_slice(&raw).map_err(|e| image_err(&name, e))?;
                    let pick = idx
                        .manifests()
                        .first()
                        .ok_or_else(|| image_err(&name, "empty index"))?
                        .digest()
                        .to_string();
                    self.write_content(
                        &lease,
                        &digest,
                        BlobSource::Bytes(&raw),
                        HashMap::from([(
                            "containerd.io/gc.ref.content.m.0".to_string(),
                            pick.clone(),
                        )]),
                    )
                    .await?;
                    (std::fs::read(blob(&pick))?, pick)
                } else {
                    (raw.clone(), digest.clone())
                };
                let manifest: ImageManifest =
                    serde_json::from_slice(&manifest_raw).map_err(|e| image_err(&name, e))?;
                let config_digest = manifest.config().digest().to_string();
                let config_raw = std::fs::read(blob(&config_digest))?;
                let config: ImageConfiguration =
                    serde_json::from_slice(&config_raw).map_err(|e| image_err(&name, e))?;
                let diff_ids: Vec<String> = config.rootfs().diff_ids().to_vec();
                let top = chain_ids(&diff_ids).last().cloned().unwrap_or_default();
                self.write_content(
                    &lease,
                    &config_digest,
                    BlobSource::Bytes(&config_raw),
                    HashMap::from([(format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"), top)]),
                )
                .await?;
                for (layer, diff_id) in manifest.layers().iter().zip(&diff_ids) {
                    let d = layer.digest().to_string();
                    self.write_content(
                        &lease,
                        &d,
                        BlobSource::File(&blob(&d)),
                        HashMap::from([(
                            "containerd.io/uncompressed".to_string(),
                            diff_id.clone(),
                        )]),
                    )
                    .await?;
                }
                let labels = manifest_gc_labels(&manifest, &config_digest);
                self.write_content(
                    &lease,
                    &manifest_digest,
                    BlobSource::Bytes(&manifest_raw),
                    labels,
                )
                .await?;
                let target = Descriptor {
                    media_type: m.media_type().to_string(),
                    digest: digest.clone(),
                    size: i64::try_from(raw.len()).unwrap_or(i64::MAX),
                    annotations: HashMap::new(),
                };
                self.put_image(&name, target).await?;
                self.unpack(&name, &manifest, &diff_ids, &lease).await?;
                tracing::info!(image = %name, %digest, "imported");
                names.push(name);
            }
            Ok(names)
        }
        .await;
        self.drop_lease(&lease).await;
        res
    }

    /// Images rouse created in this namespace.
    pub async fn list_managed(&self) -> Result<Vec<Image>, RuntimeError> {
        let req = containerd_client::services::v1::ListImagesRequest {
            filters: vec![format!("labels.\"{}\"==true", super::labels::MANAGED)],
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

async fn next_msg(
    responses: &mut tonic::Streaming<containerd_client::services::v1::WriteContentResponse>,
    digest: &str,
) -> Result<containerd_client::services::v1::WriteContentResponse, RuntimeError> {
    match responses.message().await {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(image_err(digest, "content writer ended early")),
        Err(s) => Err(RuntimeError::containerd("write content", s)),
    }
}

/// GC labels on a manifest: it keeps its config and layers alive.
fn manifest_gc_labels(manifest: &ImageManifest, config_digest: &str) -> HashMap<String, String> {
    let mut labels = HashMap::from([(
        "containerd.io/gc.ref.content.config".to_string(),
        config_digest.to_string(),
    )]);
    for (i, l) in manifest.layers().iter().enumerate() {
        labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            l.digest().to_string(),
        );
    }
    labels
}

/// Where a blob's bytes come from.
pub enum BlobSource<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

fn info_from(name: &str, digest: &str, chain_id: &str, config: &ImageConfiguration) -> ImageInfo {
    let c = config.config().clone().unwrap_or_default();
    ImageInfo {
        name: name.to_string(),
        digest: digest.to_string(),
        chain_id: chain_id.to_string(),
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        env: c.env().clone().unwrap_or_default(),
        working_dir: c.working_dir().clone().unwrap_or_default(),
        user: c.user().clone().unwrap_or_default(),
    }
}

/// `registry/repo:tag@digest` → `registry/repo`.
pub fn strip_tag_digest(reference: &str) -> String {
    let no_digest = reference.split('@').next().unwrap_or(reference);
    match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => no_digest[..i].to_string(),
        _ => no_digest.to_string(),
    }
}

/// RFC 3339 time `secs` from now, for containerd's gc.expire label.
fn chrono_like_expiry(secs: u64) -> String {
    let t = std::time::SystemTime::now() + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let d = vec!["sha256:a".to_string(), "sha256:b".to_string()];
        let c = chain_ids(&d);
        assert_eq!(c[0], "sha256:a");
        assert_eq!(c[1], sha256_hex(b"sha256:a sha256:b"));
    }

    #[test]
    fn strips_tag_and_digest() {
        assert_eq!(
            strip_tag_digest("127.0.0.1:5000/a/b:1"),
            "127.0.0.1:5000/a/b"
        );
        assert_eq!(
            strip_tag_digest("127.0.0.1:5000/a/b@sha256:x"),
            "127.0.0.1:5000/a/b"
        );
        assert_eq!(strip_tag_digest("127.0.0.1:5000/a/b"), "127.0.0.1:5000/a/b");
        assert_eq!(strip_tag_digest("hello:1"), "hello");
    }
}
