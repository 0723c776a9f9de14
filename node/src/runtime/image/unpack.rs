//! Unpacking layers into snapshots keyed by chain id: prepare → diff
//! apply → commit, skipping layers already unpacked.

use std::collections::HashMap;

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::ApplyRequest;
use containerd_client::types::Descriptor;
use oci_spec::image::ImageManifest;
use tonic::Code;

use super::images::Images;
use super::platform::{image_err, sha256_hex};
use crate::runtime::ctr::SNAPSHOTTER;
use crate::runtime::RuntimeError;

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

impl Images {
    pub(super) async fn snapshot_exists(&self, key: &str) -> Result<bool, RuntimeError> {
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
    pub(super) async fn unpack(
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
}
