//! Images for instances in a user namespace: the instance's root (uid 0)
//! is an unprivileged uid on the node, so the image's files must belong to
//! the shifted ids. Once per image, its top snapshot is copied into a
//! committed snapshot whose every file is owned by uid + base, gid + base;
//! instances of the image start from that copy, at no cost per instance.
//!
//! ```text
//!  <chain id> ─prepare─▶ mount ─▶ lchown every file (+base) ─▶ unmount ─▶ commit <chain id>-userns-<base>
//! ```
//!
//! The image's top snapshot carries a reference label to its copy, so
//! containerd keeps the copy exactly as long as the image.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, Info, PrepareSnapshotRequest, RemoveSnapshotRequest,
    UpdateSnapshotRequest,
};
use containerd_client::types::Mount;
use tonic::Code;

use super::images::{ImageInfo, Images};
use crate::runtime::ctr::SNAPSHOTTER;
use crate::runtime::RuntimeError;

/// The shifted copy of `chain` for a user namespace based at `base`.
pub fn remapped_key(chain: &str, base: u32) -> String {
    format!("{chain}-userns-{base}")
}

fn remap_err(message: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Image {
        reference: "user namespace copy".into(),
        message: message.to_string(),
    }
}

/// Shifts the owner of `root` and everything under it by `base` (links
/// are changed themselves, never followed).
pub fn shift_owners(root: &Path, base: u32) -> std::io::Result<u64> {
    let mut changed = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p)?;
        std::os::unix::fs::lchown(
            &p,
            Some(meta.uid().saturating_add(base)),
            Some(meta.gid().saturating_add(base)),
        )?;
        changed += 1;
        if meta.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(changed)
}

async fn mount(m: &Mount, target: &Path) -> Result<(), RuntimeError> {
    let mut cmd = tokio::process::Command::new("mount");
    cmd.arg("-t").arg(&m.r#type);
    if !m.options.is_empty() {
        cmd.arg("-o").arg(m.options.join(","));
    }
    let out = cmd
        .arg(&m.source)
        .arg(target)
        .stdin(Stdio::null())
        .output()
        .await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(remap_err(format!(
            "mount: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

async fn unmount(target: &Path) {
    let _ = tokio::process::Command::new("umount")
        .arg(target)
        .stdin(Stdio::null())
        .output()
        .await;
}

impl Images {
    /// The snapshot an instance of `image` starts from in a user namespace
    /// based at `base`, made once per image.
    pub async fn remapped(&self, image: &ImageInfo, base: u32) -> Result<String, RuntimeError> {
        let key = remapped_key(&image.chain_id, base);
        if self.snapshot_exists(&key).await? {
            return Ok(key);
        }
        let lock = self.lock_for(&key);
        let _one = lock.lock().await;
        if self.snapshot_exists(&key).await? {
            return Ok(key);
        }
        // Held by a lease until the image's snapshot refers to it.
        let lease = self.lease().await?;
        let res = self.make_remapped(image, base, &key, &lease).await;
        self.drop_lease(&lease).await;
        res
    }

    async fn make_remapped(
        &self,
        image: &ImageInfo,
        base: u32,
        key: &str,
        lease: &str,
    ) -> Result<String, RuntimeError> {
        let work = format!("{key}-work-{}", rand::random::<u32>());
        let req = PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: work.clone(),
            parent: image.chain_id.clone(),
            labels: HashMap::new(),
        };
        let mounts = self
            .ctr
            .snapshots()
            .prepare(self.ctr.req(req, Some(lease)))
            .await
            .map_err(|s| RuntimeError::containerd("prepare user namespace copy", s))?
            .into_inner()
            .mounts;
        let shifted = match self.shift(&mounts, base).await {
            Ok(n) => n,
            Err(e) => {
                let req = RemoveSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: work,
                };
                let _ = self
                    .ctr
                    .snapshots()
                    .remove(self.ctr.req(req, Some(lease)))
                    .await;
                return Err(e);
            }
        };
        let req = CommitSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            name: key.to_string(),
            key: work,
            labels: HashMap::new(),
        };
        match self
            .ctr
            .snapshots()
            .commit(self.ctr.req(req, Some(lease)))
            .await
        {
            // Another pass made the same copy meanwhile: use it.
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => return Err(RuntimeError::containerd("commit user namespace copy", s)),
        }
        // The image's top snapshot keeps its copy (and drops it with it).
        let label = format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}/userns-{base}");
        let req = UpdateSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            info: Some(Info {
                name: image.chain_id.clone(),
                labels: HashMap::from([(label.clone(), key.to_string())]),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![format!("labels.{label}")],
            }),
        };
        self.ctr
            .snapshots()
            .update(self.ctr.req(req, Some(lease)))
            .await
            .map_err(|s| RuntimeError::containerd("label the image's snapshot", s))?;
        tracing::info!(image = %image.name, files = shifted, base, "made the image's user namespace copy");
        Ok(key.to_string())
    }

    async fn shift(&self, mounts: &[Mount], base: u32) -> Result<u64, RuntimeError> {
        let [m] = mounts else {
            return Err(remap_err(format!(
                "expected one mount of the snapshot, got {}",
                mounts.len()
            )));
        };
        let dir = self.tmp.join(format!("remap-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir)?;
        mount(m, &dir).await?;
        let root = dir.clone();
        let shifted = tokio::task::spawn_blocking(move || shift_owners(&root, base))
            .await
            .map_err(remap_err)
            .and_then(|r| r.map_err(remap_err));
        unmount(&dir).await;
        let _ = std::fs::remove_dir(&dir);
        shifted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_shift_by_the_base_without_following_links() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("link")).unwrap();
        let before = std::fs::metadata("/etc/passwd").unwrap().uid();
        let n = shift_owners(d.path(), 100_000).unwrap();
        assert_eq!(n, 4);
        let uid = |p: &str| std::fs::symlink_metadata(d.path().join(p)).unwrap().uid();
        assert_eq!(uid("sub/f"), 100_000);
        assert_eq!(uid("link"), 100_000);
        assert_eq!(
            std::fs::metadata("/etc/passwd").unwrap().uid(),
            before,
            "the target is untouched"
        );
    }
}
