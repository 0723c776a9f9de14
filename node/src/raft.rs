//! openraft wiring: the type configuration and the network that carries
//! Raft RPCs over the peer gRPC service.
//!
//! Requests and responses travel as JSON inside `RaftMessage.payload`;
//! snapshots travel as a sequence of `SnapshotChunk`s that openraft cuts.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use rouse_proto::peer::raft_peer_client::RaftPeerClient;
use rouse_proto::peer::{RaftMessage, SnapshotChunk};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::state::{NodeId, Proposal, Response};

openraft::declare_raft_types!(
    /// rouse's Raft types: proposals in, responses out, u64 node ids.
    pub TypeConfig:
        D = Proposal,
        R = Response,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// Largest gRPC message between peers (snapshot chunks are smaller).
pub const PEER_MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Lazily connected channels to peers, shared by Raft, forwarding and the
/// API's relays between nodes. Over mutual TLS unless `--insecure`.
#[derive(Clone, Default)]
pub struct PeerPool {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Source address of connections to peers (this node's listen IP), so
    /// peers and fault proxies can tell nodes apart.
    local: Option<std::net::IpAddr>,
    /// The cluster's peer credential, sent on every peer call (what peers
    /// check when mTLS is off).
    secret: Arc<Mutex<Option<String>>>,
    tls: crate::tls::Tls,
    /// When each peer last answered an AppendEntries (heartbeats included):
    /// how a leader knows a majority still hears it.
    answered: Arc<Mutex<HashMap<NodeId, std::time::Instant>>>,
}

/// Header carrying the peer credential (derived from the master key).
pub const PEER_AUTH: &str = "x-rouse-peer";

/// Adds the peer credential to every call.
#[derive(Clone)]
pub struct PeerAuth {
    secret: Arc<Mutex<Option<String>>>,
}

impl tonic::service::Interceptor for PeerAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let s = self.secret.lock().clone();
        if let Some(v) = s.and_then(|s| s.parse().ok()) {
            req.metadata_mut().insert(PEER_AUTH, v);
        }
        Ok(req)
    }
}

pub type PeerClient =
    RaftPeerClient<tonic::service::interceptor::InterceptedService<Channel, PeerAuth>>;

impl PeerPool {
    pub fn new(local: Option<std::net::IpAddr>, tls: crate::tls::Tls) -> Self {
        PeerPool {
            channels: Default::default(),
            local,
            secret: Default::default(),
            tls,
            answered: Default::default(),
        }
    }

    /// How long since `peer` last answered this node's AppendEntries.
    pub fn since_answer(&self, peer: NodeId) -> Option<Duration> {
        self.answered.lock().get(&peer).map(|t| t.elapsed())
    }

    /// The URL scheme peers are reached with.
    pub fn scheme(&self) -> &'static str {
        self.tls.scheme()
    }

    /// Sets the credential sent to peers.
    pub fn set_secret(&self, secret: String) {
        *self.secret.lock() = Some(secret);
    }

    /// A channel to the node whose gRPC listener is `addr` (host:port).
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut map = self.channels.lock();
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        let endpoint = Endpoint::from_shared(format!("{}://{addr}", self.tls.scheme()))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .local_address(self.local);
        let ch = if self.tls.insecure() {
            endpoint.connect_lazy()
        } else {
            endpoint.connect_with_connector_lazy(crate::tls::connector(&self.tls, self.local, true))
        };
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// A client for the peer service at `addr` (host:port).
    pub fn client(&self, addr: &str) -> Result<PeerClient, tonic::transport::Error> {
        Ok(RaftPeerClient::with_interceptor(
            self.channel(addr)?,
            PeerAuth {
                secret: self.secret.clone(),
            },
        )
        .max_decoding_message_size(PEER_MAX_MESSAGE)
        .max_encoding_message_size(PEER_MAX_MESSAGE))
    }
}

pub struct Network {
    pool: PeerPool,
}

impl Network {
    pub fn new(pool: PeerPool) -> Self {
        Network { pool }
    }
}

pub struct PeerConnection {
    target: NodeId,
    addr: String,
    pool: PeerPool,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        PeerConnection {
            target,
            addr: node.addr.clone(),
            pool: self.pool.clone(),
        }
    }
}

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(v)
}

pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(b)
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

fn unreachable<E: std::error::Error>(
    e: impl std::error::Error + 'static,
) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&e))
}

fn net_err<E: std::error::Error>(
    e: impl std::error::Error + 'static,
) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&e))
}

impl PeerConnection {
    /// Sends one unary call and decodes `Result<Resp, RaftError<E>>`.
    async fn call<Req, Resp, E, F, Fut>(
        &self,
        req: &Req,
        option: &RPCOption,
        f: F,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
        F: FnOnce(PeerClient, RaftMessage) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<RaftMessage>, tonic::Status>>,
    {
        let client = self.pool.client(&self.addr).map_err(unreachable)?;
        let payload = encode(req).map_err(net_err)?;
        let fut = f(client, RaftMessage { payload });
        let resp = match tokio::time::timeout(option.hard_ttl(), fut).await {
            Err(elapsed) => return Err(unreachable(elapsed)),
            Ok(Err(status)) => return Err(status_err(status)),
            Ok(Ok(r)) => r.into_inner(),
        };
        let res: Result<Resp, RaftError<NodeId, E>> = decode(&resp.payload).map_err(net_err)?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn status_err<E: std::error::Error>(status: tonic::Status) -> RPCError<NodeId, BasicNode, E> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::new(&StatusError(status)))
        }
        _ => RPCError::Network(NetworkError::new(&StatusError(status))),
    }
}

/// A gRPC status as an `std::error::Error` for openraft's error types.
#[derive(Debug, thiserror::Error)]
#[error("peer rpc failed: {0}")]
pub struct StatusError(pub tonic::Status);

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        // A peer never heard from is silent since this node first asked.
        self.pool
            .answered
            .lock()
            .entry(self.target)
            .or_insert_with(std::time::Instant::now);
        let r = self
            .call(&rpc, &option, |mut c, m| async move {
                c.append_entries(m).await
            })
            .await;
        if r.is_ok() {
            self.pool
                .answered
                .lock()
                .insert(self.target, std::time::Instant::now());
        }
        r
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        let mut client = self.pool.client(&self.addr).map_err(unreachable)?;
        let chunk = SnapshotChunk {
            vote: encode(&rpc.vote).map_err(net_err)?,
            meta: encode(&rpc.meta).map_err(net_err)?,
            offset: rpc.offset,
            data: rpc.data,
            done: rpc.done,
        };
        let resp =
            match tokio::time::timeout(option.hard_ttl(), client.install_snapshot(chunk)).await {
                Err(elapsed) => return Err(unreachable(elapsed)),
                Ok(Err(status)) => return Err(status_err(status)),
                Ok(Ok(r)) => r.into_inner(),
            };
        let res: Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> =
            decode(&resp.payload).map_err(net_err)?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        self.call(&rpc, &option, |mut c, m| async move { c.vote(m).await })
            .await
    }
}

/// Wraps any error for openraft's `AnyError`.
pub fn any_err(e: impl std::error::Error + 'static) -> AnyError {
    AnyError::new(&e)
}
