//! `ImageService`: `rouse image import` loads an OCI-layout tarball on
//! this node and hands it to every other member.

use rouse_proto::v1 as pb;
use rouse_proto::v1::image_service_client::ImageServiceClient;
use rouse_proto::v1::image_service_server::ImageService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::error::ApiError;
use super::service::Api;

/// Largest image tarball accepted.
const MAX_IMPORT_BYTES: u64 = 8 * 1024 * 1024 * 1024;
const CHUNK: usize = 1024 * 1024;

#[tonic::async_trait]
impl ImageService for Api {
    async fn import(
        &self,
        req: Request<Streaming<pb::ImportImageChunk>>,
    ) -> Result<Response<pb::ImportImageResponse>, Status> {
        self.require_admin(&req)?;
        let bearer = req.metadata().get("authorization").cloned();
        let images = self.images.get().cloned().ok_or_else(|| {
            ApiError::Unavailable("this node is not connected to containerd yet".into())
        })?;
        let mut stream = req.into_inner();
        let dir = self.config.data_dir.join("tmp");
        std::fs::create_dir_all(&dir).map_err(|e| ApiError::Internal(e.to_string()))?;
        let path = dir.join(format!("import-{}.tar", rand::random::<u64>()));
        let res = async {
            let mut f = tokio::fs::File::create(&path)
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            let (mut name, mut local_only, mut total, mut first) =
                (String::new(), false, 0u64, true);
            while let Some(chunk) = stream.next().await {
                let c = chunk?;
                if first {
                    name = c.name.clone();
                    local_only = c.local_only;
                    first = false;
                }
                total += c.data.len() as u64;
                if total > MAX_IMPORT_BYTES {
                    return Err(ApiError::invalid(
                        "data",
                        format!("the tarball is larger than {MAX_IMPORT_BYTES} bytes"),
                    ));
                }
                f.write_all(&c.data)
                    .await
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
            }
            f.flush()
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            drop(f);
            let default_name = (!name.is_empty()).then_some(name.as_str());
            let imported = images
                .import(&path, default_name)
                .await
                .map_err(|e| ApiError::invalid("data", e.to_string()))?;
            let mut nodes = vec![pb::NodeImport {
                node: self.cluster.id,
                ok: true,
                error: String::new(),
            }];
            if !local_only {
                let others: Vec<(u64, String)> = {
                    let sm = self.cluster.sm.read();
                    sm.data
                        .nodes
                        .values()
                        .filter(|n| n.id != self.cluster.id)
                        .map(|n| (n.id, n.api_addr.clone()))
                        .collect()
                };
                for (node, addr) in others {
                    let r =
                        send_import(&addr, &path, &name, bearer.clone(), &self.cluster.pool).await;
                    nodes.push(pb::NodeImport {
                        node,
                        ok: r.is_ok(),
                        error: r.err().map(|e| e.to_string()).unwrap_or_default(),
                    });
                }
            }
            Ok(pb::ImportImageResponse {
                images: imported,
                nodes,
            })
        }
        .await;
        let _ = std::fs::remove_file(&path);
        Ok(Response::new(res?))
    }
}

/// Streams a tarball to another node's ImageService for a local import.
async fn send_import(
    addr: &str,
    path: &std::path::Path,
    name: &str,
    bearer: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    pool: &crate::raft::PeerPool,
) -> Result<(), ApiError> {
    let ch = pool
        .channel(addr)
        .map_err(|e| ApiError::Unavailable(format!("{addr}: {e}")))?;
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let (tx, rx) = mpsc::channel::<pb::ImportImageChunk>(4);
    let name = name.to_string();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        let mut first = true;
        loop {
            let n = match f.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = pb::ImportImageChunk {
                data: buf[..n].to_vec(),
                name: if first { name.clone() } else { String::new() },
                local_only: true,
            };
            first = false;
            if tx.send(chunk).await.is_err() {
                break;
            }
        }
    });
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(b) = bearer {
        req.metadata_mut().insert("authorization", b);
    }
    let r = ImageServiceClient::new(ch).import(req).await;
    reader.abort();
    r.map(|_| ()).map_err(ApiError::from)
}
