//! `ContainerService`: deploy (create or update the settings given), get,
//! list, delete, and logs (from whichever node runs an instance).

use rouse_proto::v1 as pb;
use rouse_proto::v1::container_service_server::ContainerService;
use tonic::{Request, Response, Status};

use super::convert::{self, privacy_from_pb, protocol_from_pb};
use super::error::ApiError;
use super::input::{env_map, stale, CONFLICT_RETRIES};
use super::service::Api;
use crate::cluster::ClusterError;
use crate::state::validate::{self, RESERVED_ENV};
use crate::state::{Command, ContainerSpec, Rejection, Scope};

type ApiResult<T> = Result<Response<T>, Status>;

/// The spec a deploy request asks for: `current` (None: a new container)
/// with the request's settings on top, validated. Pure, so that any
/// request (however malformed) gets an answer naming the field, never a
/// panic.
pub fn spec_for(
    current: Option<ContainerSpec>,
    r: &pb::DeployContainerRequest,
    cap: u32,
) -> Result<ContainerSpec, ApiError> {
    let privacy = privacy_from_pb(r.privacy).map_err(|e| ApiError::invalid("privacy", e))?;
    let protocol = protocol_from_pb(r.protocol).map_err(|e| ApiError::invalid("protocol", e))?;
    let env_patch = env_map(r.env.clone());
    validate::env("env", &env_patch, RESERVED_ENV)?;
    let mut spec = match current {
        Some(c) => c,
        None => {
            let image = r.image.clone().ok_or_else(|| {
                ApiError::invalid(
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
        spec.env = env_patch;
    } else {
        spec.env.extend(env_patch);
    }
    macro_rules! set {
        ($($f:ident <- $g:ident),*) => { $(if let Some(v) = r.$g { spec.$f = v; })* };
    }
    set!(cpu_mvcpu <- cpu_mvcpu, memory_mb <- memory_mb, min_scale <- min_scale, max_scale <- max_scale,
         max_concurrency <- max_concurrency, timeout_secs <- timeout_seconds,
         scale_to_zero_after_secs <- scale_to_zero_after_seconds,
         read_only_rootfs <- read_only_rootfs);
    if let Some(p) = privacy {
        spec.privacy = p;
    }
    if let Some(p) = protocol {
        spec.protocol = p;
    }
    if let Some(h) = &r.health_path {
        spec.health_path = (!h.is_empty()).then(|| h.clone());
    }
    if let Some(v) = &r.routing {
        spec.routing = crate::state::Routing::parse(v).ok_or_else(|| {
            ApiError::invalid(
                "routing",
                format!("{v:?} is neither \"local-first\" nor \"any\""),
            )
        })?;
    }
    if let Some(region) = &r.region {
        if region.is_empty() {
            spec.region = None;
        } else {
            validate::dns_label("region", region)?;
            spec.region = Some(region.clone());
        }
    }
    validate::container_spec(&spec, cap)?;
    Ok(spec)
}

impl Api {
    async fn deploy_container(
        &self,
        r: pb::DeployContainerRequest,
    ) -> Result<pb::Container, ApiError> {
        validate::dns_label("namespace", &r.namespace)?;
        validate::dns_label("name", &r.name)?;
        let scope = Scope::of(&r.namespace, Some(&r.name));
        if !r.secrets.is_empty() {
            self.seal("secrets", &scope, r.secrets.clone())?;
        }
        let cap = self.config.scale_cap;
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
            let spec = spec_for(current.map(|c| c.spec), &r, cap)?;
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
    type LogsStream = super::logs::LogStream;

    async fn logs(&self, req: Request<pb::LogsRequest>) -> ApiResult<Self::LogsStream> {
        self.require_ns(&req, &req.get_ref().namespace)?;
        let bearer = req.metadata().get("authorization").cloned();
        Ok(Response::new(
            self.logs_stream(req.into_inner(), bearer).await?,
        ))
    }

    async fn deploy(&self, req: Request<pb::DeployContainerRequest>) -> ApiResult<pb::Container> {
        self.require_ns(&req, &req.get_ref().namespace)?;
        Ok(Response::new(
            self.deploy_container(req.into_inner()).await?,
        ))
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
        let who = self.list_scope(&req, &req.get_ref().namespace)?;
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
