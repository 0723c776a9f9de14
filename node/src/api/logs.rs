//! Container logs from any node: each instance's log is streamed by the
//! node that runs it (relayed over the peer pool with the caller's key).

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use rouse_proto::v1 as pb;
use rouse_proto::v1::container_service_client::ContainerServiceClient;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use super::error::ApiError;
use super::service::Api;
use crate::state::validate;

pub type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send>>;

const CHUNK: usize = 1024 * 1024;

impl Api {
    pub(super) async fn logs_stream(
        &self,
        r: pb::LogsRequest,
        bearer: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    ) -> Result<LogStream, ApiError> {
        validate::dns_label("namespace", &r.namespace)?;
        validate::dns_label("name", &r.name)?;
        let (targets, nodes) = {
            let sm = self.cluster.sm.read();
            if sm.data.container(&r.namespace, &r.name).is_none() {
                return Err(ApiError::NotFound(format!(
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
            return Err(ApiError::NotFound(format!(
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
                            ApiError::Unavailable(format!("node {node} at {addr}: {e}"))
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
                        Ok::<_, ApiError>(())
                    }
                    .await;
                    if let Err(e) = res {
                        let _ = tx.send(Err(e.into())).await;
                    }
                });
            }
        }
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.config.data_dir.join("logs").join(format!("{id}.log"))
    }
}

/// Sends `path` from `from` to its current end, a chunk at a time (never
/// the whole file in memory). False once the receiver is gone.
async fn send_from<F, Fut>(path: &std::path::Path, from: u64, send: &F) -> bool
where
    F: Fn(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let Ok(mut f) = tokio::fs::File::open(path).await else {
        return true;
    };
    if f.seek(std::io::SeekFrom::Start(from)).await.is_err() {
        return true;
    }
    let mut buf = vec![0u8; CHUNK];
    loop {
        match f.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(n) => {
                if !send(buf[..n].to_vec()).await {
                    return false;
                }
            }
        }
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
    // The rotated predecessor first (all of it, or what the tail asks
    // for), read a chunk at a time.
    let old = path.with_extension("log.1");
    let old_len = std::fs::metadata(&old).map(|m| m.len()).unwrap_or(0);
    let cur_len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let mut pos = 0u64;
    let old_from = match tail {
        0 => Some(0),
        t if cur_len < t => Some(old_len.saturating_sub(t - cur_len)),
        _ => None,
    };
    if let (Some(from), true) = (old_from, old_len > 0) {
        if !send_from(&old, from, &send).await {
            return;
        }
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
            let sent = std::sync::atomic::AtomicU64::new(0);
            let counting = |data: Vec<u8>| {
                sent.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                send(data)
            };
            let open = send_from(&path, pos, &counting).await;
            pos += sent.load(std::sync::atomic::Ordering::Relaxed);
            if !open {
                return;
            }
        }
        if !follow || tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
