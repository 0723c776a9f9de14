//! The public gRPC API. Each handler validates its input, then reads
//! (through the linearizable read barrier) or proposes a command.
//!
//! ```text
//!  request ─▶ validate (INVALID_ARGUMENT naming the field)
//!          ─▶ read_barrier / write (forwarded to the leader if needed)
//!          ─▶ state machine answer ─▶ error::ApiError ─▶ tonic::Status
//! ```

pub mod convert;
pub mod error;
pub mod runtime;

use std::collections::BTreeMap;
use std::sync::Arc;

use openraft::ServerState;
use rouse_proto::v1 as pb;
use rouse_proto::v1::cluster_service_server::ClusterService;
use rouse_proto::v1::container_service_server::ContainerService;
use rouse_proto::v1::namespace_service_server::NamespaceService;
use rouse_proto::v1::secret_service_server::SecretService;
use rouse_proto::v1::token_service_server::TokenService;
use tonic::{Request, Response, Status};

use crate::cluster::{Cluster, ClusterError};
use crate::state::validate::{self, Invalid, RESERVED_ENV};
use crate::state::{Command, ContainerSpec, Rejection, Scope};
use convert::{privacy_from_pb, protocol_from_pb};
use error::ApiError;

type ApiResult<T> = Result<Response<T>, Status>;

/// How often a read-modify-write retries after a concurrent change.
const CONFLICT_RETRIES: usize = 5;

#[derive(Clone)]
pub struct Api {
    cluster: Arc<Cluster>,
}

impl Api {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        Api { cluster }
    }
}

fn stale(r: &Option<pb::ReadOptions>) -> bool {
    r.as_ref().is_some_and(|o| o.stale)
}

fn env_map(m: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

fn inv(field: &str, rule: impl Into<String>) -> ApiError {
    ApiError::Invalid(Invalid {
        field: field.into(),
        rule: rule.into(),
    })
}

// ---------------------------------------------------------------- secrets

/// Largest secret value.
const MAX_SECRET_BYTES: usize = 64 * 1024;

impl Api {
    /// Validates and seals `values` for `scope`; never logs them.
    fn seal(
        &self,
        field: &str,
        scope: &Scope,
        values: std::collections::HashMap<String, String>,
    ) -> Result<BTreeMap<String, crate::state::SealedSecret>, ApiError> {
        let names: BTreeMap<String, String> =
            values.keys().map(|k| (k.clone(), String::new())).collect();
        validate::env(field, &names, RESERVED_ENV)?;
        let dk = self.cluster.data_key()?;
        let mut out = BTreeMap::new();
        for (k, v) in values {
            if v.len() > MAX_SECRET_BYTES {
                return Err(inv(
                    &format!("{field}.{k}"),
                    format!("value is {} bytes; at most {MAX_SECRET_BYTES}", v.len()),
                ));
            }
            let sealed = dk
                .seal(v.as_bytes(), &crate::secrets::aad(scope.as_str(), &k))
                .map_err(|e| ApiError::Cluster(ClusterError::Raft(e.to_string())))?;
            out.insert(
                k,
                crate::state::SealedSecret {
                    sealed,
                    fingerprint: dk.fingerprint(&v),
                },
            );
        }
        Ok(out)
    }

    async fn set_secrets(
        &self,
        field: &str,
        scope: &Scope,
        values: std::collections::HashMap<String, String>,
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

    fn scope_of(s: &Option<pb::SecretScope>) -> Result<Scope, ApiError> {
        let s = s
            .as_ref()
            .ok_or_else(|| inv("scope", "is required (a namespace, optionally a container)"))?;
        validate::dns_label("scope.namespace", &s.namespace)?;
        if s.container.is_empty() {
            Ok(Scope::namespace(&s.namespace))
        } else {
            validate::dns_label("scope.container", &s.container)?;
            Ok(Scope::of(&s.namespace, Some(&s.container)))
        }
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

// ----------------------------------------------------------------- access

impl Api {
    /// The caller, from `authorization: Bearer …`.
    pub(crate) fn principal<T>(&self, req: &Request<T>) -> Result<crate::auth::Principal, Status> {
        let bearer = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let sm = self.cluster.sm.read();
        crate::auth::authenticate(&sm.data, bearer)
            .map_err(|e| Status::unauthenticated(e.to_string()))
    }

    pub(crate) fn require_admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        match self.principal(req)? {
            crate::auth::Principal::Admin => Ok(()),
            _ => Err(Status::permission_denied(
                crate::auth::AuthError::AdminOnly.to_string(),
            )),
        }
    }

    pub(crate) fn require_ns<T>(
        &self,
        req: &Request<T>,
        ns: &str,
    ) -> Result<crate::auth::Principal, Status> {
        let p = self.principal(req)?;
        match &p {
            crate::auth::Principal::Namespace(n) if n != ns => Err(Status::permission_denied(
                crate::auth::AuthError::Scope(n.clone()).to_string(),
            )),
            _ => Ok(p),
        }
    }
}

/// The namespace a secret scope names ("" when absent), for the access check.
fn scope_namespace(s: &Option<pb::SecretScope>) -> &str {
    s.as_ref().map_or("", |s| s.namespace.as_str())
}

// ---------------------------------------------------------------- cluster

#[tonic::async_trait]
impl ClusterService for Api {
    async fn status(
        &self,
        _req: Request<pb::ClusterStatusRequest>,
    ) -> ApiResult<pb::ClusterStatus> {
        self.require_admin(&_req)?;
        let m = self.cluster.raft.metrics().borrow().clone();
        let members = self
            .cluster
            .members()
            .await
            .into_iter()
            .map(pb::Member::from)
            .collect();
        Ok(Response::new(pb::ClusterStatus {
            leader_id: m.current_leader.unwrap_or(0),
            term: m.current_term,
            members,
            peer_tls: !self.cluster.tls.insecure(),
            master_key_id: self
                .cluster
                .sm
                .read()
                .data
                .kek_id
                .clone()
                .unwrap_or_default(),
        }))
    }

    async fn rotate_keys(
        &self,
        req: Request<pb::RotateKeysRequest>,
    ) -> ApiResult<pb::RotateKeysResponse> {
        self.require_admin(&req)?;
        let r = crate::keys::rotate(&self.cluster)
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
        let secs = req.into_inner().ttl_secs;
        let ttl = match secs {
            0 => crate::join::DEFAULT_TOKEN_TTL,
            s => std::time::Duration::from_secs(s),
        };
        if ttl < std::time::Duration::from_secs(10) || ttl > crate::join::MAX_TOKEN_TTL {
            return Err(inv("ttl_secs", "must be between 10 s and 7 days").into());
        }
        let (token, expires_at_ms) = crate::join::mint(&self.cluster, ttl)
            .await
            .map_err(ApiError::from)?;
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
            return Err(inv("id", "must be at least 1").into());
        }
        self.cluster.remove(id).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::RemoveNodeResponse {}))
    }

    async fn node_info(
        &self,
        _req: Request<pb::NodeInfoRequest>,
    ) -> ApiResult<pb::NodeInfoResponse> {
        self.require_admin(&_req)?;
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
        }))
    }
}

// ------------------------------------------------------------------ nodes

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
        match self
            .cluster
            .write(Command::SetNodeState {
                id,
                down: None,
                cordoned,
                draining,
            })
            .await
        {
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
impl rouse_proto::v1::node_service_server::NodeService for Api {
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

// ------------------------------------------------------------- namespaces

impl Api {
    async fn update_namespace(
        &self,
        r: pb::UpdateNamespaceRequest,
    ) -> Result<pb::Namespace, ApiError> {
        validate::dns_label("name", &r.name)?;
        if !r.secrets.is_empty() {
            self.seal("secrets", &Scope::namespace(&r.name), r.secrets.clone())?;
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
        self.set_secrets("secrets", &Scope::namespace(&r.name), r.secrets)
            .await?;
        self.get_namespace_local(&r.name)
    }

    fn get_namespace_local(&self, name: &str) -> Result<pb::Namespace, ApiError> {
        let sm = self.cluster.sm.read();
        sm.data
            .namespaces
            .get(name)
            .map(|n| pb::Namespace {
                secret_names: sm.data.secret_names(&crate::state::Scope::namespace(name)),
                ..pb::Namespace::from(n)
            })
            .ok_or_else(|| ApiError::NotFound(format!("namespace {name:?} not found")))
    }
}

#[tonic::async_trait]
impl NamespaceService for Api {
    async fn create(&self, req: Request<pb::CreateNamespaceRequest>) -> ApiResult<pb::Namespace> {
        self.require_admin(&req)?;
        let r = req.into_inner();
        let run = async {
            validate::dns_label("name", &r.name)?;
            let env = env_map(r.env);
            validate::env("env", &env, &[])?;
            if !r.secrets.is_empty() {
                // Check the secrets before anything is written.
                self.seal("secrets", &Scope::namespace(&r.name), r.secrets.clone())?;
            }
            self.cluster
                .write(Command::CreateNamespace {
                    name: r.name.clone(),
                    env,
                })
                .await?;
            self.set_secrets("secrets", &Scope::namespace(&r.name), r.secrets)
                .await?;
            self.get_namespace_local(&r.name)
        };
        Ok(Response::new(run.await?))
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
                secret_names: sm
                    .data
                    .secret_names(&crate::state::Scope::namespace(&n.name)),
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
}

// ------------------------------------------------------------- containers

impl Api {
    async fn deploy(&self, r: pb::DeployContainerRequest) -> Result<pb::Container, ApiError> {
        validate::dns_label("namespace", &r.namespace)?;
        validate::dns_label("name", &r.name)?;
        let scope = Scope::of(&r.namespace, Some(&r.name));
        if !r.secrets.is_empty() {
            self.seal("secrets", &scope, r.secrets.clone())?;
        }
        let privacy = privacy_from_pb(r.privacy).map_err(|e| inv("privacy", e))?;
        let protocol = protocol_from_pb(r.protocol).map_err(|e| inv("protocol", e))?;
        let env_patch = env_map(r.env.clone());
        validate::env("env", &env_patch, RESERVED_ENV)?;
        let cap = self.cluster.config.scale_cap;
        for attempt in 0.. {
            self.cluster.read_barrier(false).await?;
            let (ns_exists, current) = {
                let sm = self.cluster.sm.read();
                (
                    sm.data.namespaces.contains_key(&r.namespace),
                    sm.data.container(&r.namespace, &r.name).cloned(),
                )
            };
            if !ns_exists {
                return Err(ApiError::NotFound(format!(
                    "namespace {:?} not found",
                    r.namespace
                )));
            }
            let expected = current.as_ref().map_or(0, |c| c.revision);
            let mut spec = match current {
                Some(c) => c.spec,
                None => {
                    let image = r.image.clone().ok_or_else(|| {
                        inv(
                            "image",
                            "is required to create a container (an OCI image reference)",
                        )
                    })?;
                    ContainerSpec::with_image(image)
                }
            };
            if let Some(v) = &r.image {
                spec.image = v.clone();
            }
            if let Some(v) = r.port {
                spec.port = v;
            }
            if r.replace_env {
                spec.env = env_patch.clone();
            } else {
                spec.env.extend(env_patch.clone());
            }
            macro_rules! set {
                ($($f:ident <- $g:ident),*) => { $(if let Some(v) = r.$g { spec.$f = v; })* };
            }
            set!(cpu_mvcpu <- cpu_mvcpu, memory_mb <- memory_mb, min_scale <- min_scale, max_scale <- max_scale,
                 max_concurrency <- max_concurrency, timeout_secs <- timeout_seconds,
                 scale_to_zero_after_secs <- scale_to_zero_after_seconds);
            if let Some(p) = privacy {
                spec.privacy = p;
            }
            if let Some(p) = protocol {
                spec.protocol = p;
            }
            if let Some(h) = &r.health_path {
                spec.health_path = (!h.is_empty()).then(|| h.clone());
            }
            if let Some(r) = &r.region {
                if r.is_empty() {
                    spec.region = None;
                } else {
                    validate::dns_label("region", r)?;
                    spec.region = Some(r.clone());
                }
            }
            validate::container_spec(&spec, cap)?;
            let cmd = Command::PutContainer {
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                spec,
                expected_revision: Some(expected),
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
        self.set_secrets("secrets", &scope, r.secrets.clone())
            .await?;
        self.get_container_local(&r.namespace, &r.name)
    }

    fn get_container_local(&self, ns: &str, name: &str) -> Result<pb::Container, ApiError> {
        let sm = self.cluster.sm.read();
        sm.data
            .container(ns, name)
            .map(|c| convert::container_with_instances(c, &sm.data))
            .ok_or_else(|| ApiError::NotFound(format!("container \"{ns}/{name}\" not found")))
    }
}

#[tonic::async_trait]
impl ContainerService for Api {
    type LogsStream = runtime::LogStream;

    async fn logs(&self, req: Request<pb::LogsRequest>) -> ApiResult<Self::LogsStream> {
        self.require_ns(&req, &req.get_ref().namespace)?;
        let bearer = req.metadata().get("authorization").cloned();
        Ok(Response::new(
            self.logs_stream(req.into_inner(), bearer).await?,
        ))
    }

    async fn deploy(&self, req: Request<pb::DeployContainerRequest>) -> ApiResult<pb::Container> {
        self.require_ns(&req, &req.get_ref().namespace)?;
        Ok(Response::new(Api::deploy(self, req.into_inner()).await?))
    }

    async fn get(&self, req: Request<pb::GetContainerRequest>) -> ApiResult<pb::Container> {
        self.require_ns(&req, &req.get_ref().namespace)?;
        let r = req.into_inner();
        let run = async {
            validate::dns_label("namespace", &r.namespace)?;
            validate::dns_label("name", &r.name)?;
            self.cluster.read_barrier(stale(&r.read)).await?;
            self.get_container_local(&r.namespace, &r.name)
        };
        Ok(Response::new(run.await?))
    }

    async fn list(
        &self,
        req: Request<pb::ListContainersRequest>,
    ) -> ApiResult<pb::ListContainersResponse> {
        let who = self.principal(&req)?;
        if !req.get_ref().namespace.is_empty() {
            self.require_ns(&req, &req.get_ref().namespace)?;
        }
        let r = req.into_inner();
        let run = async {
            if !r.namespace.is_empty() {
                validate::dns_label("namespace", &r.namespace)?;
            }
            self.cluster.read_barrier(stale(&r.read)).await?;
            let sm = self.cluster.sm.read();
            if !r.namespace.is_empty() && !sm.data.namespaces.contains_key(&r.namespace) {
                return Err(ApiError::NotFound(format!(
                    "namespace {:?} not found",
                    r.namespace
                )));
            }
            let containers = sm
                .data
                .containers
                .values()
                .filter(|c| r.namespace.is_empty() || c.namespace == r.namespace)
                .filter(|c| who.may(&c.namespace))
                .map(|c| convert::container_with_instances(c, &sm.data))
                .collect();
            Ok(pb::ListContainersResponse { containers })
        };
        Ok(Response::new(run.await?))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteContainerRequest>,
    ) -> ApiResult<pb::DeleteContainerResponse> {
        self.require_ns(&req, &req.get_ref().namespace)?;
        let r = req.into_inner();
        let run = async {
            validate::dns_label("namespace", &r.namespace)?;
            validate::dns_label("name", &r.name)?;
            self.cluster
                .write(Command::DeleteContainer {
                    namespace: r.namespace,
                    name: r.name,
                })
                .await?;
            Ok::<_, ApiError>(pb::DeleteContainerResponse {})
        };
        Ok(Response::new(run.await?))
    }
}

// ----------------------------------------------------- secrets and tokens

#[tonic::async_trait]
impl SecretService for Api {
    async fn set(&self, req: Request<pb::SetSecretsRequest>) -> ApiResult<pb::SetSecretsResponse> {
        self.require_ns(&req, scope_namespace(&req.get_ref().scope))?;
        let r = req.into_inner();
        let scope = Self::scope_of(&r.scope)?;
        if r.values.is_empty() {
            return Err(inv("values", "give at least one KEY=VALUE").into());
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
        let scope = Self::scope_of(&req.into_inner().scope)?;
        self.cluster
            .read_barrier(false)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListSecretsResponse {
            secrets: self.secret_infos(&scope),
        }))
    }
    async fn delete(
        &self,
        req: Request<pb::DeleteSecretRequest>,
    ) -> ApiResult<pb::DeleteSecretResponse> {
        self.require_ns(&req, scope_namespace(&req.get_ref().scope))?;
        let r = req.into_inner();
        let scope = Self::scope_of(&r.scope)?;
        self.cluster
            .write(Command::DeleteSecret { scope, key: r.key })
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::DeleteSecretResponse {}))
    }
}

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
                return Err(inv(
                    "expires_in",
                    format!("{secs}s is above the maximum {MAX_TOKEN_SECS}s"),
                ));
            }
            self.cluster.read_barrier(false).await?;
            let key = {
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
                sm.data.signing_keys.last().cloned()
            };
            let key = key.ok_or_else(|| {
                ApiError::Cluster(ClusterError::Precondition(
                    "no token-signing key yet; retry in a moment".into(),
                ))
            })?;
            let dk = self.cluster.data_key()?;
            let private = dk
                .open(
                    &key.sealed_private,
                    &format!("rouse/signing-key/{}", key.kid),
                )
                .map_err(|e| {
                    ApiError::Cluster(ClusterError::Precondition(format!("signing key: {e}")))
                })?;
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
            let token = crate::tokens::sign(&private, &key.kid, &claims)
                .map_err(|e| ApiError::Cluster(ClusterError::Raft(e)))?;
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
            return Err(inv("id", "is required").into());
        }
        self.cluster
            .write(Command::RevokeToken { id })
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    async fn rotate_signing_key(
        &self,
        _req: Request<pb::RotateSigningKeyRequest>,
    ) -> ApiResult<pb::RotateSigningKeyResponse> {
        self.require_admin(&_req)?;
        let kid = crate::server::add_signing_key(&self.cluster)
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
        let ns = req.into_inner().namespace;
        validate::dns_label("namespace", &ns).map_err(ApiError::from)?;
        let id = hex::encode(rand::random::<[u8; 8]>());
        let (key, record) = crate::auth::mint(&id, Some(ns), crate::cluster::now_ms());
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
        if id == crate::auth::ADMIN_ID {
            return Err(inv("id", "the bootstrap admin key cannot be revoked").into());
        }
        self.cluster
            .write(Command::RevokeApiKey { id })
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::RevokeApiKeyResponse {}))
    }
}
