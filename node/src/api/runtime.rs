//! API handlers that reach into the node runtime: container logs and image
//! import. Both work from any node: logs are relayed from the node that
//! runs an instance; an import is handed to every member.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use rouse_proto::v1 as pb;
use rouse_proto::v1::container_service_client::ContainerServiceClient;
use rouse_proto::v1::image_service_client::ImageServiceClient;
use rouse_proto::v1::image_service_server::ImageService;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::Api;
use crate::state::validate;

pub type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send>>;

/// Largest image tarball accepted.
const MAX_IMPORT_BYTES: u64 = 8 * 1024 * 1024 * 1024;
const CHUNK: usize = 1024 * 1024;

impl Api {
    pub(super) async fn logs_stream(
        &self,
        r: pb::LogsRequest,
        bearer: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    ) -> Result<LogStream, Status> {
        validate::dns_label("namespace", &r.namespace)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        validate::dns_label("name", &r.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (targets, nodes) = {
            let sm = self.cluster.sm.read();
            if sm.data.container(&r.namespace, &r.name).is_none() {
                return Err(Status::not_found(format!(
                    "container \"{}/{}\" not found",
                    r.namespace, r.name
                )));
            }
            let targets: Vec<(String, u64)> = sm
                .data
                .instances_of(&r.namespace, &r.name)
                .filter(|i| r.instance.is_empty() || i.id == r.instance)
                .filter(|i| !r.local_only || i.node == self.cluster.id)
                .map(|i| (i.id.clone(), i.node))
                .collect();
            (targets, sm.data.nodes.clone())
        };
        if targets.is_empty() && !r.instance.is_empty() {
            return Err(Status::not_found(format!(
                "instance: {:?} is not an instance of {}/{}",
                r.instance, r.namespace, r.name
            )));
        }
        let (tx, rx) = mpsc::channel::<Result<pb::LogChunk, Status>>(16);
        for (id, node) in targets {
            let tx = tx.clone();
            if node == self.cluster.id {
                let path = self.log_path(&id);
                tokio::spawn(stream_local(id, path, r.follow, r.tail_bytes, tx));
            } else {
                let Some(addr) = nodes.get(&node).map(|n| n.api_addr.clone()) else {
                    continue;
                };
                let mut req = tonic::Request::new(pb::LogsRequest {
                    instance: id.clone(),
                    local_only: true,
                    ..r.clone()
                });
                if let Some(b) = bearer.clone() {
                    req.metadata_mut().insert("authorization", b);
                }
                let pool = self.cluster.pool.clone();
                tokio::spawn(async move {
                    let res = async {
                        let ch = pool.channel(&addr).map_err(|e| {
                            Status::unavailable(format!("node {node} at {addr}: {e}"))
                        })?;
                        let mut s = ContainerServiceClient::new(ch)
                            .logs(req)
                            .await?
                            .into_inner();
                        while let Some(chunk) = s.next().await {
                            if tx.send(chunk).await.is_err() {
                                break;
                            }
                        }
                        Ok::<_, Status>(())
                    }
                    .await;
                    if let Err(s) = res {
                        let _ = tx.send(Err(s)).await;
                    }
                });
            }
        }
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.cluster
            .config
            .data_dir
            .join("logs")
            .join(format!("{id}.log"))
    }
}

/// Streams one instance's log file (and its rotated predecessor).
async fn stream_local(
    id: String,
    path: PathBuf,
    follow: bool,
    tail: u64,
    tx: mpsc::Sender<Result<pb::LogChunk, Status>>,
) {
    let send = |data: Vec<u8>| {
        let tx = tx.clone();
        let id = id.clone();
        async move {
            tx.send(Ok(pb::LogChunk { instance: id, data }))
                .await
                .is_ok()
        }
    };
    let old = std::fs::read(path.with_extension("log.1")).unwrap_or_default();
    let cur_len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let mut pos = 0u64;
    if tail > 0 && cur_len < tail && !old.is_empty() {
        let keep = usize::try_from(tail - cur_len)
            .unwrap_or(usize::MAX)
            .min(old.len());
        if !send(old[old.len() - keep..].to_vec()).await {
            return;
        }
    } else if tail == 0 && !old.is_empty() && !send(old).await {
        return;
    }
    if tail > 0 && cur_len > tail {
        pos = cur_len - tail;
    }
    loop {
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len < pos {
            pos = 0; // rotated
        }
        if len > pos {
            if let Ok(mut f) = tokio::fs::File::open(&path).await {
                if f.seek(std::io::SeekFrom::Start(pos)).await.is_ok() {
                    let mut buf = vec![0u8; CHUNK];
                    loop {
                        match f.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                pos += n as u64;
                                if !send(buf[..n].to_vec()).await {
                                    return;
                                }
                            }
                        }
                    }
                }
            }
        }
        if !follow || tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tonic::async_trait]
impl ImageService for Api {
    async fn import(
        &self,
        req: Request<Streaming<pb::ImportImageChunk>>,
    ) -> Result<Response<pb::ImportImageResponse>, Status> {
        self.require_admin(&req)?;
        let bearer = req.metadata().get("authorization").cloned();
        let agent =
            self.cluster.agent.get().cloned().ok_or_else(|| {
                Status::unavailable("this node is not connected to containerd yet")
            })?;
        let mut stream = req.into_inner();
        let dir = self.cluster.config.data_dir.join("tmp");
        std::fs::create_dir_all(&dir).map_err(|e| Status::internal(e.to_string()))?;
        let path = dir.join(format!("import-{}.tar", rand::random::<u64>()));
        let res = async {
            let mut f = tokio::fs::File::create(&path)
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
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
                    return Err(Status::invalid_argument(format!(
                        "data: the tarball is larger than {MAX_IMPORT_BYTES} bytes"
                    )));
                }
                f.write_all(&c.data)
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
            }
            f.flush()
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            drop(f);
            let default_name = (!name.is_empty()).then_some(name.as_str());
            let images = agent
                .images
                .import(&path, default_name)
                .await
                .map_err(|e| Status::invalid_argument(format!("data: {e}")))?;
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
                        error: r.err().map(|s| s.message().to_string()).unwrap_or_default(),
                    });
                }
            }
            Ok(pb::ImportImageResponse { images, nodes })
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
) -> Result<(), Status> {
    let ch = pool
        .channel(addr)
        .map_err(|e| Status::unavailable(format!("{addr}: {e}")))?;
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
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
    r.map(|_| ())
}
