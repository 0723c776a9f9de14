//! containerd's content store: leases, reading and writing blobs (with
//! their gc labels), image records.

use std::collections::HashMap;
use std::path::Path;

use containerd_client::services::v1::{
    CreateImageRequest, CreateRequest as LeaseCreateRequest, DeleteRequest as LeaseDeleteRequest,
    Image, InfoRequest, ReadContentRequest, UpdateImageRequest, WriteAction, WriteContentRequest,
};
use containerd_client::types::Descriptor;
use oci_spec::image::ImageManifest;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio_stream::StreamExt;
use tonic::Code;

use super::images::Images;
use super::platform::image_err;
use super::platform::sha256_hex;
use crate::runtime::RuntimeError;

const CHUNK: usize = 1024 * 1024;

/// Where a blob's bytes come from.
pub enum BlobSource<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

impl Images {
    pub(super) async fn lease(&self) -> Result<String, RuntimeError> {
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

    pub(super) async fn drop_lease(&self, id: &str) {
        let req = LeaseDeleteRequest {
            id: id.to_string(),
            sync: false,
        };
        if let Err(s) = self.ctr.leases().delete(self.ctr.req(req, None)).await {
            tracing::warn!(lease = id, error = %s, "dropping lease");
        }
    }

    pub(super) async fn content_exists(&self, digest: &str) -> Result<bool, RuntimeError> {
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

    pub(super) async fn read_content(&self, digest: &str) -> Result<Vec<u8>, RuntimeError> {
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

    pub(super) async fn put_image(
        &self,
        name: &str,
        target: Descriptor,
    ) -> Result<(), RuntimeError> {
        let labels = HashMap::from([(
            crate::runtime::labels::MANAGED.to_string(),
            "true".to_string(),
        )]);
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
}

pub(super) async fn next_msg(
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
pub(super) fn manifest_gc_labels(
    manifest: &ImageManifest,
    config_digest: &str,
) -> HashMap<String, String> {
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

/// RFC 3339 time `secs` from now, for containerd's gc.expire label.
pub(super) fn chrono_like_expiry(secs: u64) -> String {
    let t = std::time::SystemTime::now() + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t).to_string()
}
