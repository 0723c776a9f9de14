//! Importing an OCI-layout tarball (`rouse image import`): its blobs go
//! to the content store, each image it names gets a record and is unpacked.

use std::collections::HashMap;
use std::path::Path;

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

use super::content::{manifest_gc_labels, BlobSource};
use super::images::{Images, Limits};
use super::platform::image_err;
use super::pull::is_index;
use super::unpack::chain_ids;
use crate::runtime::ctr::SNAPSHOTTER;
use crate::runtime::RuntimeError;
use containerd_client::types::Descriptor;

impl Images {
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

    pub(super) async fn import_in(
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
        let lim = self.limits;
        let read =
            |path: &Path, what: &str, limit: u64, setting: &str| -> Result<Vec<u8>, RuntimeError> {
                let size = std::fs::metadata(path)
                    .map_err(|e| image_err("import", format!("{what}: {e}")))?
                    .len();
                Limits::check("import", what, size, limit, setting)?;
                std::fs::read(path).map_err(|e| image_err("import", format!("{what}: {e}")))
            };
        let index_raw = read(
            &dir.join("index.json"),
            "index.json",
            lim.manifest_bytes,
            "--max-manifest-bytes",
        )?;
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
                let raw = read(
                    &blob(&digest),
                    "a manifest",
                    lim.manifest_bytes,
                    "--max-manifest-bytes",
                )?;
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
                    (
                        read(
                            &blob(&pick),
                            "a manifest",
                            lim.manifest_bytes,
                            "--max-manifest-bytes",
                        )?,
                        pick,
                    )
                } else {
                    (raw.clone(), digest.clone())
                };
                let manifest: ImageManifest =
                    serde_json::from_slice(&manifest_raw).map_err(|e| image_err(&name, e))?;
                let config_digest = manifest.config().digest().to_string();
                let config_raw = read(
                    &blob(&config_digest),
                    "a config",
                    lim.config_bytes,
                    "--max-config-bytes",
                )?;
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
}
