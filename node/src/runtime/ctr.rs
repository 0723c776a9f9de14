//! A containerd connection scoped to one containerd namespace, using only
//! services containerd 1.6 has (content, images, snapshots, diff, leases,
//! containers, tasks, namespaces).

use std::path::Path;

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{CreateNamespaceRequest, Namespace};
use tonic::transport::Channel;
use tonic::{Code, Request};

use super::RuntimeError;

/// The snapshotter rouse unpacks into.
pub const SNAPSHOTTER: &str = "overlayfs";
/// The runtime rouse asks containerd for.
pub const RUNTIME: &str = "io.containerd.runc.v2";
/// Largest message exchanged with containerd.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// The containerd channel, timing every call (`rouse_containerd_call_duration_seconds`).
#[derive(Clone)]
pub struct Timed(Channel);

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for Timed {
    type Response =
        <Channel as tonic::codegen::Service<http::Request<tonic::body::Body>>>::Response;
    type Error = <Channel as tonic::codegen::Service<http::Request<tonic::body::Body>>>::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let path = req.uri().path().to_string();
        let started = std::time::Instant::now();
        let call = self.0.call(req);
        Box::pin(async move {
            let out = call.await;
            crate::telemetry::METRICS.containerd_call(&path, started.elapsed());
            out
        })
    }
}

#[derive(Clone)]
pub struct Ctr {
    channel: Timed,
    pub namespace: String,
}

impl Ctr {
    /// Connects to the socket and makes sure the namespace exists.
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Self, RuntimeError> {
        let channel =
            containerd_client::connect(socket)
                .await
                .map_err(|e| RuntimeError::Connect {
                    socket: socket.display().to_string(),
                    message: e.to_string(),
                })?;
        let ctr = Ctr {
            channel: Timed(channel),
            namespace: namespace.to_string(),
        };
        let req = CreateNamespaceRequest {
            namespace: Some(Namespace {
                name: namespace.to_string(),
                labels: Default::default(),
            }),
        };
        match NamespacesClient::new(ctr.channel.clone())
            .create(ctr.req(req, None))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => return Err(RuntimeError::containerd("create namespace", s)),
        }
        Ok(ctr)
    }

    /// A request in our namespace, and under `lease` when given.
    pub fn req<T>(&self, msg: T, lease: Option<&str>) -> Request<T> {
        let mut req = Request::new(msg);
        let md = req.metadata_mut();
        if let Ok(v) = self.namespace.parse() {
            md.insert("containerd-namespace", v);
        }
        if let Some(l) = lease.and_then(|l| l.parse().ok()) {
            md.insert("containerd-lease", l);
        }
        req
    }

    pub fn content(&self) -> ContentClient<Timed> {
        ContentClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }
    pub fn images(&self) -> ImagesClient<Timed> {
        ImagesClient::new(self.channel.clone())
    }
    pub fn snapshots(&self) -> SnapshotsClient<Timed> {
        SnapshotsClient::new(self.channel.clone())
    }
    pub fn diff(&self) -> DiffClient<Timed> {
        DiffClient::new(self.channel.clone())
    }
    pub fn leases(&self) -> LeasesClient<Timed> {
        LeasesClient::new(self.channel.clone())
    }
    pub fn containers(&self) -> ContainersClient<Timed> {
        ContainersClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }
    pub fn tasks(&self) -> TasksClient<Timed> {
        TasksClient::new(self.channel.clone())
    }
}
