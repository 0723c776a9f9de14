//! Rust SDK for rouse.
//!
//! [`Client`] talks to any node's gRPC API; the node forwards writes to the
//! Raft leader, so callers never chase leaders. Reads are linearizable
//! unless a stale read is asked for.
//!
//! ```no_run
//! # async fn demo() -> Result<(), rouse_client::Error> {
//! let mut c = rouse_client::Client::connect("http://127.0.0.1:7070", None).await?;
//! c.create_namespace("shop", Default::default()).await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod apply;
pub mod manifest;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pb::api_key_service_client::ApiKeyServiceClient;
use pb::cluster_service_client::ClusterServiceClient;
use pb::container_service_client::ContainerServiceClient;
use pb::event_service_client::EventServiceClient;
use pb::image_service_client::ImageServiceClient;
use pb::namespace_service_client::NamespaceServiceClient;
use pb::node_service_client::NodeServiceClient;
use pb::secret_service_client::SecretServiceClient;
use pb::token_service_client::TokenServiceClient;
use pb::trigger_service_client::TriggerServiceClient;
use pb::usage_service_client::UsageServiceClient;
pub use rouse_proto::v1 as pb;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("endpoint {endpoint:?}: {message}")]
    Endpoint { endpoint: String, message: String },
    #[error("{}", .0.message())]
    Status(#[from] Status),
}

impl Error {
    /// The gRPC code, when the server answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status(s) => Some(s.code()),
            Error::Endpoint { .. } => None,
        }
    }
}

/// Adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Clone)]
pub struct Auth {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

type Svc = InterceptedService<Channel, Auth>;

/// A connection to one rouse node.
#[derive(Clone)]
pub struct Client {
    cluster: ClusterServiceClient<Svc>,
    namespaces: NamespaceServiceClient<Svc>,
    containers: ContainerServiceClient<Svc>,
    images: ImageServiceClient<Svc>,
    nodes: NodeServiceClient<Svc>,
    secrets: SecretServiceClient<Svc>,
    tokens: TokenServiceClient<Svc>,
    api_keys: ApiKeyServiceClient<Svc>,
    triggers: TriggerServiceClient<Svc>,
    usage: UsageServiceClient<Svc>,
    events: EventServiceClient<Svc>,
}

/// Normalises `host:port` to `http://host:port`.
pub fn endpoint_url(s: &str) -> String {
    if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    }
}

fn read(stale: bool) -> Option<pb::ReadOptions> {
    Some(pb::ReadOptions { stale })
}

/// The name every node certificate carries (checked by TLS clients).
pub const CLUSTER_NAME: &str = "peer.rouse.internal";

impl Client {
    /// Connects to the node at `endpoint` (`http://host:port` or `host:port`).
    pub async fn connect(endpoint: &str, token: Option<&str>) -> Result<Self, Error> {
        let url = endpoint_url(endpoint);
        let bad = |message: String| Error::Endpoint {
            endpoint: endpoint.to_string(),
            message,
        };
        let ep = Endpoint::from_shared(url.clone())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(60));
        let channel = ep
            .connect()
            .await
            .map_err(|e| bad(format!("cannot connect: {e}")))?;
        Self::from_channel(channel, token).map_err(bad)
    }

    /// Connects over TLS to `https://host:port`, trusting only the cluster CA
    /// in `ca_pem` (any node's `<data-dir>/tls/ca.crt`). Nodes are checked
    /// under the name every cluster certificate carries, whatever address
    /// is dialled.
    pub async fn connect_tls(
        endpoint: &str,
        token: Option<&str>,
        ca_pem: &str,
    ) -> Result<Self, Error> {
        use rustls::pki_types::pem::PemObject;
        let bad = |message: String| Error::Endpoint {
            endpoint: endpoint.to_string(),
            message,
        };
        let url = match endpoint.strip_prefix("http://") {
            Some(rest) => format!("https://{rest}"),
            None if endpoint.starts_with("https://") => endpoint.to_string(),
            None => format!("https://{endpoint}"),
        };
        let mut roots = rustls::RootCertStore::empty();
        let mut found = 0;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| bad(format!("ca_file: not a PEM certificate ({e})")))?;
            roots
                .add(cert)
                .map_err(|e| bad(format!("ca_file: not a usable CA certificate ({e})")))?;
            found += 1;
        }
        if found == 0 {
            return Err(bad("ca_file: holds no PEM certificate".into()));
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("tls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(CLUSTER_NAME)
            .map_err(|e| bad(format!("tls: {e}")))?;
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
            .enable_http2()
            .wrap_connector(http);
        let channel = Endpoint::from_shared(url)
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(60))
            .connect_with_connector(connector)
            .await
            .map_err(|e| bad(format!("cannot connect over TLS: {e}")))?;
        Self::from_channel(channel, token).map_err(bad)
    }

    /// Wraps an existing channel.
    pub fn from_channel(channel: Channel, token: Option<&str>) -> Result<Self, String> {
        let header =
            match token {
                Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
                    "token: contains characters not allowed in a header".to_string()
                })?),
                None => None,
            };
        let auth = Auth { header };
        Ok(Client {
            cluster: ClusterServiceClient::with_interceptor(channel.clone(), auth.clone()),
            namespaces: NamespaceServiceClient::with_interceptor(channel.clone(), auth.clone()),
            containers: ContainerServiceClient::with_interceptor(channel.clone(), auth.clone()),
            nodes: NodeServiceClient::with_interceptor(channel.clone(), auth.clone()),
            secrets: SecretServiceClient::with_interceptor(channel.clone(), auth.clone()),
            tokens: TokenServiceClient::with_interceptor(channel.clone(), auth.clone()),
            triggers: TriggerServiceClient::with_interceptor(channel.clone(), auth.clone()),
            usage: UsageServiceClient::with_interceptor(channel.clone(), auth.clone()),
            events: EventServiceClient::with_interceptor(channel.clone(), auth.clone()),
            api_keys: ApiKeyServiceClient::with_interceptor(channel.clone(), auth.clone()),
            images: ImageServiceClient::with_interceptor(channel, auth)
                .max_encoding_message_size(4 * 1024 * 1024),
        })
    }

    /// Sets secrets in a namespace (`container` None) or a container.
    pub async fn set_secrets(
        &mut self,
        namespace: &str,
        container: Option<&str>,
        values: HashMap<String, String>,
    ) -> Result<Vec<pb::SecretInfo>, Error> {
        let scope = Some(pb::SecretScope {
            namespace: namespace.into(),
            container: container.unwrap_or_default().into(),
        });
        Ok(self
            .secrets
            .set(pb::SetSecretsRequest { scope, values })
            .await?
            .into_inner()
            .secrets)
    }

    pub async fn list_secrets(
        &mut self,
        namespace: &str,
        container: Option<&str>,
    ) -> Result<Vec<pb::SecretInfo>, Error> {
        let scope = Some(pb::SecretScope {
            namespace: namespace.into(),
            container: container.unwrap_or_default().into(),
        });
        Ok(self
            .secrets
            .list(pb::ListSecretsRequest { scope })
            .await?
            .into_inner()
            .secrets)
    }

    /// The fingerprints `values` would have in the scope (changing nothing).
    pub async fn fingerprint_secrets(
        &mut self,
        namespace: &str,
        container: Option<&str>,
        values: HashMap<String, String>,
    ) -> Result<Vec<pb::SecretInfo>, Error> {
        let scope = Some(pb::SecretScope {
            namespace: namespace.into(),
            container: container.unwrap_or_default().into(),
        });
        Ok(self
            .secrets
            .fingerprint(pb::SetSecretsRequest { scope, values })
            .await?
            .into_inner()
            .secrets)
    }

    pub async fn delete_secret(
        &mut self,
        namespace: &str,
        container: Option<&str>,
        key: &str,
    ) -> Result<(), Error> {
        let scope = Some(pb::SecretScope {
            namespace: namespace.into(),
            container: container.unwrap_or_default().into(),
        });
        self.secrets
            .delete(pb::DeleteSecretRequest {
                scope,
                key: key.into(),
            })
            .await?;
        Ok(())
    }

    /// Issues a token for a namespace, or one container of it.
    pub async fn create_token(
        &mut self,
        namespace: &str,
        container: Option<&str>,
        expires_in_seconds: u64,
    ) -> Result<pb::CreateTokenResponse, Error> {
        let req = pb::CreateTokenRequest {
            namespace: namespace.into(),
            container: container.unwrap_or_default().into(),
            expires_in_seconds,
        };
        Ok(self.tokens.create(req).await?.into_inner())
    }

    pub async fn list_tokens(&mut self, namespace: &str) -> Result<Vec<pb::TokenInfo>, Error> {
        Ok(self
            .tokens
            .list(pb::ListTokensRequest {
                namespace: namespace.into(),
            })
            .await?
            .into_inner()
            .tokens)
    }

    pub async fn revoke_token(&mut self, id: &str) -> Result<(), Error> {
        self.tokens
            .revoke(pb::RevokeTokenRequest { id: id.into() })
            .await?;
        Ok(())
    }

    pub async fn rotate_signing_key(&mut self) -> Result<String, Error> {
        Ok(self
            .tokens
            .rotate_signing_key(pb::RotateSigningKeyRequest {})
            .await?
            .into_inner()
            .kid)
    }

    /// Mints an API key that may manage only `namespace` (admin only).
    /// Mints a key that may manage only `namespace`.
    pub async fn create_api_key(
        &mut self,
        namespace: &str,
    ) -> Result<pb::CreateApiKeyResponse, Error> {
        Ok(self
            .api_keys
            .create(pb::CreateApiKeyRequest {
                namespace: namespace.into(),
                admin: false,
            })
            .await?
            .into_inner())
    }

    /// Mints another admin key.
    pub async fn create_admin_key(&mut self) -> Result<pb::CreateApiKeyResponse, Error> {
        Ok(self
            .api_keys
            .create(pb::CreateApiKeyRequest {
                namespace: String::new(),
                admin: true,
            })
            .await?
            .into_inner())
    }

    pub async fn list_api_keys(&mut self) -> Result<Vec<pb::ApiKeyInfo>, Error> {
        Ok(self
            .api_keys
            .list(pb::ListApiKeysRequest {})
            .await?
            .into_inner()
            .keys)
    }

    pub async fn revoke_api_key(&mut self, id: &str) -> Result<(), Error> {
        self.api_keys
            .revoke(pb::RevokeApiKeyRequest { id: id.into() })
            .await?;
        Ok(())
    }

    pub async fn list_nodes(&mut self, stale: bool) -> Result<Vec<pb::Node>, Error> {
        Ok(self
            .nodes
            .list(pb::ListNodesRequest { read: read(stale) })
            .await?
            .into_inner()
            .nodes)
    }

    pub async fn cordon(&mut self, id: u64) -> Result<pb::Node, Error> {
        Ok(self
            .nodes
            .cordon(pb::NodeRequest { id })
            .await?
            .into_inner())
    }

    pub async fn uncordon(&mut self, id: u64) -> Result<pb::Node, Error> {
        Ok(self
            .nodes
            .uncordon(pb::NodeRequest { id })
            .await?
            .into_inner())
    }

    pub async fn drain(&mut self, id: u64) -> Result<pb::Node, Error> {
        Ok(self.nodes.drain(pb::NodeRequest { id }).await?.into_inner())
    }

    pub async fn cluster_status(&mut self) -> Result<pb::ClusterStatus, Error> {
        Ok(self
            .cluster
            .status(pb::ClusterStatusRequest {})
            .await?
            .into_inner())
    }

    /// Removes node `id`; answers the master key id the cluster rotated to.
    pub async fn remove_node(&mut self, id: u64) -> Result<String, Error> {
        Ok(self
            .cluster
            .remove_node(pb::RemoveNodeRequest { id })
            .await?
            .into_inner()
            .master_key_id)
    }

    /// Mints a one-time join token for a new node (`ttl_secs` 0: 1 hour).
    pub async fn create_join_token(
        &mut self,
        ttl_secs: u64,
    ) -> Result<pb::CreateJoinTokenResponse, Error> {
        Ok(self
            .cluster
            .create_join_token(pb::CreateJoinTokenRequest { ttl_secs })
            .await?
            .into_inner())
    }

    /// Rotates the cluster's master key and data key.
    pub async fn rotate_keys(&mut self) -> Result<pb::RotateKeysResponse, Error> {
        Ok(self
            .cluster
            .rotate_keys(pb::RotateKeysRequest {})
            .await?
            .into_inner())
    }

    pub async fn node_info(&mut self) -> Result<pb::NodeInfoResponse, Error> {
        Ok(self
            .cluster
            .node_info(pb::NodeInfoRequest {})
            .await?
            .into_inner())
    }

    pub async fn create_namespace(
        &mut self,
        name: &str,
        env: HashMap<String, String>,
    ) -> Result<pb::Namespace, Error> {
        let req = pb::CreateNamespaceRequest {
            name: name.into(),
            env,
            secrets: HashMap::new(),
        };
        Ok(self.namespaces.create(req).await?.into_inner())
    }

    pub async fn create_namespace_with(
        &mut self,
        req: pb::CreateNamespaceRequest,
    ) -> Result<pb::Namespace, Error> {
        Ok(self.namespaces.create(req).await?.into_inner())
    }

    pub async fn update_namespace(
        &mut self,
        req: pb::UpdateNamespaceRequest,
    ) -> Result<pb::Namespace, Error> {
        Ok(self.namespaces.update(req).await?.into_inner())
    }

    pub async fn get_namespace(&mut self, name: &str, stale: bool) -> Result<pb::Namespace, Error> {
        let req = pb::GetNamespaceRequest {
            name: name.into(),
            read: read(stale),
        };
        Ok(self.namespaces.get(req).await?.into_inner())
    }

    pub async fn list_namespaces(&mut self, stale: bool) -> Result<Vec<pb::Namespace>, Error> {
        Ok(self
            .namespaces
            .list(pb::ListNamespacesRequest { read: read(stale) })
            .await?
            .into_inner()
            .namespaces)
    }

    /// Replaces a namespace's quota (admin); unset fields are unbounded.
    pub async fn set_quota(
        &mut self,
        namespace: &str,
        quota: pb::Quota,
    ) -> Result<pb::Namespace, Error> {
        Ok(self
            .namespaces
            .set_quota(pb::SetQuotaRequest {
                namespace: namespace.into(),
                quota: Some(quota),
            })
            .await?
            .into_inner())
    }

    pub async fn delete_namespace(&mut self, name: &str) -> Result<(), Error> {
        self.namespaces
            .delete(pb::DeleteNamespaceRequest { name: name.into() })
            .await?;
        Ok(())
    }

    pub async fn deploy_container(
        &mut self,
        req: pb::DeployContainerRequest,
    ) -> Result<pb::Container, Error> {
        Ok(self.containers.deploy(req).await?.into_inner())
    }

    pub async fn get_container(
        &mut self,
        namespace: &str,
        name: &str,
        stale: bool,
    ) -> Result<pb::Container, Error> {
        let req = pb::GetContainerRequest {
            namespace: namespace.into(),
            name: name.into(),
            read: read(stale),
        };
        Ok(self.containers.get(req).await?.into_inner())
    }

    /// Containers of `namespace`, or of every namespace when it is empty.
    pub async fn list_containers(
        &mut self,
        namespace: &str,
        stale: bool,
    ) -> Result<Vec<pb::Container>, Error> {
        let req = pb::ListContainersRequest {
            namespace: namespace.into(),
            read: read(stale),
        };
        Ok(self.containers.list(req).await?.into_inner().containers)
    }

    /// Streams the logs of a container's instances.
    pub async fn logs(
        &mut self,
        req: pb::LogsRequest,
    ) -> Result<tonic::Streaming<pb::LogChunk>, Error> {
        Ok(self.containers.logs(req).await?.into_inner())
    }

    /// Imports an OCI-layout tarball on every node of the cluster.
    pub async fn import_image(
        &mut self,
        path: &std::path::Path,
        name: Option<&str>,
    ) -> Result<pb::ImportImageResponse, Error> {
        use tokio::io::AsyncReadExt;
        let mut f = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::Endpoint {
                endpoint: path.display().to_string(),
                message: format!("file: {e}"),
            })?;
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::ImportImageChunk>(4);
        let name = name.unwrap_or_default().to_string();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 1024 * 1024];
            let mut first = true;
            while let Ok(n) = f.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let chunk = pb::ImportImageChunk {
                    data: buf[..n].to_vec(),
                    name: if first { name.clone() } else { String::new() },
                    local_only: false,
                };
                first = false;
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
        });
        let r = self
            .images
            .import(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
        reader.abort();
        Ok(r?.into_inner())
    }

    pub async fn delete_container(&mut self, namespace: &str, name: &str) -> Result<(), Error> {
        self.containers
            .delete(pb::DeleteContainerRequest {
                namespace: namespace.into(),
                name: name.into(),
            })
            .await?;
        Ok(())
    }

    // --------------------------------------------------------------- usage

    /// Metered usage rows (see `UsageRequest`).
    pub async fn usage(&mut self, req: pb::UsageRequest) -> Result<Vec<pb::UsageRow>, Error> {
        Ok(self.usage.get(req).await?.into_inner().rows)
    }

    // -------------------------------------------------------------- events

    /// The cluster's events (see `EventsRequest`): the kept ones, then with
    /// `follow` each new one.
    pub async fn events(
        &mut self,
        req: pb::EventsRequest,
    ) -> Result<tonic::Streaming<pb::Event>, Error> {
        Ok(self.events.watch(req).await?.into_inner())
    }

    // ------------------------------------------------------------ triggers

    pub async fn create_trigger(
        &mut self,
        req: pb::CreateTriggerRequest,
    ) -> Result<pb::Trigger, Error> {
        Ok(self.triggers.create(req).await?.into_inner())
    }

    pub async fn get_trigger(
        &mut self,
        namespace: &str,
        container: &str,
        name: &str,
    ) -> Result<pb::Trigger, Error> {
        Ok(self
            .triggers
            .get(trigger_ref(namespace, container, name))
            .await?
            .into_inner())
    }

    /// Triggers of a namespace (empty: all the caller may see), and of one
    /// container (empty: all).
    pub async fn list_triggers(
        &mut self,
        namespace: &str,
        container: &str,
    ) -> Result<Vec<pb::Trigger>, Error> {
        let req = pb::ListTriggersRequest {
            namespace: namespace.into(),
            container: container.into(),
        };
        Ok(self.triggers.list(req).await?.into_inner().triggers)
    }

    pub async fn delete_trigger(
        &mut self,
        namespace: &str,
        container: &str,
        name: &str,
    ) -> Result<(), Error> {
        self.triggers
            .delete(trigger_ref(namespace, container, name))
            .await?;
        Ok(())
    }

    pub async fn set_trigger_enabled(
        &mut self,
        namespace: &str,
        container: &str,
        name: &str,
        enabled: bool,
    ) -> Result<pb::Trigger, Error> {
        let req = pb::SetTriggerEnabledRequest {
            trigger: Some(trigger_ref(namespace, container, name)),
            enabled,
        };
        Ok(self.triggers.set_enabled(req).await?.into_inner())
    }
}

fn trigger_ref(namespace: &str, container: &str, name: &str) -> pb::TriggerRef {
    pb::TriggerRef {
        namespace: namespace.into(),
        container: container.into(),
        name: name.into(),
    }
}
