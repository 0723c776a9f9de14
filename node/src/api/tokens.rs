//! `TokenService` (access tokens for private containers) and
//! `ApiKeyService` (API keys).

use rouse_proto::v1 as pb;
use rouse_proto::v1::token_service_server::TokenService;
use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::service::Api;
use crate::state::validate;
use crate::state::Command;

type ApiResult<T> = Result<Response<T>, Status>;

/// Longest token lifetime.
const MAX_TOKEN_SECS: u64 = 10 * 365 * 24 * 3600;
const DEFAULT_TOKEN_SECS: u64 = 365 * 24 * 3600;

#[tonic::async_trait]
impl TokenService for Api {
    async fn create(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> ApiResult<pb::CreateTokenResponse> {
        self.require_ns(&req, &req.get_ref().namespace)?;
        let r = req.into_inner();
        let run = async {
            validate::dns_label("namespace", &r.namespace)?;
            let container = if r.container.is_empty() {
                None
            } else {
                validate::dns_label("container", &r.container)?;
                Some(r.container.clone())
            };
            let secs = if r.expires_in_seconds == 0 {
                DEFAULT_TOKEN_SECS
            } else {
                r.expires_in_seconds
            };
            if secs > MAX_TOKEN_SECS {
                return Err(ApiError::invalid(
                    "expires_in",
                    format!("{secs}s is above the maximum {MAX_TOKEN_SECS}s"),
                ));
            }
            self.cluster.read_barrier(false).await?;
            let (kid, private) = {
                let sm = self.cluster.sm.read();
                if !sm.data.namespaces.contains_key(&r.namespace) {
                    return Err(ApiError::NotFound(format!(
                        "namespace {:?} not found",
                        r.namespace
                    )));
                }
                if let Some(c) = &container {
                    if sm.data.container(&r.namespace, c).is_none() {
                        return Err(ApiError::NotFound(format!(
                            "container \"{}/{c}\" not found",
                            r.namespace
                        )));
                    }
                }
                crate::keys::signing::current_signer(&sm.data, &self.keys)?
            };
            let now = crate::cluster::now_ms();
            let id = hex::encode(rand::random::<[u8; 12]>());
            let exp_ms = now + secs * 1000;
            let claims = crate::tokens::Claims {
                iss: crate::tokens::ISSUER.into(),
                jti: id.clone(),
                ns: r.namespace.clone(),
                ct: container.clone(),
                iat: now / 1000,
                exp: exp_ms / 1000,
            };
            let token = crate::tokens::sign(&private, &kid, &claims)?;
            let record = crate::state::TokenRecord {
                id: id.clone(),
                namespace: r.namespace.clone(),
                container,
                expires_at_ms: (exp_ms / 1000) * 1000,
                created_at_ms: now,
                revoked: false,
            };
            self.cluster.write(Command::CreateToken { record }).await?;
            Ok(pb::CreateTokenResponse {
                id,
                token,
                expires_at_ms: (exp_ms / 1000) * 1000,
            })
        };
        Ok(Response::new(run.await?))
    }

    async fn list(&self, req: Request<pb::ListTokensRequest>) -> ApiResult<pb::ListTokensResponse> {
        self.require_ns(&req, &req.get_ref().namespace)?;
        let r = req.into_inner();
        validate::dns_label("namespace", &r.namespace).map_err(ApiError::from)?;
        self.cluster
            .read_barrier(false)
            .await
            .map_err(ApiError::from)?;
        let sm = self.cluster.sm.read();
        let tokens = sm
            .data
            .tokens
            .values()
            .filter(|t| t.namespace == r.namespace)
            .map(|t| pb::TokenInfo {
                id: t.id.clone(),
                namespace: t.namespace.clone(),
                container: t.container.clone().unwrap_or_default(),
                expires_at_ms: t.expires_at_ms,
                revoked: t.revoked,
            })
            .collect();
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> ApiResult<pb::RevokeTokenResponse> {
        let token_ns = self
            .cluster
            .sm
            .read()
            .data
            .tokens
            .get(&req.get_ref().id)
            .map(|t| t.namespace.clone());
        match token_ns {
            Some(ns) => {
                self.require_ns(&req, &ns)?;
            }
            None => self.require_admin(&req)?,
        }
        let id = req.into_inner().id;
        if id.is_empty() {
            return Err(ApiError::invalid("id", "is required").into());
        }
        self.cluster
            .write(Command::RevokeToken { id })
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    async fn rotate_signing_key(
        &self,
        req: Request<pb::RotateSigningKeyRequest>,
    ) -> ApiResult<pb::RotateSigningKeyResponse> {
        self.require_admin(&req)?;
        let kid = crate::keys::signing::add_signing_key(&self.cluster, &self.keys)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::RotateSigningKeyResponse { kid }))
    }
}

// --------------------------------------------------------------- api keys

#[tonic::async_trait]
impl rouse_proto::v1::api_key_service_server::ApiKeyService for Api {
    async fn create(
        &self,
        req: Request<pb::CreateApiKeyRequest>,
    ) -> ApiResult<pb::CreateApiKeyResponse> {
        self.require_admin(&req)?;
        let r = req.into_inner();
        let namespace = match (r.admin, r.namespace.is_empty()) {
            (true, true) => None,
            (true, false) => {
                return Err(ApiError::invalid("namespace", "must be empty for an admin key").into())
            }
            (false, _) => {
                validate::dns_label("namespace", &r.namespace).map_err(ApiError::from)?;
                Some(r.namespace)
            }
        };
        let id = hex::encode(rand::random::<[u8; 8]>());
        let (key, record) = crate::auth::mint(&id, namespace, crate::cluster::now_ms());
        self.cluster
            .write(Command::CreateApiKey { key: record })
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::CreateApiKeyResponse { id, key }))
    }

    async fn list(
        &self,
        req: Request<pb::ListApiKeysRequest>,
    ) -> ApiResult<pb::ListApiKeysResponse> {
        self.require_admin(&req)?;
        let sm = self.cluster.sm.read();
        let keys = sm
            .data
            .api_keys
            .values()
            .map(|k| pb::ApiKeyInfo {
                id: k.id.clone(),
                namespace: k.namespace.clone().unwrap_or_default(),
                revoked: k.revoked,
                created_at_ms: k.created_at_ms,
                last_used_at_ms: k.last_used_at_ms,
                scope: match &k.namespace {
                    None => "admin".into(),
                    Some(ns) => format!("namespace:{ns}"),
                },
            })
            .collect();
        Ok(Response::new(pb::ListApiKeysResponse { keys }))
    }

    async fn revoke(
        &self,
        req: Request<pb::RevokeApiKeyRequest>,
    ) -> ApiResult<pb::RevokeApiKeyResponse> {
        self.require_admin(&req)?;
        let id = req.into_inner().id;
        self.cluster
            .write(Command::RevokeApiKey { id })
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::RevokeApiKeyResponse {}))
    }
}
