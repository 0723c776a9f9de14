//! `NamespaceService`: tenants, their env vars and namespace-wide secrets.

use rouse_proto::v1 as pb;
use rouse_proto::v1::namespace_service_server::NamespaceService;
use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::input::{env_map, stale, CONFLICT_RETRIES};
use super::service::Api;
use crate::cluster::ClusterError;
use crate::state::validate;
use crate::state::{Command, Rejection, Scope};

type ApiResult<T> = Result<Response<T>, Status>;

impl Api {
    async fn create_namespace(
        &self,
        r: pb::CreateNamespaceRequest,
    ) -> Result<pb::Namespace, ApiError> {
        validate::dns_label("name", &r.name)?;
        let env = env_map(r.env);
        validate::env("env", &env, &[])?;
        let scope = Scope::namespace(&r.name);
        if !r.secrets.is_empty() {
            // Check the secrets before anything is written.
            self.seal("secrets", &scope, r.secrets.clone())?;
        }
        self.cluster
            .write(Command::CreateNamespace {
                name: r.name.clone(),
                env,
            })
            .await?;
        self.set_secrets("secrets", &scope, r.secrets).await?;
        self.get_namespace_local(&r.name)
    }

    async fn update_namespace(
        &self,
        r: pb::UpdateNamespaceRequest,
    ) -> Result<pb::Namespace, ApiError> {
        validate::dns_label("name", &r.name)?;
        let scope = Scope::namespace(&r.name);
        if !r.secrets.is_empty() {
            self.seal("secrets", &scope, r.secrets.clone())?;
        }
        let patch = env_map(r.env);
        validate::env("env", &patch, &[])?;
        for attempt in 0.. {
            self.cluster.read_barrier(false).await?;
            let current = self.cluster.sm.read().data.namespaces.get(&r.name).cloned();
            let current = current
                .ok_or_else(|| ApiError::NotFound(format!("namespace {:?} not found", r.name)))?;
            let env = if r.replace_env {
                patch.clone()
            } else {
                let mut e = current.env.clone();
                e.extend(patch.clone());
                e
            };
            validate::env("env", &env, &[])?;
            let cmd = Command::UpdateNamespace {
                name: r.name.clone(),
                env,
                expected_revision: Some(current.revision),
            };
            match self.cluster.write(cmd).await {
                Err(ClusterError::Rejected(Rejection::Conflict(_)))
                    if attempt < CONFLICT_RETRIES =>
                {
                    continue
                }
                res => {
                    res?;
                    break;
                }
            }
        }
        self.set_secrets("secrets", &scope, r.secrets).await?;
        self.get_namespace_local(&r.name)
    }

    fn get_namespace_local(&self, name: &str) -> Result<pb::Namespace, ApiError> {
        let sm = self.cluster.sm.read();
        sm.data
            .namespaces
            .get(name)
            .map(|n| pb::Namespace {
                secret_names: sm.data.secret_names(&Scope::namespace(name)),
                ..pb::Namespace::from(n)
            })
            .ok_or_else(|| ApiError::NotFound(format!("namespace {name:?} not found")))
    }
}

#[tonic::async_trait]
impl NamespaceService for Api {
    async fn create(&self, req: Request<pb::CreateNamespaceRequest>) -> ApiResult<pb::Namespace> {
        self.require_admin(&req)?;
        Ok(Response::new(
            self.create_namespace(req.into_inner()).await?,
        ))
    }

    async fn update(&self, req: Request<pb::UpdateNamespaceRequest>) -> ApiResult<pb::Namespace> {
        self.require_ns(&req, &req.get_ref().name)?;
        Ok(Response::new(
            self.update_namespace(req.into_inner()).await?,
        ))
    }

    async fn get(&self, req: Request<pb::GetNamespaceRequest>) -> ApiResult<pb::Namespace> {
        self.require_ns(&req, &req.get_ref().name)?;
        let r = req.into_inner();
        validate::dns_label("name", &r.name).map_err(ApiError::from)?;
        self.cluster
            .read_barrier(stale(&r.read))
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(self.get_namespace_local(&r.name)?))
    }

    async fn list(
        &self,
        req: Request<pb::ListNamespacesRequest>,
    ) -> ApiResult<pb::ListNamespacesResponse> {
        let who = self.principal(&req)?;
        let r = req.into_inner();
        self.cluster
            .read_barrier(stale(&r.read))
            .await
            .map_err(ApiError::from)?;
        let sm = self.cluster.sm.read();
        let namespaces = sm
            .data
            .namespaces
            .values()
            .filter(|n| who.may(&n.name))
            .map(|n| pb::Namespace {
                secret_names: sm.data.secret_names(&Scope::namespace(&n.name)),
                ..pb::Namespace::from(n)
            })
            .collect();
        Ok(Response::new(pb::ListNamespacesResponse { namespaces }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteNamespaceRequest>,
    ) -> ApiResult<pb::DeleteNamespaceResponse> {
        self.require_admin(&req)?;
        let r = req.into_inner();
        validate::dns_label("name", &r.name).map_err(ApiError::from)?;
        self.cluster
            .write(Command::DeleteNamespace { name: r.name })
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::DeleteNamespaceResponse {}))
    }

    async fn set_quota(&self, req: Request<pb::SetQuotaRequest>) -> ApiResult<pb::Namespace> {
        self.require_admin(&req)?;
        let r = req.into_inner();
        validate::dns_label("namespace", &r.namespace).map_err(ApiError::from)?;
        self.cluster
            .write(Command::SetQuota {
                namespace: r.namespace.clone(),
                quota: r.quota.unwrap_or_default().into(),
            })
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(self.get_namespace_local(&r.namespace)?))
    }
}
