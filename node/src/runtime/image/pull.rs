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
use super::images::Limits;
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
        progress: Option<&super::images::ProgressTx>,
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
        let lim = self.limits;
        Limits::check(
            reference,
            "the manifest",
            raw.len() as u64,
            lim.manifest_bytes,
            "--max-manifest-bytes",
        )?;
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
            Limits::check(
                reference,
                "the platform manifest",
                m.len() as u64,
                lim.manifest_bytes,
                "--max-manifest-bytes",
            )?;
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
        let declared = u64::try_from(manifest.config().size()).unwrap_or(u64::MAX);
        Limits::check(
            reference,
            "the config",
            declared,
            lim.config_bytes,
            "--max-config-bytes",
        )?;
        let mut config_raw = Capped::new(Vec::new(), declared.min(lim.config_bytes));
        self.client
            .pull_blob(&r, config_digest.as_str(), &mut config_raw)
            .await
            .map_err(|e| image_err(reference, format!("fetching the config: {e}")))?;
        let config_raw = config_raw.into_inner();
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
        for layer in manifest.layers() {
            let size = u64::try_from(layer.size()).unwrap_or(u64::MAX);
            Limits::check(
                reference,
                &format!("layer {}", layer.digest()),
                size,
                lim.layer_bytes,
                "--max-layer-bytes",
            )?;
        }
        let mut p = super::images::PullProgress {
            layers: manifest.layers().len(),
            bytes: manifest
                .layers()
                .iter()
                .map(|l| u64::try_from(l.size()).unwrap_or(0))
                .sum(),
            ..Default::default()
        };
        let tell = |p: super::images::PullProgress| {
            if let Some(tx) = progress {
                tx.send_replace(Some(p));
            }
        };
        tell(p);
        for (layer, diff_id) in manifest.layers().iter().zip(&diff_ids) {
            let digest = layer.digest().to_string();
            p.layers_done += 1;
            p.bytes_done += u64::try_from(layer.size()).unwrap_or(0);
            if self.content_exists(&digest).await? {
                tell(p);
                continue;
            }
            let declared = u64::try_from(layer.size()).unwrap_or(u64::MAX);
            std::fs::create_dir_all(&self.tmp)?;
            let path = self.tmp.join(format!(
                "blob-{}-{}",
                digest.replace(':', "-"),
                rand::random::<u32>()
            ));
            let res = async {
                // No more than the manifest said (a registry sending more is
                // cut off; the digest check catches anything else).
                let file = Capped::new(tokio::fs::File::create(&path).await?, declared);
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
            tell(p);
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

/// A writer that takes at most `limit` bytes and fails past them: a blob
/// from a registry is cut off at the size its manifest announced.
pub(super) struct Capped<W> {
    inner: W,
    left: u64,
}

impl<W> Capped<W> {
    pub(super) fn new(inner: W, limit: u64) -> Self {
        Capped { inner, left: limit }
    }

    pub(super) fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Capped<W> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if buf.len() as u64 > this.left {
            return std::task::Poll::Ready(Err(std::io::Error::other(
                "the registry sent more bytes than the manifest announced",
            )));
        }
        let r = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            this.left -= *n as u64;
        }
        r
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod capped_tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_capped_writer_takes_its_limit_and_no_more() {
        let mut w = Capped::new(Vec::new(), 5);
        w.write_all(b"12345").await.unwrap();
        assert!(w.write_all(b"6").await.is_err());
        assert_eq!(w.into_inner(), b"12345");
    }
}

/// What the pull makes of a registry's (or a tarball's) document, without
/// the network: an index picks a platform manifest, a manifest names a
/// config and layers, a config gives the run settings and chain ids. Used
/// to fuzz those parsers; an error names what was wrong.
pub fn parse_documents(raw: &[u8]) -> Result<(), RuntimeError> {
    if is_index(raw) {
        let index: ImageIndex = serde_json::from_slice(raw)
            .map_err(|e| image_err("document", format!("index: {e}")))?;
        let _ = index.manifests().iter().find(|m| {
            m.platform().as_ref().is_none_or(|p| {
                platform_matches(&p.os().to_string(), &p.architecture().to_string())
            })
        });
    }
    if let Ok(m) = serde_json::from_slice::<ImageManifest>(raw) {
        for l in m.layers() {
            let _ = Limits::check(
                "document",
                "a layer",
                u64::try_from(l.size()).unwrap_or(u64::MAX),
                1 << 30,
                "--max-layer-bytes",
            );
        }
    }
    let config: ImageConfiguration =
        serde_json::from_slice(raw).map_err(|e| image_err("document", format!("config: {e}")))?;
    let chains = chain_ids(config.rootfs().diff_ids());
    let top = chains.last().cloned().unwrap_or_default();
    let _ = info_from("document", "sha256:0", &top, &config);
    Ok(())
}
