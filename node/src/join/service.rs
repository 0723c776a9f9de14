//! The join service, served to callers without a cluster certificate: the
//! CA certificate (public), and a certificate for a valid join token.

use std::sync::Arc;

use rouse_proto::peer::cluster_join_server::ClusterJoin;
use rouse_proto::peer::{
    GetClusterCaRequest, GetClusterCaResponse, IssueCertificateRequest, IssueCertificateResponse,
};
use tonic::{Request, Response, Status};

use super::error::JoinError;
use super::identity::Identity;
use crate::api::error::ApiError;
use crate::state::Command;
use crate::tls::{self, JoinToken};

pub struct JoinService {
    identity: Arc<Identity>,
}

impl JoinService {
    pub fn new(identity: Arc<Identity>) -> Self {
        JoinService { identity }
    }

    async fn issue(
        &self,
        over_tls: bool,
        r: IssueCertificateRequest,
    ) -> Result<IssueCertificateResponse, JoinError> {
        if !over_tls {
            return Err(JoinError::NotOverTls);
        }
        if r.node_id == 0 {
            return Err(JoinError::BadNodeId);
        }
        let token = JoinToken::parse(&r.join_token).map_err(JoinError::BadInput)?;
        let id = &self.identity;
        let (ca_pem, ca_key) = id.ca_key()?;
        let fp = tls::fingerprint(&ca_pem).map_err(JoinError::Tls)?;
        if fp != token.ca_fingerprint {
            return Err(JoinError::OtherCluster);
        }
        // Spending the token goes through Raft, so it is spent once.
        id.cluster
            .write(Command::UseJoinToken {
                id: token.id.clone(),
                hash: token.hash(),
                node: r.node_id,
            })
            .await?;
        let cert =
            tls::sign_node(&ca_pem, &ca_key, &r.csr_pem, r.node_id).map_err(JoinError::BadInput)?;
        let master_key = if r.want_master_key {
            id.keys
                .kek()
                .map_err(|e| JoinError::Precondition(e.to_string()))?
                .export_hex()
        } else {
            String::new()
        };
        tracing::info!(node = r.node_id, token = %token.id, "issued a cluster certificate to a joining node");
        Ok(IssueCertificateResponse {
            cert_pem: cert,
            ca_pem,
            master_key,
        })
    }
}

#[tonic::async_trait]
impl ClusterJoin for JoinService {
    async fn get_cluster_ca(
        &self,
        _req: Request<GetClusterCaRequest>,
    ) -> Result<Response<GetClusterCaResponse>, Status> {
        if self.identity.tls.insecure() {
            return Err(ApiError::from(JoinError::Precondition(
                "this node's peer traffic is plain (--insecure): join without --join-token, with --insecure".into(),
            ))
            .into());
        }
        let ca = self.identity.stored_ca().map_err(ApiError::from)?;
        Ok(Response::new(GetClusterCaResponse {
            ca_pem: ca.cert_pem,
        }))
    }

    async fn issue_certificate(
        &self,
        req: Request<IssueCertificateRequest>,
    ) -> Result<Response<IssueCertificateResponse>, Status> {
        let over_tls = req
            .extensions()
            .get::<tls::ConnInfo>()
            .is_some_and(|c| c.tls);
        let r = self
            .issue(over_tls, req.into_inner())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(r))
    }
}
