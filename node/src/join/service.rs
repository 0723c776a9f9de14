//! The join service, served to callers without a cluster certificate: the
//! CA certificate (public), and a certificate for a valid join token.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use rouse_proto::peer::cluster_join_server::ClusterJoin;
use rouse_proto::peer::{
    GetClusterCaRequest, GetClusterCaResponse, IssueCertificateRequest, IssueCertificateResponse,
};
use tonic::{Request, Response, Status};

use super::error::JoinError;
use super::identity::Identity;
use crate::api::error::ApiError;
use crate::state::{Command, IssuedCert, NodeId, Rejection, StateData};
use crate::tls::{self, JoinToken};

pub struct JoinService {
    identity: Arc<Identity>,
    /// Join attempts per source address: joins are rare, so a caller
    /// trying secrets is slowed to a handful a minute.
    attempts: governor::DefaultKeyedRateLimiter<IpAddr>,
}

/// Join attempts a source may make per minute (a burst of as many).
const ATTEMPTS_PER_MINUTE: u32 = 10;

impl JoinService {
    pub fn new(identity: Arc<Identity>) -> Self {
        let per_minute = NonZeroU32::new(ATTEMPTS_PER_MINUTE).unwrap_or(NonZeroU32::MIN);
        JoinService {
            identity,
            attempts: governor::RateLimiter::keyed(governor::Quota::per_minute(per_minute)),
        }
    }

    async fn issue(
        &self,
        conn: Option<&tls::ConnInfo>,
        r: IssueCertificateRequest,
    ) -> Result<IssueCertificateResponse, JoinError> {
        if !conn.is_some_and(|c| c.tls) {
            return Err(JoinError::NotOverTls);
        }
        if let Some(ip) = conn.and_then(|c| c.remote).map(|a| a.ip()) {
            if self.attempts.check_key(&ip).is_err() {
                return Err(JoinError::TooManyAttempts(ip));
            }
            // Forget quiet sources now and then.
            if self.attempts.len() > 10_000 {
                self.attempts.retain_recent();
            }
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
        let key_sha256 = tls::csr_key_sha256(&r.csr_pem).map_err(JoinError::BadInput)?;
        // The token is checked against the replicated state (up to date)
        // before anything is proposed: a caller without a valid token
        // writes nothing.
        id.cluster.read_barrier(false).await?;
        let recorded = {
            let sm = id.cluster.sm.read();
            check_token(
                &sm.data,
                &token,
                r.node_id,
                &key_sha256,
                crate::cluster::now_ms(),
            )?
        };
        let cert = match recorded {
            // A retry after a lost answer, with the same key: the same
            // certificate, nothing new issued.
            Some(cert_pem) => cert_pem,
            None => {
                let cert = tls::sign_node(&ca_pem, &ca_key, &r.csr_pem, r.node_id)
                    .map_err(JoinError::BadInput)?;
                let cert_sha256 = tls::fingerprint(&cert).map_err(JoinError::Tls)?;
                // Spent once, with the certificate recorded, through Raft.
                id.cluster
                    .write(Command::UseJoinToken {
                        id: token.id.clone(),
                        hash: token.hash(),
                        node: r.node_id,
                        issued: Some(IssuedCert {
                            cert_sha256,
                            cert_pem: cert.clone(),
                            key_sha256,
                        }),
                    })
                    .await?;
                cert
            }
        };
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

/// Whether `token` may get `node` a certificate for the key `key_sha256`:
/// `Ok(None)` to issue one, `Ok(Some(pem))` to hand back the one already
/// issued for that same key (a retried join).
fn check_token(
    state: &StateData,
    token: &JoinToken,
    node: NodeId,
    key_sha256: &str,
    now_ms: u64,
) -> Result<Option<String>, JoinError> {
    let refused =
        |why: &str| JoinError::Refused(Rejection::FailedPrecondition(format!("join_token: {why}")));
    let t = state
        .join_tokens
        .get(&token.id)
        .filter(|t| crate::secrets::constant_time_eq(t.hash.as_bytes(), token.hash().as_bytes()))
        .ok_or_else(|| refused("unknown token"))?;
    match (t.used_by, &t.issued) {
        (None, _) if now_ms >= t.expires_ms => Err(refused(
            "the token has expired; mint a new one with `rouse cluster join-token`",
        )),
        (None, _) => Ok(None),
        (Some(n), Some(i)) if n == node && i.key_sha256 == key_sha256 => {
            Ok(Some(i.cert_pem.clone()))
        }
        (Some(n), _) => Err(refused(&format!(
            "the token was already used (by node {n}); join tokens are spent once"
        ))),
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
        let conn = req.extensions().get::<tls::ConnInfo>().cloned();
        let r = self
            .issue(conn.as_ref(), req.into_inner())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(r))
    }
}
