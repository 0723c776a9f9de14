//! The peer gRPC service: Raft RPCs from other nodes, and the calls a
//! follower makes on the leader for its clients (forwarded writes, read
//! index, join, leave).

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::InstallSnapshotRequest;
use rouse_proto::peer::raft_peer_server::RaftPeer;
use rouse_proto::peer::{
    JoinRequest, JoinResponse, LeaveRequest, LeaveResponse, PingRequest, PingResponse, RaftMessage,
    ReadIndexRequest, ReadIndexResponse, SnapshotChunk,
};
use tonic::{Request, Response, Status};

use crate::api::ApiError;
use crate::cluster::{now_ms, Cluster, WriteOutcome, NOT_LEADER};
use crate::keys::Keyring;
use crate::loads::LoadBook;
use crate::raft::{decode, encode, TypeConfig};
use crate::state::{NodeRecord, Proposal};

pub struct PeerService {
    cluster: Arc<Cluster>,
    keys: Arc<Keyring>,
    loads: Arc<LoadBook>,
    local: Arc<crate::local::LocalInstances>,
    insecure: bool,
}

/// How long one WatchFreed stream lasts before the watcher subscribes
/// again (so a watcher that went away costs nothing for long).
const WATCH_FOR: std::time::Duration = std::time::Duration::from_secs(30);

impl PeerService {
    pub fn new(
        cluster: Arc<Cluster>,
        keys: Arc<Keyring>,
        loads: Arc<LoadBook>,
        local: Arc<crate::local::LocalInstances>,
        insecure: bool,
    ) -> Self {
        PeerService {
            cluster,
            keys,
            loads,
            local,
            insecure,
        }
    }
}

fn bad_payload(e: serde_json::Error) -> Status {
    ApiError::invalid("payload", e.to_string()).into()
}

fn reply<T: serde::Serialize>(v: &T) -> Result<Response<RaftMessage>, Status> {
    let payload = encode(v).map_err(|e| ApiError::Internal(format!("encoding reply: {e}")))?;
    Ok(Response::new(RaftMessage { payload }))
}

/// The member certificate a call came with (none with `--insecure`).
fn caller<T>(req: &Request<T>) -> Option<crate::tls::PeerCert> {
    req.extensions()
        .get::<crate::tls::ConnInfo>()
        .and_then(|c| c.peer.clone())
}

/// A node writes only its own record, naming the certificate it shows.
fn own_record(caller: &crate::tls::PeerCert, record: &NodeRecord) -> Result<(), Status> {
    #[cfg(feature = "simulated-nodes")]
    if record.id >= 1000 && record.cert_sha256.is_empty() {
        return Ok(());
    }
    if record.id != caller.node {
        return Err(Status::permission_denied(format!(
            "node {} may register only its own record, not node {}'s",
            caller.node, record.id
        )));
    }
    if !record.cert_sha256.is_empty() && record.cert_sha256 != caller.cert_sha256 {
        return Err(Status::permission_denied(format!(
            "node {}'s record must name the certificate it connects with",
            caller.node
        )));
    }
    Ok(())
}

/// A refusal that applied nothing: the caller may send it again elsewhere.
fn not_leader(message: String) -> Status {
    let mut s: Status = ApiError::Unavailable(message).into();
    s.metadata_mut()
        .insert(NOT_LEADER, tonic::metadata::MetadataValue::from_static("1"));
    s
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode(&req.into_inner().payload).map_err(bad_payload)?;
        reply(&self.cluster.raft.vote(rpc).await)
    }

    async fn pre_vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode(&req.into_inner().payload).map_err(bad_payload)?;
        reply(&self.cluster.answer_pre_vote(&rpc).await)
    }

    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode(&req.into_inner().payload).map_err(bad_payload)?;
        reply(&self.cluster.raft.append_entries(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<SnapshotChunk>,
    ) -> Result<Response<RaftMessage>, Status> {
        let c = req.into_inner();
        let rpc = InstallSnapshotRequest::<TypeConfig> {
            vote: decode(&c.vote).map_err(bad_payload)?,
            meta: decode(&c.meta).map_err(bad_payload)?,
            offset: c.offset,
            data: c.data,
            done: c.done,
        };
        reply(&self.cluster.raft.install_snapshot(rpc).await)
    }

    async fn forward(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let caller = caller(&req);
        let p: Proposal = decode(&req.into_inner().payload).map_err(bad_payload)?;
        if let (Some(c), crate::state::Command::RegisterNode { node }) = (&caller, &p.command) {
            own_record(c, node)?;
        }
        match self.cluster.raft.client_write(p).await {
            Ok(r) => reply(&WriteOutcome {
                index: r.log_id.index,
                response: r.data,
            }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(not_leader(format!(
                    "node {} is not the leader (leader: {:?})",
                    self.cluster.id, f.leader_id
                )))
            }
            Err(e) => Err(ApiError::Internal(e.to_string()).into()),
        }
    }

    async fn read_index(
        &self,
        _req: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        match self.cluster.raft.get_read_log_id().await {
            Ok((read, _applied)) => Ok(Response::new(ReadIndexResponse {
                index: read.map_or(0, |l| l.index),
            })),
            Err(e) => Err(not_leader(e.to_string())),
        }
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let caller = caller(&req);
        let r = req.into_inner();
        let record: NodeRecord = decode(&r.node).map_err(bad_payload)?;
        if let Some(c) = &caller {
            if c.node == record.id {
                own_record(c, &record)?;
            } else {
                // Relayed by a member for the node joining through it: the
                // record must name a certificate the cluster issued to it.
                self.cluster
                    .sm
                    .read()
                    .data
                    .peer_trusted(record.id, &record.cert_sha256)
                    .map_err(Status::permission_denied)?;
            }
        }
        if record.id != r.id || record.id == 0 {
            return Err(
                ApiError::invalid("id", "must match the node record and be at least 1").into(),
            );
        }
        let leader_id = self.cluster.join(record).await.map_err(ApiError::from)?;
        Ok(Response::new(JoinResponse { leader_id }))
    }

    async fn leave(&self, req: Request<LeaveRequest>) -> Result<Response<LeaveResponse>, Status> {
        self.cluster
            .remove(req.into_inner().id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(LeaveResponse {}))
    }

    async fn report_load(
        &self,
        req: Request<rouse_proto::peer::LoadReport>,
    ) -> Result<Response<rouse_proto::peer::LoadAck>, Status> {
        let r = req.into_inner();
        let loads = r.containers.into_iter().map(Into::into).collect();
        self.loads.record(r.node, now_ms(), loads);
        Ok(Response::new(rouse_proto::peer::LoadAck {}))
    }

    async fn fetch_master_key(
        &self,
        _req: Request<rouse_proto::peer::FetchMasterKeyRequest>,
    ) -> Result<Response<rouse_proto::peer::FetchMasterKeyResponse>, Status> {
        // Only over mutual TLS: the caller proved a cluster certificate.
        if self.insecure {
            return Err(ApiError::from(crate::keys::KeyError::Precondition(
                "peer traffic is plain (--insecure): the master key is not handed out".into(),
            ))
            .into());
        }
        let k = self
            .keys
            .kek()
            .map_err(|e| ApiError::from(crate::keys::KeyError::NoMasterKey(e)))?;
        Ok(Response::new(rouse_proto::peer::FetchMasterKeyResponse {
            key: k.export_hex(),
            id: k.id(),
        }))
    }

    async fn ping(&self, _req: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse {
            id: self.cluster.id,
        }))
    }

    async fn reserve(
        &self,
        req: Request<rouse_proto::peer::ReserveRequest>,
    ) -> Result<Response<rouse_proto::peer::ReserveResponse>, Status> {
        let r = req.into_inner();
        let key = crate::state::ContainerKey::new(&r.namespace, &r.name);
        let token = crate::mesh::activate::reserve_here(
            &self.cluster.sm.read().data,
            self.cluster.id,
            &key,
            &self.local,
        )
        .unwrap_or_default();
        Ok(Response::new(rouse_proto::peer::ReserveResponse { token }))
    }

    type WatchFreedStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<rouse_proto::peer::FreedEvent, Status>> + Send>,
    >;

    async fn watch_freed(
        &self,
        req: Request<rouse_proto::peer::WatchFreedRequest>,
    ) -> Result<Response<Self::WatchFreedStream>, Status> {
        let r = req.into_inner();
        let key = crate::state::ContainerKey::new(&r.namespace, &r.name);
        let freed = self.local.freed(&key);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let until = tokio::time::Instant::now() + WATCH_FOR;
            loop {
                let notified = freed.notified();
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(until) => return,
                }
                // A full channel already carries an event: coalesced.
                match tx.try_send(Ok(rouse_proto::peer::FreedEvent {})) {
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
                    _ => {}
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
