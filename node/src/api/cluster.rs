//! `ClusterService` and `NodeService`: membership, keys, join tokens, node
//! state (cordon, drain).

use openraft::ServerState;
use rouse_proto::v1 as pb;
use rouse_proto::v1::cluster_service_server::ClusterService;
use rouse_proto::v1::node_service_server::NodeService;
use tonic::{Request, Response, Status};

use super::convert;
use super::error::ApiError;
use super::input::stale;
use super::service::Api;
use crate::cluster::ClusterError;
use crate::join::identity::{DEFAULT_TOKEN_TTL, MAX_TOKEN_TTL};
use crate::state::{Command, Rejection};

type ApiResult<T> = Result<Response<T>, Status>;

impl Api {
    async fn set_node(
        &self,
        id: u64,
        cordoned: Option<bool>,
        draining: Option<bool>,
    ) -> Result<pb::Node, ApiError> {
        if !self.cluster.sm.read().data.nodes.contains_key(&id) {
            return Err(ApiError::NotFound(format!("node {id} is not registered")));
        }
        let cmd = Command::SetNodeState {
            id,
            down: None,
            cordoned,
            draining,
        };
        match self.cluster.write(cmd).await {
            Ok(_) | Err(ClusterError::Rejected(Rejection::FailedPrecondition(_))) => {}
            Err(e) => return Err(e.into()),
        }
        let sm = self.cluster.sm.read();
        let n = sm
            .data
            .nodes
            .get(&id)
            .ok_or_else(|| ApiError::NotFound(format!("node {id} is not registered")))?;
        Ok(convert::node_view(n, &sm.data))
    }
}

#[tonic::async_trait]
impl ClusterService for Api {
    async fn status(&self, req: Request<pb::ClusterStatusRequest>) -> ApiResult<pb::ClusterStatus> {
        self.require_admin(&req)?;
        let m = self.cluster.raft.metrics().borrow().clone();
        let members = self
            .cluster
            .members()
            .await
            .into_iter()
            .map(pb::Member::from)
            .collect();
        let master_key_id = self
            .cluster
            .sm
            .read()
            .data
            .kek_id
            .clone()
            .unwrap_or_default();
        Ok(Response::new(pb::ClusterStatus {
            leader_id: m.current_leader.unwrap_or(0),
            term: m.current_term,
            members,
            peer_tls: !self.config.insecure,
            master_key_id,
        }))
    }

    async fn rotate_keys(
        &self,
        req: Request<pb::RotateKeysRequest>,
    ) -> ApiResult<pb::RotateKeysResponse> {
        self.require_admin(&req)?;
        let r = crate::keys::rotate::rotate(&self.cluster, &self.keys, self.config.insecure)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::RotateKeysResponse {
            master_key_id: r.master_key_id,
            secrets_resealed: r.secrets,
            signing_keys_resealed: r.signing_keys,
        }))
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> ApiResult<pb::CreateJoinTokenResponse> {
        self.require_admin(&req)?;
        let ttl = match req.into_inner().ttl_secs {
            0 => DEFAULT_TOKEN_TTL,
            s => std::time::Duration::from_secs(s),
        };
        if ttl < std::time::Duration::from_secs(10) || ttl > MAX_TOKEN_TTL {
            return Err(ApiError::invalid("ttl_secs", "must be between 10 s and 7 days").into());
        }
        let (token, expires_at_ms) = self.identity.mint(ttl).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::CreateJoinTokenResponse {
            id: token.id.clone(),
            token: token.expose(),
            expires_at_ms,
        }))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> ApiResult<pb::RemoveNodeResponse> {
        self.require_admin(&req)?;
        let id = req.into_inner().id;
        if id == 0 {
            return Err(ApiError::invalid("id", "must be at least 1").into());
        }
        self.cluster.remove(id).await.map_err(ApiError::from)?;
        // The removed node holds the master key (and with it the data key
        // and the CA key): rotate, so it opens nothing written from now on.
        let master_key_id = if self.config.insecure {
            String::new()
        } else {
            crate::keys::rotate::rotate(&self.cluster, &self.keys, false)
                .await
                .map_err(ApiError::from)?
                .master_key_id
        };
        tracing::info!(node = id, master_key = %master_key_id, "removed a node and rotated the keys");
        Ok(Response::new(pb::RemoveNodeResponse { master_key_id }))
    }

    async fn node_info(
        &self,
        req: Request<pb::NodeInfoRequest>,
    ) -> ApiResult<pb::NodeInfoResponse> {
        self.require_admin(&req)?;
        let m = self.cluster.raft.metrics().borrow().clone();
        let state = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let digest = self.cluster.sm.read().data.digest();
        Ok(Response::new(pb::NodeInfoResponse {
            id: self.cluster.id,
            state: state.into(),
            term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied_index: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            snapshots_installed: self.cluster.sm.snapshots_installed(),
            state_digest: digest,
            version: env!("CARGO_PKG_VERSION").into(),
            api_level: rouse_proto::API_LEVEL,
            health: match self.cluster.no_quorum() {
                None => "ok".into(),
                Some(since) => format!(
                    "degraded: no quorum since {} ({} s)",
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(since)
                    ),
                    crate::cluster::now_ms().saturating_sub(since) / 1000
                ),
            },
        }))
    }
}

#[tonic::async_trait]
impl NodeService for Api {
    async fn list(&self, req: Request<pb::ListNodesRequest>) -> ApiResult<pb::ListNodesResponse> {
        self.require_admin(&req)?;
        self.cluster
            .read_barrier(stale(&req.into_inner().read))
            .await
            .map_err(ApiError::from)?;
        let sm = self.cluster.sm.read();
        let nodes = sm
            .data
            .nodes
            .values()
            .map(|n| convert::node_view(n, &sm.data))
            .collect();
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn cordon(&self, req: Request<pb::NodeRequest>) -> ApiResult<pb::Node> {
        self.require_admin(&req)?;
        Ok(Response::new(
            self.set_node(req.into_inner().id, Some(true), None).await?,
        ))
    }

    async fn uncordon(&self, req: Request<pb::NodeRequest>) -> ApiResult<pb::Node> {
        self.require_admin(&req)?;
        Ok(Response::new(
            self.set_node(req.into_inner().id, Some(false), Some(false))
                .await?,
        ))
    }

    async fn drain(&self, req: Request<pb::NodeRequest>) -> ApiResult<pb::Node> {
        self.require_admin(&req)?;
        Ok(Response::new(
            self.set_node(req.into_inner().id, Some(true), Some(true))
                .await?,
        ))
    }
}
