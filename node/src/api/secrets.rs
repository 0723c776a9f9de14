//! Secrets: sealed by the node that receives them (never logged, never in
//! Raft in plain text), shown only as names, versions and fingerprints.

use std::collections::{BTreeMap, HashMap};

use rouse_proto::v1 as pb;
use rouse_proto::v1::secret_service_server::SecretService;
use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::service::Api;
use crate::state::validate::{self, RESERVED_ENV};
use crate::state::{Command, Scope, SealedSecret};

type ApiResult<T> = Result<Response<T>, Status>;

/// Largest secret value.
const MAX_SECRET_BYTES: usize = 64 * 1024;

impl Api {
    /// Validates and seals `values` for `scope`; never logs them.
    pub(super) fn seal(
        &self,
        field: &str,
        scope: &Scope,
        values: HashMap<String, String>,
    ) -> Result<BTreeMap<String, SealedSecret>, ApiError> {
        let names: BTreeMap<String, String> =
            values.keys().map(|k| (k.clone(), String::new())).collect();
        validate::env(field, &names, RESERVED_ENV)?;
        let dk = self.keys.data_key(&self.cluster.sm.read().data)?;
        let mut out = BTreeMap::new();
        for (k, v) in values {
            if v.len() > MAX_SECRET_BYTES {
                return Err(ApiError::invalid(
                    &format!("{field}.{k}"),
                    format!("value is {} bytes; at most {MAX_SECRET_BYTES}", v.len()),
                ));
            }
            let sealed = dk
                .seal(v.as_bytes(), &crate::secrets::aad(scope.as_str(), &k))
                .map_err(crate::keys::KeyError::from)?;
            out.insert(
                k,
                SealedSecret {
                    sealed,
                    fingerprint: dk.fingerprint(&v),
                },
            );
        }
        Ok(out)
    }

    /// Seals and writes `values` (nothing when empty).
    pub(super) async fn set_secrets(
        &self,
        field: &str,
        scope: &Scope,
        values: HashMap<String, String>,
    ) -> Result<(), ApiError> {
        if values.is_empty() {
            return Ok(());
        }
        let entries = self.seal(field, scope, values)?;
        self.cluster
            .write(Command::SetSecrets {
                scope: scope.clone(),
                entries,
            })
            .await?;
        Ok(())
    }

    fn secret_infos(&self, scope: &Scope) -> Vec<pb::SecretInfo> {
        let sm = self.cluster.sm.read();
        sm.data
            .secrets
            .get(scope)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| pb::SecretInfo {
                        key: k.clone(),
                        version: v.version,
                        value_sha256: v.fingerprint.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The scope a request names, validated.
fn scope_of(s: &Option<pb::SecretScope>) -> Result<Scope, ApiError> {
    let s = s.as_ref().ok_or_else(|| {
        ApiError::invalid("scope", "is required (a namespace, optionally a container)")
    })?;
    validate::dns_label("scope.namespace", &s.namespace)?;
    if s.container.is_empty() {
        Ok(Scope::namespace(&s.namespace))
    } else {
        validate::dns_label("scope.container", &s.container)?;
        Ok(Scope::of(&s.namespace, Some(&s.container)))
    }
}

/// The namespace a secret scope names ("" when absent), for the access check.
fn scope_namespace(s: &Option<pb::SecretScope>) -> &str {
    s.as_ref().map_or("", |s| s.namespace.as_str())
}

#[tonic::async_trait]
impl SecretService for Api {
    async fn set(&self, req: Request<pb::SetSecretsRequest>) -> ApiResult<pb::SetSecretsResponse> {
        self.require_ns(&req, scope_namespace(&req.get_ref().scope))?;
        let r = req.into_inner();
        let scope = scope_of(&r.scope)?;
        if r.values.is_empty() {
            return Err(ApiError::invalid("values", "give at least one KEY=VALUE").into());
        }
        self.set_secrets("values", &scope, r.values).await?;
        Ok(Response::new(pb::SetSecretsResponse {
            secrets: self.secret_infos(&scope),
        }))
    }

    async fn list(
        &self,
        req: Request<pb::ListSecretsRequest>,
    ) -> ApiResult<pb::ListSecretsResponse> {
        self.require_ns(&req, scope_namespace(&req.get_ref().scope))?;
        let scope = scope_of(&req.into_inner().scope)?;
        self.cluster
            .read_barrier(false)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListSecretsResponse {
            secrets: self.secret_infos(&scope),
        }))
    }

    async fn fingerprint(
        &self,
        req: Request<pb::SetSecretsRequest>,
    ) -> ApiResult<pb::SetSecretsResponse> {
        self.require_ns(&req, scope_namespace(&req.get_ref().scope))?;
        let r = req.into_inner();
        scope_of(&r.scope)?;
        let dk = self
            .keys
            .data_key(&self.cluster.sm.read().data)
            .map_err(ApiError::from)?;
        let mut secrets: Vec<pb::SecretInfo> = r
            .values
            .iter()
            .map(|(k, v)| pb::SecretInfo {
                key: k.clone(),
                version: 0,
                value_sha256: dk.fingerprint(v),
            })
            .collect();
        secrets.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Response::new(pb::SetSecretsResponse { secrets }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteSecretRequest>,
    ) -> ApiResult<pb::DeleteSecretResponse> {
        self.require_ns(&req, scope_namespace(&req.get_ref().scope))?;
        let r = req.into_inner();
        let scope = scope_of(&r.scope)?;
        self.cluster
            .write(Command::DeleteSecret { scope, key: r.key })
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::DeleteSecretResponse {}))
    }
}
