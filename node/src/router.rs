//! The gRPC router every node serves on `--listen`: health, reflection,
//! the peer service (members only: a cluster certificate, or with
//! `--insecure` the master key), the join service and the public API.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rouse_proto::peer::raft_peer_server::RaftPeerServer;
use rouse_proto::v1 as pb;

use crate::api::{Api, ApiError};
use crate::keys::Keyring;
use crate::peer::PeerService;
use crate::raft::PEER_MAX_MESSAGE;
use crate::trust::PeerTrust;

/// Largest public API message.
const API_MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// The gRPC router: health, reflection, the peer service (members only),
/// the join service and the public API.
pub(crate) async fn grpc_router(
    api: Api,
    peer: PeerService,
    join: crate::join::service::JoinService,
    trust: PeerTrust,
    keys: Arc<Keyring>,
    idle: Duration,
) -> anyhow::Result<tonic::transport::server::Router> {
    use pb::api_key_service_server::ApiKeyServiceServer;
    use pb::cluster_service_server::ClusterServiceServer;
    use pb::container_service_server::ContainerServiceServer;
    use pb::event_service_server::EventServiceServer;
    use pb::image_service_server::ImageServiceServer;
    use pb::namespace_service_server::NamespaceServiceServer;
    use pb::node_service_server::NodeServiceServer;
    use pb::secret_service_server::SecretServiceServer;
    use pb::token_service_server::TokenServiceServer;
    use pb::trigger_service_server::TriggerServiceServer;
    use pb::usage_service_server::UsageServiceServer;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ClusterServiceServer<Api>>()
        .await;
    health_reporter
        .set_serving::<NamespaceServiceServer<Api>>()
        .await;
    health_reporter
        .set_serving::<ContainerServiceServer<Api>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(rouse_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(rouse_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building the reflection service")?;
    // Only members may use the peer service: holders of a cluster
    // certificate, or with --insecure, of the master key.
    let members_only = move |req: tonic::Request<()>| {
        if !trust.insecure() {
            return match trust.check(req.extensions().get::<crate::tls::ConnInfo>()) {
                Ok(()) => Ok(req),
                Err(why) => Err(ApiError::NotAMember(why).into()),
            };
        }
        let presented = req
            .metadata()
            .get(crate::raft::PEER_AUTH)
            .and_then(|v| v.to_str().ok());
        if keys.peer_authorized(presented) {
            Ok(req)
        } else {
            Err(ApiError::NotAMember(
                "not a member of this cluster (no valid cluster credential)".into(),
            )
            .into())
        }
    };
    let peer = tonic::service::interceptor::InterceptedService::new(
        RaftPeerServer::new(peer)
            .max_decoding_message_size(PEER_MAX_MESSAGE)
            .max_encoding_message_size(PEER_MAX_MESSAGE),
        members_only,
    );
    Ok(tonic::transport::Server::builder()
        // A span per public API call (peer traffic, health and reflection
        // have none).
        .trace_fn(|req| {
            let path = req.uri().path();
            if path.starts_with("/rouse.v1.") {
                tracing::info_span!("api", method = %path)
            } else {
                tracing::Span::none()
            }
        })
        // A client that answers no ping within `idle` (a silent one) is
        // dropped; live streams answer pings and stay.
        .http2_keepalive_interval(Some(idle))
        .http2_keepalive_timeout(Some(idle))
        .timeout(Duration::from_secs(60))
        .concurrency_limit_per_connection(256)
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(peer)
        .add_service(
            rouse_proto::peer::cluster_join_server::ClusterJoinServer::new(join)
                .max_decoding_message_size(64 * 1024),
        )
        .add_service(
            ClusterServiceServer::new(api.clone()).max_decoding_message_size(API_MAX_MESSAGE),
        )
        .add_service(
            NamespaceServiceServer::new(api.clone()).max_decoding_message_size(API_MAX_MESSAGE),
        )
        .add_service(
            ContainerServiceServer::new(api.clone()).max_decoding_message_size(API_MAX_MESSAGE),
        )
        .add_service(
            SecretServiceServer::new(api.clone()).max_decoding_message_size(API_MAX_MESSAGE),
        )
        .add_service(NodeServiceServer::new(api.clone()))
        .add_service(ApiKeyServiceServer::new(api.clone()))
        .add_service(
            ImageServiceServer::new(api.clone()).max_decoding_message_size(API_MAX_MESSAGE),
        )
        .add_service(
            TriggerServiceServer::new(api.clone()).max_decoding_message_size(API_MAX_MESSAGE),
        )
        .add_service(UsageServiceServer::new(api.clone()))
        .add_service(EventServiceServer::new(api.clone()))
        .add_service(TokenServiceServer::new(api).max_decoding_message_size(API_MAX_MESSAGE)))
}
