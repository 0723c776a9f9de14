//! Pulling from a registry: manifest (an index picks this machine's
//! platform), config and layers, each verified against its digest and
//! written to the content store; and reading an image already stored.

use containerd_client::types::Descriptor;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

use oci_client::Reference;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use serde::Deserialize;

use super::content::{manifest_gc_labels, BlobSource};
use super::images::{ImageInfo, Images};
use super::platform::{image_err, platform_matches, sha256_hex, PLATFORM};
use super::unpack::chain_ids;
use crate::runtime::ctr::SNAPSHOTTER;
use crate::runtime::RuntimeError;

pub(super) const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(super) const MEDIA_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub(super) const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(super) const MEDIA_DOCKER_MANIFEST: &str =
    "application/vnd.docker.distribution.manifest.v2+json";
pub(super) const ACCEPTED: &[&str] = &[
    MEDIA_OCI_INDEX,
    MEDIA_DOCKER_LIST,
    MEDIA_OCI_MANIFEST,
    MEDIA_DOCKER_MANIFEST,
];

#[derive(Deserialize)]
struct MediaTypeOnly {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

pub(super) fn is_index(raw: &[u8]) -> bool {
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
    pub(super) async fn pull(
        &self,
        reference: &str,
        lease: &str,
    ) -> Result<ImageInfo, RuntimeError> {
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
                        platform_matches(&p.os().to_string(), &p.architecture().to_string())
                    })
                })
                .ok_or_else(|| {
                    image_err(
                        reference,
                        format!("no {} manifest in the index", PLATFORM.as_str()),
                    )
                })?;
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

    /// Reads an image already in the content store, unpacking what is missing.
    pub(super) async fn open_stored(
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
                        platform_matches(&p.os().to_string(), &p.architecture().to_string())
                    })
                })
                .ok_or_else(|| {
                    image_err(
                        reference,
                        format!("no {} manifest in the index", PLATFORM.as_str()),
                    )
                })?;
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
}

pub(super) fn info_from(
    name: &str,
    digest: &str,
    chain_id: &str,
    config: &ImageConfiguration,
) -> ImageInfo {
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
